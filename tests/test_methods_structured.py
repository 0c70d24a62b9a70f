"""Structured methods (heads, FFN neurons): exact group maths, whole-group masks, importance, resume."""

import copy
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, Trainer

from prunebert import PruningCallback
from prunebert.config import PruningConfig
from prunebert.errors import PrunebertError
from prunebert.methods.structured import (
    StructuredOptions,
    StructuredPruning,
    choose_groups,
    normalize_per_layer,
)
from prunebert.pruner import METHOD_STATE_FILE, Pruner
from prunebert.recipes import dump_recipe, load_recipe, validate_recipe
from prunebert.stages.finetune import FinetuneConfig
from prunebert.structure import (
    broadcast_groups,
    column_group_reduce,
    gate_gradient,
    group_norms,
    group_sets,
    head_size,
    kept_groups,
)
from prunebert.targets import find_targets
from tiny import StopAt, tiny_classifier, tiny_config, tiny_dataset, tiny_mlm, tiny_training_args

BATCH = {
    "input_ids": torch.randint(5, 128, (4, 12), generator=torch.Generator().manual_seed(0)),
    "labels": torch.tensor([0, 1, 1, 0]),
}
ATTENTION = ["query", "key", "value", "attention_output"]


# -- pure functions -----------------------------------------------------------------------------------
def test_gate_gradient_golden() -> None:
    weight = torch.tensor([[1.0, 2.0, -1.0, 0.5], [0.0, -3.0, 2.0, 4.0]])
    grad = torch.tensor([[0.5, 1.0, 2.0, -2.0], [7.0, 1.0, 0.25, 0.5]])
    # W * g = [[0.5, 2, -2, -1], [0, -3, 0.5, 2]]; groups of 2 columns: 0.5 + 2 + 0 - 3, -2 - 1 + 0.5 + 2
    assert gate_gradient(weight, grad, 2).tolist() == [-0.5, -0.5]
    assert gate_gradient(weight, grad, 1).tolist() == [0.5, -1.0, -1.5, 1.0]


def test_group_norms_and_kept_groups_golden() -> None:
    weight = torch.tensor([[3.0, 0.0, 0.0, 1.0], [4.0, 0.0, 0.0, 0.0]])
    assert group_norms(weight, 2).tolist() == [5.0, 1.0]
    assert group_norms(weight, 1).tolist() == [5.0, 0.0, 0.0, 1.0]
    assert kept_groups(weight, 2).tolist() == [True, True]
    assert kept_groups(weight, 1).tolist() == [True, False, False, True]


def test_broadcast_and_read_back_golden() -> None:
    values = torch.tensor([1.0, -2.0])
    rows = broadcast_groups(values, 2, torch.Size([4, 3]), axis=0)
    assert rows.tolist() == [[1.0] * 3, [1.0] * 3, [-2.0] * 3, [-2.0] * 3]
    cols = broadcast_groups(values, 2, torch.Size([1, 4]), axis=1)
    assert cols.tolist() == [[1.0, 1.0, -2.0, -2.0]]
    cols[0, 2] = -math.inf  # a read-back takes the group's largest entry
    assert column_group_reduce(cols, 2).tolist() == [1.0, -2.0]
    with pytest.raises(ValueError, match="do not tile"):
        broadcast_groups(values, 2, torch.Size([3, 3]), axis=0)


