"""Training-step time of a stock HF Trainer with `PruningCallback` against the same dense step, in one run.

Dense and pruned runs alternate (dense, pruned, dense, pruned, ...) so drift in machine load hits both
alike. Every optimizer step is timed from `on_step_begin` to `on_step_end` (forward, backward, clipping,
optimizer step and the pruner's work, mask updates included); the first steps of each run are warm-up.

    .venv/bin/python benchmarks/callback_overhead.py            # MiniLM-shaped BERT, ~5 min on 2 cores
    .venv/bin/python benchmarks/callback_overhead.py --size bert-base --rounds 2
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn
from torch.utils.data import Dataset
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from prunebert import Pruner, PruningCallback, PruningConfig
from prunebert.hardware import cpu_name
from shapes import ENCODER_SHAPES  # benchmarks/shapes.py: the script's folder is on sys.path

SIZES = {name: ENCODER_SHAPES[name] for name in ("minilm", "bert-base")}
VOCAB_SIZE = 30522
MAX_POSITIONS = 512
WARMUP_STEPS = 3
GOAL = 0.05
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "callback_overhead.json"


def pruning_config() -> PruningConfig:
    """The pruning whose cost is measured: gradual magnitude pruning to 90%, masks updated every 10 steps."""
    return PruningConfig(method="magnitude", sparsity=0.9, schedule="cubic", end_fraction=0.8, frequency=10)


def build_model(size: str, seed: int) -> nn.Module:
    """A BERT classifier of the named shape with seeded random weights (nothing is downloaded)."""
    config = AutoConfig.for_model(
        "bert", vocab_size=VOCAB_SIZE, max_position_embeddings=MAX_POSITIONS, num_labels=2, **SIZES[size]
    )
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(config)


class SyntheticTokens(Dataset):
    """Random token ids and labels, fixed by `seed`."""

    def __init__(self, samples: int, seq_len: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(0, VOCAB_SIZE, (samples, seq_len), generator=generator)  # (N, T)
        self.labels = torch.randint(0, 2, (samples,), generator=generator)  # (N,)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.input_ids[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": self.labels[index]}


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step, `on_step_begin` to `on_step_end`; register it last."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Start the clock before the forward pass."""
        self._start = time.perf_counter()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Stop the clock after every earlier callback's `on_step_end` (the pruner's mask update)."""
        self.seconds.append(time.perf_counter() - self._start)


def training_args(output_dir: str, steps: int, batch_size: int, seed: int) -> TrainingArguments:
    """A stock CPU Trainer setup that saves, logs and reports nothing inside the timed window."""
    return TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=10 * steps,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=seed,
    )


def run_once(pruned: bool, opts: argparse.Namespace) -> dict[str, Any]:
    """Train a fresh model for `opts.steps` steps, dense or with `PruningCallback`; return its step times."""
    model = build_model(opts.size, opts.seed)
    data = SyntheticTokens(opts.steps * opts.batch_size, opts.seq_len, opts.seed)
    timer = StepTimer()
    pruner = Pruner(model, pruning_config()) if pruned else None
    callbacks: list[TrainerCallback] = [PruningCallback(pruner)] if pruner is not None else []
    gc.collect()
    with tempfile.TemporaryDirectory() as tmp:
        args = training_args(tmp, opts.steps, opts.batch_size, opts.seed)
        trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[*callbacks, timer])
        trainer.pop_callback(PrinterCallback)  # keep the table readable: no per-run metrics dict
        trainer.train()
    result: dict[str, Any] = {"config": "pruned" if pruned else "dense", "step_seconds": timer.seconds}
    if pruner is not None:
        result["mask_update_steps"] = [step for step, _ in pruner.history if step > 0]
        result["final_sparsity"] = round(pruner.overall_sparsity(), 4)
    return result


def describe(seconds: list[float]) -> dict[str, float]:
    """min / median / mean / max of step times, and how many steps they cover."""
    return {
        "steps": len(seconds),
        "min": min(seconds),
        "median": statistics.median(seconds),
        "mean": statistics.fmean(seconds),
        "max": max(seconds),
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per configuration, the statistics of every kept (post-warm-up) step over all rounds."""
    kept: dict[str, list[float]] = {"dense": [], "pruned": []}
    for run in runs:
        kept[run["config"]].extend(run["step_seconds"][WARMUP_STEPS:])
    return {name: describe(seconds) for name, seconds in kept.items()}


def environment() -> dict[str, Any]:
    """The machine and library versions the numbers belong to."""
    return {
        "cpu_model": cpu_name() or "unknown",
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "loadavg_start": list(os.getloadavg()),
    }


def print_table(summary: dict[str, dict[str, float]], overhead: dict[str, float]) -> None:
    """A short readable table of the step times and the overhead."""
    row = "{:<8} {:>5} {:>8} {:>9} {:>8} {:>8}"
    print(row.format("config", "steps", "min s", "median s", "mean s", "max s"))
    for name, s in summary.items():
        stats = [f"{s[k]:.4f}" for k in ("min", "median", "mean", "max")]
        print(row.format(name, s["steps"], *stats))
    print(f"overhead: median {overhead['median']:+.2%}, min {overhead['min']:+.2%} (goal <= {GOAL:.0%})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="minilm", help="encoder shape")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="dense+pruned pairs, interleaved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="results JSON")
    opts = parser.parse_args(argv)
    if opts.steps <= WARMUP_STEPS:
        parser.error(f"--steps must exceed the {WARMUP_STEPS} warm-up steps")
    return opts


def main(argv: list[str] | None = None) -> None:
    """Run the interleaved rounds, print the table and write the results JSON."""
    opts = parse_args(argv)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    env = environment()
    runs = []
    for round_index in range(opts.rounds):
        for pruned in (False, True):
            run = run_once(pruned, opts) | {"round": round_index}
            median = statistics.median(run["step_seconds"][WARMUP_STEPS:])
            print(f"round {round_index} {run['config']:<6} median step {median:.4f} s", flush=True)
            runs.append(run)
    env["loadavg_end"] = list(os.getloadavg())
    summary = summarize(runs)
    overhead = {stat: summary["pruned"][stat] / summary["dense"][stat] - 1.0 for stat in ("median", "min")}
    print_table(summary, overhead)
    results = {
        "benchmark": "callback_overhead",
        "command": shlex.join([sys.executable, *sys.argv]),
        "timestamp_utc": started,
        "environment": env,
        "settings": {
            "size": opts.size,
            "model": SIZES[opts.size] | {"vocab_size": VOCAB_SIZE, "max_position_embeddings": MAX_POSITIONS},
            "batch_size": opts.batch_size,
            "seq_len": opts.seq_len,
            "steps": opts.steps,
            "rounds": opts.rounds,
            "warmup_steps_dropped": WARMUP_STEPS,
            "seed": opts.seed,
            "pruning": pruning_config().model_dump(),
        },
        "summary": summary,
        "overhead": overhead,
        "goal": GOAL,
        "within_goal": overhead["median"] <= GOAL,
        "runs": runs,
    }
    opts.output.parent.mkdir(parents=True, exist_ok=True)
    opts.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {opts.output}")


if __name__ == "__main__":
    main()
