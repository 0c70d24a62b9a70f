"""Distillation as a loss term: golden losses, the layer map, the Trainer subclass, `finetune --distill`."""

import json
import math
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from conftest import TINY_WORDS
from prunebert.cli import main
from prunebert.errors import PrunebertError
from prunebert.recipes import dump_recipe, load_recipe, validate_recipe
from prunebert.stages.distill import (
    DistillationTrainer,
    DistillConfig,
    Distiller,
    attention_loss,
    hidden_state_loss,
    layer_map,
    soft_label_loss,
)
from prunebert.stages.finetune import FinetuneConfig, auto_teacher
from tiny import tiny_classifier, tiny_dataset, tiny_mlm, tiny_training_args

FAST = ["--train.batch_size", "4", "--train.logging_steps", "2", "--train.save_steps", "100"]


# ---- pure losses ---------------------------------------------------------------------------------


def test_soft_label_loss_is_zero_for_equal_logits() -> None:
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    assert soft_label_loss(logits, logits.clone(), 2.0).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_label_loss_two_classes_by_hand() -> None:
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]] * 2)  # softmax(t/2) = (0.75, 0.25)
    student = torch.zeros(2, 2)  # softmax(s/2) = (0.5, 0.5)
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert soft_label_loss(student, teacher, 2.0).item() == pytest.approx(kl * 2.0**2, rel=1e-6)


def test_soft_label_loss_of_a_regression_head_is_mse() -> None:
    student, teacher = torch.tensor([[1.0], [3.0]]), torch.tensor([[2.0], [1.0]])
    assert soft_label_loss(student, teacher, 5.0).item() == pytest.approx((1 + 4) / 2)


def test_soft_label_loss_rejects_other_label_counts() -> None:
    with pytest.raises(PrunebertError, match="same task"):
        soft_label_loss(torch.zeros(2, 3), torch.zeros(2, 2), 1.0)


def _hidden(values: list[list[float]]) -> torch.Tensor:
    return torch.tensor([values])  # (B=1, T, H)


def test_hidden_state_loss_counts_only_real_tokens() -> None:
    mask = torch.tensor([[1, 1, 0]])
    teacher = (_hidden([[0, 0], [0, 0], [0, 0]]), _hidden([[0, 0], [0, 0], [0, 0]]))
    student = (_hidden([[0, 0], [0, 0], [0, 0]]), _hidden([[1, -1], [0, 2], [7, 7]]))
    expected = (1 + 1 + 0 + 4) / (2 * 2)  # squared errors of the two real tokens / (tokens * hidden)
    assert hidden_state_loss(student, teacher, mask, [(0, 0)]).item() == pytest.approx(expected)
    student[1][0, 2] = torch.tensor([-100.0, 50.0])  # a padded position changes nothing
    assert hidden_state_loss(student, teacher, mask, [(0, 0)]).item() == pytest.approx(expected)


def test_hidden_state_loss_embeddings_are_an_option() -> None:
    mask = torch.ones(1, 1)
    student, teacher = (_hidden([[2.0]]), _hidden([[0.0]])), (_hidden([[0.0]]), _hidden([[0.0]]))
    assert hidden_state_loss(student, teacher, mask, [(0, 0)]).item() == 0.0  # layer 0 = index 1
    both = hidden_state_loss(student, teacher, mask, [(0, 0)], embeddings=True)
    assert both.item() == pytest.approx((0.0 + 4.0) / 2)  # mean over (layer 0, embeddings)


def test_hidden_state_loss_needs_equal_widths() -> None:
    student, teacher = (torch.zeros(1, 2, 4),) * 2, (torch.zeros(1, 2, 8),) * 2
    with pytest.raises(PrunebertError, match=r"projection is not supported.*alpha_hidden 0"):
        hidden_state_loss(student, teacher, torch.ones(1, 2), [(0, 0)])