def test_normalize_and_choose_groups_golden() -> None:
    assert normalize_per_layer(torch.tensor([3.0, 4.0])).tolist() == pytest.approx([0.6, 0.8])
    assert normalize_per_layer(torch.zeros(3)).tolist() == [0.0, 0.0, 0.0]
    scores = {"a": torch.tensor([0.1, 0.9, 0.5, 0.7]), "b": torch.tensor([0.2, 0.3, 0.4, 0.8])}
    glob = choose_groups(scores, 0.5, "global")  # the 4 lowest of 8: 0.1, 0.2, 0.3, 0.4
    assert glob["a"].tolist() == [False, True, True, True] and glob["b"].tolist() == [False] * 3 + [True]
    layer = choose_groups(scores, 0.5, "layer")  # the 2 lowest of each
    assert (
        layer["a"].tolist() == [False, True, False, True]
        and layer["b"].tolist() == [False, False] + [True] * 2
    )


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "distilbert"])
def test_group_sets_come_from_the_target_table_and_config(model_type: str) -> None:
    model = tiny_classifier(model_type)
    sets = group_sets(find_targets(model), model.config)
    assert [(s.kind, s.layer) for s in sets] == [("heads", 0), ("neurons", 0), ("heads", 1), ("neurons", 1)]
    heads = sets[0]
    assert heads.group_size == head_size(model.config) == 8  # 32 wide / 4 heads
    assert [t.role for t in heads.inputs] == ["query", "key", "value"]
    assert heads.output.role == "attention_output" and sets[1].group_size == 1


def test_head_size_follows_the_config() -> None:
    model = AutoModelForSequenceClassification.from_config(tiny_config("bert", num_attention_heads=2))
    assert group_sets(find_targets(model), model.config)[0].group_size == 16


def test_gate_gradient_is_the_gradient_of_a_head_gate() -> None:
    """Michel et al.'s dL/d(gate) on a head's output equals sum(W_o * dL/dW_o) over its columns."""
    model = tiny_classifier().eval()
    dense = model.bert.encoder.layer[1].attention.output.dense
    gates = torch.ones(4, requires_grad=True)  # one per head, on the context entering W_o
    hook = dense.register_forward_pre_hook(lambda m, args: (args[0] * gates.repeat_interleave(8),))
    model(**BATCH).loss.backward()
    hook.remove()
    assert torch.allclose(gate_gradient(dense.weight, dense.weight.grad, 8), gates.grad, atol=1e-6)


def test_gate_gradient_is_the_gradient_of_a_neuron_gate() -> None:
    model = tiny_classifier().eval()
    dense = model.bert.encoder.layer[0].output.dense  # ffn_out
    gates = torch.ones(64, requires_grad=True)
    hook = dense.register_forward_pre_hook(lambda m, args: (args[0] * gates,))
    model(**BATCH).loss.backward()
    hook.remove()
    assert torch.allclose(gate_gradient(dense.weight, dense.weight.grad, 1), gates.grad, atol=1e-6)


# -- with a real Pruner -----------------------------------------------------------------------------
def _pruner(method: str = "structured", steps: int = 4, model=None, **fields: object) -> Pruner:
    config = PruningConfig(method=method, **{"sparsity": 0.5, "schedule": "oneshot", **fields})
    pruner = Pruner(model if model is not None else tiny_classifier(), config)
    pruner.start(steps)
    return pruner


def _assert_whole_groups(pruner: Pruner) -> dict[str, tuple[int, int]]:
    """Every set's member masks are exactly its kept groups spread out; returns kind -> (pruned, total)."""
    counts: dict[str, tuple[int, int]] = {}
    for s in getattr(pruner.method, "sets"):  # noqa: B009
        keep = kept_groups(pruner.masks[s.output.param_name], s.group_size)
        for target, axis in s.members():
            mask = pruner.masks[target.param_name]
            assert torch.equal(mask, broadcast_groups(keep, s.group_size, mask.shape, axis)), target.name
        pruned, total = counts.get(s.kind, (0, 0))
        counts[s.kind] = (pruned + int((~keep).sum()), total + keep.numel())
    return counts


def test_defaults_and_roles_of_the_three_names() -> None:
    heads, neurons, both = (PruningConfig(method=m) for m in ("heads", "neurons", "structured"))
    assert heads.roles == ATTENTION and neurons.roles == ["ffn_in", "ffn_out"] and len(both.roles) == 6
    assert heads.schedule == "iterative" and heads.scope == "global" and heads.start_fraction == 0.2
    assert PruningConfig(method="heads", scope="layer", roles=["query", "attention_output"]).scope == "layer"


