"""A latency table of this machine: what an encoder layer costs with h heads and n FFN neurons kept.

Measured, not assumed (ZipLM, Kurtic et al. 2023; Kwon et al. 2022's lookup tables): models of the real
architecture with random weights, every layer cut to the same widths by `prunebert.transforms.slim`, are
timed by `prunebert bench` (interleaved rounds, disturbed rounds dropped) in the requested runtime:

- heads grid: all L layers with h heads and the full FFN, h on a grid from 0 to H;
- neurons grid: all heads and n neurons, n on a grid from 0 to F;
- every layer empty (L layers, nothing kept) and one empty layer: a kept layer's fixed cost and the rest;
- the dense model in torch fp32 in the same run: the reference every speed-up is quoted against.

`LatencyTable.costs` turns this into `LayerCosts`: each grid made nondecreasing (`isotonic`: other load
on a shared machine only adds noise), attention(h) = (T(h, F) - T(0, F)) / L and
FFN(n) = (T(H, n) - T(H, 0)) / L, linearly interpolated between grid points (additive in the two, as
Kwon et al. assume), scaled so the dense model's prediction equals its measurement. Tables are cached as
JSON under `~/.cache/prunebert/latency/` (`$PRUNEBERT_CACHE/latency` if set), keyed by CPU name and
instruction sets (`prunebert.hardware`), runtime and its version, batch size, sequence length, threads,
grid and model shape, so a table measured on an AVX-512 VNNI machine is never used on an AVX2 one.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModel, AutoModelForSequenceClassification, PretrainedConfig

from prunebert.deploy.bench import BenchSettings, run_bench
from prunebert.hardware import cpu_features, cpu_name
from prunebert.io import write_json
from prunebert.shrink.search import LayerCosts
from prunebert.transforms.slim import SlimPlan, slim_model

__all__ = [
    "RUNTIMES",
    "LatencyTable",
    "TableSpec",
    "cache_root",
    "ffn_size",
    "grid",
    "isotonic",
    "latency_table",
    "table_key",
]

RUNTIMES = ("torch", "torch-bf16", "onnxruntime-int8", "openvino-int8")
_PACKAGES = {
    "torch": "torch",
    "torch-bf16": "torch",
    "onnxruntime-int8": "onnxruntime",
    "openvino-int8": "openvino",
}


@dataclass(frozen=True)
class TableSpec:
    """What a table is measured for: runtime, batch, sequence length, threads, grid points per axis."""

    runtime: str = "torch"
    batch_size: int = 1
    seq_len: int = 128
    threads: int = 1
    points: int = 7
    rounds: int = 4
    iters: int = 3
    calibration: str | None = None  # the int8 runtimes' calibration task (static int8, as deployed)


def cache_root() -> Path:
    """Where tables are kept: `$PRUNEBERT_CACHE/latency`, else `~/.cache/prunebert/latency`."""
    root = os.environ.get("PRUNEBERT_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "prunebert") / "latency"


def grid(total: int, points: int) -> list[int]:
    """`points` counts spread evenly from 0 to `total` (fewer if they coincide)."""
    return sorted({round(i * total / (points - 1)) for i in range(points)})


def ffn_size(config: PretrainedConfig) -> int:
    """FFN width of every layer (DistilBERT calls it hidden_dim)."""
    return int(getattr(config, "intermediate_size", None) or config.hidden_dim)


def _shape(config: PretrainedConfig) -> dict[str, Any]:
    return {
        "model_type": config.model_type,
        "architectures": list(config.architectures or []),
        "hidden_size": config.hidden_size,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": ffn_size(config),
        "num_hidden_layers": config.num_hidden_layers,
        "vocab_size": config.vocab_size,
    }


def table_key(config: PretrainedConfig, spec: TableSpec) -> dict[str, Any]:
    """Everything the measured latencies depend on; its hash names the cache file."""
    package = _PACKAGES[spec.runtime]
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = "not installed"
    return {
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "runtime": spec.runtime,
        "runtime_version": f"{package} {version}",
        "batch_size": spec.batch_size,
        "seq_len": spec.seq_len,
        "threads": spec.threads,
        "points": spec.points,
        "statistic": "min over rounds",
        "calibration": spec.calibration,
        "shape": _shape(config),
    }


def _cache_file(key: dict[str, Any], root: Path) -> Path:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return root / f"{key['runtime']}-b{key['batch_size']}-s{key['seq_len']}-t{key['threads']}-{digest}.json"


@dataclass
class LatencyTable:
    """Seconds per call of the grid models (see the module doc) and the dense torch fp32 reference."""

    key: dict[str, Any]
    head_grid: list[int]
    head_s: list[float]  # all layers: h heads, full FFN
    neuron_grid: list[int]
    neuron_s: list[float]  # all layers: all heads, n neurons
    empty_s: float  # all layers kept, nothing in them
    one_empty_s: float  # one layer, nothing in it
    baseline_s: float  # dense, torch fp32: the speed-up reference
    seconds: float  # how long measuring took

    @property
    def dense_s(self) -> float:
        """The dense model in this runtime (measured twice: the two grids' shared point)."""
        return (self.head_s[-1] + self.neuron_s[-1]) / 2

    def costs(self) -> LayerCosts:
        """Per-layer costs in seconds, interpolated over the grids and scaled to the dense measurement."""
        layers = self.key["shape"]["num_hidden_layers"]
        h_total, f_total = self.head_grid[-1], self.neuron_grid[-1]
        head_s, neuron_s = isotonic(self.head_s), isotonic(self.neuron_s)
        heads = _interpolate(self.head_grid, [(t - head_s[0]) / layers for t in head_s], h_total)
        neurons = _interpolate(self.neuron_grid, [(t - neuron_s[0]) / layers for t in neuron_s], f_total)
        layer = max(0.0, (self.empty_s - self.one_empty_s) / (layers - 1)) if layers > 1 else 0.0
        base = max(0.0, self.one_empty_s - layer)
        raw = LayerCosts(heads, neurons, layer, base, "s")
        scale = self.dense_s / raw.dense_cost(layers)
        return LayerCosts(heads * scale, neurons * scale, layer * scale, base * scale, "s")

    def to_json(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LatencyTable:
        """The table `to_json` wrote."""
        return cls(**data)


def isotonic(values: list[float]) -> list[float]:
    """The nondecreasing sequence closest in squared error (pool adjacent violators).

    A wider layer never costs less; where noise from other load says otherwise, the violating
    neighbours are averaged.
    """
    blocks: list[tuple[float, int]] = []  # (mean, count)
    for value in values:
        blocks.append((value, 1))
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, c1), (m2, c2) = blocks[-2], blocks[-1]
            blocks[-2:] = [((m1 * c1 + m2 * c2) / (c1 + c2), c1 + c2)]
    return [mean for mean, count in blocks for _ in range(count)]


def _interpolate(xs: list[int], ys: list[float], total: int) -> torch.Tensor:
    """Piecewise-linear values at 0..total through (xs, ys), never negative. (total + 1,)"""
    x = torch.tensor(xs, dtype=torch.float64)
    y = torch.tensor(ys, dtype=torch.float64).clamp_min(0)
    at = torch.arange(total + 1, dtype=torch.float64)
    right = torch.searchsorted(x, at).clamp(1, len(xs) - 1)
    x0, x1, y0, y1 = x[right - 1], x[right], y[right - 1], y[right]
    return y0 + (y1 - y0) * (at - x0) / (x1 - x0)


def _grid_model(
    config: PretrainedConfig, layers: int, heads: int, neurons: int, out: Path, tokenizer: Any
) -> None:
    """A random-weight model of the architecture, every layer cut to (heads, neurons), saved to `out`."""
    cfg = copy.deepcopy(config)
    cfg.num_hidden_layers = layers
    classifier = any(a.endswith("ForSequenceClassification") for a in config.architectures or [])
    model = (AutoModelForSequenceClassification if classifier else AutoModel).from_config(cfg)
    keep = {f"heads.{i}": list(range(heads)) for i in range(layers)}
    keep |= {f"neurons.{i}": list(range(neurons)) for i in range(layers)}
    totals = {f"heads.{i}": config.num_attention_heads for i in range(layers)}
    totals |= {f"neurons.{i}": ffn_size(config) for i in range(layers)}
    if heads < config.num_attention_heads or neurons < ffn_size(config):
        slim_model(model, SlimPlan(keep, totals))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def measure_table(config: PretrainedConfig, tokenizer: Any, spec: TableSpec) -> LatencyTable:
    """Build the grid models in a scratch directory and time them all in one `run_bench`."""
    start = time.perf_counter()
    layers, h_total, f_total = config.num_hidden_layers, config.num_attention_heads, ffn_size(config)
    head_grid, neuron_grid = grid(h_total, spec.points), grid(f_total, spec.points)
    points = [(f"h{h}", layers, h, f_total) for h in head_grid]
    points += [(f"n{n}", layers, h_total, n) for n in neuron_grid[:-1]]  # n = F is h = H's model
    points += [("empty", layers, 0, 0), ("one-empty", 1, 0, 0)]
    with tempfile.TemporaryDirectory(prefix="prunebert-latency-") as scratch:
        paths = {}
        for name, count, h, n in points:
            paths[name] = str(Path(scratch) / name)
            with torch.random.fork_rng():
                torch.manual_seed(0)
                _grid_model(config, count, h, n, Path(paths[name]), tokenizer)
        dense = paths[f"h{h_total}"]
        settings = BenchSettings(
            variants=(spec.runtime,),
            baseline=dense,
            batch_sizes=(spec.batch_size,),
            seq_len=spec.seq_len,
            rounds=spec.rounds,
            iters=spec.iters,
            warmup=1,
            threads=spec.threads,
            calibration=spec.calibration,
        )
        result = run_bench(list(paths.values()), settings)
    rows = result["results"][0]["runners"]
    # the fastest round: on a shared machine other load only ever adds time, so the minimum is the
    # closest to what the model itself costs (the speed-ups bench reports are per-round medians)
    latency = {row["model"]: row["latency_s"]["min"] for row in rows if row["role"] == "runner"}
    seconds = {name: latency[path] for name, path in paths.items()}
    baseline = rows[0]["latency_s"]["min"]
    if spec.runtime == "torch":  # the baseline and the dense grid point are one model, timed twice
        baseline = seconds[f"h{h_total}"] = min(baseline, seconds[f"h{h_total}"])
    return LatencyTable(
        key=table_key(config, spec),
        head_grid=head_grid,
        head_s=[seconds[f"h{h}"] for h in head_grid],
        neuron_grid=neuron_grid,
        neuron_s=[seconds[f"n{n}"] for n in neuron_grid[:-1]] + [seconds[f"h{h_total}"]],
        empty_s=seconds["empty"],
        one_empty_s=seconds["one-empty"],
        baseline_s=baseline,
        seconds=time.perf_counter() - start,
    )


def latency_table(
    config: PretrainedConfig, tokenizer: Any, spec: TableSpec, root: Path | None = None, refresh: bool = False
) -> tuple[LatencyTable, Path, bool]:
    """The cached table for this machine and `spec`, measured first if absent: (table, file, from cache)."""
    key = table_key(config, spec)
    path = _cache_file(key, root or cache_root())
    if path.is_file() and not refresh:
        try:
            table = LatencyTable.from_json(json.loads(path.read_text()))
            if table.key == key:
                return table, path, True
        except (ValueError, TypeError):  # damaged or from another version: measure again
            pass
    table = measure_table(config, tokenizer, spec)
    write_json(path, table.to_json())
    return table, path, False
