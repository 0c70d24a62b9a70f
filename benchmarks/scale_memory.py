"""Peak memory and step time of a pruning training step against the same dense step, BERT-base and -large.

Each (size, variant) runs in its own child process, so one measurement's allocations cannot hide in
another's freed-but-cached memory. A child builds a BERT classifier with random weights, takes one dense
warm-up step (AdamW state and gradients exist from then on: the baseline), then for a pruning variant
creates the `Pruner` (masks), makes the first mask update (scores, top-k) and trains `--steps` timed
steps, masks enforced as in a real run. Memory is resident-set size (RSS) from /proc/self/status: its
high-water mark VmHWM is reset before each phase (`clear_refs` 5), so each phase reports its own peak.
The exact bytes of masks and method state are counted from the tensors themselves.

    .venv/bin/python benchmarks/scale_memory.py           # bert-base and bert-large: run on an idle machine
    .venv/bin/python benchmarks/scale_memory.py --quick   # tiny shapes, seconds: checks the script only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification

from prunebert import Pruner, PruningConfig
from shapes import ENCODER_SHAPES  # benchmarks/shapes.py: the script's folder is on sys.path

SIZES = {name: ENCODER_SHAPES[name] for name in ("tiny", "bert-base", "bert-large")}
VARIANTS = ("dense", "magnitude", "movement")
VOCAB_SIZE = 30522
GOAL_BYTES_PER_PRUNED_WEIGHT = 1.0
MiB = 2**20
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "scale_memory.json"


# -- memory probes (Linux) ---------------------------------------------------------------------------
def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def rss_mib() -> float:
    """Current resident-set size."""
    return _status_kib("VmRSS") / 1024


def peak_mib() -> float:
    """Resident-set high-water mark since the last `reset_peak`."""
    return _status_kib("VmHWM") / 1024


def reset_peak() -> None:
    """Restart the high-water mark at the current RSS (Linux >= 4.0: write 5 to clear_refs)."""
    Path("/proc/self/clear_refs").write_text("5")


# -- one child: one (size, variant) ------------------------------------------------------------------
def build(size: str, seed: int = 0) -> nn.Module:
    """A BERT classifier of the named shape with seeded random weights (nothing is downloaded)."""
    config = AutoConfig.for_model("bert", vocab_size=VOCAB_SIZE, num_labels=2, **SIZES[size])
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config)


def pruning_config(method: str, sparsity: float) -> PruningConfig:
    """Prune once at step 0, then keep the masks (enforced every step) for the timed steps."""
    return PruningConfig(method=method, sparsity=sparsity, schedule="oneshot", start_fraction=0.0)


def train_step(
    model: nn.Module, batch: dict[str, torch.Tensor], opt: torch.optim.Optimizer, pruner: Pruner | None
) -> None:
    """One step as `PruningCallback` drives it: backward (gradient-masking hooks; none for movement),
    clip, method reads the gradients (movement scores, then the pruner masks them), AdamW, method
    post-step and re-zeroing."""
    model(**batch).loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    if pruner is not None:
        pruner.after_backward()
    opt.step()
    if pruner is not None:
        pruner.after_optimizer_step(opt)
    opt.zero_grad(set_to_none=False)  # gradients stay allocated, as in the Trainer


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes held by `tensors` (numel x element size)."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def pruner_memory(pruner: Pruner) -> dict[str, Any]:
    """Exact bytes of the masks and the method's state, per target and per pruned weight."""
    targets = sum(w.numel() for w in pruner.weights().values())
    pruned = targets - sum(int(m.sum()) for m in pruner.masks.values())
    masks, state = pruner.masks.nbytes(), tensor_bytes(pruner.method.state_dict())
    return {
        "target_weights": targets,
        "pruned_weights": pruned,
        "mask_storage": "1 bit per target weight (prunebert.masks.PackedMasks)",
        "mask_bytes": masks,
        "method_state_bytes": state,
        "mask_bytes_per_target_weight": masks / targets,
        "mask_bytes_per_pruned_weight": masks / max(1, pruned),
        "method_state_bytes_per_target_weight": state / targets,
    }


