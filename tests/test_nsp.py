"""Next-sentence prediction beside MLM (original BERT's pre-training): sentence pairs, the masked-positions
loss with the NSP term (golden against the model's own loss), head detection, and `pretrain --nsp`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForPreTraining, PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.data.nsp import IS_NEXT, RANDOM_NEXT, build_nsp_datasets, nsp_pairs, split_sentences
from prunebert.data.text import SeededMLMCollator
from prunebert.models import has_nsp_head
from prunebert.stages.mlm import MaskedPositionsTrainer
from tiny import tiny_config, tiny_mlm, tiny_training_args

#: each document speaks its own words, so a segment's words tell which document it came from
TOPICS = [["cat", "sat", "on", "mat"], ["dog", "ran", "home", "it"], ["movie", "film", "plot", "actor"]]
FAST = ["--train.batch_size", "4", "--train.logging_steps", "2", "--train.save_steps", "100"]


def documents(n: int, seed: int = 0, sentences: tuple[int, int] = (4, 9)) -> list[str]:
    """`n` documents of `sentences` sentences, document i using only the words of topic i % 3."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = TOPICS[i % 3]
        count = rng.randint(*sentences)
        docs.append(" ".join(" ".join(rng.choices(words, k=rng.randint(2, 6))) + " ." for _ in range(count)))
    return docs


def test_sentences_split_after_end_marks_and_at_line_breaks() -> None:
    assert split_sentences("a b. c d! e?\nf g\n\n h.") == ["a b.", "c d!", "e?", "f g", "h."]


def _topic(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> set[int]:
    words = set(tokenizer.convert_ids_to_tokens(ids)) - {"."}
    return {t for t, topic in enumerate(TOPICS) if words & set(topic)}


def test_pairs_are_half_actual_next_half_from_another_document(
    tiny_tokenizer: PreTrainedTokenizerBase,
) -> None:
    docs = documents(3, sentences=(40, 60))  # one topic per document
    pairs = nsp_pairs(docs, tiny_tokenizer, block_size=24, seed=0)
    assert pairs == nsp_pairs(docs, tiny_tokenizer, block_size=24, seed=0)  # seeded
    labels = [label for _, _, label in pairs]
    assert len(pairs) > 40 and 0.35 < labels.count(IS_NEXT) / len(labels) < 0.65
    for a, b, label in pairs:
        assert a and b and len(a) + len(b) <= 24 - 3
        same = _topic(tiny_tokenizer, a) == _topic(tiny_tokenizer, b)
        assert same == (label == IS_NEXT)


def test_actual_next_segments_continue_their_text(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    docs = documents(6)
    streams = [tiny_tokenizer(d, add_special_tokens=False)["input_ids"] for d in docs]
    pairs = nsp_pairs(docs, tiny_tokenizer, block_size=500, seed=1)  # long enough: nothing truncated
    contiguous = 0
    for a, b, label in pairs:
        if label != IS_NEXT:
            continue
        joined = a + b
        assert any(joined == s[i : i + len(joined)] for s in streams for i in range(len(s)))
        contiguous += 1
    assert contiguous >= 1


def test_datasets_hold_bert_pairs_eval_padded_and_masked(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    train, held_out = build_nsp_datasets(documents(30), tiny_tokenizer, 24, eval_fraction=0.2, seed=0)
    cls, sep = tiny_tokenizer.cls_token_id, tiny_tokenizer.sep_token_id
    for row in train:
        ids, types = row["input_ids"], row["token_type_ids"]
        first = ids.index(sep)
        assert ids[0] == cls and ids[-1] == sep and ids.count(sep) == 2 and len(ids) <= 24
        assert types == [0] * (first + 1) + [1] * (len(ids) - first - 1)
        assert row["next_sentence_label"] in (IS_NEXT, RANDOM_NEXT)
    assert all(len(ids) == 24 for ids in held_out["input_ids"])
    labels = torch.tensor(held_out["labels"])
    mask = torch.tensor(held_out["attention_mask"])
    assert (labels[mask == 0] == -100).all() and (labels != -100).any()


def _nsp_batch(tokenizer: PreTrainedTokenizerBase) -> dict[str, torch.Tensor]:
    train, _ = build_nsp_datasets(documents(12), tokenizer, 24, seed=0)
    collator = SeededMLMCollator(tokenizer, 0.3, seed=0)
    return collator([train[i] for i in range(8)])


def test_masked_positions_loss_with_nsp_equals_the_models_own(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    torch.manual_seed(0)
    model = BertForPreTraining(tiny_config(vocab_size=len(tiny_tokenizer)))
    batch = _nsp_batch(tiny_tokenizer)
    assert batch["next_sentence_label"].shape == (8,) and (batch["labels"] != -100).any()
    trainer = MaskedPositionsTrainer(model=model, args=tiny_training_args(tmp_path, 1))
    model.train()
    torch.manual_seed(1)
    fast = trainer.compute_loss(model, dict(batch))
    torch.manual_seed(1)  # same dropout
    own = model(**batch).loss  # MLM over masked tokens + NSP
    assert fast.item() == pytest.approx(own.item(), rel=1e-5)
    model.eval()
    loss, outputs = trainer.compute_loss(model, dict(batch), return_outputs=True)
    logits = outputs.prediction_logits
    mlm = torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), batch["labels"].view(-1))
    assert loss.item() == pytest.approx(mlm.item(), rel=1e-5)  # evaluation: the MLM term alone
    assert outputs.seq_relationship_logits.shape == (8, 2)


def test_nsp_head_is_found_in_the_config_or_the_weights(tmp_path: Path) -> None:
    BertForPreTraining(tiny_config()).save_pretrained(tmp_path / "pretraining")
    tiny_mlm().save_pretrained(tmp_path / "mlm")
    assert has_nsp_head(str(tmp_path / "pretraining")) and not has_nsp_head(str(tmp_path / "mlm"))
    config = tmp_path / "pretraining" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "architectures": ["BertModel"]}))
    assert has_nsp_head(str(tmp_path / "pretraining"))  # the weights still hold cls.seq_relationship


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    root = tmp_path_factory.mktemp("nsp")
    torch.manual_seed(0)
    BertForPreTraining(tiny_config()).save_pretrained(root / "tiny-bert")
    tiny_mlm().save_pretrained(root / "tiny-mlm")
    for name in ("tiny-bert", "tiny-mlm"):
        tiny_tokenizer.save_pretrained(root / name)
    (root / "text.txt").write_text("\n\n".join(documents(40)))
    return root