def test_attention_loss_counts_only_real_query_key_pairs() -> None:
    mask = torch.tensor([[1, 1, 0]])
    teacher = torch.zeros(1, 2, 3, 3)  # (B, heads, Tq, Tk)
    student = torch.zeros(1, 2, 3, 3)
    student[0, 0, 0, 1] = 0.5  # real pair: counts
    student[0, 1, 2, 0] = 0.9  # padded query: ignored
    student[0, 1, 1, 2] = 0.9  # padded key: ignored
    expected = 0.25 / (2 * 2 * 2)  # one squared error over heads * real queries * real keys
    assert attention_loss((student,), (teacher,), mask, [(0, 0)]).item() == pytest.approx(expected)
    with pytest.raises(PrunebertError, match="head counts differ"):
        attention_loss((student,), (torch.zeros(1, 4, 3, 3),), mask, [(0, 0)])


@pytest.mark.parametrize(
    ("student", "teacher", "expected"),
    [
        (6, 12, [(0, 1), (1, 3), (2, 5), (3, 7), (4, 9), (5, 11)]),
        (3, 6, [(0, 1), (1, 3), (2, 5)]),
        (2, 2, [(0, 0), (1, 1)]),
        (4, 6, [(0, 1), (1, 2), (2, 4), (3, 5)]),  # 1.5 -> 2, 4.5 -> 5: halves round up
        (4, 2, [(0, 0), (1, 0), (2, 1), (3, 1)]),
    ],
)
def test_layer_map(student: int, teacher: int, expected: list[tuple[int, int]]) -> None:
    assert layer_map(student, teacher) == expected


# ---- config ----------------------------------------------------------------------------------------


def test_distill_config_is_strict_and_round_trips(tmp_path: Path) -> None:
    cfg = validate_recipe(FinetuneConfig, {"distill": {"teacher": "auto", "alpha_hidden": 0.5}})
    assert cfg.distill is not None and cfg.distill.temperature == 2.0
    (tmp_path / "r.yaml").write_text(dump_recipe(cfg))
    assert validate_recipe(FinetuneConfig, load_recipe(tmp_path / "r.yaml")) == cfg
    with pytest.raises(PrunebertError, match=r"unknown recipe key 'distill\.alpha'"):
        validate_recipe(FinetuneConfig, {"distill": {"alpha": 1}})
    with pytest.raises(PrunebertError, match="every loss weight is 0"):
        validate_recipe(FinetuneConfig, {"distill": {"alpha_soft": 0, "alpha_hard": 0}})


# ---- the Distiller on every supported architecture -------------------------------------------------


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "distilbert"])
def test_every_term_is_zero_between_identical_models(model_type: str) -> None:
    config = DistillConfig(alpha_hidden=1.0, alpha_attention=1.0, match_embeddings=True)
    student, teacher = tiny_classifier(model_type).eval(), tiny_classifier(model_type)
    distiller = Distiller(teacher, config)
    distiller.prepare(student)
    inputs = {
        "input_ids": torch.randint(5, 100, (3, 7)),
        "attention_mask": torch.ones(3, 7, dtype=torch.long),
    }
    inputs["attention_mask"][1, 4:] = 0
    total, parts = distiller.loss(inputs, student(**inputs, **distiller.output_flags()))
    assert set(parts) == {"soft", "hidden", "attention"}
    assert total.item() == pytest.approx(0.0, abs=1e-6)


# ---- the Trainer subclass on tiny models -----------------------------------------------------------


def _no_dropout(model: PreTrainedModel) -> PreTrainedModel:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


def _trainer(tmp_path: Path, config: DistillConfig, steps: int = 4) -> DistillationTrainer:
    args = tiny_training_args(
        tmp_path,
        steps,
        learning_rate=1e-3,
        weight_decay=0.0,
        logging_steps=1,
        save_strategy="no",
        save_steps=500,
    )
    student, teacher = _no_dropout(tiny_classifier(seed=0)), tiny_classifier(seed=0)
    distiller = Distiller(teacher, config)
    return DistillationTrainer(model=student, args=args, train_dataset=tiny_dataset(32), distiller=distiller)