def child(
    size: str, variant: str, batch_size: int, seq_len: int, steps: int, sparsity: float
) -> dict[str, Any]:
    """Measure one variant; returns the JSON record."""
    model = build(size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    g = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, VOCAB_SIZE, (batch_size, seq_len), generator=g),
        "labels": torch.randint(0, 2, (batch_size,), generator=g),
    }
    train_step(model, batch, opt, None)  # warm-up: gradients and AdamW moments now exist
    record: dict[str, Any] = {"size": size, "variant": variant, "baseline_rss_mib": rss_mib()}
    pruner = None
    if variant != "dense":
        before = rss_mib()
        pruner = Pruner(model, pruning_config(variant, sparsity))
        pruner.start(steps + 1)
        record["pruner_alloc_rss_mib"] = rss_mib() - before
        reset_peak()
        update_base = rss_mib()
        pruner.update(0, opt)  # the mask update: scores, top-k, optimizer moments of pruned entries cleared
        record["mask_update_peak_over_rss_mib"] = peak_mib() - update_base
    times = []
    reset_peak()
    for step in range(steps):
        start = time.perf_counter()
        train_step(model, batch, opt, pruner)
        if pruner is not None:
            pruner.update(step + 1, opt)
        times.append(time.perf_counter() - start)
    record["step_peak_rss_mib"] = peak_mib()
    record["step_s"] = {"all": times, "median": statistics.median(times), "min": min(times)}
    return record | (pruner_memory(pruner) if pruner is not None else {})


# -- the parent: run every child, compare with dense, write the JSON ---------------------------------
def run_child(args: argparse.Namespace, size: str, variant: str) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; returns its record."""
    cmd = [sys.executable, __file__, "--child", size, variant, "--batch-size", str(args.batch_size)]
    cmd += ["--seq-len", str(args.seq_len), "--steps", str(args.steps), "--threads", str(args.threads)]
    cmd += ["--sparsity", str(args.sparsity)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    record: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return record


def compare(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size: each pruning variant's extra peak memory and step time against dense."""
    out: dict[str, Any] = {}
    for size in dict.fromkeys(r["size"] for r in records):
        dense = next(r for r in records if r["size"] == size and r["variant"] == "dense")
        for r in (r for r in records if r["size"] == size and r["variant"] != "dense"):
            # each process against its own warm-up baseline: differences between processes cancel
            extra = (r["step_peak_rss_mib"] - r["baseline_rss_mib"]) - (
                dense["step_peak_rss_mib"] - dense["baseline_rss_mib"]
            )
            out[f"{size}/{r['variant']}"] = {
                "extra_step_peak_rss_mib": extra,
                "extra_step_peak_bytes_per_pruned_weight": extra * MiB / max(1, r["pruned_weights"]),
                "mask_bytes_per_pruned_weight": r["mask_bytes_per_pruned_weight"],
                "mask_goal_met": r["mask_bytes_per_pruned_weight"] <= GOAL_BYTES_PER_PRUNED_WEIGHT,
                "mask_bytes_per_target_weight": r["mask_bytes_per_target_weight"],
                "method_state_bytes_per_target_weight": r["method_state_bytes_per_target_weight"],
                "step_time_overhead_median": r["step_s"]["median"] / dense["step_s"]["median"] - 1,
                "step_time_overhead_min": r["step_s"]["min"] / dense["step_s"]["min"] - 1,
            }
    return out


def environment(threads: int) -> dict[str, Any]:
    """Machine and software facts the numbers depend on."""
    return {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_num_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def main() -> None:
    """Parse options; as parent run every (size, variant) child and write the JSON."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--sizes", nargs="+", default=["bert-base", "bert-large"], choices=sorted(SIZES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (after the warm-up)")
    parser.add_argument("--sparsity", type=float, default=0.9, help="fraction of target weights pruned")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, 2 steps: a smoke test")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "VARIANT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(*args.child, args.batch_size, args.seq_len, args.steps, args.sparsity)))
        return
    if args.quick:
        args.sizes, args.steps, args.batch_size, args.seq_len = ["tiny"], 2, 2, 32
        if args.output == DEFAULT_OUTPUT:  # a smoke test's numbers are not results
            args.output = Path(tempfile.gettempdir()) / "scale_memory_quick.json"
    if "dense" not in args.variants:
        args.variants = ["dense", *args.variants]
    env_before = environment(args.threads)
    records = [run_child(args, size, variant) for size in args.sizes for variant in args.variants]
    result = {
        "benchmark": "scale_memory",
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {
            k: getattr(args, k) for k in ("sizes", "variants", "batch_size", "seq_len", "steps", "sparsity")
        },
        "goal_bytes_per_pruned_weight": GOAL_BYTES_PER_PRUNED_WEIGHT,
        "environment": env_before | {"load_average_after": os.getloadavg()},
        "comparison": compare(records),
        "runs": records,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["comparison"], indent=2))


if __name__ == "__main__":
    main()