@pytest.mark.parametrize(
    "fields,message",
    [
        ({"options": {"criterion": "fisher"}}, "criterion must be one of"),
        ({"options": {"normalize": "yes"}}, "normalize must be true or false"),
        ({"options": {"lam": 1}}, "unknown option"),
    ],
)
def test_bad_options_are_one_line_errors(fields: dict, message: str) -> None:
    with pytest.raises(PrunebertError, match=message):
        PruningConfig(method="heads", **fields)


def test_targets_a_structured_method_cannot_group_are_errors() -> None:
    with pytest.raises(PrunebertError, match=r"add it to --pruning\.roles"):
        _pruner("heads", roles=["query", "key"])
    with pytest.raises(PrunebertError, match="role 'embeddings'"):
        _pruner("heads", include_embeddings=True)


@pytest.mark.parametrize("model_type", ["bert", "roberta", "electra", "distilbert"])
def test_masks_are_whole_heads_and_neurons(model_type: str) -> None:
    pruner = _pruner(model=tiny_classifier(model_type), sparsity=0.6, options={"criterion": "magnitude"})
    assert pruner.update(0)
    # global: round(0.6 * 8) = 5 of 8 heads, round(0.6 * 128) = 77 of 128 neurons
    assert _assert_whole_groups(pruner) == {"heads": (5, 8), "neurons": (77, 128)}
    assert pruner.overall_sparsity() == pytest.approx((5 / 8 + 77 / 128) / 2)  # attention, FFN equal halves
    for name, weight in pruner.weights().items():
        assert bool((weight[~pruner.masks[name]] == 0).all())


def test_layer_scope_prunes_each_layer_alike() -> None:
    pruner = _pruner("heads", scope="layer", options={"criterion": "magnitude"})
    pruner.update(0)
    for s in getattr(pruner.method, "sets"):  # noqa: B009
        assert int((~kept_groups(pruner.masks[s.output.param_name], 8)).sum()) == 2
    assert pruner.overall_sparsity() == 0.5


def test_magnitude_criterion_prunes_the_smallest_heads_golden() -> None:
    model = tiny_classifier()
    with torch.no_grad():
        for i, layer in enumerate(model.bert.encoder.layer):
            weight = layer.attention.output.dense.weight
            for h in range(4):  # norms: layer 0 -> 1, 2, 3, 4; layer 1 -> 10, 20, 30, 40 (x per-entry)
                weight[:, h * 8 : (h + 1) * 8] = (h + 1) * (10 if i else 1) / math.sqrt(32 * 8)
    unnormalised = _pruner(
        "heads", model=copy.deepcopy(model), options={"criterion": "magnitude", "normalize": False}
    )
    unnormalised.update(0)  # global over raw norms: all of layer 0 goes
    keeps = [
        kept_groups(unnormalised.masks[s.output.param_name], 8).tolist() for s in unnormalised.method.sets
    ]
    assert keeps == [[False] * 4, [True] * 4]
    normalised = _pruner("heads", model=model, options={"criterion": "magnitude"})
    normalised.update(0)  # per-layer L2 normalisation makes both layers alike: the two smallest of each go
    keeps = [kept_groups(normalised.masks[s.output.param_name], 8).tolist() for s in normalised.method.sets]
    assert keeps == [[False, False, True, True]] * 2


def _step(pruner: Pruner, opt: torch.optim.Optimizer, step: int) -> None:
    pruner.model(**BATCH).loss.backward()
    pruner.after_backward()
    opt.step()
    pruner.after_optimizer_step(opt)
    opt.zero_grad()
    pruner.update(step, opt)


def test_taylor_importance_accumulates_gate_gradients_and_resets_each_round() -> None:
    pruner = _pruner(
        "heads", steps=10, schedule="iterative", iterations=2, start_fraction=0.3, end_fraction=1.0
    )
    method = pruner.method
    assert isinstance(method, StructuredPruning)
    model, opt = pruner.model, torch.optim.SGD(pruner.model.parameters(), lr=0.0)  # weights stay put
    expected = torch.zeros(4)
    dense = model.bert.encoder.layer[0].attention.output.dense
    for step in range(1, 3):
        model(**BATCH).loss.backward()
        expected += gate_gradient(dense.weight, dense.weight.grad, 8).abs()
        pruner.after_backward()
        opt.zero_grad()
        assert not pruner.update(step, opt)
    assert torch.allclose(method.state_dict()["importance.heads.0"], expected)
    restored = StructuredPruning(StructuredOptions())
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.state_dict()["importance.heads.0"], expected)
    _step(pruner, opt, 3)  # first round (step 3): importance starts again from zero
    assert pruner.history == [(3, 0.25)] and method.state_dict() == {}
    assert _assert_whole_groups(pruner)["heads"] == (2, 8)
    assert method.log_metrics() == {"heads_pruned": 0.25}


