"""`prunebert demo`: Gordon et al. 2020 in miniature on the embedded default, start to finish.

warm the new MLM head of minilm-l6 -> continue MLM on wiki-sample, dense and pruned to 40% (gradual
magnitude) -> fine-tune both on rotten-tomatoes with the mask fixed -> one comparison table.
Each step is an ordinary stage run in its own directory; finished steps are skipped on a re-run.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prunebert.config import PruningConfig
from prunebert.io import write_json
from prunebert.stages.common import TrainConfig
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.pretrain import PretrainConfig
from prunebert.stages.runner import StageConfig, run_or_reuse

__all__ = ["demo_plan", "format_table", "run_demo"]

SPARSITY = 0.4
HEAD_STEPS = 200  # the new MLM head alone (encoder frozen): cheap, masked positions only
MLM_STEPS = 200  # continued MLM; the pruned arm reaches 40% at step 100 and recovers for 100
#: fine-tuning seeds per arm: one run on ~1,300 test examples has ~1 point of seed noise, the mean less
SEEDS = (0, 1, 2)
ARMS = (("dense", False), ("sparse", True))


def demo_plan(out: Path, quick: bool = False, seeds: Sequence[int] = SEEDS) -> list[tuple[str, StageConfig]]:
    """The stage configs of the demo, in order (`quick` shrinks everything for a smoke run)."""
    mlm_steps, head_steps, ft_examples = (4, 2, 64) if quick else (MLM_STEPS, HEAD_STEPS, None)
    mlm = TrainConfig(max_steps=mlm_steps, batch_size=16, learning_rate=5e-5, logging_steps=10)
    prune = PruningConfig(
        method="magnitude", sparsity=SPARSITY, schedule="cubic", end_fraction=0.5, frequency=5
    )
    ft = TrainConfig(epochs=1, batch_size=32, learning_rate=1e-4, logging_steps=20, save_steps=100)
    common = {
        "text": "wiki-sample",
        "block_size": 64,
        "max_train_blocks": 4000,
        "max_eval_blocks": 32 if quick else 256,
    }
    head = PretrainConfig(
        model="minilm-l6",
        output_dir=out / "00-mlm-head",
        head_warmup_steps=head_steps,
        train=mlm.model_copy(update={"max_steps": 0}),
        **common,
    )
    plan: list[tuple[str, StageConfig]] = [("head", head)]
    for name, pruning in ARMS:
        mlm_dir = out / f"10-mlm-{name}"
        plan.append(
            (
                f"mlm-{name}",
                PretrainConfig(
                    model=str(head.output_dir),
                    output_dir=mlm_dir,
                    head_warmup_steps=0,
                    train=mlm,
                    pruning=prune if pruning else None,
                    **common,
                ),
            )
        )
        for seed in seeds:
            plan.append(
                (
                    f"ft-{name}-s{seed}",
                    FinetuneConfig(
                        model=str(mlm_dir),
                        task="rotten-tomatoes",
                        output_dir=out / f"20-ft-{name}-s{seed}",
                        seed=seed,
                        train=ft,
                        max_train_examples=ft_examples,
                        max_seq_length=48,
                    ),
                )
            )
    return plan


def run_demo(
    out: Path = Path("runs/demo"), quick: bool = False, seeds: Sequence[int] = SEEDS
) -> dict[str, Any]:
    """Run (or resume) every step and write `comparison.json` + `comparison.md` into `out` (progress on
    stderr)."""
    plan = demo_plan(out, quick, seeds)
    results = {}
    for i, (name, config) in enumerate(plan, 1):
        print(f"[demo {i}/{len(plan)}] {name} -> {config.output_dir}", file=sys.stderr, flush=True)
        results[name] = run_or_reuse(config)
    summary = summarize(results, seeds)
    summary["quick"] = quick
    write_json(out / "comparison.json", summary)
    (out / "comparison.md").write_text(format_table(summary["rows"]) + "\n")
    return summary


def summarize(results: dict[str, dict[str, Any]], seeds: Sequence[int]) -> dict[str, Any]:
    """One row per arm: MLM metrics and dev/test accuracy as mean (and sd) over the fine-tuning seeds."""
    rows = []
    for name, _ in ARMS:
        mlm = results[f"mlm-{name}"]
        runs = [results[f"ft-{name}-s{seed}"]["metrics"] for seed in seeds]
        dev = [r["dev"]["accuracy"] for r in runs]
        test = [r["test"]["accuracy"] for r in runs]
        rows.append(
            {
                "model": "minilm-l6 " + (f"{SPARSITY:.0%} magnitude" if name == "sparse" else "dense"),
                "encoder_sparsity": mlm["sparsity"]["overall"],
                "mlm_loss": mlm["metrics"]["mlm_loss"],
                "mlm_accuracy": mlm["metrics"]["mlm_accuracy"],
                "dev_accuracy": statistics.fmean(dev),
                "test_accuracy": statistics.fmean(test),
                "test_accuracy_sd": statistics.stdev(test) if len(test) > 1 else 0.0,
                "seeds": list(seeds),
                "dev_accuracy_per_seed": dev,
                "test_accuracy_per_seed": test,
            }
        )
    return {
        "rows": rows,
        "head_warmup": results["head"]["metrics"],
        "test_accuracy_gap": rows[0]["test_accuracy"] - rows[1]["test_accuracy"],
    }


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    n = len(rows[0]["seeds"])
    head = (
        "| model | encoder sparsity | MLM loss | masked-token acc | dev acc "
        f"| test acc (mean ± sd, {n} seeds) |"
    )
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['encoder_sparsity']:.1%} | {r['mlm_loss']:.3f} | {r['mlm_accuracy']:.1%} "
            f"| {r['dev_accuracy']:.1%} | {r['test_accuracy']:.1%} ± {r['test_accuracy_sd']:.1%} |"
        )
    return "\n".join(lines)
