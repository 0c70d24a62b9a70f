"""lowrank_l0 (Wang, Wohlwend & Lei 2019): the Lagrangian maths by hand, sparsity held at the target in a
short training loop, the exact cut, folding and slimming, and state round trips."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.config import PruningConfig
from prunebert.errors import PrunebertError
from prunebert.methods import available_methods
from prunebert.methods.gates import BETA, GAMMA, ZETA, hard_concrete, open_probability
from prunebert.methods.lowrank_l0 import (
    LowRankL0Pruning,
    expected_sparsity,
    lagrangian_gradients,
    lagrangian_term,
    target_at,
)
from prunebert.models import load_model, save_pruned
from prunebert.pruner import Pruner
from prunebert.transforms.lowrank import LowRankLinear, slim_lowrank
from tiny import PADDED_MASK, padded_ids, tiny_classifier

IDS = padded_ids()
LOGIT0 = BETA * math.log(-GAMMA / ZETA)  # log_alpha where P(z != 0) = 0.5
COMPONENTS = 12 * 32  # 12 targets of the tiny BERT, rank 32 each


def _log_alpha(*probabilities: float) -> torch.Tensor:
    """log_alpha whose P(z != 0) are `probabilities`."""
    return torch.tensor([LOGIT0 + math.log(p / (1 - p)) for p in probabilities])


def _out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=PADDED_MASK).logits


def _pruner(steps: int, sparsity: float = 0.5, **options: object) -> tuple[Pruner, LowRankL0Pruning]:
    """The cut at the last step: `steps` optimizer steps of gate learning first."""
    config = PruningConfig(method="lowrank_l0", sparsity=sparsity, start_fraction=1.0, options=options)
    pruner = Pruner(tiny_classifier(), config)
    pruner.start(steps)
    assert isinstance(pruner.method, LowRankL0Pruning)
    return pruner, pruner.method


def _train(pruner: Pruner, steps: int, start: int = 0) -> list[float]:
    """Optimizer steps start + 1 .. start + `steps` in the order `PruningCallback` drives them: the s_hat
    each saw. Labels are the parity of the first token, so the task is learnable."""
    ids = torch.randint(5, 128, (steps, 8, 12), generator=torch.Generator().manual_seed(start))
    optimizer = torch.optim.AdamW(pruner.model.parameters(), lr=1e-3)
    pruner.model.train()
    expected = []
    for step, batch in enumerate(ids, start):
        pruner.model(input_ids=batch, labels=batch[:, 0] % 2).loss.backward()
        pruner.after_backward()
        optimizer.step()
        optimizer.zero_grad()
        pruner.after_optimizer_step(optimizer)
        expected.append(getattr(pruner.method, "expected"))  # noqa: B009
        pruner.update(step + 1, optimizer)
    return expected


# -- the maths --------------------------------------------------------------------------------------------
def test_expected_sparsity_weights_components_by_out_plus_in() -> None:
    log_alpha = {"a": _log_alpha(0.5, 0.75), "b": _log_alpha(0.25, 0.25, 0.5, 0.5)}
    widths = {"a": 3 + 2, "b": 4 + 4}  # a: 3 x 2 of rank 2, b: 4 x 4 of rank 4
    # kept in expectation: 5 (0.5 + 0.75) + 8 (0.25 + 0.25 + 0.5 + 0.5) = 18.25 of 5 x 2 + 8 x 4 = 42
    assert expected_sparsity(log_alpha, widths).item() == pytest.approx(1 - 18.25 / 42)  # 0.5655
    # (a count of components would say 1 - 2.75 / 6 = 0.5417); a masked component counts as removed
    kept = {"a": torch.tensor([True, True]), "b": torch.tensor([True, True, True, False])}
    assert expected_sparsity(log_alpha, widths, kept).item() == pytest.approx(1 - 14.25 / 42)
    s_hat = torch.tensor(0.6)
    assert lagrangian_term(s_hat, 0.5, torch.tensor([2.0, 3.0])).item() == pytest.approx(2 * 0.1 + 3 * 0.01)
    assert target_at(0.6, 5, 0) == 0.6 and target_at(0.6, 5, 20) == pytest.approx(0.15)
    assert target_at(0.6, 20, 20) == 0.6 and target_at(0.6, 40, 20) == 0.6


def test_lagrangian_gradients_by_hand() -> None:
    """s_hat - t = 23.75 / 42 - 0.7 = -0.134524; d term / d s_hat = lambda1 + 2 lambda2 (s_hat - t) = 1.192857
    with lambdas (2, 3); ds_hat / dlog_alpha_k = -(out + in) P_k (1 - P_k) / 42."""
    log_alpha = {"a": _log_alpha(0.5, 0.75), "b": _log_alpha(0.25, 0.25, 0.5, 0.5)}
    lambdas = torch.tensor([2.0, 3.0], dtype=torch.float64)
    s_hat, gates, d_lambdas = lagrangian_gradients(log_alpha, {"a": 5, "b": 8}, 0.7, lambdas)
    assert s_hat == pytest.approx(0.565476, abs=1e-6)
    assert d_lambdas.dtype == torch.float64
    assert d_lambdas.tolist() == pytest.approx([-0.134524, 0.018097], abs=1e-6)  # (s_hat - t, (s_hat - t)^2)
    # 1.192857 x -5 x (0.25, 0.1875) / 42 and 1.192857 x -8 x (0.1875, 0.1875, 0.25, 0.25) / 42
    assert gates["a"].tolist() == pytest.approx([-0.035502, -0.026626], abs=1e-6)
    assert gates["b"].tolist() == pytest.approx([-0.042602, -0.042602, -0.056803, -0.056803], abs=1e-6)
    assert log_alpha["a"].grad is None  # the inputs' own gradients are left alone


@pytest.mark.parametrize("sparsity,closing", [(0.5, True), (0.0, False)])
def test_lambdas_ascend_and_gates_descend(sparsity: float, closing: bool) -> None:
    """No task gradient: below the target lambda1 goes negative and the gates close; above it, the reverse."""
    pruner, method = _pruner(10, sparsity, lr_lambda=0.5)
    gap = (1 - open_probability(torch.tensor(3.0)).item()) - sparsity  # every gate at init 3.0
    pruner.after_backward()  # lambdas were 0: the gates get no push yet, the lambdas ascend
    assert method.lambdas.tolist() == pytest.approx([0.5 * gap, 0.5 * gap**2], abs=1e-6)
    assert all(bool((a == 3.0).all()) for a in method.gates.log_alpha.values())
    pruner.after_backward()
    assert method.lambdas.tolist() == pytest.approx([1.0 * gap, 1.0 * gap**2], abs=1e-6)
    moved = torch.cat([a.detach() for a in method.gates.log_alpha.values()]) - 3.0
    assert bool((moved < 0).all()) if closing else bool((moved > 0).all())
    before = method.expected
    pruner.after_backward()
    assert (method.expected > before) == closing  # s_hat rises as the gates close
    assert method.gates.steps == 3


@pytest.mark.parametrize(
    "options,message",
    [
        ({"lr_lambda": 0}, "lr_lambda must be"),
        ({"lr_gates": -1.0}, "lr_gates must be"),
        ({"init": math.inf}, "init must be"),
        ({"warmup_steps": 1.5}, "warmup_steps must be"),
        ({"lam": 0.1}, "unknown option"),
    ],
)
def test_bad_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(PrunebertError, match=message):
        PruningConfig(method="lowrank_l0", options=options)


# -- on a model -------------------------------------------------------------------------------------------
def test_registered_with_its_defaults_and_open_gates_change_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert "lowrank_l0" in available_methods()
    assert main(["methods"]) == 0 and "lowrank_l0" in capsys.readouterr().out.split()
    model = tiny_classifier().eval()
    dense = _out(model)
    pruner = Pruner(model, PruningConfig(method="lowrank_l0"))
    config = pruner.config
    assert (config.schedule, config.start_fraction, config.scope) == ("oneshot", 0.7, "global")
    modules = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    assert len(modules) == 12 and all(m.gate is not None for m in modules)
    assert (_out(model) - dense).abs().max() < 1e-5  # init 3.0: every evaluation gate is exactly 1
    with pytest.raises(PrunebertError, match="bake the pruner"):
        slim_lowrank(model)


def test_training_holds_expected_sparsity_at_the_target_then_cuts_exactly() -> None:
    pruner, method = _pruner(300, lr_gates=0.1)
    expected = _train(pruner, 299)  # the cut comes at step 300
    assert expected[0] < 0.02 and abs(expected[-1] - 0.5) < 0.03  # from all open to the target
    assert method.lambdas[0] != 0 and method.lambdas[1] > 0 and method.gated
    _train(pruner, 1, start=299)
    assert pruner.history == [(300, 0.5)] and not method.gated
    scores = torch.cat([a.detach() for a in method.gates.log_alpha.values()])  # as the cut saw them
    masks = torch.cat(list(pruner.masks.values()))
    assert int((~masks).sum()) == COMPONENTS // 2 and pruner.overall_sparsity() == 0.5
    assert scores[~masks].max() <= scores[masks].min()  # the least open gates went
    for name, g in pruner.weights().items():
        assert bool((g[~pruner.masks[name]] == 0).all())
    assert "l0_lambda1" not in method.log_metrics()  # no gates left to report


def test_folded_model_computes_what_the_gated_one_did(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    pruner, method = _pruner(10, sparsity=0.4)
    _train(pruner, 9)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # gates spread over (0, 1), so that folding has something to do
        for alpha in method.gates.log_alpha.values():
            alpha.copy_(torch.randn(alpha.shape, generator=generator) * 1.5 + 0.5)
    scores = torch.cat([a.detach() for a in method.gates.log_alpha.values()])
    cut = torch.zeros_like(scores, dtype=torch.bool)
    cut[scores.argsort()[: round(0.4 * COMPONENTS)]] = True  # the components the cut will remove
    with torch.no_grad():  # the gated model without them: what the folded one must compute
        offset = 0
        for g in pruner.weights().values():
            g[cut[offset : offset + g.numel()]] = 0
            offset += g.numel()
    z = hard_concrete(scores)[~cut]
    assert bool(((z > 0.05) & (z < 0.95)).any())
    gated = _out(pruner.model.eval())
    assert pruner.update(10)
    assert torch.equal(~torch.cat(list(pruner.masks.values())), cut)
    assert all(m.gate is None for m in method.modules.values())
    assert (_out(pruner.model) - gated).abs().max().item() <= 1e-5
    save_pruned(pruner.model, tiny_tokenizer, pruner, tmp_path / "run")
    assert main(["slim", str(tmp_path / "run"), str(tmp_path / "slim")]) == 0
    summary = json.loads((tmp_path / "slim" / "slim.json").read_text())
    assert summary["lowrank"]["ranks_kept"] == [230, COMPONENTS]  # round(0.4 x 384) = 154 cut
    slim = load_model(str(tmp_path / "slim"), head="classification").model
    assert (_out(slim) - gated).abs().max().item() <= 1e-4


def test_bake_folds_gates_that_were_never_cut() -> None:
    pruner, method = _pruner(10, init=0.5)  # every evaluation gate 1.2 sigmoid(0.5) - 0.1 = 0.647
    gated = _out(pruner.model.eval())
    pruner.bake()
    assert not method.gated and (_out(pruner.model) - gated).abs().max().item() <= 1e-5


def test_state_round_trip_resumes_identically() -> None:
    pruner, method = _pruner(10, lr_gates=0.2, warmup_steps=4)
    _train(pruner, 3)
    state = {k: v.clone() for k, v in method.state_dict().items()}
    assert {"steps", "gated", "lambdas"} <= set(state) and len(state) == 3 + 3 * 12
    other, resumed = _pruner(10, lr_gates=0.2, warmup_steps=4)
    other.model.load_state_dict(pruner.model.state_dict())
    resumed.load_state_dict(state)
    assert resumed.gates.steps == 3 and resumed.gated and torch.equal(resumed.lambdas, method.lambdas)
    for key, alpha in method.gates.log_alpha.items():
        assert torch.equal(resumed.gates.log_alpha[key], alpha)
        mine, theirs = method.gates.moments[key], resumed.gates.moments[key]
        assert all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True))
    for p in (pruner, other):  # one more gate step from the same backward (same noise)
        torch.manual_seed(7)
        p.model.train()
        p.model(input_ids=IDS, attention_mask=PADDED_MASK, labels=torch.tensor([0, 1, 0])).loss.backward()
        p.after_backward()
    assert method.target == resumed.target == pytest.approx(0.5)  # step 4 of a 4-step warmup
    assert torch.equal(resumed.lambdas, method.lambdas)
    assert all(torch.equal(resumed.gates.log_alpha[k], a) for k, a in method.gates.log_alpha.items())
    method.finalize()
    folded = method.state_dict()
    _, third = _pruner(10)
    third.load_state_dict(folded)
    assert not third.gated and all(m.gate is None for m in third.modules.values())
