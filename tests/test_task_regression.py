"""Regression tasks (STS-B style: one float label, MSE, Pearson/Spearman) on generated sentence pairs whose
similarity is computable: loading, forcing the task type, and finetune -> evaluate with pruning and
distillation on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from transformers import AutoConfig, PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.data import TaskData, hub, load_task
from prunebert.errors import PrunebertError
from taskdata import similarity_rows, write_similarity
from tiny import tiny_mlm

COLUMNS = ["--text_column", "sentence1", "--text_pair_column", "sentence2", "--label_column", "score"]
FAST = ["--train.batch_size", "8", "--train.logging_steps", "2", "--train.save_steps", "100"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    root = tmp_path_factory.mktemp("sts")
    tiny_mlm().save_pretrained(root / "tiny-mlm")
    tiny_tokenizer.save_pretrained(root / "tiny-mlm")
    write_similarity(root / "sts.csv", similarity_rows(160))
    return root


def _task(workspace: Path) -> TaskData:
    columns = {"text_column": "sentence1", "text_pair_column": "sentence2", "label_column": "score"}
    return load_task(str(workspace / "sts.csv"), **columns)


def test_float_scores_make_a_pair_regression(workspace: Path) -> None:
    task = _task(workspace)
    assert task.kind == "regression" and task.num_labels == 1 and task.is_pair
    assert task.metric == "pearson_spearman" and task.train.features["label"].dtype == "float32"


def test_task_type_forces_the_kind(tmp_path: Path) -> None:
    whole = tmp_path / "scores.jsonl"  # integer scores 0..5 would be classes unless told otherwise
    whole.write_text("".join(json.dumps({"text": f"t {i}", "label": i % 6}) + "\n" for i in range(60)))
    assert load_task(str(whole)).kind == "classification"
    forced = load_task(str(whole), task_type="regression")
    assert forced.kind == "regression" and forced.train.features["label"].dtype == "float32"
    floats = tmp_path / "floats.jsonl"  # 0.0 / 1.0 written as floats are classes when told so
    floats.write_text(
        "".join(json.dumps({"text": f"t {i}", "label": float(i % 2)}) + "\n" for i in range(40))
    )
    assert load_task(str(floats)).kind == "regression"
    classes = load_task(str(floats), task_type="classification")
    assert classes.kind == "classification" and classes.label_names == ["0", "1"]
    with pytest.raises(PrunebertError, match="fractional numbers, which are not classes"):
        load_task(str(_fractional(tmp_path)), task_type="classification")
    with pytest.raises(PrunebertError, match="cannot be a regression target"):
        load_task(str(_strings(tmp_path)), task_type="regression")


def _fractional(tmp_path: Path) -> Path:
    path = tmp_path / "fractional.jsonl"
    path.write_text("".join(json.dumps({"text": f"t {i}", "label": i / 7}) + "\n" for i in range(30)))
    return path


def _strings(tmp_path: Path) -> Path:
    path = tmp_path / "strings.jsonl"
    path.write_text("".join(json.dumps({"text": f"t {i}", "label": "ab"[i % 2]}) + "\n" for i in range(30)))
    return path


def test_hub_glue_stsb_goes_through_the_local_files_path(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = similarity_rows(30)

    def split(part: list[dict], hidden: bool) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "sentence1": [r["sentence1"] for r in part],
                "sentence2": [r["sentence2"] for r in part],
                "label": [-1.0 if hidden else float(r["score"]) for r in part],
                "idx": list(range(len(part))),
            }
        )

    dd = datasets.DatasetDict(
        {
            "train": split(rows[:20], False),
            "validation": split(rows[20:26], False),
            "test": split(rows[26:], True),
        }
    )
    monkeypatch.setattr(hub, "hub_load", lambda n, c: dd)
    task = load_task("glue/stsb")
    assert task.kind == "regression" and task.is_pair and task.metric == "pearson_spearman"
    assert len(task.test) == 6 and task.test["label"] == pytest.approx([r["score"] for r in rows[20:26]])


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_finetune_prune_distill_then_evaluate(workspace: Path) -> None:
    run = workspace / "ft"
    task = ["--task", str(workspace / "sts.csv"), *COLUMNS, "--max_seq_length", "16"]
    argv = ["finetune", "--model", str(workspace / "tiny-mlm"), "--output_dir", str(run), *task]
    steps = ["--train.max_steps", "16", "--train.learning_rate", "3e-3"]
    pruning = ["--pruning.sparsity", "0.5", "--pruning.frequency", "2", "--pruning.end_fraction", "0.5"]
    assert main([*argv, *steps, *pruning, "--distill.teacher", "auto", *FAST]) == 0
    result = _results(run)
    assert result["task"]["kind"] == "regression" and result["task"]["num_labels"] == 1
    for split in ("dev", "test"):
        assert set(result["metrics"][split]) == {"pearson", "spearman", "combined", "loss"}
    assert result["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
    config = AutoConfig.from_pretrained(run / "model")
    assert config.problem_type == "regression" and config.num_labels == 1
    teacher = _results(run / "teacher")
    assert teacher["task"]["kind"] == "regression" and teacher["sparsity"]["overall"] == 0.0
    assert any("loss_soft" in e for e in result["train"]["log_history"])  # MSE to the teacher's scores

    # the head regresses the scores: its test MSE is well below that of the untrained head's ~0 output
    labels = _task(workspace).test["label"]
    assert result["metrics"]["test"]["loss"] < 0.75 * sum(y * y for y in labels) / len(labels)

    out = workspace / "eval.json"
    assert main(["evaluate", "--model", str(run), *task, "--output", str(out)]) == 0
    evaluated = json.loads(out.read_text())["metrics"]
    for split in ("dev", "test"):
        assert evaluated[split] == pytest.approx(result["metrics"][split])
