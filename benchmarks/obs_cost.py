"""Memory and time of one oBERT (`obs`) mask update on all-MiniLM-L6-v2's shapes, random weights and data.

One process builds a BERT classifier of the named shape with seeded random weights (nothing is downloaded),
then makes one mask update from 0 to `--sparsity` as the pruner does it in training: `--num-grads`
forward/backward passes on random mini-batches (`--batch-size` x `--seq-len` tokens), each gradient folded
into the block Fisher, the inversion, the scores and global top-k, and the OBS update of the survivors.
Each phase is timed; the forward/backward passes alone are timed first, so the Fisher work is the rest.
Memory is the resident-set high-water mark during the update over the RSS before it (`clear_refs` 5), and
the exact bytes of the block Fisher computed from the shapes. Timings depend on the threads: run with

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 .venv/bin/python benchmarks/obs_cost.py           # ~2-3 min
    .venv/bin/python benchmarks/obs_cost.py --shape tiny --num-grads 8 --output /tmp/o.json  # seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification

from prunebert import PruningConfig
from prunebert.hardware import cpu_name
from prunebert.methods import obs
from prunebert.pruner import Pruner
from prunebert.sampling import GradientSampler
from scale_memory import peak_mib, reset_peak, rss_mib  # benchmarks/ is on sys.path
from shapes import ENCODER_SHAPES

VOCAB_SIZE = 30522
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "obs_cost.json"


def timed(table: dict[str, float], key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, adding its wall time to `table[key]` at every call."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            table[key] += time.perf_counter() - start

    return wrapper


def batches(n: int, batch_size: int, seq_len: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(1000, VOCAB_SIZE, (batch_size, seq_len), generator=g) for _ in range(n)]
    return [{"input_ids": x, "labels": x[:, 0] % 2} for x in ids]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    config = AutoConfig.for_model("bert", vocab_size=VOCAB_SIZE, num_labels=2, **ENCODER_SHAPES[args.shape])
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config)
    options = {"num_grads": args.num_grads, "block_size": args.block_size, "grad_batch_size": args.batch_size}
    pruning = PruningConfig(method="obs", sparsity=args.sparsity, schedule="oneshot", options=options)
    pruner = Pruner(model, pruning)
    sampler = GradientSampler.from_batches(batches(min(args.num_grads, 16), args.batch_size, args.seq_len))
    pruner.gradient_sampler = sampler
    pruner.start(1)  # the one-shot schedule: prune to the target at step 0

    start = time.perf_counter()
    for _ in sampler.backwards(model, args.num_grads, None, seed=0):
        pass
    forward_backward = time.perf_counter() - start

    phases: dict[str, float] = defaultdict(float)
    method = pruner.method
    assert isinstance(method, obs.ObsPruning)
    method.observe_gradients = timed(phases, "fisher_accumulate", method.observe_gradients)  # type: ignore[method-assign]
    method._inverses = timed(phases, "fisher_invert", method._inverses)  # type: ignore[method-assign]
    method.scores = timed(phases, "scores_incl_invert", method.scores)  # type: ignore[method-assign]
    obs.obs_update = timed(phases, "obs_update", obs.obs_update)
    before = rss_mib()
    reset_peak()
    start = time.perf_counter()
    pruner.update(0)
    total = time.perf_counter() - start
    peak = peak_mib()

    targets = sum(w.numel() for w in pruner.weights().values())
    blocks = sum(-(-w.numel() // args.block_size) for w in pruner.weights().values())
    fisher_bytes = blocks * args.block_size**2 * 4
    return {
        "shape": args.shape,
        "sizes": ENCODER_SHAPES[args.shape],
        "target_weights": targets,
        "block_size": args.block_size,
        "blocks": blocks,
        "fisher_bytes": fisher_bytes,
        "fisher_gb": round(fisher_bytes / 1e9, 3),
        "num_grads": args.num_grads,
        "batch": [args.batch_size, args.seq_len],
        "sparsity": args.sparsity,
        "reached_sparsity": round(pruner.overall_sparsity(), 4),
        "seconds": {
            "update_total": round(total, 2),
            "forward_backward_alone": round(forward_backward, 2),
            "forward_backward_per_gradient": round(forward_backward / args.num_grads, 3),
            **{k: round(v, 2) for k, v in phases.items()},
            "fisher_accumulate_per_gradient": round(phases["fisher_accumulate"] / args.num_grads, 3),
        },
        "rss_before_mib": round(before),
        "rss_peak_during_update_mib": round(peak),
        "rss_added_by_update_mib": round(peak - before),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="minilm", choices=sorted(ENCODER_SHAPES))
    parser.add_argument("--num-grads", type=int, default=64)
    parser.add_argument("--block-size", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args()
    result = {
        "command": " ".join(["python", *sys.argv]),
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cpu": platform.processor() or platform.machine(),
        "cpu_model": cpu_name(),
        "threads": torch.get_num_threads(),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        **measure(args),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
