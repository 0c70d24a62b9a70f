"""Do movement scores carry signal at the methods grid's budget? Split-half reliability and magnitude overlap.

One dense fine-tuning run of minilm-l6 on rotten-tomatoes with the grid's settings (batch 32, lr 1e-4,
max_seq_length 64, AdamW, 6% warm-up, linear decay over the run, clipping at 1.0, 4,000 training
examples). Every optimizer step goes to one of two halves, alternately; each half accumulates its own
movement scores from its own batches (the accumulation every movement run does before its first mask):

- `sgd`: S <- S - W * dL/dW (the method's `score_optimizer: sgd`, the sum of -W * g);
- `adam`: S <- S - lr * Adam(W * dL/dW), lr 1e-2 (Sanh et al.'s scores with their own Adam).

At each checkpoint step T and for every target matrix: Spearman's rank correlation between the two halves'
scores (split-half reliability: 0 = noise), the Jaccard overlap of the two halves' top-50% masks (chance:
1/3), and of the pooled scores' top-50% mask with magnitude's (chance: 1/3). Spearman-Brown turns the
split-half correlation r of T/2 steps into a per-step reliability rho = r / (T/2 - (T/2 - 1) r), and
that into the steps a run needs before the scores of its whole run reach split-half reliability 0.5.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/movement_signal.py                 # ~6 min on 1 core
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/movement_signal.py --checkpoints 20 40 --train-examples 640
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import DataCollatorWithPadding, Trainer, TrainerCallback, TrainerControl, TrainerState

from prunebert.data.tasks import load_task, tokenize_task
from prunebert.models import load_model
from prunebert.stages.common import TrainConfig, training_arguments
from prunebert.targets import find_targets

ROOT = Path(__file__).resolve().parent
ADAM_LR, BETAS, EPS = 1e-2, (0.9, 0.999), 1e-8
RELIABLE = 0.5  # split-half Spearman at which we call a run's scores reliable


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks 0..n-1 of the flattened `x` as float64 (ties broken by position: scores are continuous)."""
    flat = x.flatten()
    out = torch.empty(flat.numel(), dtype=torch.float64)
    out[flat.argsort()] = torch.arange(flat.numel(), dtype=torch.float64)
    return out


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two same-shaped tensors."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra @ rb) / (ra.norm() * rb.norm()))


