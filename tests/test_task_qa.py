"""Extractive QA (SQuAD v1.1 style) on generated data: loading, windows, span decoding, EM/F1, and the real
finetune -> evaluate path with pruning and distillation on a tiny model."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from transformers import AutoModelForQuestionAnswering, PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.data import hub, load_task
from prunebert.data.qa import QAColumns
from prunebert.data.qa_features import best_answers, qa_features, window_labels
from prunebert.errors import PrunebertError
from prunebert.metrics import normalize_answer, squad_f1, squad_scores
from prunebert.stages.distill import soft_label_loss, span_soft_loss
from taskdata import qa_rows, similarity_rows, write_qa, write_qa_csv, write_similarity
from tiny import sentences, tiny_mlm
from tinystudy import chdir

FAST = ["--train.batch_size", "8", "--train.logging_steps", "2", "--train.save_steps", "100"]


# ---- metrics -------------------------------------------------------------------------------------


def test_squad_normalisation_and_scores_by_hand() -> None:
    assert normalize_answer("The  Cat, sat on an old mat!") == "cat sat on old mat"
    assert squad_f1("the cat sat", "cat sat on mat") == pytest.approx(2 * 1.0 * 0.5 / 1.5)  # P=1, R=1/2
    assert squad_f1("dog", "cat") == 0.0
    scores = squad_scores(["A cat.", "dog ran", ""], [["the cat"], ["mat", "the dog ran home"], ["x"]])
    assert scores["exact_match"] == pytest.approx(1 / 3)  # only "A cat." == "the cat" after normalising
    assert scores["f1"] == pytest.approx((1.0 + 0.8 + 0.0) / 3)  # "dog ran" vs "dog ran home": P=1, R=2/3


# ---- windows and span decoding -------------------------------------------------------------------


def test_window_labels_by_hand() -> None:
    # [CLS] q [SEP] c0 c1 c2 [SEP]: context tokens cover characters 0-3, 4-7, 8-11
    offsets = [(0, 0), (0, 1), (0, 0), (0, 3), (4, 7), (8, 11), (0, 0)]
    ids = [None, 0, None, 1, 1, 1, None]
    assert window_labels(offsets, ids, (4, 11), cls=0) == (4, 5)
    assert window_labels(offsets, ids, (5, 6), cls=0) == (4, 4)  # inside one token
    assert window_labels(offsets, ids, (8, 15), cls=0) == (0, 0)  # runs past the window: [CLS]


@pytest.fixture(scope="module")
def long_split() -> datasets.Dataset:
    rows = qa_rows(12, seed=1, filler=12)  # contexts of ~50 tokens: several windows of 24
    return datasets.Dataset.from_dict(
        {
            "id": [r["id"] for r in rows],
            "question": [r["question"] for r in rows],
            "context": [r["context"] for r in rows],
            "answer_text": [r["answers"]["text"] for r in rows],
            "answer_start": [r["answers"]["answer_start"] for r in rows],
        }
    )


def test_windows_overlap_by_the_stride_and_their_labels_point_at_the_answer(
    long_split: datasets.Dataset, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    windows = qa_features(long_split, tiny_tokenizer, max_length=24, stride=6)
    per_example = np.bincount(windows["example_index"], minlength=len(long_split))
    assert per_example.min() >= 1 and per_example.max() >= 3 and len(windows) > len(long_split)
    labelled = set()
    for w in windows:
        assert len(w["input_ids"]) <= 24 and w["input_ids"][0] == tiny_tokenizer.cls_token_id
        if w["start_positions"] == 0:
            continue
        ex = long_split[w["example_index"]]
        first, last = w["offset_mapping"][w["start_positions"]], w["offset_mapping"][w["end_positions"]]
        assert ex["context"][first[0] : last[1]] == ex["answer_text"][0]
        labelled.add(w["example_index"])
    assert labelled == set(range(len(long_split)))  # every answer fits in some window
    same = [
        i for i in range(len(windows) - 1) if windows[i]["example_index"] == windows[i + 1]["example_index"]
    ]
    for i in same:  # consecutive windows of a context share exactly `stride` tokens
        a = [tuple(o) for o in windows[i]["offset_mapping"] if o[0] >= 0]
        b = [tuple(o) for o in windows[i + 1]["offset_mapping"] if o[0] >= 0]
        assert a[-6:] == b[:6]


def test_oracle_logits_recover_every_gold_answer(
    long_split: datasets.Dataset, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    windows = qa_features(long_split, tiny_tokenizer, max_length=24, stride=6)
    width = max(len(ids) for ids in windows["input_ids"])
    start = np.full((len(windows), width), -100.0)  # the Trainer pads predictions with -100
    end = start.copy()
    for w, (s, e) in enumerate(zip(windows["start_positions"], windows["end_positions"], strict=True)):
        if s != 0:  # a window holding the answer is sure of it; the others are unsure
            start[w, s], end[w, e] = 10.0, 10.0
        else:
            start[w, : len(windows[w]["input_ids"])] = end[w, : len(windows[w]["input_ids"])] = 0.0
    texts = best_answers(start, end, windows, long_split["context"])
    assert texts == [a[0] for a in long_split["answer_text"]]
    assert squad_scores(texts, long_split["answer_text"]) == {"exact_match": 1.0, "f1": 1.0}


def test_span_choice_skips_question_tokens_reversed_and_too_long_spans() -> None:
    context = "aa bb cc dd"
    features = datasets.Dataset.from_dict(
        {
            "example_index": [0],
            "offset_mapping": [[[-1, -1], [-1, -1], [-1, -1], [0, 2], [3, 5], [6, 8], [9, 11], [-1, -1]]],
        }
    )
    start = np.array([[0.0, 9.0, 0.0, 1.0, 0.0, 5.0, 0.0, 0.0]])  # best start is a question token
    end = np.array([[0.0, 9.0, 0.0, -5.0, 4.0, -5.0, -5.0, 0.0]])
    assert best_answers(start, end, features, [context]) == ["aa bb"]  # (3, 4): 1 + 4; (5, 4) is reversed
    end[0, 6] = 3.5
    assert best_answers(start, end, features, [context]) == ["cc dd"]  # (5, 6): 5 + 3.5
    assert best_answers(start, end, features, [context], max_answer_length=1) == ["bb"]  # (4, 4): 0 + 4


# ---- loading -------------------------------------------------------------------------------------


def test_local_jsonl_and_csv_load_alike_and_splits_keep_contexts_whole(tmp_path: Path) -> None:
    rows = qa_rows(40)
    rows += [{**r, "id": r["id"] + "b"} for r in rows[:20]]  # second questions on 20 contexts
    a = load_task(str(write_qa(tmp_path / "qa.jsonl", rows)))
    b = load_task(str(write_qa_csv(tmp_path / "qa.csv", rows)))
    assert a.kind == b.kind == "qa" and a.metric == "squad"
    for split in ("train", "dev", "test"):
        assert getattr(a, split).to_dict() == getattr(b, split).to_dict()
    contexts = [set(s["context"]) for s in (a.train, a.dev, a.test)]
    assert not (contexts[0] & contexts[1] or contexts[0] & contexts[2] or contexts[1] & contexts[2])
    assert sum(len(s) for s in (a.train, a.dev, a.test)) == 60


def _squad_like(rows: list[dict]) -> datasets.Dataset:
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "title": datasets.Value("string"),
            "context": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": datasets.Sequence(
                {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
            ),
        }
    )
    return datasets.Dataset.from_list([{**r, "title": "t"} for r in rows], features=features)


def test_hub_squad_goes_through_the_local_files_function(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = qa_rows(45)
    first_word = rows[40]["context"].split()[0]  # a second annotator's answer: the context's first word
    answers = rows[40]["answers"]
    rows[40]["answers"] = {
        "text": [*answers["text"], first_word],
        "answer_start": [*answers["answer_start"], 0],
    }
    dd = datasets.DatasetDict({"train": _squad_like(rows[:40]), "validation": _squad_like(rows[40:45])})
    calls: list[tuple[str, str | None]] = []
    monkeypatch.setattr(hub, "hub_load", lambda n, c: calls.append((n, c)) or dd)
    task = load_task("squad")
    assert calls == [("squad", None)] and task.kind == "qa"
    assert len(task.test) == 5 and len(task.train) + len(task.dev) == 40  # validation is test
    assert task.test["answer_text"] == [r["answers"]["text"] for r in rows[40:45]]
    assert len(task.test["answer_text"][0]) == 2
    bad = datasets.DatasetDict(
        {"train": _squad_like([{**rows[0], "answers": {"text": [], "answer_start": []}}])}
    )
    monkeypatch.setattr(hub, "hub_load", lambda n, c: bad)
    with pytest.raises(PrunebertError, match="unanswerable"):
        load_task("squad_v2")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"answers": {"text": ["dog ran"], "answer_start": [0]}}, "is not in its context at answer_start"),
        ({"answers": {"text": ["the"], "answer_start": [-3]}}, "give the answer's character offset"),
        ({"answers": {"text": [], "answer_start": []}}, "unanswerable"),
        ({"answers": "nonsense"}, 'answers must be {"text"'),
    ],
)
def test_bad_answers_are_one_line_errors_naming_the_row(tmp_path: Path, change: dict, message: str) -> None:
    rows = qa_rows(10)
    rows[3] = {**rows[3], **change}
    with pytest.raises(PrunebertError, match=re.escape(message)) as info:
        load_task(str(write_qa(tmp_path / "qa.jsonl", rows)), task_type="qa")
    assert "row 4 of" in str(info.value) and "\n" not in str(info.value)


def test_misplaced_answer_start_snaps_to_the_nearby_answer(tmp_path: Path) -> None:
    rows = qa_rows(10)
    start = rows[0]["answers"]["answer_start"][0]
    rows[0]["answers"] = {**rows[0]["answers"], "answer_start": [start + 2]}
    task = load_task(str(write_qa(tmp_path / "qa.jsonl", rows)))
    split = next(s for s in (task.train, task.dev, task.test) if "q0" in s["id"])
    assert split[split["id"].index("q0")]["answer_start"] == [start]


def test_missing_question_column_and_too_long_questions(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    path = write_qa(tmp_path / "qa.jsonl", qa_rows(10))
    with pytest.raises(PrunebertError, match=r"question column 'query' not in .*--qa\.question_column"):
        load_task(str(path), task_type="qa", qa_columns=QAColumns(question="query"))
    task = load_task(str(path))
    with pytest.raises(PrunebertError, match=r"raise --max_seq_length or lower --qa\.doc_stride"):
        qa_features(task.train, tiny_tokenizer, max_length=8, stride=4)


# ---- the real stages on a tiny model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    root = tmp_path_factory.mktemp("qa")
    tiny_mlm().save_pretrained(root / "tiny-mlm")
    tiny_tokenizer.save_pretrained(root / "tiny-mlm")
    write_qa(root / "qa.jsonl", qa_rows(80, filler=8))
    return root


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_finetune_prune_distill_then_evaluate(workspace: Path) -> None:
    run = workspace / "ft"
    argv = ["--task", str(workspace / "qa.jsonl"), "--max_seq_length", "24", "--qa.doc_stride", "6"]
    assert (
        main(
            [
                "finetune",
                "--model",
                str(workspace / "tiny-mlm"),
                "--output_dir",
                str(run),
                *argv,
                "--train.max_steps",
                "6",
                "--pruning.sparsity",
                "0.5",
                "--pruning.frequency",
                "2",
                "--pruning.end_fraction",
                "0.5",
                "--distill.teacher",
                "auto",
                *FAST,
            ]
        )
        == 0
    )
    result = _results(run)
    assert result["task"]["kind"] == "qa" and result["task"]["metric"] == "squad"
    for split in ("dev", "test"):
        assert set(result["metrics"][split]) == {"exact_match", "f1", "loss"}
        assert 0.0 <= result["metrics"][split]["exact_match"] <= result["metrics"][split]["f1"] <= 1.0
    assert result["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
    assert result["distill"]["teacher"].endswith("teacher/model")
    assert _results(run / "teacher")["task"]["kind"] == "qa"
    logged = [e for e in result["train"]["log_history"] if "loss_soft" in e]
    assert logged and all(e["loss_soft"] >= 0 for e in logged)  # the span soft loss was trained on

    model = AutoModelForQuestionAnswering.from_pretrained(run / "model")  # plain transformers, trained head
    weight = model.bert.encoder.layer[0].attention.self.query.weight
    assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)

    out = workspace / "eval.json"
    assert main(["evaluate", "--model", str(run), *argv, "--output", str(out)]) == 0
    evaluated = json.loads(out.read_text())["metrics"]
    for split in ("dev", "test"):
        assert evaluated[split] == pytest.approx(result["metrics"][split])


def test_evaluate_refuses_a_model_without_a_qa_head(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["evaluate", "--model", str(workspace / "tiny-mlm"), "--task", str(workspace / "qa.jsonl")]) == 2
    )
    assert "no trained question-answering head" in capsys.readouterr().err


def test_span_soft_loss_ignores_padding_and_averages_start_and_end() -> None:
    g = torch.Generator().manual_seed(0)
    s_start, s_end, t_start, t_end = (torch.randn(2, 6, generator=g) for _ in range(4))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    loss = span_soft_loss((s_start, s_end), (t_start, t_end), mask, 2.0)
    changed = s_start.clone()
    changed[1, 4:] += 50.0  # padding positions of the student take no part
    assert span_soft_loss((changed, s_end), (t_start, t_end), mask, 2.0) == pytest.approx(loss.item())
    by_hand = [
        (soft_label_loss(s[:1], t[:1], 2.0) + soft_label_loss(s[1:, :4], t[1:, :4], 2.0)) / 2
        for s, t in ((s_start, t_start), (s_end, t_end))
    ]
    assert loss.item() == pytest.approx(((by_hand[0] + by_hand[1]) / 2).item(), rel=1e-5)
    assert span_soft_loss((t_start, t_end), (t_start, t_end), mask, 2.0).item() == pytest.approx(
        0.0, abs=1e-6
    )


STUDY = """
model: tiny-mlm
text: text.txt
output_dir: study
tasks:
  - {task: qa.jsonl, name: qa, max_seq_length: 24, qa: {doc_stride: 6}}
  - {task: sts.csv, name: sts, text_column: sentence1, text_pair_column: sentence2, label_column: score,
     max_seq_length: 16}
