"""`prunebert bench`: latency of models and their runtimes as ratios to one dense baseline, from one run.

The protocol, per batch size:
1. build every runner (model x variant) and the baseline (the dense torch fp32 model of `--baseline`,
   default the first MODEL), give each `warmup` untimed calls;
2. `rounds` rounds; in each, every runner makes one untimed call (the previous runner evicted its caches)
   then `iters` timed calls on the same seeded input, runners in list order in even rounds and reversed
   in odd ones, so a slow drift in machine load hits all;
3. a round whose baseline latency is more than `disturbance` (default 20%) away from the (low)
   median baseline latency was disturbed by other load: it is discarded for every runner (and counted);
4. per runner: latency min/median/max over kept rounds, and the speedup `baseline / runner` computed
   within each kept round (so both come from the same moment), reported as min/median/max.
Static facts per model: parameters, nonzero parameters, analytic encoder FLOPs, weight bytes on disk.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import ConfigDict, Field
from torch import nn

from prunebert.deploy.bench_runners import (
    DEFAULT_VARIANTS,
    VARIANTS,
    BuiltRunner,
    RunnerFactory,
    RunnerSettings,
    check_variants,
)
from prunebert.deploy.inference import weight_bytes
from prunebert.deploy.torch_variants import CSRSettings
from prunebert.errors import PrunebertError
from prunebert.hardware import environment
from prunebert.recipes import StrictModel
from prunebert.targets import ENCODER_ROLES, role_modules
from prunebert.transforms.lowrank import matmul_size

__all__ = ["BenchSettings", "encoder_flops", "format_bench", "run_bench", "summarize_rounds"]

BASELINE_VARIANT = "torch"


class BenchSettings(StrictModel):
    """What `run_bench` measures and how; every field is a `prunebert bench` option."""

    model_config = ConfigDict(frozen=True)

    variants: tuple[str, ...] | None = Field(
        None,
        description=f"what to time, comma-separated from {', '.join(VARIANTS)} (null: "
        f"{', '.join(DEFAULT_VARIANTS)} where installed)",
    )
    baseline: str | None = Field(
        None, description="dense model whose torch fp32 latency is 1.0 (null: the first MODEL)"
    )
    batch_sizes: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        (1, 8), min_length=1, description="batch sizes to time, comma-separated"
    )
    seq_len: int = Field(128, ge=1, description="tokens per sequence")
    rounds: int = Field(5, ge=1, description="interleaved rounds")
    iters: int = Field(10, ge=1, description="timed calls per runner per round")
    warmup: int = Field(2, ge=0, description="untimed calls per runner before round 1")
    threads: int | None = Field(None, ge=1, description="threads to run with (null: torch.get_num_threads())")
    disturbance: float = Field(
        0.2, gt=0, description="discard rounds whose baseline strays more than this fraction from its median"
    )
    csr: CSRSettings = Field(default_factory=CSRSettings, description="how torch-csr variants pick layers")
    calibration: str | None = Field(
        None, description="task to calibrate int8 exports on (null: data-free int8)"
    )
    openvino_precision: Literal["f32", "bf16"] = Field("f32", description="OpenVINO's inference precision")
    openvino_sparse_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="OpenVINO's sparse int8 kernels for layers at least this sparse (null: off; AMX CPUs)",
    )
    seed: int = Field(0, description="seed of the timed inputs and the calibration sample")


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize_rounds(series: list[list[float]], disturbance: float) -> dict[str, Any]:
    """Seconds per call, one list per runner (`series[0]` the baseline), one entry per round -> stats.

    Rounds whose baseline strays more than `disturbance` from its (low) median are dropped for every
    runner; each runner's speedup is `baseline / runner` within each kept round.
    """
    baseline = series[0]
    center = statistics.median_low(baseline)  # a measured round, so at least that one is kept
    kept = [r for r, t in enumerate(baseline) if abs(t - center) <= disturbance * center]
    runners = []
    for times in series:
        ratios = [baseline[r] / times[r] for r in kept]
        runners.append(
            {
                "latency_s": _stats([times[r] for r in kept]),
                "speedup": _stats(ratios),
                "speedup_of_medians": statistics.median(baseline[r] for r in kept)
                / statistics.median(times[r] for r in kept),
                "round_latency_s": times,
            }
        )
    discarded = [r for r in range(len(baseline)) if r not in kept]
    return {"rounds": len(baseline), "discarded_rounds": discarded, "runners": runners}


def _time(runner: BuiltRunner, inputs: dict[str, np.ndarray], iters: int) -> float:
    """Seconds per call over `iters` calls, after one untimed call (the last runner evicted the caches)."""
    runner.run(inputs)
    start = time.perf_counter()
    for _ in range(iters):
        runner.run(inputs)
    return (time.perf_counter() - start) / iters


def _measure_batch(
    factory: RunnerFactory, pairs: list[tuple[str, str]], batch: int, settings: BenchSettings
) -> dict[str, Any]:
    """All rounds of one batch size; `pairs[0]` is the baseline."""
    runners = [factory.build(spec, variant, batch) for spec, variant in pairs]
    inputs = [factory.inputs(spec, batch) for spec, _ in pairs]
    diffs = []
    for runner, x, (spec, _) in zip(runners, inputs, pairs, strict=True):
        reference = factory.build(spec, BASELINE_VARIANT, batch).run(x)
        diffs.append(float(np.abs(runner.run(x) - reference).max()))
        for _ in range(settings.warmup):
            runner.run(x)
    times: list[list[float]] = [[] for _ in runners]
    for round_index in range(settings.rounds):
        order = list(range(len(runners)))
        for i in order if round_index % 2 == 0 else reversed(order):
            times[i].append(_time(runners[i], inputs[i], settings.iters))
    summary = summarize_rounds(times, settings.disturbance)
    rows = []
    for i, ((spec, variant), runner, stats) in enumerate(
        zip(pairs, runners, summary["runners"], strict=True)
    ):
        role = "baseline" if i == 0 else "runner"
        rows.append(
            {"model": spec, "variant": variant, "role": role, **stats, "max_abs_diff_vs_torch_fp32": diffs[i]}
            | {"info": runner.info}
        )
    return {"batch_size": batch, "seq_len": settings.seq_len, **summary, "runners": rows}


def encoder_flops(model: nn.Module, seq_len: int) -> dict[str, int] | None:
    """Multiply-adds x 2 of one sequence through the encoder's matmuls: dense, and counting nonzero weights.

    Linears: 2 x in x out per token (nonzero: 2 x nnz(W) per token); factorised and split ones
    (`prunebert.transforms.lowrank`) count their factors. Attention: Q K^T and A V cost
    2 x seq x seq x (heads x head_dim) each per layer, read from the query/value projections' widths, so
    slimmed layers of different shapes count correctly. None if the model has no known encoder roles.
    """
    try:
        modules = role_modules(model, ENCODER_ROLES)
    except PrunebertError:
        return None
    dense = nonzero = 0
    for target, module in modules:
        size = matmul_size(module)
        if size is None:
            continue
        weights, nonzero_weights, width = size
        dense += 2 * weights * seq_len
        nonzero += 2 * nonzero_weights * seq_len
        if target.role in ("query", "value"):
            attention = 2 * seq_len * seq_len * width
            dense, nonzero = dense + attention, nonzero + attention
    return {"dense": dense, "nonzero_weights": nonzero} if modules else None


def _model_facts(factory: RunnerFactory, spec: str, seq_len: int) -> dict[str, Any]:
    model = factory.model(spec).module
    params = list(model.parameters())
    return {
        "params": sum(p.numel() for p in params),
        "nonzero_params": sum(int((p != 0).sum()) for p in params),
        "flops_per_sequence": encoder_flops(factory.model(spec).module.model, seq_len),
        "weight_bytes": weight_bytes(spec),
    }


def run_bench(models: list[str], settings: BenchSettings) -> dict[str, Any]:
    """Measure every model x variant against the baseline, batch size by batch size; returns the JSON."""
    if not models:
        raise PrunebertError("pass at least one MODEL to bench")
    explicit = settings.variants is not None
    variants, skipped = check_variants(list(settings.variants or DEFAULT_VARIANTS), explicit)
    baseline = settings.baseline or models[0]
    # the baseline again as a runner of its own: its speedup (~1) shows the measurement's noise
    pairs = [(baseline, BASELINE_VARIANT)] + [(m, v) for m in models for v in variants]
    threads = settings.threads or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    runner_settings = RunnerSettings(
        threads,
        settings.seq_len,
        settings.csr,
        settings.calibration,
        settings.openvino_precision,
        settings.openvino_sparse_rate,
        settings.seed,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="prunebert-bench-") as scratch:
            factory = RunnerFactory(runner_settings, variants, Path(scratch))
            results = [_measure_batch(factory, pairs, b, settings) for b in settings.batch_sizes]
            facts = {
                spec: _model_facts(factory, spec, settings.seq_len)
                for spec in dict.fromkeys(s for s, _ in pairs)
            }
    finally:
        torch.set_num_threads(previous_threads)
    return {
        "baseline": {"model": baseline, "variant": BASELINE_VARIANT},
        "models": facts,
        "results": results,
        "skipped": skipped,
        "settings": {**settings.model_dump(mode="json"), "variants": variants},
        "environment": {
            **environment(threads),
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
        },
    }


def _runner_line(row: dict[str, Any], labels: dict[str, str]) -> str:
    s = row["speedup"]
    variant = row["variant"] + (" (baseline)" if row["role"] == "baseline" else "")
    name = _short(labels.get(row["model"], row["model"]))
    return (
        f"{name:<36} {variant:<18} {row['latency_s']['median'] * 1e3:>10.2f} "
        f"{s['median']:>7.2f}x {s['min']:>5.2f}-{s['max']:<6.2f} {row['max_abs_diff_vs_torch_fp32']:>9.1e}"
    )


def _model_line(spec: str, facts: dict[str, Any], labels: dict[str, str]) -> str:
    flops = facts["flops_per_sequence"]
    gflops = f"{flops['dense'] / 1e9:.3f}" if flops else "n/a"
    size = f"{facts['weight_bytes'] / 1e6:.1f}" if facts["weight_bytes"] is not None else "n/a"
    name = _short(labels.get(spec, spec))
    return f"{name:<36} {facts['params']:>12,} {facts['nonzero_params']:>12,} {gflops:>11} {size:>11}"


def format_bench(result: dict[str, Any], labels: dict[str, str] | None = None) -> str:
    """A readable table per batch size: latency, speedup over the baseline, size and FLOPs.

    `labels` names models in place of their paths.
    """
    labels = labels or {}
    baseline = labels.get(result["baseline"]["model"], result["baseline"]["model"])
    lines = [f"baseline: {baseline} [torch fp32 eager]; speedup = baseline / runner within each round"]
    header = (
        f"{'model':<36} {'variant':<18} {'median ms':>10} {'speedup':>8} {'(min-max)':>12} {'max|diff|':>9}"
    )
    for block in result["results"]:
        kept = block["rounds"] - len(block["discarded_rounds"])
        lines += [
            "",
            f"batch {block['batch_size']} x seq {block['seq_len']}: {kept}/{block['rounds']} rounds kept "
            f"({len(block['discarded_rounds'])} discarded as disturbed)",
            header,
            *(_runner_line(row, labels) for row in block["runners"]),
        ]
    lines += ["", f"{'model':<36} {'params':>12} {'nonzero':>12} {'GFLOPs/seq':>11} {'MB on disk':>11}"]
    lines += [_model_line(spec, facts, labels) for spec, facts in result["models"].items()]
    lines += [f"skipped {skip['variant']}: {skip['reason']}" for skip in result["skipped"]]
    return "\n".join(lines)


def _short(spec: str) -> str:
    return spec if len(spec) <= 36 else "..." + spec[-33:]
