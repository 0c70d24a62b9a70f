"""Movement pruning, hard and soft: exact score maths, the real gradient hook, regrowth, checkpoint resume."""

import copy
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from prunebert import PruningCallback
from prunebert.config import PruningConfig
from prunebert.errors import PrunebertError
from prunebert.methods.movement import (
    MovementOptions,
    MovementPruning,
    SoftMovementOptions,
    movement_update,
    sigmoid_regulariser_step,
    threshold_masks,
)
from prunebert.pruner import METHOD_STATE_FILE, Pruner
from tiny import StopAt, tiny_classifier, tiny_dataset, tiny_training_args

BATCH = {
    "input_ids": torch.randint(5, 128, (4, 12), generator=torch.Generator().manual_seed(0)),
    "labels": torch.tensor([0, 1, 1, 0]),
}


# -- pure functions ---------------------------------------------------------------------------------
def test_movement_update_golden() -> None:
    scores = torch.tensor([[0.5, -1.0], [0.0, 2.0]])
    weight = torch.tensor([[1.0, -2.0], [0.0, 0.5]])
    grad = torch.tensor([[0.25, 0.5], [3.0, -4.0]])
    # W * g = [[0.25, -1], [0, -2]]; S - 2 * W * g
    expected = torch.tensor([[0.0, 1.0], [0.0, 6.0]])
    assert torch.equal(movement_update(scores, weight, grad, lr_scores=2.0), expected)


def test_sigmoid_regulariser_step_golden() -> None:
    scores = torch.tensor([0.0, math.log(3.0), -math.log(3.0)])
    # sigmoid = 0.5, 0.75, 0.25 -> s * (1 - s) = 0.25, 0.1875, 0.1875; lr * lam = 2 * 0.4 = 0.8
    expected = torch.tensor([-0.2, math.log(3.0) - 0.15, -math.log(3.0) - 0.15])
    assert torch.allclose(sigmoid_regulariser_step(scores, lam=0.4, lr_scores=2.0), expected, atol=1e-7)
    assert torch.equal(sigmoid_regulariser_step(scores, lam=0.0), scores)


def test_threshold_masks_golden() -> None:
    masks = threshold_masks({"w": torch.tensor([-0.1, 0.0, 0.2, 0.1])}, tau=0.1)
    assert masks["w"].tolist() == [False, False, True, False]


def test_scores_accumulate_over_micro_batches() -> None:
    g = torch.Generator().manual_seed(0)
    weight, g1, g2 = (torch.randn(6, 4, generator=g) for _ in range(3))
    twice, once = MovementPruning(MovementOptions()), MovementPruning(MovementOptions())
    twice.accumulate("w", weight, g1)
    twice.accumulate("w", weight, g2)
    once.accumulate("w", weight, g1 + g2)
    assert torch.allclose(twice.scores({"w": weight})["w"], once.scores({"w": weight})["w"], atol=1e-6)
    restored = MovementPruning(MovementOptions())
    restored.load_state_dict(twice.state_dict())
    assert set(twice.state_dict()) == {"scores.w"}
    assert torch.equal(restored.scores({"w": weight})["w"], twice.scores({"w": weight})["w"])


# -- with a real Pruner and a manual loop ---------------------------------------------------------------
def _pruner(method: str, steps: int, scope: str = "layer", **options: object) -> Pruner:
    config = PruningConfig(
        method=method, sparsity=0.5, scope=scope, frequency=1, end_fraction=0.75, options=options
    )
    pruner = Pruner(tiny_classifier(), config)
    pruner.start(steps)
    return pruner


def _step(pruner: Pruner, opt: torch.optim.Optimizer, step: int) -> None:
    loss = pruner.model(**BATCH).loss
    loss.backward()
    pruner.after_backward()
    opt.step()
    pruner.after_optimizer_step(opt)
    opt.zero_grad()
    pruner.update(step + 1, opt)


