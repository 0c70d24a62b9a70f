"""Pruned weights stay exactly zero through everything training and saving can do to them."""

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedModel

from prunebert.config import PruningConfig
from prunebert.models import save_pruned, transfer_pruner
from prunebert.pruner import Pruner
from tiny import tiny_classifier

BATCH = {
    "input_ids": torch.randint(5, 128, (4, 12), generator=torch.Generator().manual_seed(0)),
    "labels": torch.tensor([0, 1, 1, 0]),
}


def _pruned_are_zero(pruner: Pruner) -> bool:
    """Exactly +0.0: no -0.0 either (a sign bit would cost sparse storage one bit per pruned weight)."""
    return all(
        bool((w[~pruner.masks[n]] == 0).all()) and not bool(torch.signbit(w[~pruner.masks[n]]).any())
        for n, w in pruner.weights().items()
    )


def _train(
    model: PreTrainedModel,
    pruner: Pruner,
    optimizer: torch.optim.Optimizer,
    steps: int,
    accumulate: int = 1,
    autocast: torch.dtype | None = None,
    check: Callable[[], None] | None = None,
) -> None:
    for _ in range(steps):
        for _ in range(accumulate):
            with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
                loss = model(**BATCH).loss / accumulate
            loss.backward()
        for n, w in pruner.weights().items():
            assert bool((w.grad[~pruner.masks[n]] == 0).all()), "gradient of a pruned weight is not zero"
        optimizer.step()
        pruner.after_optimizer_step(optimizer)
        optimizer.zero_grad()
        if check is not None:
            check()


@pytest.mark.parametrize("accumulate,autocast", [(1, None), (3, None), (1, torch.bfloat16)])
def test_zero_through_adamw_momentum_decay_accumulation_precision(
    accumulate: int, autocast: torch.dtype | None
) -> None:
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(sparsity=0.6, schedule="oneshot", start_fraction=0.5))
    pruner.start(total_steps=8)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-2, weight_decay=0.5, betas=(0.9, 0.999))
    _train(model, pruner, opt, 3, accumulate, autocast)  # dense steps build momentum in every weight
    assert pruner.update(4, opt)  # prune now: the stale momentum must not move the pruned weights
    _train(model, pruner, opt, 4, accumulate, autocast, check=lambda: None)
    assert _pruned_are_zero(pruner)
    for n, w in pruner.weights().items():
        state = opt.state[w]
        assert bool((state["exp_avg"][~pruner.masks[n]] == 0).all())
    assert pruner.module_sparsity() == {n: pytest.approx(0.6, abs=0.01) for n in pruner.masks}


def test_forward_sees_zeros_right_after_each_step() -> None:
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(sparsity=0.5, schedule="oneshot"))
    pruner.start(4)
    pruner.update(0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-1, weight_decay=0.1)
    _train(model, pruner, opt, 3, check=lambda: None if _pruned_are_zero(pruner) else pytest.fail("leak"))


def test_gradual_masks_are_nested() -> None:
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(sparsity=0.8, schedule="cubic", end_fraction=1.0, frequency=1))
    pruner.start(total_steps=5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    previous = {n: m.clone() for n, m in pruner.masks.items()}
    for step in range(1, 6):
        _train(model, pruner, opt, 1)
        pruner.update(step, opt)
        assert all(bool((~previous[n] & pruner.masks[n]).sum() == 0) for n in previous), "a weight regrew"
        previous = {n: m.clone() for n, m in pruner.masks.items()}
    assert pruner.overall_sparsity() == pytest.approx(0.8, abs=0.005)


def test_saved_model_loads_in_plain_transformers_with_same_zeros_and_outputs(
    tmp_path: Path, tiny_tokenizer
) -> None:
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(sparsity=0.7, scope="global", schedule="oneshot"))
    pruner.start(1)
    pruner.update(0)
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=BATCH["input_ids"]).logits
    save_pruned(model, tiny_tokenizer, pruner, tmp_path)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(plain(input_ids=BATCH["input_ids"]).logits, expected)
    plain_state = plain.state_dict()
    for name, mask in pruner.masks.items():
        assert torch.equal(plain_state[name] == 0, ~mask)
    assert set(plain_state) == set(model.state_dict())  # clean keys: no weight_orig / weight_mask
    encoder = AutoModel.from_pretrained(tmp_path)  # headless load, keys without the "bert." prefix
    assert torch.equal(
        encoder.state_dict()["encoder.layer.0.attention.self.query.weight"] == 0,
        ~pruner.masks["bert.encoder.layer.0.attention.self.query.weight"],
    )


def test_transferred_mask_stays_fixed_in_further_training(tmp_path: Path, tiny_tokenizer) -> None:
    source = tiny_classifier(seed=1)
    pruner = Pruner(source, PruningConfig(sparsity=0.5, schedule="oneshot"))
    pruner.start(1)
    pruner.update(0)
    save_pruned(source, tiny_tokenizer, pruner, tmp_path)
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    fixed = transfer_pruner(model, str(tmp_path), None)
    assert fixed is not None
    fixed.start(10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-1, weight_decay=0.1)
    _train(model, fixed, opt, 3)
    assert not fixed.update(5, opt)
    assert all(torch.equal(fixed.masks[n], pruner.masks[n]) for n in pruner.masks)
    assert _pruned_are_zero(fixed)
