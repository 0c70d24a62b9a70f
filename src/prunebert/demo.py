"""`prunebert demo`: Gordon et al. 2020 in miniature on the embedded default, start to finish.

warm the new MLM head of minilm-l6 -> continue MLM on wiki-sample, dense and pruned to 40% (gradual
magnitude) -> fine-tune both on rotten-tomatoes with the mask fixed -> one comparison table.
Each step is an ordinary stage run in its own directory; finished steps are skipped on a re-run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunebert.config import PruningConfig
from prunebert.io import write_json
from prunebert.stages.common import RESULTS_FILE, TrainConfig
from prunebert.stages.finetune import FinetuneConfig, run_finetune
from prunebert.stages.pretrain import PretrainConfig, run_pretrain

__all__ = ["demo_plan", "format_table", "run_demo"]

SPARSITY = 0.4
StageConfig = PretrainConfig | FinetuneConfig


def demo_plan(out: Path, quick: bool = False) -> list[tuple[str, StageConfig]]:
    """The stage configs of the demo, in order (`quick` shrinks everything for a smoke run)."""
    mlm_steps, head_steps, ft_examples = (4, 2, 64) if quick else (100, 40, None)
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
    for name, pruning in (("dense", None), ("sparse", prune)):
        mlm_dir = out / f"10-mlm-{name}"
        plan.append(
            (
                f"mlm-{name}",
                PretrainConfig(
                    model=str(head.output_dir),
                    output_dir=mlm_dir,
                    head_warmup_steps=0,
                    train=mlm,
                    pruning=pruning,
                    **common,
                ),
            )
        )
        plan.append(
            (
                f"ft-{name}",
                FinetuneConfig(
                    model=str(mlm_dir),
                    task="rotten-tomatoes",
                    output_dir=out / f"20-ft-{name}",
                    train=ft,
                    max_train_examples=ft_examples,
                    max_seq_length=48,
                ),
            )
        )
    return plan


def _run(config: StageConfig) -> dict[str, Any]:
    runner: Callable[[Any], dict[str, Any]] = (
        run_pretrain if isinstance(config, PretrainConfig) else run_finetune
    )
    done = config.output_dir / RESULTS_FILE
    if done.is_file():
        return dict(json.loads(done.read_text()))
    return runner(config)


def run_demo(out: Path = Path("runs/demo"), quick: bool = False) -> dict[str, Any]:
    """Run (or resume) every step and write `comparison.json` + `comparison.md` into `out`."""
    plan = demo_plan(out, quick)
    results = {}
    for i, (name, config) in enumerate(plan, 1):
        print(f"[demo {i}/{len(plan)}] {name} -> {config.output_dir}", flush=True)
        results[name] = _run(config)
    rows = []
    for name in ("dense", "sparse"):
        mlm, ft = results[f"mlm-{name}"], results[f"ft-{name}"]
        rows.append(
            {
                "model": "minilm-l6 " + (f"{SPARSITY:.0%} magnitude" if name == "sparse" else "dense"),
                "encoder_sparsity": mlm["sparsity"]["overall"],
                "mlm_loss": mlm["metrics"]["mlm_loss"],
                "mlm_accuracy": mlm["metrics"]["mlm_accuracy"],
                "dev_accuracy": ft["metrics"]["dev"]["accuracy"],
                "test_accuracy": ft["metrics"]["test"]["accuracy"],
            }
        )
    summary = {
        "rows": rows,
        "head_warmup": results["head"]["metrics"],
        "quick": quick,
        "test_accuracy_gap": rows[0]["test_accuracy"] - rows[1]["test_accuracy"],
    }
    write_json(out / "comparison.json", summary)
    (out / "comparison.md").write_text(format_table(rows) + "\n")
    return summary


def format_table(rows: list[dict[str, Any]]) -> str:
    """The comparison as a Markdown table."""
    head = "| model | encoder sparsity | MLM loss | masked-token acc | dev acc | test acc |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['encoder_sparsity']:.1%} | {r['mlm_loss']:.3f} | {r['mlm_accuracy']:.1%} "
            f"| {r['dev_accuracy']:.1%} | {r['test_accuracy']:.1%} |"
        )
    return "\n".join(lines)
