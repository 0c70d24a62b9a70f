"""Experiment tracking (`--train.report_to`): the logged scalars reach TensorBoard for real, sparsity and
the method's metrics included; a missing tracker package is a one-line error; old recipes dump unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from transformers import PreTrainedTokenizerBase

from prunebert.callback import trackers
from prunebert.cli import main
from prunebert.errors import PrunebertError
from prunebert.stages.common import TrainConfig
from tiny import write_workspace

pytest.importorskip("tensorboard")


def _scalars(events_dir: Path) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = sorted(events_dir.rglob("events.out.tfevents.*"))
    assert files, f"no events file under {events_dir}"
    acc = EventAccumulator(str(files[0].parent))
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_finetune_logs_loss_and_sparsity_to_tensorboard(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    workspace = write_workspace(tmp_path, tiny_tokenizer)
    out = tmp_path / "ft"
    argv = ["finetune", "--model", str(workspace / "tiny-mlm"), "--task", str(workspace / "task.csv")]
    argv += ["--output_dir", str(out), "--max_seq_length", "16", "--train.max_steps", "6"]
    argv += ["--train.batch_size", "4", "--train.logging_steps", "2", "--train.save_steps", "100"]
    argv += ["--pruning.sparsity", "0.5", "--pruning.frequency", "2", "--pruning.method", "movement"]
    argv += ["--train.report_to", "[tensorboard]"]
    assert main(argv) == 0
    scalars = _scalars(out / "tensorboard")
    assert len(scalars["train/loss"]) == 3  # steps 2, 4, 6
    assert scalars["train/sparsity"][-1] == pytest.approx(0.5, abs=1e-3)
    assert scalars["train/sparsity"][0] < scalars["train/sparsity"][-1]  # the cubic schedule, step by step
    assert len(scalars["train/movement_score_abs"]) == 3  # the method's log_metrics()
    assert yaml.safe_load((out / "recipe.yaml").read_text())["train"]["report_to"] == ["tensorboard"]


def test_trackers_default_to_none_and_old_recipes_dump_unchanged() -> None:
    assert trackers(TrainConfig().report_to) == []
    assert "report_to" not in TrainConfig().model_dump()  # a recipe saved before the field equals today's
    assert TrainConfig(report_to="tensorboard").report_to == ["tensorboard"]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'none' means no tracker"):
        TrainConfig(report_to=["none", "tensorboard"])


def test_a_missing_tracker_is_one_line_naming_pip(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name))
    with pytest.raises(PrunebertError, match=r"needs the wandb package: pip install wandb") as err:
        trackers(["tensorboard", "wandb"])
    assert "\n" not in str(err.value)
