"""Movement pruning's straight-through estimator against a hand-written dense-W reference (Sanh et al. 2020).

The reference keeps the dense W, runs the forward pass with W' = W * M, updates every score (pruned or
kept) with -W * dL/dW' (the method's `score_optimizer: sgd`; test_methods_movement checks adam's step)
and takes plain SGD steps on dL/dW = dL/dW' * M. Ours keeps W' in the model, the
pruned values in the method's shadow, and masks gradients after the method has read them. The loss is
scaled by -10 between the two mask updates, which flips the sign of the scores' movement: the second
update revives (by construction) many of the entries the first one pruned, about half of them here.
The two agree bit for bit on CPU here; the tolerance of 1e-6 leaves room for another BLAS.
"""

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call

from prunebert.config import PruningConfig
from prunebert.errors import PrunebertError
from prunebert.methods.movement import MovementPruning, exchange_shadow
from prunebert.pruner import METHOD_STATE_FILE, Pruner
from tiny import tiny_classifier

BATCH = {
    "input_ids": torch.randint(5, 128, (4, 12), generator=torch.Generator().manual_seed(0)),
    "labels": torch.tensor([0, 1, 1, 0]),
}
STEPS = 6
UPDATES = {2: 0.3, 4: 0.5}  # mask update after this many optimizer steps -> its sparsity
LOSS_SCALE = {2: -10.0, 3: -10.0}  # steps run uphill, ten times over: the scores change sign
LR = 1e-2


class _Table:
    """A schedule read from `UPDATES`: the sparsity of the last update at or before `step`."""

    def sparsity_at(self, step: int) -> float:
        return max((s for at, s in UPDATES.items() if at <= step), default=0.0)


class Reference:
    """Sanh et al.'s formulation written out: dense W, forward with W * M, S -= W * dL/dW' for every
    entry, SGD on dL/dW = dL/dW' * M (pruned W never changes), top-k of S per matrix."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.model = model
        self.dense = {n: model.get_parameter(n) for n in names}
        self.masks = {n: torch.ones_like(w, dtype=torch.bool) for n, w in self.dense.items()}
        self.scores = {n: torch.zeros_like(w) for n, w in self.dense.items()}
        self.opt = torch.optim.SGD(model.parameters(), lr=LR)

    def step(self, scale: float) -> None:
        effective = {n: (w * self.masks[n]).detach().requires_grad_() for n, w in self.dense.items()}
        loss = scale * functional_call(self.model, effective, args=(), kwargs=BATCH).loss
        loss.backward()
        with torch.no_grad():
            for n, w in self.dense.items():
                grad = effective[n].grad  # dL/dW'
                assert grad is not None
                self.scores[n] -= w * grad  # straight-through: pruned entries' scores move too
                w.grad = grad * self.masks[n]
        self.opt.step()
        self.opt.zero_grad()

    def prune(self, sparsity: float) -> None:
        for n, s in self.scores.items():
            mask = torch.zeros(s.numel(), dtype=torch.bool)
            mask[s.flatten().topk(s.numel() - round(sparsity * s.numel())).indices] = True
            self.masks[n] = mask.view_as(s)


def _pruner(model: nn.Module | None = None) -> Pruner:
    model = tiny_classifier() if model is None else model
    config = PruningConfig(method="movement", sparsity=0.5, options={"score_optimizer": "sgd"})
    pruner = Pruner(model, config)
    pruner.model.eval()  # no dropout: the reference's forward is the same computation
    pruner.start(STEPS)
    pruner.schedule = _Table()
    return pruner


def _train(pruner: Pruner, opt: torch.optim.Optimizer, step: int) -> None:
    """One optimizer step as `PruningCallback` drives it (the mask update, `pruner.update`, comes next)."""
    (LOSS_SCALE.get(step, 1.0) * pruner.model(**BATCH).loss).backward()
    pruner.after_backward()
    opt.step()
    pruner.after_optimizer_step(opt)
    opt.zero_grad()


def _revived(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {n: ~first[n] & second[n] for n in first}


def test_exchange_shadow_golden() -> None:
    weight, shadow = torch.tensor([1.0, 2.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 3.0, 4.0])
    old, new = torch.tensor([True, True, False, False]), torch.tensor([True, False, True, False])
    restored, shadow = exchange_shadow(weight, shadow, old, new)
    assert restored.tolist() == [1.0, 2.0, 3.0, 0.0]  # entry 2 comes back with its value
    assert shadow.tolist() == [0.0, 2.0, 0.0, 4.0]  # entry 1 goes aside; kept entries hold 0


def test_matches_the_dense_reference_through_pruning_and_regrowth() -> None:
    ours = _pruner()
    reference = Reference(copy.deepcopy(ours.model), list(ours.masks))
    opt = torch.optim.SGD(ours.model.parameters(), lr=LR)
    before: dict[str, torch.Tensor] = {}  # our weights just before the first mask update
    masks: dict[int, dict[str, torch.Tensor]] = {}
    for step in range(STEPS):
        _train(ours, opt, step)
        if step + 1 == min(UPDATES):
            before = {n: w.detach().clone() for n, w in ours.weights().items()}
        ours.update(step + 1, opt)
        reference.step(LOSS_SCALE.get(step, 1.0))
        if step + 1 in UPDATES:
            reference.prune(UPDATES[step + 1])
            masks[step + 1] = dict(ours.masks.items())
        if step + 1 == max(UPDATES):  # the revived weights are back with their values from before
            for name, revived in _revived(masks[2], masks[4]).items():
                assert torch.equal(ours.weights()[name][revived], before[name][revived]), name
        scores = ours.method.scores(ours.weights())
        for name, weight in ours.weights().items():
            assert torch.equal(ours.masks[name], reference.masks[name]), (step, name)
            assert torch.allclose(scores[name], reference.scores[name], atol=1e-6, rtol=0), (step, name)
            dense = reference.dense[name].detach()
            assert torch.allclose(weight, dense * reference.masks[name], atol=1e-6, rtol=0), (step, name)
            assert bool((weight[~ours.masks[name]] == 0.0).all())
    for (name, a), b in zip(ours.model.named_parameters(), reference.model.parameters(), strict=True):
        if name not in ours.masks:
            assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    pruned_first = sum(int((~m).sum()) for m in masks[2].values())
    revived = sum(int(r.sum()) for r in _revived(masks[2], masks[4]).values())
    assert revived > 0.3 * pruned_first  # the uphill steps bring many of them back (half, here)


def test_pruned_weights_stay_exact_zeros_that_the_optimizer_never_moves() -> None:
    pruner = _pruner()
    opt = torch.optim.AdamW(pruner.model.parameters(), lr=LR, weight_decay=0.1)
    masks: dict[int, dict[str, torch.Tensor]] = {}
    for step in range(STEPS):
        (LOSS_SCALE.get(step, 1.0) * pruner.model(**BATCH).loss).backward()
        pruner.after_backward()
        for name, weight in pruner.weights().items():
            pruned = ~pruner.masks[name]
            assert weight.grad is not None and bool((weight.grad[pruned] == 0).all()), name
            assert bool((weight[pruned] == 0.0).all()) and not torch.signbit(weight[pruned]).any(), name
        opt.step()  # weight decay and momentum: neither may move a pruned entry, even before re-zeroing
        for name, weight in pruner.weights().items():
            pruned = ~pruner.masks[name]
            assert bool((weight[pruned] == 0.0).all()) and not torch.signbit(weight[pruned]).any(), name
        pruner.after_optimizer_step(opt)
        opt.zero_grad()
        if pruner.update(step + 1, opt):
            masks[step + 1] = dict(pruner.masks.items())
        for name, weight in pruner.weights().items():
            pruned = ~pruner.masks[name]
            assert bool((weight[pruned] == 0.0).all()) and not torch.signbit(weight[pruned]).any(), name
        if step + 1 == max(UPDATES):  # revived entries start with clean AdamW moments
            for name, revived in _revived(masks[2], masks[4]).items():
                state = opt.state[pruner.weights()[name]]
                assert revived.any() and bool((pruner.weights()[name][revived] != 0).all()), name
                assert bool((state["exp_avg"][revived] == 0).all()), name
                assert bool((state["exp_avg_sq"][revived] == 0).all()), name


def test_a_loop_without_after_backward_is_an_error() -> None:
    pruner = _pruner()
    opt = torch.optim.SGD(pruner.model.parameters(), lr=LR)
    pruner.model(**BATCH).loss.backward()
    opt.step()
    with pytest.raises(PrunebertError, match="after_backward"):
        pruner.after_optimizer_step(opt)


def _continue(pruner: Pruner, first: int) -> Pruner:
    opt = torch.optim.SGD(pruner.model.parameters(), lr=LR)
    for step in range(first, STEPS):
        _train(pruner, opt, step)
        pruner.update(step + 1, opt)
    return pruner


def _restored(pruner: Pruner, checkpoint: Path) -> Pruner:
    """A fresh model and pruner with `pruner`'s weights and what `checkpoint` holds."""
    model = tiny_classifier(seed=1)
    model.load_state_dict(pruner.model.state_dict())
    restored = _pruner(model)
    restored.load(checkpoint)
    return restored


