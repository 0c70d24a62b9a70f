"""`prunebert shrink MODEL`: load, calibrate, set the budget, shrink, slim, save, bench, optionally distill.

OUT holds `model/` (the result: `--model OUT` loads it like any slimmed model), `shrink.json` (what was
asked, chosen, predicted and measured), and with `--distill_steps` also `zero-step/` (the model before
distillation) and `distill/` (the fine-tuning run). The latency constraint is a measured table of this
machine (`prunebert.shrink.latency`); the speed-up is always quoted against the dense model in torch fp32
at the same batch size and sequence length, as `prunebert bench` and the frontier do. With `--evaluate`
and a runtime other than torch fp32, the result is also scored on the test split in that runtime
(`deployed` in shrink.json): an int8 or bf16 model's accuracy is its own, not its fp32 twin's.
"""

from __future__ import annotations

import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from prunebert.data import TaskData
from prunebert.deploy.bench import BenchSettings, run_bench
from prunebert.deploy.scoring import score_in_runtime
from prunebert.deploy.slim_job import run_slim
from prunebert.errors import PrunebertError
from prunebert.hardware import cpu_features, cpu_name, environment
from prunebert.io import write_json
from prunebert.models import load_model
from prunebert.shrink.api import ShrinkResult, ShrinkSettings, shrink
from prunebert.shrink.config import ShrinkConfig, calibration_batches
from prunebert.shrink.latency import LatencyTable, TableSpec, ffn_size, latency_table
from prunebert.shrink.search import LayerCosts, flop_costs
from prunebert.stages.common import TrainConfig
from prunebert.stages.distill import DistillConfig
from prunebert.stages.evaluate import EvaluateConfig, run_evaluate
from prunebert.stages.finetune import FinetuneConfig, run_finetune

__all__ = ["bench_shrunk", "format_report", "next_budget", "run_shrink", "score_deployed", "task_fields"]

REPORT_FILE = "shrink.json"


def task_fields(cfg: ShrinkConfig) -> dict[str, Any]:
    """The task section of `cfg`, for the stages it runs (evaluate, finetune)."""
    names = ("task", "text_column", "text_pair_column", "label_column", "max_seq_length", "task_type", "qa")
    return {name: getattr(cfg, name) for name in names}


def _budget(
    cfg: ShrinkConfig, config: Any, tokenizer: Any, threads: int
) -> tuple[LayerCosts, float, dict[str, Any]]:
    """Costs, budget and what the report says of them: FLOPs, or the measured latency table."""
    if cfg.flops is not None:
        costs = flop_costs(config.hidden_size, config.num_attention_heads, ffn_size(config), cfg.seq_len)
        dense = costs.dense_cost(config.num_hidden_layers)
        return costs, cfg.flops * dense, {"kind": "flops", "dense_flops": dense, "fraction": cfg.flops}
    assert cfg.speedup is not None
    spec = TableSpec(
        runtime=cfg.runtime,
        batch_size=cfg.batch_size,
        seq_len=cfg.seq_len,
        threads=threads,
        points=cfg.grid_points or (5 if cfg.exported else 7),
        calibration=cfg.task if cfg.exported else None,
    )
    table, path, cached = latency_table(config, tokenizer, spec, refresh=cfg.refresh_table)
    costs = table.costs()
    budget, ceiling = table.baseline_s / cfg.speedup, table.baseline_s / costs.min_cost()
    if cfg.speedup > ceiling:
        print(
            f"prunebert: warning: {cfg.runtime} on this CPU ({cpu_name()}; {', '.join(cpu_features())}) "
            f"reaches at most {ceiling:.1f}x over dense torch fp32 at batch {cfg.batch_size} (the parts "
            f"outside the layers remain), not {cfg.speedup:g}x; shrinking to the smallest model instead",
            file=sys.stderr,
        )
        budget = costs.min_cost() * 1.02  # room for the search's rounding up
    record = {"kind": "latency", "table": str(path), "from_cache": cached, **_table_facts(table, costs)}
    return costs, budget, record


def _table_facts(table: LatencyTable, costs: LayerCosts) -> dict[str, Any]:
    return {
        "measured_in_s": table.seconds,
        "baseline_torch_fp32_s": table.baseline_s,
        "dense_in_runtime_s": table.dense_s,
        "dense_runtime_speedup": table.baseline_s / table.dense_s,
        "max_speedup": table.baseline_s / costs.min_cost(),
        "layer_cost_s": costs.layer,
        "base_cost_s": costs.base,
    }


