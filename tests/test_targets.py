"""Per-architecture target tables find the same six encoder matrices per layer in every family."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from prunebert.errors import PrunebertError
from prunebert.targets import ENCODER_ROLES, find_targets
from tiny import tiny_classifier, tiny_mlm


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert", "electra"])
def test_default_targets_per_family(model_type: str) -> None:
    targets = find_targets(tiny_classifier(model_type))
    assert len(targets) == 2 * len(ENCODER_ROLES)
    assert {t.role for t in targets} == set(ENCODER_ROLES)
    assert {t.layer for t in targets} == {0, 1}


def test_embeddings_are_optional_and_head_never_targeted() -> None:
    model = tiny_mlm("bert")
    names = [t.name for t in find_targets(model, include_embeddings=True)]
    assert "bert.embeddings.word_embeddings" in names
    assert not any("cls." in n or "pooler" in n for n in names)


def test_custom_patterns_keep_known_roles() -> None:
    targets = find_targets(tiny_classifier("bert"), patterns=[r"layer\.1\.attention\.self\.query$"])
    assert [(t.role, t.layer) for t in targets] == [("query", 1)]


def test_unsupported_and_unmatched_are_clear_errors() -> None:
    config = AutoConfig.for_model("gpt2", n_layer=1, n_embd=16, n_head=2, vocab_size=32)
    torch.manual_seed(0)
    with pytest.raises(PrunebertError, match="not a supported encoder"):
        find_targets(AutoModelForCausalLM.from_config(config))
    with pytest.raises(PrunebertError, match="no prunable 2-D weights matched"):
        find_targets(tiny_classifier("bert"), patterns=["nothing_matches_this"])
