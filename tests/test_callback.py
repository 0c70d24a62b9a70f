"""The callback inside a stock HF Trainer: schedule followed, zeros exact, checkpoints resume the masks."""

from pathlib import Path

import pytest
import torch
from transformers import Trainer, TrainerCallback

from prunebert import PruningCallback, PruningConfig
from prunebert.masks import MASKS_FILE
from prunebert.pruner import Pruner
from prunebert.schedules import RewindLR
from tiny import StopAt, tiny_classifier, tiny_dataset, tiny_training_args


def _train(
    out: Path,
    steps: int,
    stop_at: int | None = None,
    resume: str | None = None,
    rewind: float | None = None,
    **kw: object,
):
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(sparsity=0.5, schedule="cubic", end_fraction=0.75, frequency=2))
    callbacks: list[TrainerCallback] = [PruningCallback(pruner, lr_rewind_floor=rewind)]
    if stop_at is not None:
        callbacks.append(StopAt(stop_at))
    args = tiny_training_args(out, steps, **kw)
    trainer = Trainer(model=model, args=args, train_dataset=tiny_dataset(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=resume)
    return model, pruner, trainer


def test_trainer_reaches_target_with_exact_zeros(tmp_path: Path) -> None:
    _, pruner, trainer = _train(tmp_path, 12, gradient_accumulation_steps=2)
    assert pruner.module_sparsity() == {n: pytest.approx(0.5, abs=1e-3) for n in pruner.masks}
    for name, weight in pruner.weights().items():
        assert torch.equal(weight == 0, ~pruner.masks[name])
    steps = [s for s, _ in pruner.history]
    assert steps == sorted(steps) and steps[-1] <= 9  # target reached at 75% of 12 steps
    assert any("sparsity" in log for log in trainer.state.log_history)
    assert (tmp_path / "checkpoint-4" / MASKS_FILE).is_file()


def test_resume_from_checkpoint_gives_the_same_masks_and_weights(tmp_path: Path) -> None:
    full_model, full, _ = _train(tmp_path / "full", 12)
    _train(tmp_path / "cut", 12, stop_at=4)
    model, resumed, _ = _train(tmp_path / "cut", 12, resume=str(tmp_path / "cut" / "checkpoint-4"))
    assert all(torch.equal(full.masks[n], resumed.masks[n]) for n in full.masks)
    for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_gradient_accumulation_matches_one_big_batch(tmp_path: Path) -> None:
    from prunebert.stages.common import mean_loss_per_batch

    def loss_after_one_step(batch: int, accumulate: int) -> float:
        model = tiny_classifier()
        args = tiny_training_args(
            tmp_path / f"{batch}-{accumulate}", 1, gradient_accumulation_steps=accumulate
        )
        args.per_device_train_batch_size = batch
        trainer = mean_loss_per_batch(Trainer(model=model, args=args, train_dataset=tiny_dataset(16)))
        return float(trainer.train().training_loss)

    # equal up to dropout noise; without the fix the accumulated loss is twice as large (~1.38 vs ~0.69)
    assert loss_after_one_step(4, 2) == pytest.approx(loss_after_one_step(8, 1), rel=0.02)


def _learning_rates(trainer: Trainer) -> list[float]:
    return [log["learning_rate"] for log in trainer.state.log_history if "learning_rate" in log]


def _rates_by_step(trainer: Trainer) -> dict[int, float]:
    return {log["step"]: log["learning_rate"] for log in trainer.state.log_history if "learning_rate" in log}


def test_lr_rewinding_restarts_the_peak_at_every_mask_update(tmp_path: Path) -> None:
    _, pruner, trainer = _train(tmp_path, 12, rewind=0.2, logging_steps=1, learning_rate=1e-3)
    updates = [s for s, _ in pruner.history if s > 0]
    rewind = RewindLR(tuple(updates), 12, 0, 0.2)
    # the k-th optimizer step (0-based; logged at global step k + 1) runs at factor(k): the step right
    # after a mask update at global step u runs at the peak again
    expected = [1e-3 * rewind.factor(k) for k in range(12)]
    assert _learning_rates(trainer) == pytest.approx(expected)
    assert updates == [2, 4, 6, 8, 9] and _learning_rates(trainer)[2] == pytest.approx(1e-3)


def test_lr_rewinding_resumes_on_the_same_curve(tmp_path: Path) -> None:
    full_model, _, full = _train(tmp_path / "full", 12, rewind=0.2, logging_steps=1)
    _train(tmp_path / "cut", 12, stop_at=5, rewind=0.2, logging_steps=1)
    ckpt = str(tmp_path / "cut" / "checkpoint-4")
    model, _, resumed = _train(tmp_path / "cut", 12, resume=ckpt, rewind=0.2, logging_steps=1)
    assert _rates_by_step(resumed) == pytest.approx(_rates_by_step(full))  # steps 5-12 after the resume
    for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
