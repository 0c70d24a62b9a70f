"""Distillation in `pretrain`: weights by head, the Trainer subclass with every method, the CLI end to end,
and a distilling run killed mid-way that resumes bit-identically."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prunebert import PruningCallback, PruningConfig, available_methods
from prunebert.cli import main
from prunebert.data import SeededMLMCollator
from prunebert.errors import PrunebertError
from prunebert.pruner import Pruner
from prunebert.recipes import dump_recipe, load_recipe, validate_recipe
from prunebert.stages.mlm import MaskedPositionsTrainer
from prunebert.stages.pretrain import PretrainConfig
from prunebert.stages.pretrain_distill import (
    DistillingMLMTrainer,
    PretrainDistillConfig,
    PretrainDistiller,
    resolve_weights,
)
from test_crash_resume import _argv, _assert_same_run, _kill_after_first_checkpoint
from tiny import tiny_mlm, tiny_training_args, write_workspace

FAST = ["--train.batch_size", "4", "--train.logging_steps", "2", "--train.save_steps", "100"]
DISTILL_METRICS = {"distill_loss", "distill_relation", "representation_cosine", "representation_cosine_min"}

# ---- config and weights -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("student_new", "teacher_new", "soft", "mlm"),
    [(True, True, 0.0, 0.1), (False, False, 0.5, 0.5), (True, False, 0.5, 0.1)],
)
def test_weights_follow_whether_the_mlm_heads_were_trained(
    student_new: bool, teacher_new: bool, soft: float, mlm: float
) -> None:
    weights = resolve_weights(PretrainDistillConfig(), student_new, teacher_new)
    assert weights == {"relation": 1.0, "hidden": 0.0, "soft": soft, "mlm": mlm}


def test_soft_term_needs_a_teacher_with_a_trained_head() -> None:
    with pytest.raises(PrunebertError, match=r"no trained MLM head.*alpha_soft 0"):
        resolve_weights(PretrainDistillConfig(alpha_soft=0.5), True, True)
    with pytest.raises(PrunebertError, match="no distillation term is on"):
        resolve_weights(PretrainDistillConfig(alpha_relation=0.0), True, True)


def test_config_is_strict_recorded_only_when_set_and_round_trips(tmp_path: Path) -> None:
    assert "distill" not in PretrainConfig().model_dump(mode="json")
    cfg = validate_recipe(PretrainConfig, {"distill": {"teacher": "self", "relations": ["value"]}})
    assert cfg.distill is not None and cfg.distill.relation_heads is None
    (tmp_path / "r.yaml").write_text(dump_recipe(cfg))
    assert validate_recipe(PretrainConfig, load_recipe(tmp_path / "r.yaml")) == cfg
    with pytest.raises(PrunebertError, match=r"unknown recipe key 'distill\.alpha'"):
        validate_recipe(PretrainConfig, {"distill": {"alpha": 1}})
    with pytest.raises(PrunebertError, match="every distillation weight is 0"):
        validate_recipe(PretrainConfig, {"distill": {"alpha_relation": 0, "alpha_soft": 0}})


# ---- the Trainer subclass ---------------------------------------------------------------------------


def _no_dropout(model: PreTrainedModel) -> PreTrainedModel:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _trainer(
    tmp_path: Path,
    tokenizer: PreTrainedTokenizerBase,
    config: PretrainDistillConfig,
    steps: int = 4,
    pruning: PruningConfig | None = None,
) -> DistillingMLMTrainer:
    student, teacher = _no_dropout(tiny_mlm()), tiny_mlm()
    weights = resolve_weights(config, False, False)
    distiller = PretrainDistiller(teacher, student, config, weights)
    ids = torch.randint(5, 29, (48, 12), generator=torch.Generator().manual_seed(0))
    data = datasets.Dataset.from_dict({"input_ids": ids.tolist()})
    collator = SeededMLMCollator(tokenizer, 0.3, seed=0)
    callbacks = [collator] + ([PruningCallback(Pruner(student, pruning))] if pruning else [])
    args = tiny_training_args(tmp_path, steps, logging_steps=1, save_strategy="no", learning_rate=1e-3)
    return DistillingMLMTrainer(
        model=student,
        args=args,
        train_dataset=data,
        data_collator=collator,
        callbacks=callbacks,
        distiller=distiller,
    )


def test_identical_teacher_adds_nothing_then_training_logs_each_term(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    config = PretrainDistillConfig(alpha_hidden=1.0, alpha_soft=1.0, alpha_mlm=0.3)
    trainer = _trainer(tmp_path, tiny_tokenizer, config)
    batch = dict(next(iter(trainer.get_train_dataloader())))
    trainer.model.train()
    plain = MaskedPositionsTrainer.compute_loss(trainer, trainer.model, batch)
    assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(0.3 * plain.item(), rel=1e-5)
    trainer.model.eval()  # evaluation: the plain MLM loss
    assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(plain.item(), rel=1e-5)

    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert {"loss_mlm", "loss_relation", "loss_hidden", "loss_soft"} <= set(logs[0])
    assert logs[0]["loss_relation"] == pytest.approx(0.0, abs=1e-6)  # the first step: still the teacher
    assert logs[-1]["loss_relation"] > 0 and logs[-1]["loss_soft"] > 0
    assert not trainer.distiller.teacher.training


@pytest.mark.filterwarnings("ignore:.*movement")  # too few steps for movement scores: said, and fine here
@pytest.mark.parametrize("method", available_methods())
def test_every_method_prunes_while_distilling(
    method: str, tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    pruning = PruningConfig(method=method, sparsity=0.5, frequency=2)
    trainer = _trainer(tmp_path, tiny_tokenizer, PretrainDistillConfig(), steps=8, pruning=pruning)
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss_relation" in log]
    assert len(logs) == 8 and all(torch.isfinite(torch.tensor(log["loss"])) for log in logs)
    assert logs[-1]["loss_relation"] > 0
    callbacks = trainer.callback_handler.callbacks
    pruner = next(c.pruner for c in callbacks if isinstance(c, PruningCallback))
    assert pruner.overall_sparsity() > 0.3


# ---- `prunebert pretrain --distill.*` end to end ----------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    return write_workspace(tmp_path_factory.mktemp("pretrain-distill"), tiny_tokenizer)


def _pretrain(ws: Path, out: Path, model: str, *extra: str) -> int:
    base = ["pretrain", "--model", str(ws / model), "--text", str(ws / "text.txt"), "--block_size", "16"]
    return main([*base, "--output_dir", str(out), "--head_warmup_steps", "2", *FAST, *extra])


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_headless_encoder_distils_from_itself_while_pruning(workspace: Path) -> None:
    out = workspace / "self"
    argv = ["--train.max_steps", "6", "--pruning.sparsity", "0.5", "--pruning.frequency", "2"]
    assert _pretrain(workspace, out, "tiny-encoder", *argv, "--distill.teacher", "self") == 0
    result = _results(out)
    distill = result["distill"]
    assert distill["weights"] == {"relation": 1.0, "hidden": 0.0, "soft": 0.0, "mlm": 0.1}
    assert (distill["mlm_head"], distill["teacher_mlm_head"]) == ("new", "new")
    assert distill["layer_pairs"] == [[0, 0], [1, 1]] and distill["relation_heads"] == 4
    assert result["recipe"]["distill"]["teacher"] == "self"
    assert DISTILL_METRICS | {"mlm_loss", "mlm_accuracy"} <= set(result["metrics"])
    before = result["metrics_before"]  # the student starts as its teacher
    assert before["distill_relation"] == pytest.approx(0.0, abs=1e-6)
    assert before["representation_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert result["metrics"]["distill_relation"] > 0 and result["metrics"]["representation_cosine"] < 1.0
    assert result["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
    assert any("loss_relation" in log and "loss_mlm" in log for log in result["train"]["log_history"])


def test_a_trained_head_adds_the_soft_term_and_hidden_states_are_an_option(workspace: Path) -> None:
    out = workspace / "soft"
    extra = ["--train.max_steps", "2", "--distill.alpha_hidden", "0.5", "--distill.layers", "[-1]"]
    assert _pretrain(workspace, out, "tiny-mlm", *extra) == 0
    result = _results(out)
    assert result["distill"]["weights"] == {"relation": 1.0, "hidden": 0.5, "soft": 0.5, "mlm": 0.5}
    assert result["distill"]["layer_pairs"] == [[1, 1]]
    assert {"distill_soft", "distill_hidden"} <= set(result["metrics"])
    weighted = sum(
        result["metrics"][f"distill_{k}"] * w for k, w in (("relation", 1), ("hidden", 0.5), ("soft", 0.5))
    )
    assert result["metrics"]["distill_loss"] == pytest.approx(weighted)


def test_a_run_without_teacher_still_reports_closeness_to_the_starting_model(workspace: Path) -> None:
    out = workspace / "plain"
    assert _pretrain(workspace, out, "tiny-mlm", "--train.max_steps", "2", "--pruning.sparsity", "0.5") == 0
    result = _results(out)
    assert "distill" not in result["recipe"] and result["distill"] is None
    assert 0 < result["metrics"]["representation_cosine"] < 1.0
    assert "distill_loss" not in result["metrics"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--distill.alpha_soft", "0.5"], "has no trained MLM head"),
        (["--distill.layers", "[5]"], "outside the student's 2 layers"),
        (["--distill.relation_heads", "3"], "do not divide the hidden size 32"),
    ],
)
def test_bad_distillation_settings_are_one_line_errors_before_any_run(
    workspace: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    out = workspace / f"bad-{extra[0]}"
    capsys.readouterr()
    assert _pretrain(workspace, out, "tiny-encoder", "--train.max_steps", "1", *extra) == 2
    lines = capsys.readouterr().err.strip().splitlines()  # load progress bars may come first
    assert sum("prunebert: error:" in line for line in lines) == 1
    assert lines[-1].startswith("prunebert: error: ") and message in lines[-1]
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:movement")
def test_sigkill_then_same_command_resumes_a_distilling_run_bit_identically(
    workspace: Path, tmp_path: Path
) -> None:
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    distill = ["--distill.teacher", "self", "--distill.alpha_hidden", "0.5"]
    assert main([*_argv("pretrain", workspace, ref, 30, 10, "movement"), *distill]) == 0

    argv = [*_argv("pretrain", workspace, cut, 30, 10, "movement"), *distill]
    _kill_after_first_checkpoint(argv, cut / "checkpoints")
    assert main(argv) == 0  # the same command resumes; the teacher is loaded again
    _assert_same_run(ref, cut)
    assert _results(ref)["metrics"]["distill_loss"] == _results(cut)["metrics"]["distill_loss"]