def test_checkpoint_resume_keeps_the_shadow_and_the_trajectory(tmp_path: Path) -> None:
    cut = _pruner()
    opt = torch.optim.SGD(cut.model.parameters(), lr=LR)  # no momentum: the optimizer has no state
    for step in range(3):  # pruned at 2, mid-way through the uphill steps
        _train(cut, opt, step)
        cut.update(step + 1, opt)
    cut.save(tmp_path)
    method = cut.method
    assert isinstance(method, MovementPruning)
    saved = method.state_dict()
    assert {k.split(".", 1)[0] for k in saved} == {"scores", "shadow"}
    assert all(saved[f"shadow.{n}"][~m].abs().sum() > 0 for n, m in cut.masks.items())
    assert all(bool((saved[f"shadow.{n}"][m] == 0).all()) for n, m in cut.masks.items())

    resumed = _restored(cut, tmp_path)
    state = load_file(str(tmp_path / METHOD_STATE_FILE))  # control: the same checkpoint less its shadow
    save_file({k: v for k, v in state.items() if k.startswith("scores.")}, str(tmp_path / METHOD_STATE_FILE))
    blind = _restored(cut, tmp_path)
    full, resumed, blind = (_continue(p, 3) for p in (cut, resumed, blind))
    for name, weight in full.weights().items():
        assert torch.equal(full.masks[name], resumed.masks[name]), name
        assert torch.equal(weight, resumed.weights()[name]), name
    assert all(torch.equal(v, resumed.method.state_dict()[k]) for k, v in full.method.state_dict().items())
    assert any(not torch.equal(w, blind.weights()[n]) for n, w in full.weights().items())

    full.bake()
    assert set(full.method.state_dict()) == {f"scores.{n}" for n in full.masks}  # the shadow goes at bake