def bench_shrunk(model: str, shrunk: Path, cfg: ShrinkConfig, threads: int) -> dict[str, Any]:
    """Dense (torch fp32 baseline and in the runtime) and the result, in one `prunebert bench` run."""
    settings = BenchSettings(
        variants=(cfg.runtime,),
        batch_sizes=(cfg.batch_size,),
        seq_len=cfg.seq_len,
        rounds=cfg.bench_rounds,
        threads=threads,
        calibration=cfg.task if cfg.exported else None,
    )
    result = run_bench([model, str(shrunk)], settings)
    rows = result["results"][0]["runners"]
    flops = [result["models"][spec]["flops_per_sequence"] for spec in (model, str(shrunk))]
    return {
        "speedup": rows[-1]["speedup"]["median"],
        "speedup_range": [rows[-1]["speedup"]["min"], rows[-1]["speedup"]["max"]],
        "dense_runtime_speedup": rows[1]["speedup"]["median"],
        "latency_s": {"baseline": rows[0]["latency_s"]["median"], "shrunk": rows[-1]["latency_s"]["median"]},
        "flops_fraction": flops[1]["dense"] / flops[0]["dense"] if all(flops) else None,
        "discarded_rounds": len(result["results"][0]["discarded_rounds"]),
        "environment": result["environment"],
    }


def _evaluate(model: str, cfg: ShrinkConfig) -> dict[str, Any]:
    evaluation = EvaluateConfig(model=model, splits=["dev", "test"], seed=cfg.seed, **task_fields(cfg))
    metrics: dict[str, Any] = run_evaluate(evaluation)["metrics"]
    return metrics


def score_deployed(model: Path, task: TaskData, cfg: ShrinkConfig, threads: int) -> dict[str, Any]:
    """Test metrics of the result as `cfg.runtime` runs it (int8 calibrated as bench calibrates it)."""
    return score_in_runtime(
        str(model),
        cfg.runtime,
        task,
        calibration=cfg.task if cfg.exported else None,
        threads=threads,
        max_length=cfg.max_seq_length,
        seed=cfg.seed,
    )


def _distill(model: str, start: Path, cfg: ShrinkConfig, overwrite: bool) -> dict[str, Any]:
    """`--distill_steps` of fine-tuning `start` with `model` as the teacher (soft labels, T = 2)."""
    finetune = FinetuneConfig(
        model=str(start),
        output_dir=cfg.output_dir / "distill",
        seed=cfg.seed,
        train=TrainConfig(
            max_steps=cfg.distill_steps,
            learning_rate=cfg.distill_learning_rate,
            warmup_ratio=0.1,
            save_steps=max(cfg.distill_steps, 1),
        ),
        distill=DistillConfig(teacher=model),
        **task_fields(cfg),
    )
    return run_finetune(finetune, overwrite=overwrite)


def _write(result: ShrinkResult, tokenizer: Any, target: Path) -> dict[str, Any]:
    """Save the folded model and slim it into `target` (replaced); returns `run_slim`'s report."""
    with tempfile.TemporaryDirectory(prefix=".folded-", dir=target.parent) as scratch:
        result.model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        return run_slim(scratch, target, overwrite=True, drop_layers=result.drop_layers)


def next_budget(attempts: list[dict[str, Any]], floor: float) -> float:
    """The budget expected to give the requested speed-up, from the attempts measured so far.

    Speed-up is taken as `budget ** -k` through the last two attempts (fixed costs make k < 1: halving
    the layers' budget does not halve the latency), so the next budget is `budget * ratio ** (1 / k)`;
    k = 1 after one attempt, or when the last two disagree in direction (noise). Never below `floor`.
    """
    last, k = attempts[-1], 1.0
    if len(attempts) > 1:
        previous = attempts[-2]
        budgets = math.log(previous["budget"] / last["budget"])
        speeds = math.log(last["measured_speedup"] / previous["measured_speedup"])
        if abs(budgets) > 1e-12 and speeds / budgets > 0:
            k = min(max(speeds / budgets, 0.25), 2.0)
    return float(max(last["budget"] * last["ratio"] ** (1 / k), floor))


def _keeps_everything(result: ShrinkResult) -> bool:
    return bool(result.keep_heads.all()) and bool(result.keep_neurons.all())


