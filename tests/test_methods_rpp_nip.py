"""RPP (Guo et al. 2019) and its NIP baseline: exact proximal maths, lifecycle, and a stock Trainer run."""

import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer

from prunebert import PruningCallback, PruningConfig
from prunebert.errors import PrunebertError
from prunebert.methods.nip import IterativeMagnitudePruning
from prunebert.methods.rpp import (
    RPP_SHORTFALL,
    ReweightedProximalPruning,
    RPPOptions,
    magnitude_cutoffs,
    penalty_per_step,
    proximal_l1,
    reweight,
)
from prunebert.pruner import Pruner
from prunebert.schedules import Iterative, OneShot
from tiny import tiny_classifier, tiny_dataset, tiny_training_args


def _rpp(lam: float = 0.5, eps: float = 0.25, every: int = 1) -> ReweightedProximalPruning:
    return ReweightedProximalPruning(RPPOptions(lam=lam, eps=eps, reweight_every=every))


# -- pure functions ------------------------------------------------------------------------------------
def test_proximal_l1_soft_thresholds_each_entry_by_its_own_threshold() -> None:
    w = torch.tensor([[0.5, -0.5, 0.125], [-0.125, 0.0, 2.0]])
    threshold = torch.tensor([[0.25, 0.25, 0.25], [0.125, 0.5, 0.0]])
    out = proximal_l1(w, threshold)
    assert torch.equal(out, torch.tensor([[0.25, -0.25, 0.0], [0.0, 0.0, 2.0]]))
    assert (out[w != 0].sign() * w[w != 0].sign() >= 0).all()  # never flips a sign


def test_reweight_is_inverse_magnitude_plus_eps() -> None:
    w = torch.tensor([0.75, -0.25, 0.0, 3.75])
    assert torch.equal(reweight(w, eps=0.25), torch.tensor([1.0, 2.0, 4.0, 0.25]))


def test_penalty_per_step_golden_and_zeroes_the_cutoff_in_time() -> None:
    # ((0.02 + 0.001)^2 - 0.001^2) / (2 * (10 - 2)) = (0.000441 - 0.000001) / 16
    assert penalty_per_step(0.02, 1e-3, 10) == pytest.approx(2.75e-5, rel=1e-12)
    assert penalty_per_step(0.02, 1e-3, 0) == 0.0
    for steps in (10, 100):
        delta = penalty_per_step(0.02, 1e-3, steps)
        w = torch.tensor([0.02, -0.019, 0.03], dtype=torch.float64)  # the penalty alone moves them
        for step in range(steps):
            assert w[0] != 0.0 or step >= steps - 1  # not long before the last step
            w = proximal_l1(w, delta * reweight(w, 1e-3))
        assert w[0] == 0.0 and w[1] == 0.0 and w[2] != 0.0  # at or below the cutoff: zero in time


def test_magnitude_cutoffs_golden() -> None:
    weights = {"a": torch.tensor([[0.1, -0.4], [0.3, -0.2]]), "b": torch.tensor([1.0, -2.0, 3.0, -4.0])}
    assert magnitude_cutoffs(weights, 0.5, "layer") == pytest.approx({"a": 0.2, "b": 2.0})
    assert magnitude_cutoffs(weights, 0.5, "global") == pytest.approx({"a": 0.4, "b": 0.4})
    assert magnitude_cutoffs(weights, 0.75, "layer") == pytest.approx({"a": 0.3, "b": 3.0})


# -- the method's lifecycle ------------------------------------------------------------------------
def test_one_proximal_step_uses_lr_lam_gamma() -> None:
    w, method = torch.tensor([0.75, -0.25, 0.125, -1.75]), _rpp(lam=0.5, eps=0.25)
    method.after_optimizer_step({"w": w}, lr=0.1)
    # thresholds 0.1 * 0.5 / (|w| + 0.25) = [0.05, 0.1, 0.1333, 0.025]
    torch.testing.assert_close(w, torch.tensor([0.70, -0.15, 0.0, -1.725]))
    assert w[2].item() == 0.0
    assert set(method.state_dict()) == {"calls", "proximal"}  # gamma is recomputed every step: not kept


