"""Training speed of the stages' CPU paths against fp32 (today's default), in the same run; their accuracy.

Speed: minilm-l6 fine-tuned on the real data of each task (the stage's own tokenisation, length grouping,
collator, TrainingArguments and Trainer), each configuration timed over the same optimizer steps after a
few warm-up steps; configurations alternate within each round, and the speed-up is the median over rounds
of the per-round ratio to fp32 at the default thread count (so load that changes between rounds cancels).

Accuracy (--accuracy): full dense fine-tunes (3 epochs, whole training split) in fp32 and in each faster
configuration, seeds 0 and 1: test accuracy per seed, so a difference can be read against the seed spread.

    .venv/bin/python benchmarks/train_speed.py                 # speed, both tasks (~30 min, a quiet machine)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_speed.py --part accuracy --configs fp32 auto
        # 4 full fine-tunes of rotten-tomatoes (~1 h on one core; timing-free, so it may share the machine)
        # into results/train_speed_accuracy.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback

from prunebert.hardware import cpu_features, cpu_name
from prunebert.models import load_model
from prunebert.stages.common import mean_loss_per_batch, resolve_precision, training_arguments
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.runner import run_or_reuse
from results_table import write_results  # benchmarks/results_table.py: the script's folder is on sys.path

ROOT = Path(__file__).resolve().parent
#: name -> (precision, torch threads or 0 for torch's default, extra: "" | "fused" | "compile")
CONFIGS: dict[str, tuple[str, int, str]] = {
    "fp32": ("fp32", 0, ""),
    "auto": ("auto", 0, ""),
    "fp32-1thread": ("fp32", 1, ""),
    "auto-1thread": ("auto", 1, ""),
    # tried, not adopted (opt in with --configs): the fused AdamW kernel, torch.compile of the forward
    "auto-fused": ("auto", 0, "fused"),
    "auto-compile": ("auto", 0, "compile"),
}
DEFAULT_CONFIGS = ("fp32", "auto", "fp32-1thread", "auto-1thread")
BASELINE = "fp32"


class StepTimer(TrainerCallback):
    """Wall time of the optimizer steps after the first `warmup` ones."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end, self.steps = warmup, 0.0, 0.0, 0

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Start the clock after the warm-up steps, stop it at every later step."""
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        elif state.global_step > self.warmup:
            self.end, self.steps = time.perf_counter(), state.global_step - self.warmup


def steps_per_second(
    task: str, precision: str, threads: int, steps: int, warmup: int, extra: str = ""
) -> float:
    """Optimizer steps per second of a dense fine-tune of minilm-l6 on `task`, as the stage trains it;
    `extra`: "fused" uses torch's fused AdamW, "compile" runs the forward through `torch.compile` (its
    compilation falls in the warm-up steps, recompilations for new lengths in the timed ones)."""
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        cfg = FinetuneConfig.model_validate(
            {
                "task": task,
                "train": {"max_steps": steps + warmup, "precision": precision, "save_steps": 10**6},
            }
        )
        data = cfg.load(cfg.seed, None)
        loaded = load_model("minilm-l6", head="classification", num_labels=data.num_labels)
        timer = StepTimer(warmup)
        if extra == "compile":
            loaded.model.forward = torch.compile(loaded.model.forward, dynamic=True)  # type: ignore[method-assign]
        with tempfile.TemporaryDirectory() as out:
            args = training_arguments(cfg.train, Path(out), cfg.seed)
            if extra == "fused":
                args = dataclasses.replace(args, optim="adamw_torch_fused")
            trainer = Trainer(
                model=loaded.model,
                args=args,
                train_dataset=cfg.features(data, loaded.tokenizer)["train"],
                data_collator=DataCollatorWithPadding(loaded.tokenizer),
                callbacks=[timer],
            )
            trainer.args.disable_tqdm = True
            mean_loss_per_batch(trainer).train()
        return timer.steps / (timer.end - timer.start)
    finally:
        torch.set_num_threads(default_threads)


def speed(tasks: list[str], configs: list[str], rounds: int, steps: int, warmup: int) -> list[dict[str, Any]]:
    """Per task and configuration: steps/s in each round and the median per-round ratio to the baseline."""
    rows = []
    for task in tasks:
        measured: dict[str, list[float]] = {name: [] for name in configs}
        for r in range(rounds):
            for name in configs:
                precision, threads, extra = CONFIGS[name]
                measured[name].append(steps_per_second(task, precision, threads, steps, warmup, extra))
                print(f"[speed] {task} round {r} {name}: {measured[name][-1]:.3f} steps/s", flush=True)
        for name in configs:
            ratios = [a / b for a, b in zip(measured[name], measured[BASELINE], strict=True)]
            rows.append(
                {
                    "task": task,
                    "config": name,
                    "precision": resolve_precision(CONFIGS[name][0]),
                    "threads": CONFIGS[name][1] or torch.get_num_threads(),
                    "extra": CONFIGS[name][2] or None,
                    "steps_per_s": measured[name],
                    "speedup_vs_fp32": statistics.median(ratios),
                }
            )
    return rows


def _same_recipe(config: FinetuneConfig, reuse: list[Path]) -> tuple[dict[str, Any], Path] | None:
    """A finished run among `reuse` (e.g. the accuracy grid's dense cells) of exactly this recipe."""
    want = config.model_dump(mode="json")
    want.pop("output_dir")
    for run in reuse:
        done = run / "results.json"
        if done.is_file():
            results = json.loads(done.read_text())
            recipe = dict(results.get("recipe", {}))
            recipe.pop("output_dir", None)
            if recipe == want:
                return results, run
    return None


def accuracy(precisions: list[str], seeds: list[int], runs: Path, reuse: list[Path]) -> list[dict[str, Any]]:
    """Full dense fine-tunes of rotten-tomatoes per precision and seed (resumable run by run); a finished
    run of the same recipe among `reuse` counts instead of running it again."""
    rows = []
    for precision in precisions:
        for seed in seeds:
            recipe = {
                "task": "rotten-tomatoes",
                "seed": seed,
                "output_dir": str(runs / f"{precision}-s{seed}"),
                "train": {"epochs": 3.0, "learning_rate": 5e-5, "precision": precision, "save_steps": 200},
            }
            config = FinetuneConfig.model_validate(recipe)
            found = _same_recipe(config, reuse)
            results, run = found if found else (run_or_reuse(config), config.output_dir)
            rows.append(
                {
                    "precision": precision,
                    "resolved": results["train"].get("precision", resolve_precision(precision)),
                    "seed": seed,
                    "test_accuracy": results["metrics"]["test"]["accuracy"],
                    "runtime_s": results["train"]["runtime_s"],
                    "steps": results["train"]["steps"],
                    "run": str(run),
                }
            )
    return rows


def main() -> None:
    """Measure speed (and accuracy with --accuracy); write the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", nargs="+", default=["rotten-tomatoes", "reuters-r8"])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40, help="timed optimizer steps per measurement")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument(
        "--part",
        choices=("speed", "accuracy", "both"),
        default="speed",
        help="speed: timed steps (needs a quiet machine); accuracy: the full fine-tunes (timing-free)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds of the fine-tunes")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "train_speed")
    parser.add_argument(
        "--reuse", nargs="*", type=Path, default=[], help="finished run dirs used when the recipe matches"
    )
    parser.add_argument("--output", type=Path, default=None, help="default: results/NAME.json")
    args = parser.parse_args()
    name = "train_speed_accuracy" if args.part == "accuracy" else "train_speed"
    output = args.output or ROOT / "results" / f"{name}.json"
    if BASELINE not in args.configs:
        parser.error(f"--configs must include the baseline {BASELINE}")
    started = time.time()
    settings = {
        "model": "minilm-l6",
        "batch_size": 32,
        "max_seq_length": 128,
        "steps": args.steps,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
    }
    rows = []
    if args.part in ("speed", "both"):
        for task in args.tasks:  # written task by task, so an interrupted run keeps what it measured
            rows += speed([task], args.configs, args.rounds, args.steps, args.warmup)
            write_results(output, name, settings, rows, False, started)
    if args.part in ("accuracy", "both"):
        precisions = sorted({CONFIGS[config][0] for config in args.configs if not CONFIGS[config][2]})
        rows += [{"accuracy": True, **row} for row in accuracy(precisions, args.seeds, args.runs, args.reuse)]
    write_results(output, name, settings, rows, True, started)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
