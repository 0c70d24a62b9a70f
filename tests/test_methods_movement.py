"""Movement pruning, hard and soft: exact score maths, the real gradient hook, regrowth, checkpoint resume."""

import copy
import math
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import Trainer, TrainerCallback

from prunebert import PruningCallback
from prunebert.config import PruningConfig
from prunebert.errors import PrunebertError
from prunebert.methods.movement import (
    MOVEMENT_MIN_STEPS,
    MovementOptions,
    MovementPruning,
    SoftMovementOptions,
    SoftMovementPruning,
    movement_update,
)
from prunebert.methods.movement_math import (
    adam_score_step,
    ramped,
    score_reach,
    sigmoid_l1_grad,
    sigmoid_threshold_masks,
)
from prunebert.pruner import METHOD_STATE_FILE, Pruner
from prunebert.schedules import Cubic
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


def test_sigmoid_l1_grad_golden_and_equal_to_autograd_of_the_authors_term() -> None:
    scores = torch.tensor([0.0, math.log(3.0), -math.log(3.0)])
    # sigmoid = 0.5, 0.75, 0.25 -> s * (1 - s) = 0.25, 0.1875, 0.1875; lam / (matrices * numel) = 0.6 / 6
    expected = torch.tensor([0.025, 0.01875, 0.01875])
    assert torch.allclose(sigmoid_l1_grad(scores, lam=0.6, matrices=2), expected, atol=1e-8)
    # lam * mean over matrices of mean(sigmoid(S)) (Sanh et al.'s `regularization(mode="l1")`)
    a, b = scores.clone().requires_grad_(), torch.randn(5).requires_grad_()
    (0.6 * (torch.sigmoid(a).mean() + torch.sigmoid(b).mean()) / 2).backward()
    assert a.grad is not None and b.grad is not None
    assert torch.allclose(sigmoid_l1_grad(a.detach(), 0.6, 2), a.grad, atol=1e-8)
    assert torch.allclose(sigmoid_l1_grad(b.detach(), 0.6, 2), b.grad, atol=1e-8)