def test_rounds_are_nested_and_reach_the_target_exactly() -> None:
    pruner = _pruner(
        steps=12, sparsity=0.5, schedule="iterative", iterations=4, start_fraction=0.1, end_fraction=0.9
    )
    opt = torch.optim.AdamW(pruner.model.parameters(), lr=1e-2)
    previous = {n: m.clone() for n, m in pruner.masks.items()}
    for step in range(1, 13):
        _step(pruner, opt, step)
        assert all(bool((~previous[n] & pruner.masks[n]).sum() == 0) for n in previous), "a head regrew"
        previous = {n: m.clone() for n, m in pruner.masks.items()}
    assert [s for _, s in pruner.history] == [0.125, 0.25, 0.375, 0.5]
    assert _assert_whole_groups(pruner) == {"heads": (4, 8), "neurons": (64, 128)}
    assert pruner.overall_sparsity() == 0.5


def test_works_on_a_masked_language_model() -> None:
    model = tiny_mlm()
    pruner = _pruner("neurons", model=model, steps=6, schedule="iterative", iterations=2, end_fraction=1.0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = {"input_ids": BATCH["input_ids"], "labels": BATCH["input_ids"]}
    for step in range(1, 7):
        model(**batch).loss.backward()
        pruner.after_backward()
        opt.step()
        pruner.after_optimizer_step(opt)
        opt.zero_grad()
        pruner.update(step, opt)
    assert _assert_whole_groups(pruner) == {"neurons": (64, 128)}


def _trainer_run(out: Path, stop_at: int | None = None, resume: bool = False) -> tuple[Pruner, Trainer]:
    model = tiny_classifier()
    # rounds at steps 4 and 10: the checkpoint at step 8 holds importance gathered since step 4
    config = PruningConfig(
        method="structured", sparsity=0.5, iterations=2, start_fraction=0.25, end_fraction=1.0
    )
    pruner = Pruner(model, config)
    callbacks = [PruningCallback(pruner), *([StopAt(stop_at)] if stop_at else [])]
    trainer = Trainer(
        model=model, args=tiny_training_args(out, 16), train_dataset=tiny_dataset(), callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-8") if resume else None)
    return pruner, trainer


def test_resume_between_rounds_restores_importance(tmp_path: Path) -> None:
    full, _ = _trainer_run(tmp_path / "full")
    _trainer_run(tmp_path / "cut", stop_at=8)
    state = load_file(str(tmp_path / "cut" / "checkpoint-8" / METHOD_STATE_FILE))
    assert set(state) == {
        "importance.heads.0",
        "importance.heads.1",
        "importance.neurons.0",
        "importance.neurons.1",
    }
    assert all(bool((v > 0).any()) for v in state.values())
    resumed, _ = _trainer_run(tmp_path / "cut", resume=True)
    assert [s for _, s in full.history] == [0.25, 0.5]
    assert all(torch.equal(full.masks[n], resumed.masks[n]) for n in full.masks)


def test_structured_recipe_validates_and_round_trips(tmp_path: Path) -> None:
    recipe = load_recipe(Path(__file__).parents[1] / "recipes" / "finetune-structured50.yaml")
    config = validate_recipe(FinetuneConfig, recipe)
    assert config.pruning is not None and config.pruning.method == "structured" and config.distill is not None
    (tmp_path / "again.yaml").write_text(dump_recipe(config))
    assert validate_recipe(FinetuneConfig, load_recipe(tmp_path / "again.yaml")) == config