def test_scores_after_first_backward_are_minus_weight_times_gradient() -> None:
    pruner = _pruner("movement", 8)
    reference = copy.deepcopy(pruner.model)  # deepcopy does not carry the tensor hooks
    pruner.model.eval()  # no dropout: both forwards are the same computation
    reference.eval()
    pruner.model(**BATCH).loss.backward()
    pruner.after_backward()
    reference(**BATCH).loss.backward()
    scores = pruner.method.scores(pruner.weights())
    for name, score in scores.items():
        ref = reference.get_parameter(name)
        assert ref.grad is not None and ref.grad.abs().sum() > 0
        assert torch.allclose(score, -ref.detach() * ref.grad, atol=1e-9, rtol=1e-6), name


@pytest.mark.parametrize(
    "method,scope,options",
    [("movement", "layer", {}), ("movement", "global", {}), ("soft_movement", "layer", {"lam": 1e-6})],
)
def test_target_reached_with_exact_zeros(method: str, scope: str, options: dict) -> None:
    steps = 10
    pruner = _pruner(method, steps, scope, **options)
    opt = torch.optim.AdamW(pruner.model.parameters(), lr=5e-3, weight_decay=0.1)
    threshold_driven = []
    for step in range(steps):
        _step(pruner, opt, step)
        if method == "soft_movement" and pruner.history and pruner.history[-1][0] == step + 1:
            metrics = pruner.method.log_metrics()
            if pruner.sparsity < 0.5:  # below the target the threshold, not the schedule, sets the masks
                assert pruner.overall_sparsity() == pytest.approx(metrics["threshold_sparsity"])
                threshold_driven.append(pruner.overall_sparsity() != pytest.approx(pruner.sparsity))
    assert pruner.overall_sparsity() == pytest.approx(0.5, abs=0.005)
    if scope == "layer":
        assert pruner.module_sparsity() == {n: pytest.approx(0.5, abs=0.005) for n in pruner.masks}
    for name, weight in pruner.weights().items():
        assert bool((weight[~pruner.masks[name]] == 0.0).all()), name
    if method == "soft_movement":
        assert threshold_driven and all(threshold_driven)


def test_hard_movement_regrows_a_pruned_weight_whose_score_rises() -> None:
    pruner = _pruner("movement", 8)
    opt = torch.optim.SGD(pruner.model.parameters(), lr=1e-2)
    name, weight = next(iter(pruner.weights().items()))
    _step(pruner, opt, 0)  # first mask update: 21% pruned by movement
    pruned = tuple((~pruner.masks[name]).nonzero()[0].tolist())
    value = pruner.method.state_dict()[f"shadow.{name}"][pruned]  # its value when it was pruned
    assert pruner.sparsity > 0 and weight[pruned] == 0.0 and value != 0.0
    # straight-through: a large gradient pulling this entry away from zero raises its score
    crafted = torch.zeros_like(weight)
    crafted[pruned] = -1e3 * value.sign()
    pruner.method.accumulate(name, torch.ones_like(weight) * value.abs(), crafted)
    assert pruner.update(2, opt)
    assert pruner.masks[name][pruned], "the pruned weight did not come back"
    assert weight[pruned] == value  # with the value it had, as behind the paper's mask
    assert pruner.module_sparsity()[name] == pytest.approx(pruner.sparsity, abs=0.005)
    pruner.model(**BATCH).loss.backward()
    pruner.after_backward()
    assert weight.grad is not None and weight.grad[pruned] != 0.0  # and trains again: its gradient is kept


class _Revivals(TrainerCallback):
    """Counts entries that a mask update brings back."""

    def __init__(self, pruner: Pruner) -> None:
        self.pruner, self.count = pruner, 0
        self.last = dict(pruner.masks.items())

    def on_step_end(self, args, state, control, **kwargs):
        masks = dict(self.pruner.masks.items())
        self.count += sum(int((~self.last[n] & m).sum()) for n, m in masks.items())
        self.last = masks


@pytest.mark.parametrize("method", ["movement", "soft_movement"])
def test_pruned_weights_regrow_in_a_trainer_run(tmp_path: Path, method: str) -> None:
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(method=method, sparsity=0.6, frequency=2))
    revivals = _Revivals(pruner)
    args = tiny_training_args(tmp_path, 16, save_strategy="no", logging_steps=500)
    trainer = Trainer(
        model=model, args=args, train_dataset=tiny_dataset(), callbacks=[PruningCallback(pruner), revivals]
    )
    trainer.train()
    assert revivals.count > 0  # scores of pruned weights kept moving and overtook kept ones
    assert pruner.overall_sparsity() == pytest.approx(0.6, abs=0.005)