def test_adam_score_step_golden_and_equal_to_torch_adam() -> None:
    zeros = torch.zeros(3)
    grad = torch.tensor([2.0, -0.5, 0.0])
    scores, m, v = adam_score_step(zeros, zeros, zeros, grad, step=1, lr=0.1)
    # step 1: m / (1 - b1) = g, v / (1 - b2) = g^2: S = -lr * g / (|g| + eps)
    assert torch.allclose(scores, torch.tensor([-0.1, 0.1, 0.0]), atol=1e-7)
    assert torch.allclose(m, 0.1 * grad) and torch.allclose(v, 0.001 * grad * grad)
    param = torch.nn.Parameter(torch.zeros(3))
    adam = torch.optim.Adam([param], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    ours, m, v = zeros, zeros, zeros
    for step, g in enumerate([grad, torch.tensor([2.0, 0.5, 1.0]), torch.tensor([-1.0, 0.25, 3.0])], 1):
        param.grad = g.clone()
        adam.step()
        ours, m, v = adam_score_step(ours, m, v, g, step, lr=0.1)
        torch.testing.assert_close(ours, param.detach(), rtol=0, atol=1e-7)


def test_ramped_threshold_is_the_authors_cubic_schedule() -> None:
    """tau_t on the pruner's cubic schedule equals `schedule_threshold` of Sanh et al.'s masked_run_glue.py
    (initial threshold 0, warm-up of 10 steps, cool-down from step 110 of 130), lam_t = lam * tau_t / tau."""
    target, tau, lam = 0.9, 0.1, 400.0
    schedule = Cubic(target, start_step=10, end_step=110, frequency=1)
    for step in range(0, 131):
        if step <= 10:
            authors = 0.0
        elif step > 110:
            authors = tau
        else:
            authors = tau + (0.0 - tau) * (1 - (step - 10) / 100) ** 3
        tau_t = ramped(tau, schedule.sparsity_at(step), target)
        assert tau_t == pytest.approx(authors, abs=1e-12), step
        assert ramped(lam, schedule.sparsity_at(step), target) == pytest.approx(lam * authors / tau)
    assert ramped(0.1, 0.95, 0.9) == 0.1 and ramped(0.1, 0.3, 0.0) == 0.1


def test_sigmoid_threshold_masks_golden_with_the_authors_floor() -> None:
    masks = sigmoid_threshold_masks({"w": torch.tensor([-3.0, 0.0, -2.0, 2.0])}, tau=0.1)
    assert masks["w"].tolist() == [False, True, True, True]  # sigmoid: 0.047, 0.5, 0.119, 0.881
    low = torch.full((20, 10), -9.0)
    low[3, 4], low[7, 1] = -8.0, -8.5  # 200 entries: at least int(0.005 * 200) + 1 = 2 kept
    kept = sigmoid_threshold_masks({"w": low}, tau=0.1)["w"]
    assert kept.sum() == 2 and kept[3, 4] and kept[7, 1]


def test_score_reach_golden() -> None:
    # a score moving 0.1 per step for 44 steps goes 4.4 = 2.0 * |logit(0.1)| (2.1972)
    assert score_reach(0.1, 44, 0.1) == pytest.approx(4.4 / math.log(9.0))


def test_scores_accumulate_over_micro_batches() -> None:
    g = torch.Generator().manual_seed(0)
    weight, g1, g2 = (torch.randn(6, 4, generator=g) for _ in range(3))
    sgd = MovementOptions(score_optimizer="sgd")
    twice, once = MovementPruning(sgd), MovementPruning(sgd)
    twice.accumulate("w", weight, g1)
    twice.accumulate("w", weight, g2)
    once.accumulate("w", weight, g1 + g2)
    assert torch.allclose(twice.scores({"w": weight})["w"], once.scores({"w": weight})["w"], atol=1e-6)
    restored = MovementPruning(sgd)
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


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_scores_after_first_backward_are_minus_weight_times_gradient(optimizer: str) -> None:
    """sgd: S = -W * dL/dW'; adam's first step: S = -1e-2 * W g / (|W g| + 1e-8), the sign of it."""
    pruner = _pruner("movement", 8, score_optimizer=optimizer)
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
        movement = -ref.detach() * ref.grad
        if optimizer == "adam":
            movement = 1e-2 * movement / (movement.abs() + 1e-8)
        assert torch.allclose(score, movement, atol=1e-9, rtol=1e-6), name


@pytest.mark.parametrize(
    "scope,options",
    [("layer", {}), ("global", {}), ("layer", {"score_optimizer": "sgd"})],
)
def test_target_reached_with_exact_zeros(scope: str, options: dict) -> None:
    steps = 10
    pruner = _pruner("movement", steps, scope, **options)
    opt = torch.optim.AdamW(pruner.model.parameters(), lr=5e-3, weight_decay=0.1)
    for step in range(steps):
        _step(pruner, opt, step)
    assert pruner.overall_sparsity() == pytest.approx(0.5, abs=0.005)
    if scope == "layer":
        assert pruner.module_sparsity() == {n: pytest.approx(0.5, abs=0.005) for n in pruner.masks}
    for name, weight in pruner.weights().items():
        assert bool((weight[~pruner.masks[name]] == 0.0).all()), name


def test_soft_movement_masks_are_the_ramped_sigmoid_threshold() -> None:
    """Every mask update keeps exactly sigmoid(S) > tau_t (tau_t = 0.1 * s_t / s), whatever sparsity that
    gives, the regulariser pulls at lam_t = lam * tau_t / tau, and the final sparsity is the threshold's."""
    steps = 12
    pruner = _pruner("soft_movement", steps, lam=1.0)
    method = pruner.method
    assert isinstance(method, SoftMovementPruning) and method.lr_scores > 1e-2  # sized to a short run
    opt = torch.optim.AdamW(pruner.model.parameters(), lr=5e-3)
    taus = []
    with pytest.warns(UserWarning, match="soft_movement: the final threshold .* not the 50% asked"):
        for step in range(steps):
            _step(pruner, opt, step)
            if pruner.history and pruner.history[-1][0] == step + 1:
                tau = 0.1 * pruner.sparsity / 0.5
                taus.append(method.tau)
                assert method.tau == pytest.approx(tau)
                for name, score in method.scores(pruner.weights()).items():
                    above = torch.sigmoid(score) > tau
                    if above.sum() > 0.005 * above.numel() + 1:  # else the floor keeps its top entries
                        assert torch.equal(pruner.masks[name], above), name
                    else:
                        assert pruner.masks[name].sum() == int(0.005 * above.numel()) + 1, name
                assert pruner.overall_sparsity() == pytest.approx(method.log_metrics()["threshold_sparsity"])
    assert taus == sorted(taus) and taus[-1] == pytest.approx(0.1)
    assert 0.0 < pruner.overall_sparsity() != pytest.approx(0.5, abs=0.01)
    assert pruner.overall_sparsity() == pytest.approx(method.achieved)
    for name, weight in pruner.weights().items():
        assert bool((weight[~pruner.masks[name]] == 0.0).all()), name


def test_soft_movement_regulariser_lowers_the_scores_and_raises_sparsity() -> None:
    def run(lam: float) -> tuple[float, float]:
        torch.manual_seed(0)
        pruner = _pruner("soft_movement", 12, lam=lam)
        opt = torch.optim.SGD(pruner.model.parameters(), lr=1e-2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for step in range(12):
                _step(pruner, opt, step)
        mean = torch.cat([s.flatten() for s in pruner.method.scores(pruner.weights()).values()]).mean()
        return float(mean), pruner.overall_sparsity()

    (free_mean, free_sparsity), (pulled_mean, pulled_sparsity) = run(0.0), run(1.0)
    assert pulled_mean < free_mean and pulled_sparsity > free_sparsity


def test_hard_movement_regrows_a_pruned_weight_whose_score_rises() -> None:
    pruner = _pruner("movement", 8, score_optimizer="sgd")
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


@pytest.mark.parametrize(("method", "options"), [("movement", {}), ("soft_movement", {"lam": 0.1})])
def test_pruned_weights_regrow_in_a_trainer_run(tmp_path: Path, method: str, options: dict) -> None:
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(method=method, sparsity=0.6, frequency=2, options=options))
    revivals = _Revivals(pruner)
    args = tiny_training_args(tmp_path, 16, save_strategy="no", logging_steps=500)
    trainer = Trainer(
        model=model, args=args, train_dataset=tiny_dataset(), callbacks=[PruningCallback(pruner), revivals]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 16-step run is far too short for movement: it says so
        trainer.train()
    assert revivals.count > 0  # scores of pruned weights kept moving and overtook kept ones
    achieved = getattr(pruner.method, "achieved", 0.6)  # soft movement: what its threshold gave
    assert pruner.overall_sparsity() == pytest.approx(achieved, abs=0.005)


# -- options ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method,options",
    [
        ("soft_movement", {"tau": 0.1}),
        ("soft_movement", {"threshold": "x"}),
        ("soft_movement", {"threshold": 1.0}),
        ("soft_movement", {"threshold": 0.0}),
        ("soft_movement", {"lam": -1.0}),
        ("movement", {"score_optimizer": "rmsprop"}),
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
    assert MovementOptions() == MovementOptions(score_optimizer="adam", lr_scores=None)
    assert MovementPruning(MovementOptions()).lr_scores == 1e-2  # the authors' mask_scores_learning_rate
    assert MovementPruning(MovementOptions(score_optimizer="sgd")).lr_scores == 1.0  # the summed movement
    options = SoftMovementOptions(lam=0, lr_scores=1)
    assert (options.lam, options.threshold, options.lr_scores) == (0.0, 0.1, 1.0)
    assert isinstance(options.lam, float) and isinstance(options.lr_scores, float)


@pytest.mark.parametrize("method", ["movement", "soft_movement"])
def test_a_run_too_short_for_the_scores_warns_once_at_start(method: str) -> None:
    pruner = Pruner(tiny_classifier(), PruningConfig(method=method, sparsity=0.5))
    with pytest.warns(UserWarning, match=f"need about {MOVEMENT_MIN_STEPS}"):
        pruner.start(250)  # the methods grid's budget: final mask at step 200
    long = Pruner(tiny_classifier(), PruningConfig(method=method, sparsity=0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        long.start(round(MOVEMENT_MIN_STEPS / 0.8) + 10)
    assert isinstance(long.method, MovementPruning)
    assert long.method.lr_scores == 1e-2  # a long run: soft movement's lr_scores is the authors'


def test_soft_movement_warns_when_its_scores_cannot_reach_the_threshold() -> None:
    config = PruningConfig(method="soft_movement", sparsity=0.5, options={"lr_scores": 1e-3})
    with pytest.warns(UserWarning, match="nothing will be pruned"):
        Pruner(tiny_classifier(), config).start(250)


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
    kinds = ("scores", "shadow", "adam_m", "adam_v")  # Adam's moments travel with the scores
    extra = {"score_steps", *(["tau"] if method == "soft_movement" else [])}
    assert set(saved) == {f"{kind}.{n}" for n in cut.masks for kind in kinds} | extra
    assert int(saved["score_steps"]) == 4
    assert all(torch.equal(saved[k], v) for k, v in cut.method.state_dict().items())
    assert all(v.abs().sum() > 0 for v in saved.values())
    resumed = _train(tmp_path / "cut", method, resume=str(checkpoint))
    assert all(torch.equal(full.masks[n], resumed.masks[n]) for n in full.masks)
    for key, value in full.method.state_dict().items():  # scores, moments and tau continue exactly
        assert torch.allclose(value.double(), resumed.method.state_dict()[key].double(), atol=1e-6), key
    if method == "movement":
        assert full.overall_sparsity() == pytest.approx(0.5, abs=0.005)
    (tmp_path / "final").mkdir()
    full.save(tmp_path / "final", with_method_state=False)  # the baked model ships without the scores
    assert not (tmp_path / "final" / METHOD_STATE_FILE).exists()
    if method == "movement":  # control: the restored scores, not luck, make the masks identical
        (checkpoint / METHOD_STATE_FILE).unlink()
        blind = _train(tmp_path / "cut", method, resume=str(checkpoint))
        assert any(not torch.equal(full.masks[n], blind.masks[n]) for n in full.masks)
