"""MiniLMv2 relation distillation: golden values by hand, masking, zero between identical models, hooks."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForMaskedLM

from prunebert.errors import PrunebertError
from prunebert.stages.relation import (
    capture_projections,
    encoder_depth,
    log_relations,
    mean_pooled,
    relation_kl,
    relation_loss,
)
from tiny import tiny_config, tiny_mlm

MASK = torch.tensor([[1, 1, 0]])  # one sequence, its third token padding


def _kl_from_uniform(p: float) -> float:
    """KL((p, 1 - p) || (1/2, 1/2))."""
    return p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))


def test_relation_kl_one_head_by_hand() -> None:
    teacher = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [5.0, -3.0]]])  # (B=1, T=3, H=2)
    student = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [9.0, 9.0]]])
    # teacher row 0: scores (q0.q0, q0.q1) / sqrt(2) = (sqrt 2, 0); row 1: (0, 0); the student is uniform
    p = math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + 1)
    expected = (_kl_from_uniform(p) + 0.0) / 2  # mean over the two real queries, one relation head
    assert relation_kl(student, teacher, MASK, heads=1).item() == pytest.approx(expected, rel=1e-6)


def test_relation_kl_splits_relation_heads() -> None:
    teacher = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    student = torch.zeros(1, 3, 2)
    p = math.e / (math.e + 1)  # each head has width 1: row 0 scores (1, 0)
    expected = (_kl_from_uniform(p) + _kl_from_uniform(p)) / (2 * 2)  # (heads x real queries)
    assert relation_kl(student, teacher, MASK, heads=2).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(PrunebertError, match="relation_heads"):
        relation_kl(student, teacher, MASK, heads=3)


def test_padded_keys_get_no_mass_and_padded_queries_do_not_count() -> None:
    x = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(0))
    probs = log_relations(x, 2, MASK).exp()  # (B, R, T, T)
    assert torch.all(probs[..., 2] == 0) and torch.allclose(probs.sum(-1), torch.ones(1, 2, 3))
    student = x.clone()
    student[0, 2] = torch.tensor([50.0, -7.0, 3.0, 1.0])  # only the padded token differs
    assert relation_kl(student, x, MASK, heads=2).item() == pytest.approx(0.0, abs=1e-7)


def test_relation_loss_sums_roles_and_averages_layer_pairs() -> None:
    teacher_q = torch.tensor([[[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]])
    zeros = torch.zeros(1, 3, 2)
    one = _kl_from_uniform(math.exp(math.sqrt(2)) / (math.exp(math.sqrt(2)) + 1)) / 2
    teacher = {("query", 0): teacher_q, ("key", 0): zeros, ("value", 0): teacher_q}
    teacher |= {(role, 1): zeros for role in ("query", "key", "value")}
    student = {(role, layer): zeros for role in ("query", "key", "value") for layer in (0, 1)}
    # layer 0: Q-Q and V-V relations differ (one each), K-K agrees; layer 1 agrees entirely
    loss = relation_loss(student, teacher, MASK, [(0, 0), (1, 1)], heads=1)
    assert loss.item() == pytest.approx((2 * one + 0.0) / 2, rel=1e-6)
    only_q = relation_loss(student, teacher, MASK, [(0, 0)], heads=1, roles=["query"])
    assert only_q.item() == pytest.approx(one, rel=1e-6)
    del student[("query", 1)]  # a student layer that did not run (LayerDrop) is left out
    assert relation_loss(student, teacher, MASK, [(0, 0), (1, 1)], 1).item() == pytest.approx(2 * one)


def test_mean_pooled_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    assert mean_pooled(hidden, MASK).tolist() == [[2.0, 3.0]]


def _captured_loss(student: torch.nn.Module, teacher: torch.nn.Module, heads: int = 4) -> torch.Tensor:
    ids = torch.randint(5, 128, (3, 9), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    pairs = [(0, 0), (1, 1)] if encoder_depth(teacher) == 2 else [(0, 1), (1, 3)]
    with torch.no_grad(), capture_projections(student) as qkv_s, capture_projections(teacher) as qkv_t:
        student(input_ids=ids, attention_mask=mask)
        teacher(input_ids=ids, attention_mask=mask)
    assert len(qkv_s) == 3 * encoder_depth(student) and qkv_s[("query", 0)].shape[:2] == (3, 9)
    return relation_loss(qkv_s, qkv_t, mask, pairs, heads)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "distilbert"])
def test_hooks_give_zero_between_identical_models_and_more_otherwise(model_type: str) -> None:
    student, same, other = (tiny_mlm(model_type, seed=s).eval() for s in (0, 0, 1))
    assert _captured_loss(student, same).item() == pytest.approx(0.0, abs=1e-6)
    assert _captured_loss(student, other).item() > 1e-5  # small: random init gives near-uniform relations
    assert not student._forward_hooks and all(not m._forward_hooks for m in student.modules())


def test_relations_compare_across_depth_and_width() -> None:
    torch.manual_seed(0)
    wide = AutoModelForMaskedLM.from_config(tiny_config(hidden_size=64, num_hidden_layers=4)).eval()
    assert encoder_depth(wide) == 4
    loss = _captured_loss(tiny_mlm().eval(), wide)  # 4 heads divide 32 and 64: (T, T) relations either way
    assert math.isfinite(loss.item()) and loss.item() > 0


def test_relations_stay_float32_under_bf16_autocast() -> None:
    # `precision: auto` trains under bf16 autocast; the padded keys' float32 mask value overflowed bf16
    # ("value cannot be converted to type c10::BFloat16 without overflow") in the first real upstream run
    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 8, generator=g), torch.randn(2, 5, 8, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    plain = relation_kl(student, teacher, mask, 2)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        autocast = relation_kl(student, teacher, mask, 2)
    assert autocast.dtype == torch.float32
    assert torch.allclose(autocast, plain)
