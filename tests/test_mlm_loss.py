"""The masked-positions MLM loss equals the model's own loss, with the same gradients, per architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunebert.stages.mlm import HEAD_ENTRY, MaskedPositionsTrainer, head_entry
from tiny import tiny_mlm, tiny_training_args


def _batch(model_type: str, masked_positions: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 128, (3, 10), generator=g)
    labels = torch.full_like(ids, -100)
    flat = torch.randperm(ids.numel(), generator=g)[:masked_positions]
    labels.view(-1)[flat] = ids.view(-1)[flat]
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    if model_type != "distilbert":
        batch["token_type_ids"] = torch.zeros_like(ids)
    return batch


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "distilbert"])
def test_masked_positions_loss_and_grads_match_full_forward(model_type: str, tmp_path: Path) -> None:
    model = tiny_mlm(model_type)
    model.train()
    assert head_entry(model) is not None
    batch = _batch(model_type)
    torch.manual_seed(0)  # the same dropout masks in both forwards
    full = model(**batch).loss
    full.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    trainer = MaskedPositionsTrainer(model=model, args=tiny_training_args(tmp_path, 1))
    model.train()
    torch.manual_seed(0)
    loss = trainer.compute_loss(model, batch)
    assert isinstance(loss, torch.Tensor)
    torch.testing.assert_close(loss, full)
    loss.backward()
    for name, grad in expected.items():
        torch.testing.assert_close(model.get_parameter(name).grad, grad, atol=1e-6, rtol=1e-5)


def test_batch_without_masked_tokens_gives_zero_loss(tmp_path: Path) -> None:
    model = tiny_mlm("bert")
    trainer = MaskedPositionsTrainer(model=model, args=tiny_training_args(tmp_path, 1))
    model.train()
    loss = trainer.compute_loss(model, _batch("bert", masked_positions=0))
    assert isinstance(loss, torch.Tensor) and loss.item() == 0.0
    loss.backward()  # the graph is intact


def test_eval_mode_keeps_full_logits(tmp_path: Path) -> None:
    model = tiny_mlm("bert")
    trainer = MaskedPositionsTrainer(model=model, args=tiny_training_args(tmp_path, 1))
    model.eval()
    _, outputs = trainer.compute_loss(model, _batch("bert"), return_outputs=True)
    assert outputs.logits.shape == (3, 10, 128)


def test_every_supported_architecture_has_a_head_entry() -> None:
    from prunebert.targets import ARCHITECTURES

    assert set(ARCHITECTURES) <= set(HEAD_ENTRY)