def top_half(x: torch.Tensor) -> torch.Tensor:
    """The boolean mask of the largest half of `x`'s entries."""
    flat = x.flatten()
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[flat.topk(flat.numel() // 2).indices] = True
    return mask


def jaccard(a: torch.Tensor, b: torch.Tensor) -> float:
    """|a & b| / |a | b| of two boolean masks."""
    return int((a & b).sum()) / max(1, int((a | b).sum()))


def steps_needed(r: float, half_steps: int, target: float = RELIABLE) -> float | None:
    """Spearman-Brown: steps of accumulation whose split-half reliability (each half = half of them)
    reaches `target`, from a split-half correlation `r` measured on halves of `half_steps` steps."""
    if not 0 < r < 1:
        return None
    rho = r / (half_steps - (half_steps - 1) * r)  # per-step reliability
    return 2 * target * (1 - rho) / (rho * (1 - target))


class SplitHalf(TrainerCallback):
    """Accumulates two halves' movement scores (plain sum and Adam) from the clipped gradients."""

    def __init__(self, weights: dict[str, torch.nn.Parameter], checkpoints: list[int]) -> None:
        self.weights, self.checkpoints = weights, checkpoints
        zeros = {n: torch.zeros_like(w, dtype=torch.float32) for n, w in weights.items()}
        self.sgd = [{n: z.clone() for n, z in zeros.items()} for _ in range(2)]
        self.adam = [{n: z.clone() for n, z in zeros.items()} for _ in range(2)]
        self.m = [{n: z.clone() for n, z in zeros.items()} for _ in range(2)]
        self.v = [{n: z.clone() for n, z in zeros.items()} for _ in range(2)]
        self.count = [0, 0]
        self.rows: list[dict[str, Any]] = []

    @torch.no_grad()
    def on_pre_optimizer_step(
        self, args: Any, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        half = state.global_step % 2
        self.count[half] += 1
        t = self.count[half]
        for name, w in self.weights.items():
            assert w.grad is not None
            g = w.detach() * w.grad  # dL/dS of Sanh et al.'s straight-through estimator
            self.sgd[half][name] -= g
            m, v = self.m[half][name], self.v[half][name]
            m.mul_(BETAS[0]).add_(g, alpha=1 - BETAS[0])
            v.mul_(BETAS[1]).addcmul_(g, g, value=1 - BETAS[1])
            denom = (v / (1 - BETAS[1] ** t)).sqrt_().add_(EPS)
            self.adam[half][name] -= ADAM_LR * (m / (1 - BETAS[0] ** t)) / denom

    def on_step_end(self, args: Any, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if state.global_step in self.checkpoints:
            self.rows.append(self.measure(state.global_step))
            print(json.dumps(summary_line(self.rows[-1])), flush=True)

    def measure(self, step: int) -> dict[str, Any]:
        """Per-matrix split-half Spearman and Jaccard figures for both score forms at `step`."""
        row: dict[str, Any] = {"step": step, "half_steps": min(self.count)}
        for form, halves in (("sgd", self.sgd), ("adam", self.adam)):
            per: dict[str, dict[str, float]] = {}
            for name, w in self.weights.items():
                a, b = halves[0][name], halves[1][name]
                magnitude = top_half(w.detach().abs())
                per[name] = {
                    "spearman": round(spearman(a, b), 4),
                    "jaccard_halves": round(jaccard(top_half(a), top_half(b)), 4),
                    "jaccard_magnitude": round(jaccard(top_half(a + b), magnitude), 4),
                }
            row[form] = {"per_matrix": per, **aggregate(per, row["half_steps"])}
        row["soft_movement_lam"] = self.lam_for_sparsity(step)
        return row

    def lam_for_sparsity(self, step: int) -> dict[str, float]:
        """Soft movement's lam (loss units: lam * mean over matrices of mean(sigmoid(S))) whose pull at
        sigmoid(S) = 1/2, lam / (4 * matrices * numel), equals the mean movement -E[W * g] of the entry
        at each quantile: an entry whose mean movement is below the pull drifts down, so in a long run
        about that fraction is pruned (an estimate: the mean of T steps still carries noise)."""
        count = len(self.weights)
        pulls = [
            ((self.sgd[0][n] + self.sgd[1][n]) / step * 4 * count * w.numel()).flatten()
            for n, w in self.weights.items()
        ]
        pooled = torch.cat(pulls)
        sample = pooled[torch.randperm(pooled.numel(), generator=torch.Generator().manual_seed(0))[: 10**6]]
        return {f"{q:.2f}": round(float(sample.quantile(q)), 2) for q in (0.5, 0.8, 0.9, 0.95)}


def aggregate(per: dict[str, dict[str, float]], half_steps: int) -> dict[str, Any]:
    """Median / min / max over matrices of each figure, and the steps Spearman-Brown says are needed."""
    out: dict[str, Any] = {}
    for key in ("spearman", "jaccard_halves", "jaccard_magnitude"):
        values = [p[key] for p in per.values()]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    need = steps_needed(out["spearman"]["median"], half_steps)
    out["steps_for_reliable_scores"] = None if need is None else round(need)
    return out


def summary_line(row: dict[str, Any]) -> dict[str, Any]:
    """One printed line per checkpoint: medians only."""
    return {
        "step": row["step"],
        **{
            f"{form}_{key}": row[form][key]["median"]
            for form in ("sgd", "adam")
            for key in ("spearman", "jaccard_halves", "jaccard_magnitude")
        },
        "steps_for_reliable_sgd": row["sgd"]["steps_for_reliable_scores"],
        "steps_for_reliable_adam": row["adam"]["steps_for_reliable_scores"],
        "soft_movement_lam": row["soft_movement_lam"],
    }


def main() -> None:
    """Train once, measure at every checkpoint, write the JSON."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--checkpoints", nargs="+", type=int, default=[36, 120, 250])
    parser.add_argument("--train-examples", type=int, default=4000)
    parser.add_argument("--output", type=Path, default=ROOT / "results" / "movement_signal.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    task = load_task("rotten-tomatoes", seed=0, max_train_examples=args.train_examples)
    loaded = load_model("minilm-l6", head="classification", num_labels=task.num_labels)
    model, tokenizer = loaded.model, loaded.tokenizer
    train = tokenize_task(task, tokenizer, 64)["train"]
    weights = {t.param_name: model.get_parameter(t.param_name) for t in find_targets(model)}
    total = max(args.checkpoints)
    split = SplitHalf(weights, sorted(args.checkpoints))
    train_cfg = TrainConfig(
        max_steps=total, batch_size=32, learning_rate=1e-4, logging_steps=50, save_steps=10**6
    )
    training = training_arguments(train_cfg, ROOT / "runs" / "movement_signal", seed=0)
    trainer = Trainer(
        model=model,
        args=training,
        train_dataset=train,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[split],
    )
    started = time.time()
    trainer.train()
    result = {
        "benchmark": "movement_signal",
        "settings": {
            "model": "minilm-l6",
            "task": "rotten-tomatoes",
            "train_examples": len(train),
            "batch_size": 32,
            "learning_rate": 1e-4,
            "max_seq_length": 64,
            "lr_schedule": f"linear, 6% warm-up, over {total} steps",
            "adam_scores": {"lr": ADAM_LR, "betas": list(BETAS), "eps": EPS},
            "reliable_split_half": RELIABLE,
            "chance_jaccard": round(1 / 3, 4),
            "threads": torch.get_num_threads(),
        },
        "machine": {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "runtime_s": round(time.time() - started, 1),
        "checkpoints": split.rows,
    }
    shutil.rmtree(training.output_dir or "", ignore_errors=True)  # the Trainer's final checkpoint: not needed
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.output} in {result['runtime_s']} s")


if __name__ == "__main__":
    main()
