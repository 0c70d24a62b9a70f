"""Fixed attention patterns (Raganato et al. 2020): the patterns by hand, the patched heads on tiny encoders
of every supported family (maps, contexts, no gradient into Q/K), save -> load, and finetune with them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.errors import PrunebertError
from prunebert.models import load_model
from prunebert.recipes import dump_recipe, load_recipe, validate_recipe
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.pretrain import PretrainConfig
from prunebert.structure import head_size
from prunebert.targets import find_targets
from prunebert.transforms.fixed_attention import (
    CONFIG_KEY,
    FixedAttentionConfig,
    apply_fixed_attention,
    fix_heads,
    pattern_matrix,
    resolve_heads,
)
from tiny import tiny_classifier, write_workspace

MASK = torch.tensor([[1, 1, 1, 0]])  # three tokens and one padding position


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("current", [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
        ("previous", [[1, 0, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]),
        ("next", [[0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
        ("left", [[1, 0, 0, 0], [1, 0, 0, 0], [1 / 2, 1 / 2, 0, 0], [1 / 3, 1 / 3, 1 / 3, 0]]),
        ("right", [[0, 1 / 2, 1 / 2, 0], [0, 0, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]]),
    ],
)
def test_patterns_by_hand(pattern: str, expected: list[list[float]]) -> None:
    # first/last real tokens fall back to themselves; padding (column 3) is never attended to by real tokens
    assert torch.allclose(pattern_matrix(pattern, MASK)[0], torch.tensor(expected, dtype=torch.float32))


def test_heads_are_resolved_per_layer_with_patterns_in_turn() -> None:
    three = resolve_heads(FixedAttentionConfig(heads_per_layer=3), layers=2, heads=4)
    assert three == {0: {0: "current", 1: "previous", 2: "next"}, 1: {0: "current", 1: "previous", 2: "next"}}
    chosen = FixedAttentionConfig(heads={1: [3, 0]}, patterns=["left", "right"])
    assert resolve_heads(chosen, layers=2, heads=4) == {1: {0: "left", 3: "right"}}
    assert resolve_heads(FixedAttentionConfig(heads_per_layer=1, layers=[1]), 2, 4) == {1: {0: "current"}}
    with pytest.raises(PrunebertError, match="exceeds the 4 heads"):
        resolve_heads(FixedAttentionConfig(heads_per_layer=5), layers=2, heads=4)
    with pytest.raises(PrunebertError, match="has 2 layers of 4 heads"):
        resolve_heads(FixedAttentionConfig(heads={2: [0]}), layers=2, heads=4)
    with pytest.raises(ValueError, match="exactly one of heads_per_layer and heads"):
        FixedAttentionConfig(heads_per_layer=1, heads={0: [1]})


def _batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 100, (3, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _contexts(
    model: PreTrainedModel, batch: dict[str, torch.Tensor], **kwargs: bool
) -> tuple[dict, dict, object]:
    """Run `model`; the inputs of every attention output projection ((B, T, H) head contexts) and V."""
    names = {(t.role, t.layer): t.name for t in find_targets(model, ("value", "attention_output"))}
    contexts, values, hooks = {}, {}, []
    for (role, layer), name in names.items():
        module = model.get_submodule(name)
        if role == "attention_output":
            hooks.append(
                module.register_forward_pre_hook(lambda m, a, layer=layer: contexts.__setitem__(layer, a[0]))
            )
        else:
            hooks.append(
                module.register_forward_hook(lambda m, a, o, layer=layer: values.__setitem__(layer, o))
            )
    try:
        out = model(**batch, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return contexts, values, out


@pytest.mark.parametrize("model_type", ["bert", "roberta", "distilbert", "electra"])
def test_patterned_heads_attend_by_their_pattern_and_the_others_are_untouched(model_type: str) -> None:
    dense = tiny_classifier(model_type).eval()
    model = tiny_classifier(model_type).eval()
    model.set_attn_implementation("eager")  # attention maps are returned by eager attention only
    assignment = {0: {1: "previous", 3: "left"}, 1: {0: "next"}}
    apply_fixed_attention(model, assignment)
    batch, d = _batch(), head_size(model.config)
    contexts, values, out = _contexts(model, batch, output_attentions=True)
    reference, _, _ = _contexts(dense, batch)
    for layer in (0, 1):
        for head in range(model.config.num_attention_heads):
            piece = slice(head * d, (head + 1) * d)
            pattern = assignment[layer].get(head)
            if pattern is None:
                if layer == 0:  # a learned head of the first layer: what the unpatched model computes
                    mine, theirs = contexts[layer][..., piece], reference[layer][..., piece]
                    assert torch.allclose(mine, theirs, atol=1e-6)
                continue
            expected = pattern_matrix(pattern, batch["attention_mask"])  # (B, T, T)
            assert torch.allclose(out.attentions[layer][:, head], expected)
            assert torch.allclose(
                contexts[layer][..., piece], expected @ values[layer][..., piece], atol=1e-6
            )


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_no_gradient_reaches_the_query_and_key_of_patterned_heads(model_type: str) -> None:
    model = tiny_classifier(model_type).train()
    apply_fixed_attention(model, {0: {2: "current"}})
    out = model(**_batch(), labels=torch.tensor([0, 1, 1]))
    out.loss.backward()
    targets = {
        (t.role, t.layer): model.get_submodule(t.name) for t in find_targets(model, ("query", "key", "value"))
    }
    d = head_size(model.config)
    for role in ("query", "key"):
        grad = targets[(role, 0)].weight.grad
        assert (
            torch.count_nonzero(grad[2 * d : 3 * d]) == 0
            and torch.count_nonzero(targets[(role, 0)].bias.grad[2 * d : 3 * d]) == 0
        )
        assert torch.count_nonzero(grad[:d]) > 0  # a learned head still learns
    assert torch.count_nonzero(targets[("value", 0)].weight.grad[2 * d : 3 * d]) > 0  # V stays learned


def test_save_then_load_gives_the_same_outputs(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    model = tiny_classifier().eval()
    fix_heads(model, FixedAttentionConfig(heads_per_layer=2))
    batch = _batch()
    with torch.no_grad():
        expected = model(**batch).logits
    model.save_pretrained(tmp_path / "fixed")
    tiny_tokenizer.save_pretrained(tmp_path / "fixed")
    record = json.loads((tmp_path / "fixed" / "config.json").read_text())[CONFIG_KEY]
    assert record == {
        "version": 1,
        "heads": {"0": {"0": "current", "1": "previous"}, "1": {"0": "current", "1": "previous"}},
    }
    loaded = load_model(str(tmp_path / "fixed"), head="classification").model.eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)
        plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "fixed").eval()
        assert not torch.allclose(plain(**batch).logits, expected)  # the patterns do matter
    loaded._prunebert_fixed_attention.remove()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, plain(**batch).logits)
    with pytest.raises(PrunebertError, match="already has other fixed attention heads"):
        fix_heads(model, FixedAttentionConfig(heads_per_layer=1))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    return write_workspace(tmp_path_factory.mktemp("fixed"), tiny_tokenizer)


def test_finetune_with_fixed_heads_then_evaluate(workspace: Path) -> None:
    run, task = workspace / "ft", ["--task", str(workspace / "task.csv"), "--max_seq_length", "16"]
    recipe = workspace / "fixed.yaml"
    recipe.write_text("fixed_attention: {heads: {0: [0, 1, 2, 3], 1: [2]}, patterns: [previous, next]}\n")
    argv = [
        "finetune",
        "--recipe",
        str(recipe),
        "--model",
        str(workspace / "tiny-mlm"),
        "--output_dir",
        str(run),
    ]
    fast = ["--train.max_steps", "4", "--train.batch_size", "8", "--train.save_steps", "100"]
    assert main([*argv, *task, *fast, "--pruning.sparsity", "0.5", "--pruning.roles", "[query, key]"]) == 0
    result = json.loads((run / "results.json").read_text())
    expected = {"0": {"0": "previous", "1": "next", "2": "previous", "3": "next"}, "1": {"2": "previous"}}
    assert result["fixed_attention"] == expected
    assert result["recipe"]["fixed_attention"]["heads"] == {"0": [0, 1, 2, 3], "1": [2]}
    assert json.loads((run / "model" / "config.json").read_text())[CONFIG_KEY]["heads"] == expected
    out = workspace / "eval.json"
    assert main(["evaluate", "--model", str(run), *task, "--output", str(out)]) == 0
    evaluated = json.loads(out.read_text())["metrics"]
    for split in ("dev", "test"):  # the evaluated model re-applied the patterns on load
        assert evaluated[split] == pytest.approx(result["metrics"][split])


def test_fields_added_after_runs_were_recorded_appear_in_recipes_only_when_set(tmp_path: Path) -> None:
    old = FinetuneConfig().model_dump(mode="json")  # what a run recorded before these fields existed
    assert not {"task_type", "qa", "fixed_attention"} & set(old)
    assert "nsp" not in PretrainConfig().model_dump(mode="json")
    assert FinetuneConfig.model_validate(old).model_dump(mode="json") == old  # so old runs still match
    cfg = FinetuneConfig(task_type="qa", qa={"doc_stride": 32}, fixed_attention={"heads": {1: [0, 2]}})
    dumped = cfg.model_dump(mode="json")
    assert dumped["task_type"] == "qa" and dumped["qa"]["doc_stride"] == 32
    assert dumped["fixed_attention"]["heads"] == {"1": [0, 2]}
    path = tmp_path / "recipe.yaml"
    path.write_text(dump_recipe(cfg))
    assert validate_recipe(FinetuneConfig, load_recipe(path)) == cfg  # load -> dump -> load
    nsp = PretrainConfig(nsp="off")
    path.write_text(dump_recipe(nsp))
    assert validate_recipe(PretrainConfig, load_recipe(path)).nsp == "off"