def _pretrain(workspace: Path, model: str, out: str, *extra: str) -> int:
    return main(
        [
            "pretrain",
            "--model",
            str(workspace / model),
            "--text",
            str(workspace / "text.txt"),
            "--output_dir",
            str(workspace / out),
            "--block_size",
            "24",
            "--train.max_steps",
            "6",
            *FAST,
            *extra,
        ]
    )


def test_pretrain_trains_mlm_and_nsp_when_the_checkpoint_has_the_head(workspace: Path) -> None:
    pruning = ["--pruning.sparsity", "0.5", "--pruning.frequency", "2"]
    assert _pretrain(workspace, "tiny-bert", "with-nsp", *pruning) == 0
    result = json.loads((workspace / "with-nsp" / "results.json").read_text())
    assert result["nsp"]["used"] and result["nsp"]["setting"] == "auto"
    metrics = result["metrics"]
    assert 0.0 <= metrics["nsp_accuracy"] <= 1.0 and metrics["nsp_loss"] > 0 and metrics["mlm_loss"] > 0
    assert "nsp_accuracy" in result["metrics_before"]
    assert result["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
    before = load_file(workspace / "tiny-bert" / "model.safetensors")["cls.seq_relationship.weight"]
    after = load_file(workspace / "with-nsp" / "model" / "model.safetensors")["cls.seq_relationship.weight"]
    assert not torch.equal(before, after)  # the NSP loss reached its head


def test_nsp_off_and_models_without_the_head(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _pretrain(workspace, "tiny-bert", "nsp-off", "--nsp", "off") == 0
    off = json.loads((workspace / "nsp-off" / "results.json").read_text())
    assert not off["nsp"]["used"] and "nsp_accuracy" not in off["metrics"]
    assert _pretrain(workspace, "tiny-mlm", "no-head") == 0
    skipped = json.loads((workspace / "no-head" / "results.json").read_text())
    assert not skipped["nsp"]["used"] and "no next-sentence-prediction head" in skipped["nsp"]["note"]
    capsys.readouterr()
    assert _pretrain(workspace, "tiny-mlm", "forced", "--nsp", "on") == 2
    err = capsys.readouterr().err.strip()
    assert (
        "has no next-sentence-prediction head" in err and "--nsp auto" in err and len(err.splitlines()) == 1
    )
    assert not (workspace / "forced").exists()


def test_pretrain_distils_beside_mlm_and_nsp(workspace: Path) -> None:
    assert _pretrain(workspace, "tiny-bert", "nsp-distill", "--distill.teacher", "self") == 0
    result = json.loads((workspace / "nsp-distill" / "results.json").read_text())
    assert result["nsp"]["used"] and result["distill"]["weights"]["soft"] == 0.5  # a trained MLM head
    assert {"nsp_accuracy", "distill_loss", "distill_soft", "representation_cosine"} <= set(result["metrics"])
    assert result["metrics_before"]["distill_soft"] == pytest.approx(0.0, abs=1e-6)
