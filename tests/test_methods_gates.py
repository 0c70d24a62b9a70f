"""Learned Hard Concrete gates (Voita et al. 2019): exact gate maths, gradients, folding, state, slimming."""

import math

import pytest
import torch

from prunebert.config import PruningConfig
from prunebert.errors import PrunebertError
from prunebert.methods.gates import (
    BETA,
    GAMMA,
    ZETA,
    GatePruning,
    adam_update,
    hard_concrete,
    l0_gradient,
    open_probability,
)
from prunebert.pruner import Pruner
from prunebert.structure import gate_gradient, kept_groups
from prunebert.transforms.slim import plan_slim, slim_model
from tiny import tiny_classifier

BATCH = {
    "input_ids": torch.randint(5, 128, (4, 12), generator=torch.Generator().manual_seed(0)),
    "labels": torch.tensor([0, 1, 1, 0]),
}


def _out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=BATCH["input_ids"]).logits


def _pruner(**fields: object) -> tuple[Pruner, GatePruning]:
    pruner = Pruner(tiny_classifier().eval(), PruningConfig(method="gates", **{"sparsity": 0.5, **fields}))
    pruner.start(10)
    assert isinstance(pruner.method, GatePruning)
    return pruner, pruner.method


# -- pure functions -----------------------------------------------------------------------------------
def test_hard_concrete_golden() -> None:
    log_alpha = torch.tensor([0.0, 10.0, -10.0])
    assert hard_concrete(log_alpha).tolist() == pytest.approx([0.5, 1.0, 0.0])  # 0.5 * 1.2 - 0.1 = 0.5
    u = torch.tensor([1 / (1 + math.exp(-2 / 3))] * 3)  # logit(u) = 2/3, so s = sigmoid((2/3 + a) * 1.5)
    # a = 0: s = sigmoid(1) = 0.731059, z = 1.2 s - 0.1 = 0.777270; a = +-10: stretched past 1 / below 0
    assert hard_concrete(log_alpha, u).tolist() == pytest.approx([0.777270, 1.0, 0.0], abs=1e-6)


def test_open_probability_and_l0_gradient() -> None:
    assert open_probability(torch.tensor([BETA * math.log(-GAMMA / ZETA)])).item() == pytest.approx(0.5)
    log_alpha = torch.tensor([-2.0, 0.0, 3.0], requires_grad=True)
    (0.3 * open_probability(log_alpha).sum()).backward()
    assert torch.allclose(l0_gradient(log_alpha.detach(), 0.3), log_alpha.grad)


def test_adam_update_golden() -> None:
    param, grad = torch.tensor([1.0, 1.0]), torch.tensor([2.0, -0.5])
    new, m, v = adam_update(param, grad, torch.zeros(2), torch.zeros(2), step=1, lr=0.1)
    assert m.tolist() == pytest.approx([0.2, -0.05]) and v.tolist() == pytest.approx([0.004, 0.00025])
    assert new.tolist() == pytest.approx([0.9, 1.1])  # the first bias-corrected step is lr * sign(g)


@pytest.mark.parametrize(
    "options,message",
    [
        ({"lam": -1.0}, "lam must be"),
        ({"lr_gates": 0}, "lr_gates must be"),
        ({"init": math.nan}, "init must be"),
    ],
)
def test_bad_options_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(PrunebertError, match=message):
        PruningConfig(method="gates", options=options)


# -- on a model ---------------------------------------------------------------------------------------
def test_open_gates_leave_the_model_unchanged_and_defaults() -> None:
    model = tiny_classifier().eval()
    expected = _out(model)
    pruner = Pruner(model, PruningConfig(method="gates"))
    assert torch.equal(_out(model), expected)  # init 3.0: every evaluation gate is exactly 1
    assert pruner.config.schedule == "oneshot" and pruner.config.start_fraction == 0.7
    assert [t.role for t in pruner.targets[:4]] == ["query", "key", "value", "attention_output"]