def run_shrink(model: str, cfg: ShrinkConfig, overwrite: bool = False) -> dict[str, Any]:
    """Shrink `model` as `cfg` asks; writes OUT (see the module doc) and returns the report."""
    wall = time.perf_counter()
    out = cfg.output_dir
    if (out / REPORT_FILE).exists() and not overwrite:
        raise PrunebertError(f"{out} already holds a shrunk model; pass --overwrite or choose another OUT")
    task = cfg.load(cfg.seed)
    if task.kind == "qa":
        raise PrunebertError("shrink handles classification and regression tasks; QA is not supported yet")
    loaded = load_model(model, head="classification", num_labels=task.num_labels)
    if loaded.new_head:
        raise PrunebertError(f"{model} has no trained classification head; fine-tune it first")
    threads = cfg.threads or torch.get_num_threads()
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        costs, budget, target = _budget(cfg, loaded.model.config, loaded.tokenizer, threads)
        batches = calibration_batches(task, loaded.tokenizer, cfg)
        settings = ShrinkSettings(damp=cfg.damp, scores=cfg.scores, rearrange=cfg.rearrange, tune=cfg.tune)
        result = shrink(loaded.model, batches, costs, budget, settings)
        if _keeps_everything(result):
            raise PrunebertError(
                f"the dense model already fits the budget ({result.dense_cost:.4g} <= {budget:.4g} "
                f"{costs.unit}); nothing to remove: ask for more"
            )
        out.mkdir(parents=True, exist_ok=True)
        first = out / ("zero-step" if cfg.distill_steps else "model")
        slim = _write(result, loaded.tokenizer, first)
        attempts: list[dict[str, Any]] = []
        kept: tuple[int, ShrinkResult, dict[str, Any], dict[str, Any]] | None = None  # closest so far
        while cfg.bench and cfg.speedup is not None:  # measured, not assumed: correct the budget
            measured = bench_shrunk(model, first, cfg, threads)
            ratio = measured["speedup"] / cfg.speedup
            attempts.append({"budget": budget, "measured_speedup": measured["speedup"], "ratio": ratio})
            if kept is None or abs(math.log(ratio)) < abs(math.log(attempts[kept[0]]["ratio"])):
                kept = (len(attempts) - 1, result, slim, measured)
            if abs(ratio - 1) <= cfg.speed_tolerance or len(attempts) > cfg.speed_retries:
                break
            budget = next_budget(attempts, costs.min_cost() * 1.02)
            fresh = load_model(model, head="classification", num_labels=task.num_labels).model
            candidate = shrink(fresh, batches, costs, budget, settings, grams=result.grams)
            if _keeps_everything(candidate):  # only dense is slower: keep the measured, faster model
                attempts[-1]["stopped"] = "a larger budget keeps the whole dense model"
                break
            result = candidate
            slim = _write(result, loaded.tokenizer, first)
        if kept is not None and kept[1] is not result:  # the last search overshot, or measured noise
            _, result, slim, measured = kept
            slim = _write(result, loaded.tokenizer, first)
        for index, attempt in enumerate(attempts):
            attempt["kept"] = kept is not None and index == kept[0]
    finally:
        torch.set_num_threads(previous)
    shrink_s = time.perf_counter() - wall
    report: dict[str, Any] = {
        "model": model,
        "output": str(out / "model"),
        "requested": {"speedup": cfg.speedup, "flops": cfg.flops, "runtime": cfg.runtime},
        "config": cfg.model_dump(mode="json"),
        "target": target,
        "choice": result.summary(),
        "attempts": attempts,
        "parameters": [slim["parameters_before"], slim["parameters_after"]],
        "shrink_seconds": shrink_s,
    }
    if cfg.evaluate:
        report["metrics"] = {"dense": _evaluate(model, cfg), "zero_step": _evaluate(str(first), cfg)}
    if cfg.distill_steps:
        distilled = _distill(model, first, cfg, overwrite)
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        shutil.copytree(distilled["model_dir"], out / "model")
        report.setdefault("metrics", {})["distilled"] = distilled["metrics"]
    if cfg.evaluate and cfg.runtime != "torch":  # the fast model's accuracy, not its fp32 twin's
        report["deployed"] = score_deployed(out / "model", task, cfg, threads)
    if cfg.bench and (cfg.distill_steps or not attempts):  # else the last attempt measured this model
        report["measured"] = bench_shrunk(model, out / "model", cfg, threads)
    elif attempts:
        report["measured"] = measured
    report["wall_seconds"] = time.perf_counter() - wall
    report["environment"] = environment(threads)
    write_json(out / REPORT_FILE, report)
    return report


def format_report(report: dict[str, Any]) -> str:
    """A few readable lines: what was asked, kept, predicted and measured."""
    choice, asked = report["choice"], report["requested"]
    goal = (
        f"{asked['speedup']:g}x in {asked['runtime']}" if asked["speedup"] else f"{asked['flops']:g} of FLOPs"
    )
    lines = [
        f"asked: {goal}; predicted {choice['predicted_ratio']:.2f}x fewer {choice['unit']}",
        f"heads kept per layer: {choice['heads_kept']}",
        f"FFN neurons kept per layer: {choice['neurons_kept']}",
        f"layers dropped: {choice['layers_dropped'] or 'none'}",
        f"parameters: {report['parameters'][0]:,} -> {report['parameters'][1]:,}",
    ]
    measured = report.get("measured")
    if measured:
        lines.append(
            f"measured: {measured['speedup']:.2f}x over dense torch fp32 ({asked['runtime']}; dense in it: "
            f"{measured['dense_runtime_speedup']:.2f}x)"
        )
    attempts = report.get("attempts", [])
    if len(attempts) > 1:
        steps = " -> ".join(f"{a['measured_speedup']:.2f}x" for a in attempts)
        lines.append(f"searched {len(attempts)} times against the measured speed-up: {steps}")
    for name, metrics in report.get("metrics", {}).items():
        lines.append(f"{name}: " + ", ".join(f"{s} {m}" for s, m in metrics.items()))
    deployed = report.get("deployed")
    if deployed:
        lines.append(f"in {deployed['runtime']}: {deployed['split']} {deployed['metrics']}")
    lines.append(f"written: {report['output']} ({report['wall_seconds']:.0f} s)")
    return "\n".join(lines)
