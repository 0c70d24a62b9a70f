"""The speed/accuracy frontier of structured pruning (+ distillation) on the embedded default, alone and with
int8 / bf16: per point, test accuracy, CPU speedup over the dense fp32 model (batch 1 and 8) and size.

The teacher is methods_grid.py's dense cell (minilm-l6 fine-tuned on rotten-tomatoes with its `base_recipe`).
A point `LxS` is an ordinary `finetune` run distilled from it: L encoder layers (fewer than the teacher's:
the teacher with evenly spaced layers removed by `prunebert slim`, 2 and 5 of 6 for L = 4, 1, 3 and 5 for
L = 3) pruned to structured sparsity S (heads and FFN neurons by Taylor importance, iterative schedule),
then slimmed. Every model is scored on the whole test split in torch fp32 / bf16 / int8 and, exported
(static int8 calibrated on the task), in ONNX Runtime and OpenVINO; then all are timed by one `prunebert
bench` against the dense torch fp32 teacher (batch 1 and 8, sequence 128). A random-weight bert-base cut
to each point's structure (the same fractions of heads and neurons per layer, the same layers) is timed
likewise against dense bert-base.
Runs, slims, exports, accuracies and bench JSONs are reused when finished, and the JSON is rewritten after
every stage. Goals at <= 1 point of accuracy lost: >= 3x from structure alone (torch fp32), >= 10x with
int8 on ONNX Runtime or OpenVINO.

    .venv/bin/python benchmarks/frontier.py                      # everything: ~70 min on 2 idle cores
    .venv/bin/python benchmarks/frontier.py --skip-bert-base     # the minilm frontier only
    .venv/bin/python benchmarks/frontier.py --table              # the README's Markdown table of the JSON
    .venv/bin/python benchmarks/frontier.py --model DIR --task FILE --points 2x0.5 1x0.0 --max-steps 10 \\
        --bert-size tiny --seq-len 32 --rounds 1 --iters 1 --runs /tmp/fr --output /tmp/fr.json   # smoke
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoTokenizer, PreTrainedModel

from deploy_speed import SIZES, build  # benchmarks/*.py: the script's folder is on sys.path
from fixed_attention import settings  # methods_grid's base_recipe with the smoke-test overrides
from prunebert.deploy.bench import BenchSettings, run_bench
from prunebert.deploy.export import EXPORT_FILE, ExportOptions, export_model
from prunebert.deploy.inference import load_inference_model, task_batches, weight_bytes
from prunebert.deploy.runtimes import torch_runner
from prunebert.deploy.slim_job import run_slim
from prunebert.deploy.torch_variants import prepare_torch_variant
from prunebert.io import write_json
from prunebert.metrics import compute_metrics
from prunebert.models import load_config, resolve_model_path
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.runner import run_or_reuse
from prunebert.targets import role_modules
from prunebert.transforms.slim import SLIM_KEY
from results_table import write_results

ROOT = Path(__file__).resolve().parent
POINTS = ("6x0.3", "6x0.5", "6x0.6", "6x0.7", "4x0.0", "4x0.3", "4x0.5", "3x0.0", "3x0.5", "3x0.7")
VARIANTS = ("torch", "torch-bf16", "torch-int8", "onnxruntime-int8", "openvino-int8")
TORCH_PRECISIONS = {"torch": "fp32", "torch-bf16": "bf16", "torch-int8": "int8"}
EXPORTED = {"onnx_fp32": "onnxruntime", "onnx_int8": "onnxruntime-int8", "openvino_fp32": "openvino"}
EXPORTED |= {"openvino_int8": "openvino-int8"}  # export manifest's runner -> bench variant
ENGINES = ("onnxruntime-int8", "openvino-int8")
GOALS = ("structure_3x", "int8_10x")


@dataclass(frozen=True)
class Point:
    """`layers` encoder layers at structured sparsity `sparsity` (the fraction of heads and neurons cut)."""

    layers: int
    sparsity: float

    @property
    def name(self) -> str:
        return f"{self.layers}x{self.sparsity}"


def parse_point(text: str) -> Point:
    """`6x0.5` -> Point(6, 0.5)."""
    layers, _, sparsity = text.partition("x")
    try:
        point = Point(int(layers), float(sparsity))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LAYERSxSPARSITY, e.g. 6x0.5") from None
    if point.layers < 1 or not 0.0 <= point.sparsity < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: layers must be >= 1 and sparsity in [0, 1)")
    return point


def slim_once(source: str, out: Path, drop_layers: list[int] | None = None) -> dict[str, Any]:
    """`run_slim`, or the summary of the finished one in `out` (one cut before its summary is redone)."""
    if (out / "slim.json").is_file():
        return dict(json.loads((out / "slim.json").read_text()))
    return run_slim(source, out, overwrite=True, drop_layers=drop_layers or [])


def dropped_layers(total: int, kept: int) -> list[int]:
    """The layers to remove to keep `kept` of `total`, evenly spaced from the first (6 -> 3: 1, 3, 5)."""
    keep = {i * total // kept for i in range(kept)}
    return [i for i in range(total) if i not in keep]


def train_point(args: argparse.Namespace, point: Point, teacher: Path) -> tuple[Path, dict[str, Any] | None]:
    """Fine-tune (or reuse) the point's run and slim it: the model to measure and its slim summary."""
    recipe = {**settings(args), "output_dir": str(args.runs / point.name)}
    recipe["distill"] = {"teacher": str(teacher)}
    summary, total = None, load_config(str(teacher)).num_hidden_layers
    if point.layers > total:
        raise SystemExit(f"point {point.name}: the teacher has only {total} layers")
    if point.layers < total:
        start = args.runs / f"teacher-{point.layers}layers"
        summary = slim_once(str(teacher), start, dropped_layers(total, point.layers))
        recipe["model"] = str(start)
    if point.sparsity:
        recipe["pruning"] = {"method": "structured", "sparsity": point.sparsity}
    print(f"[frontier] {point.name} -> {recipe['output_dir']}", flush=True)
    run_or_reuse(FinetuneConfig.model_validate(recipe))
    if not point.sparsity:  # nothing pruned: the run's model is as slim as it gets
        return args.runs / point.name / "model", summary
    slim = args.runs / f"{point.name}-slim"
    return slim, slim_once(str(args.runs / point.name), slim)


