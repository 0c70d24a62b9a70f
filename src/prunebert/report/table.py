"""The survey's comparison table for the models of a study, in the style of the comparison tables of
Ganesh et al. 2021 ("Compressing Large-Scale Transformer-Based Models: A Case Study on BERT"): memory,
speed, what was pruned, whether pruning happened in pre-training, and performance, relative to dense.

Per finished cell:
- memory as % of the dense fp32 model of the same stage and task: stored dense (4 bytes per parameter,
  zeros included: 100% unless heads or neurons were slimmed away), and with sparse storage (the bytes
  `prunebert compress` would write for the weights, lossless: `prunebert.deploy.storage.encode_tensor`
  on every tensor of the model's safetensors); mask files are not counted, inference does not need them;
- inference speed relative to the dense model, from a `prunebert bench --json-out` file given with
  `--bench` (torch fp32 eager by default, first batch size; models matched by their run directory),
  else "not measured";
- the pruned component, read from the mask file (roles with zeros) and the arm's method (whole heads /
  FFN neurons for structured methods), plus any fixed attention heads;
- whether pruning happened in pre-training (the `pretrain` stage), and the test metric over the dense one.

Sizes are cached in `comparison_sizes.json` beside the table (keyed by file, size and mtime).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

from prunebert.deploy.storage import encode_tensor
from prunebert.errors import PrunebertError
from prunebert.io import expect_mapping, read_json
from prunebert.methods.registry import method_class
from prunebert.model_files import weight_files
from prunebert.report.data import Section, Skip, StudyResults, mask_set
from prunebert.transforms.fixed_attention import CONFIG_KEY

__all__ = [
    "COLUMNS",
    "comparison_rows",
    "comparison_table",
    "model_bytes",
    "pruned_component",
    "speed_ratios",
]

CACHE_FILE = "comparison_sizes.json"
#: (key, heading) of every column, in order
COLUMNS = (
    ("task", "task"),
    ("stage", "stage"),
    ("method", "method"),
    ("sparsity", "target sparsity"),
    ("achieved_sparsity", "achieved sparsity"),
    ("component", "pruned component"),
    ("pruned_in_pretraining", "pruned in pre-training"),
    ("memory_dense_pct", "memory, dense fp32 (% of dense)"),
    ("memory_sparse_pct", "memory, sparse storage (% of dense)"),
    ("speed_ratio", "inference speed (x dense)"),
    ("test_metric", "test metric"),
    ("relative_performance", "performance (% of dense)"),
)
_ATTENTION = ("query", "key", "value", "attention_output")
_FFN = ("ffn_in", "ffn_out")


def model_bytes(model_dir: Path, cache: dict[str, Any]) -> dict[str, int]:
    """Dense fp32 bytes (4 per parameter) and losslessly stored sparse bytes of a saved model's weights."""
    files = weight_files(model_dir)
    if not files:
        raise Skip(f"no weights in {model_dir}")
    key = "|".join(f"{p.resolve()}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)
    if key not in cache:
        dense = stored = 0
        for file in files:
            with safe_open(str(file), "pt") as weights:
                for name in weights.keys():  # noqa: SIM118 -- safe_open has no __iter__
                    tensor = weights.get_tensor(name)
                    dense += 4 * tensor.numel() if tensor.is_floating_point() else tensor.nbytes
                    stored += sum(part.nbytes for part in encode_tensor(tensor).parts.values())
        cache[key] = {"dense_fp32": dense, "sparse": stored}
    return dict(cache[key])


def _structured_arms(res: StudyResults) -> set[str]:
    """Arms of the study whose method prunes whole heads or neurons."""
    arms = set()
    for arm in res.table.get("study", {}).get("methods", []):
        try:
            if method_class(str(arm.get("method") or arm["name"])).structured:
                arms.add(str(arm["name"]))
        except PrunebertError:  # a method no longer registered: counted as unstructured
            continue
    return arms


def pruned_component(masks: Path | None, structured: bool, fixed_heads: int = 0) -> str:
    """What a model's masks zeroed ("weights in attention + FFN", "attention heads", ...), + fixed heads."""
    parts: list[str] = []
    if masks is not None:
        tensors, roles = mask_set(masks)
        pruned = {roles[k] for k, m in tensors.items() if not bool(m.all())}
        attention, ffn = pruned & set(_ATTENTION), pruned & set(_FFN)
        if structured:
            parts += ["attention heads"] * bool(attention) + ["FFN neurons"] * bool(ffn)
        elif attention or ffn:
            where = " + ".join(n for n, s in (("attention", attention), ("FFN", ffn)) if s)
            parts.append(f"weights in {where}")
        if "embeddings" in pruned:
            parts.append("word embeddings")
        parts += ["other weights"] * bool(pruned - {*_ATTENTION, *_FFN, "embeddings"})
    if fixed_heads:
        parts.append(f"{fixed_heads} heads' attention fixed")
    return ", ".join(parts) or "none (dense)"


def _bench_name(spec: str) -> str:
    return "/" + Path(spec).as_posix().rstrip("/").removesuffix("/model").strip("/")


def speed_ratios(bench: dict[str, Any], run_dirs: list[str], variant: str = "torch") -> dict[str, float]:
    """Run dir -> its speedup over the bench's baseline, in the first batch size's block, for `variant`."""
    block = bench["results"][0]
    measured = {
        _bench_name(r["model"]): float(r["speedup"]["median"])
        for r in block["runners"]
        if r["role"] == "runner" and r["variant"] == variant
    }
    out = {}
    for run in run_dirs:
        match = [v for name, v in measured.items() if name.endswith("/" + run.strip("/"))]
        if len(match) == 1:
            out[run] = match[0]
    return out


def _dense_of(res: StudyResults, row: dict[str, Any]) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in res.cells
            if (r["stage"], r["task"], r["method"]) == (row["stage"], row["task"], "dense")
        ),
        None,
    )


