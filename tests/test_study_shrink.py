"""A study's `shrink` arm: retraining-free structured pruning of the dense fine-tuned model to a FLOPs
fraction, then the after-finetune recovery, aggregated with its structured sparsity and zero-step metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoConfig, PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.errors import PrunebertError
from prunebert.models import load_model
from prunebert.study import load_study, study_plan
from prunebert.study.run import _needs
from tinystudy import build_workspace, chdir

RECIPE = {
    "model": "tiny-mlm",
    "output_dir": "shrink-study",
    "tasks": [{"task": "task-a.csv", "max_seq_length": 16}],
    "stages": ["after-finetune"],
    "sparsities": [0.0, 0.5],
    "methods": [
        {"name": "shrink", "stages": ["after-finetune"], "pruning": {"calibration": 48}},
        {"name": "shrink+kd", "method": "shrink", "stages": ["after-finetune"], "distill": {}},
    ],
    "finetune": {"train": {"max_steps": 8, "batch_size": 8, "learning_rate": 3.0e-3}},
    "after_finetune": {"train": {"max_steps": 4}},
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    root = build_workspace(tmp_path_factory.mktemp("shrink-study"), tiny_tokenizer)
    (root / "shrink.yaml").write_text(yaml.safe_dump(RECIPE))
    with chdir(root):
        assert main(["study", "shrink.yaml"]) == 0
    return root


def test_the_shrink_arm_plans_a_shrink_then_the_recovery(workspace: Path) -> None:
    with chdir(workspace):
        plan = study_plan(load_study(Path("shrink.yaml")))
    needs = _needs(plan)
    dense, cell = "finetune/task-a/dense", "after-finetune/task-a/shrink-50"
    assert needs[f"{cell}-zero-step"] == {dense} and needs[cell] == {f"{cell}-zero-step"}
    assert needs["after-finetune/task-a/shrink+kd-50"] == {
        "after-finetune/task-a/shrink+kd-50-zero-step",
        dense,
    }
    shrink = next(r.config for r in plan.runs if r.key == f"{cell}-zero-step")
    assert shrink.flops == 0.5 and shrink.calibration == 48 and not shrink.bench  # type: ignore[union-attr]


def test_shrink_cells_report_structured_sparsity_and_zero_step_metrics(workspace: Path) -> None:
    table = json.loads((workspace / "shrink-study" / "results.json").read_text())
    assert table["complete"]
    rows = {r["method"]: r for r in table["cells"]}
    for name in ("shrink", "shrink+kd"):
        row = rows[name]
        assert 0.5 <= row["achieved_sparsity"] <= 0.6 and "flops" in row["sparsity_measure"]
        assert 0 <= row["zero_step_test_metric"] <= 1 and row["train_steps"] == 4
        recovered = workspace / "shrink-study" / row["model_dir"]
        dense = AutoConfig.from_pretrained(workspace / "shrink-study" / "finetune/task-a/dense/model")
        slim = load_model(str(recovered), head="classification", num_labels=2).model
        params = sum(p.numel() for p in slim.parameters())
        dense_params = sum(
            p.numel()
            for p in load_model(
                str(workspace / "tiny-mlm"), head="classification", num_labels=2
            ).model.parameters()
        )
        assert params < dense_params and dense.num_hidden_layers >= slim.config.num_hidden_layers


@pytest.mark.parametrize(
    "arm,match",
    [
        ({"name": "shrink"}, r"'shrink' \(shrink\) starts fine-tuned; give it `stages: \[after-finetune\]`"),
        ({"name": "shrink", "stages": ["after-finetune"], "pruning": {"speedup": 2}}, r"'speedup' is set"),
        ({"name": "shrink", "stages": ["after-finetune"], "pruning": {"scores": "x"}}, r"methods: shrink"),
    ],
)
def test_bad_shrink_arms_are_one_line_errors(tmp_path: Path, arm: dict, match: str) -> None:
    recipe = {**RECIPE, "stages": ["finetune", "after-finetune"], "methods": [arm]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(PrunebertError, match=match):
        load_study(tmp_path / "s.yaml")