def weights_stamp(model_dir: Path) -> list[list[Any]]:
    """Name, size and modification time of the model's weight files: a retrained model has another."""
    files = sorted(model_dir.glob("*.safetensors"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def _stamped(path: Path, model_dir: Path) -> dict[str, Any] | None:
    """The JSON at `path` if it was made from the model now in `model_dir`, else None (stale or absent)."""
    if not path.is_file():
        return None
    record = dict(json.loads(path.read_text()))
    return record if record.get("weights_stamp") == weights_stamp(model_dir) else None


def export_once(args: argparse.Namespace, model_dir: Path, out: Path, fmt: str) -> dict[str, Any]:
    """fp32 + static int8 export of `model_dir` scored on the whole test split (reused when finished from
    the same weights)."""
    stamp = out.with_name(out.name + ".stamp.json")
    done = _stamped(stamp, model_dir)
    if done is not None and (out / EXPORT_FILE).is_file():
        return dict(json.loads((out / EXPORT_FILE).read_text()))
    recipe = settings(args)
    options = ExportOptions(
        model=str(model_dir),
        out=str(out),
        format=fmt,
        int8=True,
        calibration=recipe["task"],
        eval_examples=None,  # the whole test split
        max_length=recipe["max_seq_length"],
        seed=recipe["seed"],
    )
    manifest = export_model(options, overwrite=True)
    write_json(stamp, {"weights_stamp": weights_stamp(model_dir)})
    return manifest


def measure_accuracy(args: argparse.Namespace, name: str, model_dir: Path) -> dict[str, Any]:
    """Test accuracy of every variant, parameters and bytes of one model (cached under --runs)."""
    cache = args.runs / f"{name}-accuracy.json"
    done = _stamped(cache, model_dir)
    if done is not None:
        return {k: v for k, v in done.items() if k != "weights_stamp"}
    recipe, model = settings(args), load_inference_model(str(model_dir))
    data = task_batches(recipe["task"], model, "test", None, 32, recipe["max_seq_length"], recipe["seed"])
    accuracy, sizes = {}, {"torch": weight_bytes(str(model_dir))}
    for variant, precision in TORCH_PRECISIONS.items():
        prepared = prepare_torch_variant(model.module, precision, 32 * recipe["max_seq_length"])
        run = torch_runner(prepared.module, model.input_names)
        predictions = np.concatenate([run(batch) for batch in data.batches])
        accuracy[variant] = compute_metrics(data.metric, predictions, data.labels)[data.metric]
    for fmt in ("onnx", "openvino"):
        manifest = export_once(args, model_dir, args.runs / f"{name}-{fmt}", fmt)
        scores, key = manifest["accuracy"]["scores"], manifest["accuracy"]["metric_key"]
        accuracy |= {EXPORTED[r]: s[key] for r, s in scores.items() if r in EXPORTED}
        sizes |= {EXPORTED[f"{fmt}_{f['precision']}"]: f["bytes"] for f in manifest["files"].values()}
    record = {
        "parameters": sum(p.numel() for p in model.module.parameters()),
        "bytes": sizes,
        "test_examples": len(data.labels),
        "accuracy": accuracy,
    }
    write_json(cache, {**record, "weights_stamp": weights_stamp(model_dir)})
    return record


def bench_settings(args: argparse.Namespace) -> BenchSettings:
    """The one bench protocol of both timings; static int8 calibrated on the task, as the accuracies."""
    return BenchSettings(
        variants=VARIANTS,
        seq_len=args.seq_len,
        rounds=args.rounds,
        iters=args.iters,
        calibration=settings(args)["task"],
    )


def bench_once(args: argparse.Namespace, models: dict[str, str], kind: str) -> dict[str, Any]:
    """One `prunebert bench` of `models` (the first is the baseline), or the saved one of the same run."""
    path = args.output.with_name(f"{args.output.stem}_bench_{kind}.json")
    bench = bench_settings(args)
    wanted = {**bench.model_dump(mode="json"), "variants": list(VARIANTS)}
    names = {spec: name for name, spec in models.items()}
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("model_names") == names and old.get("settings") == wanted:
            return dict(old)
    result = run_bench(list(models.values()), bench)
    result["model_names"] = names
    write_json(path, result)
    return result


def speedups(bench: dict[str, Any], spec: str) -> dict[str, dict[str, dict[str, float]]]:
    """variant -> `batch_N` -> min / median / max of dense fp32 latency over this model's, per round."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for result in bench["results"]:
        for row in result["runners"]:
            if row["model"] == spec and row["role"] == "runner":
                table.setdefault(row["variant"], {})[f"batch_{result['batch_size']}"] = row["speedup"]
    return table


@torch.no_grad()
def cut_like(model: PreTrainedModel, source: Path) -> list[int]:
    """Zero the first heads and FFN neurons of each layer of `model` so it keeps the fractions kept in the
    matching layer of the slim `source` (layer j of L matches j * n // L of n); returns the layers to drop."""
    config, big = load_config(str(source)), model.config
    n, heads, ffn = config.num_hidden_layers, config.num_attention_heads, config.intermediate_size
    layout = getattr(config, SLIM_KEY, None) or {}
    kept = {
        "attention_output": [len(h) / heads for h in layout.get("heads", [range(heads)] * n)],
        "ffn_out": [size / ffn for size in layout.get("intermediate_sizes", [ffn] * n)],
    }
    widths = {"attention_output": big.num_attention_heads, "ffn_out": big.intermediate_size}
    columns = {"attention_output": big.hidden_size // big.num_attention_heads, "ffn_out": 1}  # per group
    for target, module in role_modules(model, tuple(kept)):
        width, fraction = widths[target.role], kept[target.role][target.layer * n // big.num_hidden_layers]
        cut = (width - round(fraction * width)) * columns[target.role]
        module.get_parameter("weight")[:, :cut] = 0  # (out, in): the groups' output columns
    layers = set(layout.get("layers", range(n)))
    return [j for j in range(big.num_hidden_layers) if j * n // big.num_hidden_layers not in layers]


def save_random(model: PreTrainedModel, directory: Path, teacher: Path) -> None:
    """Save a random-weight model with the teacher's tokenizer (the int8 exports calibrate on the task)."""
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(resolve_model_path(str(teacher))).save_pretrained(directory)


def reference_models(args: argparse.Namespace, dirs: dict[str, Path], teacher: Path) -> dict[str, str]:
    """Dense random `--bert-size` and one copy cut to each point's structure, slimmed (reused if there)."""
    root = args.runs / args.bert_size
    models = {"dense": str(root / "dense")}
    if not (root / "dense" / "config.json").is_file():
        save_random(build(args.bert_size), root / "dense", teacher)
    for name, source in list(dirs.items())[1:]:
        models[name] = str(root / name)
        if not (root / name / "slim.json").is_file():
            model = build(args.bert_size)
            drop = cut_like(model, source)
            with tempfile.TemporaryDirectory(prefix="frontier-") as scratch:
                save_random(model, Path(scratch), teacher)
                run_slim(scratch, root / name, overwrite=True, drop_layers=drop)
    return models


def goals(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per batch size: >= 3x from structure alone, >= 10x on the best int8 engine, at <= 1 point lost."""
    within = {v: delta >= -1.0 for v, delta in row["accuracy_delta_points"].items()}
    met = {}
    for batch, stats in row["speedup"]["torch"].items():
        engines = {v: row["speedup"][v][batch]["median"] for v in ENGINES if within.get(v)}
        best = max(engines, key=lambda v: engines[v], default=None)
        met[batch] = {
            "structure_3x": bool(within["torch"] and stats["median"] >= 3.0),
            "int8_10x": best is not None and engines[best] >= 10.0,
            "best_int8_engine": best,
        }
    return met


def _cell(speedup: dict[str, Any] | None, delta: float | None) -> str:
    """`-0.4 pt, 2.9/3.4x`: accuracy change and median speedup at each batch size."""
    text = "" if delta is None else f"{delta:+.1f} pt, "
    if not speedup:
        return text + "not run yet"
    return text + "/".join(f"{s['median']:.1f}" for s in speedup.values()) + "x"


def _goals_cell(goals: dict[str, dict[str, Any]] | None) -> str:
    """`3x no/yes; 10x no/no`: each goal met or not at each batch size."""
    met = ["/".join("yes" if g[key] else "no" for g in (goals or {}).values()) for key in GOALS]
    return f"3x {met[0]}; 10x {met[1]}" if goals else "not run yet"


def markdown_table(path: Path) -> str:
    """The README's table: per point and variant, accuracy change (points) and speedup at batch 1 / 8."""
    rows = json.loads(path.read_text())["cells"]
    reference = ("torch", *ENGINES)
    head = [*VARIANTS, *(f"bert-base {v}" for v in reference), "goals b1/b8"]
    lines = ["| point | parameters | fp32 accuracy | " + " | ".join(head) + " |"]
    lines.append("|---|---:|---:|" + "---:|" * len(head))
    for row in rows:
        deltas, speed = row.get("accuracy_delta_points", {}), row.get("speedup", {})
        cells = [_cell(speed.get(v), deltas.get(v)) for v in VARIANTS]
        cells += [_cell(row.get("bert_base", {}).get("speedup", {}).get(v), None) for v in reference]
        accuracy = row.get("accuracy", {}).get("torch")
        first = [row["point"], f"{row.get('parameters', 0):,}", "" if accuracy is None else f"{accuracy:.1%}"]
        lines.append("| " + " | ".join([*first, *cells, _goals_cell(row.get("goals"))]) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", nargs="+", type=parse_point, default=[parse_point(p) for p in POINTS])
    parser.add_argument("--max-train-examples", type=int, default=4000, help="as methods_grid's grid")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--rounds", type=int, default=5, help="bench rounds")
    parser.add_argument("--iters", type=int, default=10, help="bench timed calls per round")
    parser.add_argument("--seq-len", type=int, default=128, help="bench sequence length")
    parser.add_argument("--bert-size", choices=sorted(SIZES), default="bert-base", help="reference shape")
    parser.add_argument("--skip-bert-base", action="store_true", help="do not time the reference shape")
    parser.add_argument("--model", help="smoke tests: another model (default minilm-l6)")
    parser.add_argument("--task", help="smoke tests: another task (default rotten-tomatoes)")
    parser.add_argument("--max-steps", type=int, help="smoke tests: stop every run after N steps")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "frontier")
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "frontier.json")
    parser.add_argument("--table", action="store_true", help="print the Markdown table of --output and exit")
    return parser.parse_args(argv)


def table_settings(args: argparse.Namespace, teacher: Path) -> dict[str, Any]:
    """What decides every number: the recipe, the points, the evaluation and the bench protocol."""
    return {
        "recipe": settings(args),
        "teacher": str(teacher),
        "points": [p.name for p in args.points],
        "accuracy": {"split": "test", "examples": "all", "max_length": settings(args)["max_seq_length"]},
        "bench": bench_settings(args).model_dump(mode="json"),
        "reference": None if args.skip_bert_base else {"size": args.bert_size, **SIZES[args.bert_size]},
    }


def main(argv: list[str] | None = None) -> None:
    """Teacher, points (train, slim), accuracies, one minilm bench, one reference bench, goals."""
    args = parse_args(argv)
    if args.table:
        print(markdown_table(args.output))
        return
    started, args.runs = time.time(), args.runs.resolve()
    # a smoke test (--model) trains its own teacher; the real run reuses methods_grid's dense cell
    teacher = args.runs / "dense" if args.model else ROOT / "runs" / "methods_grid" / "dense"
    run_or_reuse(FinetuneConfig.model_validate({**settings(args), "output_dir": str(teacher)}))
    layers = load_config(str(teacher)).num_hidden_layers
    rows: list[dict[str, Any]] = [{"point": "dense", "layers": layers, "structured_sparsity": 0.0}]
    dirs, options = {"dense": teacher / "model"}, table_settings(args, teacher)

    def write(complete: bool = False) -> None:
        write_results(args.output, "frontier", options, rows, complete, started)

    for point in args.points:
        dirs[point.name], slim = train_point(args, point, teacher)
        rows.append({"point": point.name, "layers": point.layers, "structured_sparsity": point.sparsity})
        rows[-1]["slim"] = slim  # prunebert slim's summary: parameters, heads / neurons / layers kept
        write()
    for row in rows:
        row |= measure_accuracy(args, row["point"], dirs[row["point"]])
        dense = rows[0]["accuracy"]["torch"]
        row["accuracy_delta_points"] = {v: 100 * (a - dense) for v, a in row["accuracy"].items()}
        write()
    bench = bench_once(args, {name: str(d) for name, d in dirs.items()}, "minilm")
    for row in rows:
        row["speedup"] = speedups(bench, str(dirs[row["point"]]))
        row["goals"] = goals(row)
    write(args.skip_bert_base)
    if not args.skip_bert_base:
        models = reference_models(args, dirs, teacher)
        bench = bench_once(args, models, args.bert_size)
        for row in rows:
            spec = models[row["point"]]
            row["bert_base"] = {"parameters": bench["models"][spec]["params"]}
            row["bert_base"]["speedup"] = speedups(bench, spec)
        write(True)
    print(markdown_table(args.output))


if __name__ == "__main__":
    main()