def test_gate_gradient_reaches_log_alpha() -> None:
    """log_alpha 0, evaluation: z = 0.5, dL/dlog_alpha = dL/dz * 1.2 * s(1 - s) = 0.3 * gate_gradient / z."""
    pruner, method = _pruner(options={"init": 0.0})
    pruner.model(**BATCH).loss.backward()
    dense = pruner.model.bert.encoder.layer[0].attention.output.dense
    expected = gate_gradient(dense.weight, dense.weight.grad, 8) / 0.5 * 0.3
    assert torch.allclose(method.log_alpha["heads.0"].grad, expected, atol=1e-6)


def test_penalty_closes_gates_without_task_gradient() -> None:
    pruner, method = _pruner(options={"lam": 1.0, "lr_gates": 0.1})
    for _ in range(5):
        pruner.after_backward()  # no backward: only the L0 penalty pulls
    # Adam moves each log_alpha by about lr per step (a bit less as the penalty's gradient shrinks)
    assert torch.allclose(method.log_alpha["heads.1"], torch.full((4,), 2.5), atol=0.01)
    assert method.log_metrics()["gates_open"] < open_probability(torch.tensor(3.0)).item()


def test_final_prune_keeps_most_open_gates_and_folds_them_exactly() -> None:
    pruner, method = _pruner(schedule="oneshot", start_fraction=0.0)
    with torch.no_grad():
        method.log_alpha["heads.0"].copy_(torch.tensor([0.0, -1.0, 0.5, 4.0]))  # gates 0.5, 0.22, 0.63, 1
        method.log_alpha["heads.1"].copy_(torch.tensor([-2.0, 1.0, 2.0, -0.5]))
    model = pruner.model
    layers = model.bert.encoder.layer
    with torch.no_grad():  # the gated model without the heads that will go: what the pruned one must compute
        for layer, heads in ((layers[0], (0, 1)), (layers[1], (0, 3))):
            for h in heads:
                layer.attention.output.dense.weight[:, h * 8 : (h + 1) * 8] = 0
    expected = _out(model)
    assert pruner.update(0)  # 4 of 8 go: the lowest log_alpha are -2, -1, -0.5 and 0
    keeps = [kept_groups(pruner.masks[s.output.param_name], 8).tolist() for s in method.sets]
    assert keeps == [[False, False, True, True], [False, True, True, False]]
    assert not method.gated and not layers[0].attention.output.dense._forward_pre_hooks
    assert torch.allclose(_out(model), expected, atol=1e-6)  # gates < 1 now live in the weights
    slim_model(model)  # whole heads went: slimming changes nothing either
    assert plan_slim(model).count("heads") == (4, 4)
    assert torch.allclose(_out(model), expected, atol=1e-5)


def test_bake_folds_gates_that_were_never_pruned() -> None:
    pruner, method = _pruner(options={"init": 0.0})  # every evaluation gate is 0.5
    gated = _out(pruner.model)
    pruner.bake()
    assert not method.gated
    assert torch.allclose(_out(pruner.model), gated, atol=1e-6)  # the plain model computes the same


def test_state_round_trip_and_loading_a_folded_state() -> None:
    pruner, method = _pruner(options={"lam": 0.5})
    pruner.model.train()
    pruner.model(**BATCH).loss.backward()
    pruner.after_backward()
    state = {k: v.clone() for k, v in method.state_dict().items()}
    _, other = _pruner(options={"lam": 0.5})
    other.load_state_dict(state)
    assert other.steps == 1 and other.gated
    assert all(torch.equal(other.log_alpha[k], method.log_alpha[k]) for k in method.log_alpha)
    method.finalize()
    folded = method.state_dict()
    assert not bool(folded["gated"])
    _, third = _pruner()
    third.load_state_dict(folded)
    assert not third.gated and not third._hooks