# -- options ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,options",
    [
        ("soft_movement", {"tau": "x"}),
        ("soft_movement", {"lam": -1.0}),
        ("soft_movement", {"lambda": 0.1}),
        ("movement", {"lr_scores": 0}),
        ("movement", {"lr_scores": True}),
        ("movement", {"tau": 0.0}),
    ],
)
def test_bad_options_are_one_line_errors(method: str, options: dict) -> None:
    with pytest.raises(PrunebertError) as info:
        PruningConfig(method=method, options=options)
    assert "\n" not in str(info.value) and method in str(info.value)


@pytest.mark.parametrize("method", ["movement", "soft_movement"])
def test_schedule_defaults_warm_up_then_fix_the_masks(method: str) -> None:
    config = PruningConfig(method=method)
    assert (config.schedule, config.start_fraction, config.end_fraction) == ("cubic", 0.1, 0.8)
    assert PruningConfig(method=method, start_fraction=0.0).start_fraction == 0.0  # a recipe overrides
    magnitude = PruningConfig(method="magnitude")  # other methods' dumps (and reused runs) are unchanged
    assert (magnitude.start_fraction, magnitude.end_fraction) == (0.0, 0.75)


def test_option_defaults_and_int_coercion() -> None:
    assert MovementOptions() == MovementOptions(lr_scores=1.0)
    options = SoftMovementOptions(lam=0, tau=1)
    assert (options.lam, options.tau, options.lr_scores) == (0.0, 1.0, 1.0)
    assert isinstance(options.tau, float)


# -- stock HF Trainer + callback: checkpoints carry the scores -----------------------------------------
def _train(out: Path, method: str, stop_at: int | None = None, resume: str | None = None) -> Pruner:
    model = tiny_classifier()
    config = PruningConfig(method=method, sparsity=0.5, end_fraction=0.75, frequency=2)
    pruner = Pruner(model, config)
    callbacks: list[TrainerCallback] = [PruningCallback(pruner)]
    if stop_at is not None:
        callbacks.append(StopAt(stop_at))
    args = tiny_training_args(out, 8, weight_decay=0.0, logging_steps=500)
    Trainer(model=model, args=args, train_dataset=tiny_dataset(), callbacks=callbacks).train(
        resume_from_checkpoint=resume
    )
    return pruner


@pytest.mark.parametrize("method", ["movement", "soft_movement"])
def test_checkpoint_scores_resume_to_the_same_masks(tmp_path: Path, method: str) -> None:
    full = _train(tmp_path / "full", method)
    cut = _train(tmp_path / "cut", method, stop_at=4)
    checkpoint = tmp_path / "cut" / "checkpoint-4"
    saved = load_file(str(checkpoint / METHOD_STATE_FILE))
    assert set(saved) == {f"{kind}.{n}" for n in cut.masks for kind in ("scores", "shadow")}
    assert all(torch.equal(saved[k], v) for k, v in cut.method.state_dict().items())
    assert all(v.abs().sum() > 0 for v in saved.values())
    resumed = _train(tmp_path / "cut", method, resume=str(checkpoint))
    assert all(torch.equal(full.masks[n], resumed.masks[n]) for n in full.masks)
    assert full.overall_sparsity() == pytest.approx(0.5, abs=0.005)
    (tmp_path / "final").mkdir()
    full.save(tmp_path / "final", with_method_state=False)  # the baked model ships without the scores
    assert not (tmp_path / "final" / METHOD_STATE_FILE).exists()
    if method == "movement":  # control: the restored scores, not luck, make the masks identical
        (checkpoint / METHOD_STATE_FILE).unlink()
        blind = _train(tmp_path / "cut", method, resume=str(checkpoint))
        assert any(not torch.equal(full.masks[n], blind.masks[n]) for n in full.masks)