def _batch(trainer: DistillationTrainer) -> dict[str, torch.Tensor]:
    return dict(next(iter(trainer.get_train_dataloader())))


def test_identical_teacher_gives_zero_initial_loss_then_training_logs_the_parts(tmp_path: Path) -> None:
    config = DistillConfig(teacher="unused", alpha_hard=0.0, alpha_soft=1.0, alpha_hidden=1.0)
    trainer = _trainer(tmp_path, config)
    batch = _batch(trainer)
    trainer.model.train()
    assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(0.0, abs=1e-6)
    trainer.model.eval()  # evaluation reports the plain task loss, not the distillation term
    task = trainer.model(**batch).loss
    assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(task.item())

    teacher_before = {k: v.clone() for k, v in trainer.distiller.teacher.state_dict().items()}
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 4 and {"loss_task", "loss_soft", "loss_hidden"} <= set(logs[0])
    assert logs[0]["loss"] == pytest.approx(logs[0]["loss_soft"] + logs[0]["loss_hidden"], abs=1e-3)
    assert logs[-1]["loss_soft"] > 0  # the student moved away from its (unchanged) teacher
    teacher = trainer.distiller.teacher
    assert not teacher.training and all(
        torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items()
    )


def test_weights_combine_task_and_soft_loss(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, DistillConfig(teacher="unused", alpha_hard=0.3, alpha_soft=0.7))
    trainer.distiller.teacher = _no_dropout(tiny_classifier(seed=1)).eval()  # a different teacher
    batch = _batch(trainer)
    trainer.model.train()
    task = trainer.model(**batch).loss
    soft = soft_label_loss(trainer.model(**batch).logits, trainer.distiller.teacher(**batch).logits, 2.0)
    assert soft.item() > 0
    expected = 0.3 * task + 0.7 * soft
    assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(expected.item(), rel=1e-5)


def test_attention_distillation_switches_both_models_to_eager(tmp_path: Path) -> None:
    config = DistillConfig(teacher="unused", alpha_soft=0.0, alpha_hard=0.0, alpha_attention=1.0)
    trainer = _trainer(tmp_path, config, steps=2)
    assert trainer.model.config._attn_implementation == "eager"
    assert trainer.distiller.teacher.config._attn_implementation == "eager"
    batch = _batch(trainer)
    trainer.model.train()
    assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(0.0, abs=1e-7)
    trainer.train()
    assert all("loss_attention" in log for log in trainer.state.log_history if "loss" in log)


def test_sdpa_student_without_attention_maps_is_a_clear_error(tmp_path: Path) -> None:
    config = DistillConfig(teacher="unused", alpha_attention=1.0)
    trainer = _trainer(tmp_path, config)
    trainer.model.set_attn_implementation("sdpa")  # sdpa returns no attention probabilities
    trainer.model.train()
    with pytest.raises(PrunebertError, match=r"no attention maps.*eager"):
        trainer.compute_loss(trainer.model, _batch(trainer))


# ---- `prunebert finetune --distill.*` end to end ---------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    root = tmp_path_factory.mktemp("distill")
    tiny_mlm().save_pretrained(root / "tiny-mlm")
    tiny_tokenizer.save_pretrained(root / "tiny-mlm")
    rng = random.Random(0)
    rows = []
    for _ in range(120):
        label = rng.randint(0, 1)
        words = [rng.choice(TINY_WORDS[:13]) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), rng.choice(["good", "great"] if label else ["bad", "awful"]))
        rows.append(f"{' '.join(words)},{label}\n")
    (root / "task.csv").write_text("text,label\n" + "".join(rows))
    return root


def _finetune(workspace: Path, out: Path, *extra: str) -> int:
    base = ["finetune", "--model", str(workspace / "tiny-mlm"), "--task", str(workspace / "task.csv")]
    return main([*base, "--output_dir", str(out), "--max_seq_length", "16", *FAST, *extra])