stages: [pretrain, finetune]
sparsities: [0.0, 0.5]
methods:
  - magnitude
  - {name: magnitude+kd, method: magnitude, distill: {alpha_soft: 0.5}, stages: [finetune]}
pretrain:
  block_size: 16
  head_warmup_steps: 0
  max_eval_blocks: 8
  train: {max_steps: 4, batch_size: 4, save_steps: 100}
  pruning: {frequency: 2, end_fraction: 0.5}
finetune:
  train: {max_steps: 4, batch_size: 8, logging_steps: 2, save_steps: 100}
  pruning: {frequency: 2, end_fraction: 0.5}
"""


def test_qa_and_regression_tasks_in_a_study_and_its_report(workspace: Path) -> None:
    rng = random.Random(0)
    (workspace / "text.txt").write_text("\n\n".join(s for s, _ in sentences(rng, 200)))
    write_similarity(workspace / "sts.csv", similarity_rows(120))
    (workspace / "study.yaml").write_text(STUDY)
    with chdir(workspace):
        assert main(["study", "study.yaml"]) == 0
        assert main(["report", "study"]) == 0
    table = json.loads((workspace / "study" / "results.json").read_text())
    assert table["complete"] and table["runs_total"] == 12
    cells = {(c["task"], c["stage"], c["method"]): c for c in table["cells"]}
    assert {c["metric"] for k, c in cells.items() if k[0] == "qa"} == {"f1"}
    assert {c["metric"] for k, c in cells.items() if k[0] == "sts"} == {"combined"}
    for task in ("qa", "sts"):
        transferred = cells[(task, "pretrain", "magnitude")]  # the MLM stage's mask, kept while fine-tuning
        assert transferred["achieved_sparsity"] == pytest.approx(0.5, abs=1e-3)
        assert cells[(task, "finetune", "magnitude+kd")]["final_train_loss"] is not None
    assert {"dev_exact_match", "test_f1"} <= set(cells[("qa", "finetune", "dense")])
    report = workspace / "study" / "report"
    assert (report / "train_loss_vs_sparsity.png").is_file() and (report / "metric_vs_sparsity.png").is_file()
    with (report / "comparison.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(cells) and all(r["relative_performance"] for r in rows if r["task"] == "qa")