def test_gamma_is_refreshed_only_every_reweight_every_steps() -> None:
    method, w = _rpp(every=2), torch.tensor([0.75, -1.75])
    seen = [w.clone()]
    for _ in range(3):
        method.after_optimizer_step({"w": w}, lr=0.1)
        seen.append(w.clone())
    first, second, third = (seen[i] - seen[i + 1] for i in range(3))
    torch.testing.assert_close(first, 0.05 * torch.sign(seen[0]) / (seen[0].abs() + 0.25))
    torch.testing.assert_close(second, first)  # gamma of step 1 reused at step 2
    torch.testing.assert_close(third, 0.05 * torch.sign(seen[2]) / (seen[2].abs() + 0.25))  # refreshed


def test_no_proximal_step_after_the_final_hard_prune() -> None:
    method, w = _rpp(), torch.tensor([0.75, -0.25])
    method.after_optimizer_step({"w": w}, lr=0.1)
    method.on_masks_updated(0.25, final=False)  # an intermediate mask update keeps the phase going
    assert method.proximal and "rpp_zero_fraction" in method.log_metrics()
    method.on_masks_updated(0.5, final=True)
    before = w.clone()
    for _ in range(3):
        method.after_optimizer_step({"w": w}, lr=0.1)
    assert torch.equal(w, before) and method.log_metrics() == {} and method.state_dict()["proximal"] == 0


@pytest.mark.parametrize("final", [False, True])
def test_state_dict_round_trip_continues_identically(tmp_path: Path, final: bool) -> None:
    original, w = _rpp(every=2), torch.tensor([0.75, -1.75, 0.3, -0.05])
    for _ in range(3):  # stop mid-period, so the stale gamma must come from the state
        original.after_optimizer_step({"w": w}, lr=0.1)
    original.on_masks_updated(0.5, final=final)
    state = original.state_dict()
    assert ("gamma.w" in state) == (not final)  # the stale gamma is needed until the hard prune
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "s.safetensors"))
    resumed = _rpp(every=2)
    resumed.load_state_dict(load_file(str(tmp_path / "s.safetensors")))
    w2 = w.clone()
    for _ in range(3):
        original.after_optimizer_step({"w": w}, lr=0.1)
        resumed.after_optimizer_step({"w": w2}, lr=0.1)
        assert torch.equal(w, w2)
    assert resumed.calls == original.calls and resumed.proximal == original.proximal == (not final)


# -- options and per-method defaults ---------------------------------------------------------------
@pytest.mark.parametrize(
    "options,match",
    [
        ({"lam": -1}, "lam must be"),
        ({"lam": "abc"}, "lam must be"),
        ({"eps": 0}, "eps must be"),
        ({"reweight_every": 0}, "reweight_every must be"),
        ({"reweight_every": 1.5}, "reweight_every must be"),
        ({"lambda": 0.1}, "unknown option"),
    ],
)
def test_bad_options_are_one_line_errors(options: dict, match: str) -> None:
    with pytest.raises(PrunebertError, match=match) as info:
        PruningConfig(method="rpp", options=options)
    assert "\n" not in str(info.value)


def test_derived_lam_is_sized_at_the_first_step_and_resumes(tmp_path: Path) -> None:
    """lam unset: delta = ((w_cut + eps)^2 - eps^2) / (2 T) from the first step's weights, T the proximal
    steps before the hard prune; the threshold no longer scales with lr; delta travels in the state."""
    pruner = Pruner(tiny_classifier(), PruningConfig(method="rpp", sparsity=0.5))
    pruner.start(20)  # hard prune at step 14: 14 proximal steps
    method = pruner.method
    assert isinstance(method, ReweightedProximalPruning) and method.prox_steps == 14
    weights = {n: w.detach().clone() for n, w in pruner.weights().items()}
    cuts = magnitude_cutoffs(weights, 0.5, "layer")
    method.after_optimizer_step(pruner.weights(), lr=0.0)  # lr 0 (warm-up): the derived step still acts
    name, w = next(iter(pruner.weights().items()))
    delta = penalty_per_step(cuts[name], 1e-3, 14)
    assert method.delta[name] == pytest.approx(delta)
    torch.testing.assert_close(w.detach(), proximal_l1(weights[name], delta * reweight(weights[name], 1e-3)))
    save_file({k: v.contiguous() for k, v in method.state_dict().items()}, str(tmp_path / "s.safetensors"))
    resumed = ReweightedProximalPruning(RPPOptions())
    resumed.load_state_dict(load_file(str(tmp_path / "s.safetensors")))
    assert resumed.delta == pytest.approx(method.delta) and resumed.calls == 1