def test_finetune_prunes_while_distilling_from_an_auto_teacher(workspace: Path) -> None:
    out = workspace / "kd"
    argv = ["--train.max_steps", "4", "--pruning.sparsity", "0.5", "--pruning.frequency", "1"]
    assert _finetune(workspace, out, *argv, "--distill.teacher", "auto", "--distill.alpha_hidden", "0.5") == 0
    result = json.loads((out / "results.json").read_text())
    teacher = json.loads((out / "teacher" / "results.json").read_text())
    assert result["distill"]["teacher"] == str(out / "teacher" / "model")
    assert result["distill"]["alpha_hidden"] == 0.5 and result["recipe"]["distill"]["teacher"] == "auto"
    assert result["distill"]["teacher_metrics"] == teacher["metrics"]
    assert result["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
    assert teacher["sparsity"]["overall"] == 0.0 and teacher["recipe"]["distill"] is None
    assert teacher["train"]["steps"] == result["train"]["steps"] == 4
    assert result["train"]["precision"] == "fp32"  # the precision the run trained in, `auto` resolved
    assert any("loss_soft" in log and "sparsity" in log for log in result["train"]["log_history"])

    stamp = (out / "teacher" / "results.json").stat().st_mtime_ns  # a finished teacher is reused...
    cfg = validate_recipe(FinetuneConfig, load_recipe(out / "recipe.yaml"))
    assert auto_teacher(cfg.model_copy(update={"pruning": None}))["metrics"] == teacher["metrics"]
    assert (out / "teacher" / "results.json").stat().st_mtime_ns == stamp
    changed = cfg.model_copy(update={"train": cfg.train.model_copy(update={"learning_rate": 1e-3})})
    with pytest.raises(PrunebertError, match="already holds a finished run"):  # ...unless settings changed
        auto_teacher(changed)


def test_start_from_teacher_trains_the_auto_teacher_first_and_starts_the_student_as_it(
    workspace: Path,
) -> None:
    out = workspace / "from-teacher"
    argv = ["--train.max_steps", "3", "--distill.teacher", "auto", "--start_from", "teacher"]
    assert _finetune(workspace, out, *argv, "--train.learning_rate", "1e-12") == 0
    result = json.loads((out / "results.json").read_text())
    assert result["recipe"]["start_from"] == "teacher" and result["distill"]["teacher"] == str(
        out / "teacher" / "model"
    )
    teacher = load_file(str(out / "teacher" / "model" / "model.safetensors"))
    student = load_file(str(out / "model" / "model.safetensors"))
    assert teacher.keys() == student.keys()
    assert all(torch.allclose(teacher[k], student[k], atol=1e-6) for k in teacher)  # the trained head too
    teacher_recipe = json.loads((out / "teacher" / "results.json").read_text())["recipe"]
    assert "start_from" not in teacher_recipe or teacher_recipe["start_from"] == "model"


def test_start_from_teacher_without_a_teacher_is_a_one_line_error(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _finetune(workspace, workspace / "no-teacher", "--start_from", "teacher") == 2
    assert "start_from teacher needs a distill section" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("teacher", "message"),
    [
        ("missing", "does not exist; pass a fine-tuned model dir"),
        (
            "empty",
            "has no model; pass a fine-tuned model dir or prunebert run dir, or --distill.teacher auto",
        ),
        ("tiny-mlm", "has no trained classification head"),
    ],
)
def test_bad_teacher_is_a_one_line_error_before_any_run(
    workspace: Path, capsys: pytest.CaptureFixture[str], teacher: str, message: str
) -> None:
    (workspace / "empty").mkdir(exist_ok=True)
    out = workspace / f"bad-{teacher}"
    capsys.readouterr()
    assert (
        _finetune(workspace, out, "--train.max_steps", "1", "--distill.teacher", str(workspace / teacher))
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    if teacher != "tiny-mlm":
        assert not out.exists()  # nothing written: the corrected command starts cleanly


def test_finetune_help_lists_the_distill_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    out = capsys.readouterr().out
    assert all(f"--distill.{k}" in out for k in DistillConfig.model_fields)