def _fixed_heads(model_dir: Path | None) -> int:
    config = model_dir / "config.json" if model_dir is not None else None
    if config is None or not config.is_file():
        return 0
    record = read_json(config, "model config", "save the model again").get(CONFIG_KEY) or {}
    return sum(len(heads) for heads in (record.get("heads") or {}).values())


def comparison_rows(
    res: StudyResults, bench: dict[str, Any] | None = None, cache: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """One row per finished cell: the table's columns (None where an input is missing)."""
    cache = {} if cache is None else cache
    structured = _structured_arms(res)
    speeds = speed_ratios(bench, [r["run_dir"] for r in res.cells]) if bench else {}
    rows = []
    for cell in res.cells:
        dense = _dense_of(res, cell)
        model, dense_model = res.path(cell["model_dir"]), res.path(dense["model_dir"]) if dense else None
        row: dict[str, Any] = {key: cell.get(key) for key, _ in COLUMNS}
        row["component"] = pruned_component(
            res.path(cell.get("masks")), cell["method"] in structured, _fixed_heads(model)
        )
        row["pruned_in_pretraining"] = cell["stage"] == "pretrain" and cell["method"] != "dense"
        if model is not None and dense_model is not None:
            mine, base = model_bytes(model, cache), model_bytes(dense_model, cache)
            row["memory_dense_pct"] = 100 * mine["dense_fp32"] / base["dense_fp32"]
            row["memory_sparse_pct"] = 100 * mine["sparse"] / base["dense_fp32"]
        if dense is not None and cell["run_dir"] in speeds and dense["run_dir"] in speeds:
            row["speed_ratio"] = speeds[cell["run_dir"]] / speeds[dense["run_dir"]]
        if dense is not None and dense["test_metric"]:
            row["relative_performance"] = 100 * cell["test_metric"] / dense["test_metric"]
        rows.append(row)
    return rows


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "not measured" if key == "speed_ratio" else ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if key in ("sparsity", "achieved_sparsity"):
        return f"{100 * value:.1f}%"
    if key.endswith("_pct") or key == "relative_performance":
        return f"{value:.1f}%"
    if key == "speed_ratio":
        return f"{value:.2f}x"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[key for key, _ in COLUMNS], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def comparison_table(res: StudyResults, bench: Path | None, out: Path) -> Section:
    """Write `comparison.csv` into `out`'s directory and return the table as a report section."""
    if not res.cells:
        raise Skip("the study has no finished cells")
    cache_path = out.parent / CACHE_FILE
    cache = read_json(cache_path, "report cache", f"delete {cache_path}") if cache_path.is_file() else {}
    fix = "pass a file written by `prunebert bench --json-out`"
    bench_json = (
        expect_mapping(read_json(bench, "bench results", fix), bench, "bench results", fix) if bench else None
    )
    rows = comparison_rows(res, bench_json, cache)
    cache_path.write_text(json.dumps(cache, indent=1))
    out.with_name("comparison.csv").write_text(_csv(rows))
    speed = f"from {bench.name}" if bench is not None else "not measured (pass --bench BENCH.json)"
    return Section(
        "comparison",
        "Comparison with the dense model (the survey's table)",
        caption=(
            "Each model of the study against the dense model of its stage and task. Memory: the weights as "
            "stored dense in fp32 (100% unless heads or neurons were removed by slimming) and with lossless "
            "sparse storage (`prunebert compress`), both as % of the dense fp32 model; unpruned embeddings "
            f"dominate small models. Inference speed: {speed}. Performance: test metric over the dense "
            "model's. Also in comparison.csv beside this page."
        ),
        table=[[heading for _, heading in COLUMNS], *([_fmt(k, r[k]) for k, _ in COLUMNS] for r in rows)],
    )