@pytest.mark.parametrize(("options", "warns"), [({}, False), ({"lam": 0.01}, True)])
def test_the_hard_prune_warns_when_the_proximal_phase_fell_short(
    tmp_path: Path, options: dict, warns: bool
) -> None:
    """At fine-tuning learning rates a fixed lam of 0.01 zeroes ~13% before the hard prune to 50%; the lam
    derived from the target gets the proximal phase within RPP_SHORTFALL of it."""
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(method="rpp", sparsity=0.5, options=options))
    args = tiny_training_args(tmp_path, 20, learning_rate=1e-4, weight_decay=0.0, save_strategy="no")
    trainer = Trainer(
        model=model, args=args, train_dataset=tiny_dataset(), callbacks=[PruningCallback(pruner)]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    zeros = [log["rpp_zero_fraction"] for log in trainer.state.log_history if "rpp_zero_fraction" in log]
    assert (zeros[-1] < 0.5 - RPP_SHORTFALL) == warns
    assert any("rpp: the proximal phase zeroed" in str(w.message) for w in caught) == warns
    assert pruner.module_sparsity() == {n: pytest.approx(0.5, abs=0.005) for n in pruner.masks}


def test_yaml_style_string_numbers_are_read() -> None:
    pruner = Pruner(tiny_classifier(), PruningConfig(method="rpp", options={"lam": "1e-3"}))
    assert isinstance(pruner.method, ReweightedProximalPruning) and pruner.method.opts.lam == 1e-3


def test_method_defaults_pick_their_schedules() -> None:
    rpp = PruningConfig(method="rpp", sparsity=0.5)
    assert (rpp.schedule, rpp.start_fraction) == ("oneshot", 0.7)
    pruner = Pruner(tiny_classifier(), rpp)
    pruner.start(100)
    assert pruner.schedule == OneShot(0.5, 70)
    assert PruningConfig(method="rpp", start_fraction=0.5).start_fraction == 0.5  # a recipe overrides
    nip = PruningConfig(method="nip")
    assert (nip.schedule, nip.iterations, nip.end_fraction) == ("iterative", 5, 0.8)


def test_nip_masks_are_nested_and_reach_the_target() -> None:
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(method="nip", sparsity=0.5))
    assert isinstance(pruner.method, IterativeMagnitudePruning)
    pruner.start(25)
    assert pruner.schedule == Iterative(0.5, 0, 20, 5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = {"input_ids": torch.randint(5, 128, (4, 12)), "labels": torch.tensor([0, 1, 1, 0])}
    previous = {n: m.clone() for n, m in pruner.masks.items()}
    for step in range(25):
        pruner.update(step, opt)
        assert all(bool((pruner.masks[n] <= previous[n]).all()) for n in previous)  # nested
        previous = {n: m.clone() for n, m in pruner.masks.items()}
        model(**batch).loss.backward()  # retraining between rounds
        opt.step()
        pruner.after_optimizer_step(opt)
        opt.zero_grad()
    assert pruner.history == [(s, pytest.approx(0.1 * (i + 1))) for i, s in enumerate((0, 4, 8, 12, 16))]
    assert pruner.module_sparsity() == {n: pytest.approx(0.5, abs=1e-3) for n in pruner.masks}


# -- a stock Trainer ---------------------------------------------------------------------------------
def test_trainer_logs_growing_zero_fraction_then_hard_prunes_to_target(tmp_path: Path) -> None:
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(method="rpp", sparsity=0.5, options={"lam": 1e-3}))
    args = tiny_training_args(tmp_path, 20, weight_decay=0.0, save_strategy="no", save_steps=500)
    trainer = Trainer(
        model=model, args=args, train_dataset=tiny_dataset(), callbacks=[PruningCallback(pruner)]
    )
    trainer.train()
    zeros = [log["rpp_zero_fraction"] for log in trainer.state.log_history if "rpp_zero_fraction" in log]
    assert len(zeros) == 6 and 0.0 < zeros[0] < zeros[-1]  # logged at steps 2..12, before the hard prune
    assert pruner.history == [(14, 0.5)] and pruner.method.calls == 14  # no proximal step after it
    assert pruner.module_sparsity() == {n: pytest.approx(0.5, abs=0.005) for n in pruner.masks}
    for name, weight in pruner.weights().items():
        assert bool((weight[~pruner.masks[name]] == 0).all())
