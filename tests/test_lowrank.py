"""Low-rank factorised pruning: SVD factors, rank components pruned by size, saved, loaded and slimmed."""

import copy
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prunebert.cli import main
from prunebert.config import PruningConfig
from prunebert.deploy.bench import encoder_flops
from prunebert.errors import PrunebertError
from prunebert.masks import MASKS_FILE
from prunebert.models import load_model, save_pruned, transfer_pruner
from prunebert.pruner import Pruner
from prunebert.structure import encoder_layers
from prunebert.targets import find_targets
from prunebert.transforms.lowrank import (
    LOWRANK_KEY,
    LowRankLinear,
    SplitLinear,
    component_norms,
    factorize,
    slim_lowrank,
    split_pays,
    svd_factors,
)
from prunebert.transforms.slim import SLIM_KEY, load_slim, plan_slim, slim_model
from tiny import PADDED_MASK, padded_ids, tiny_config, write_workspace

IDS = padded_ids()
MASK = PADDED_MASK
FFN = re.compile(r"(\d\.output\.dense|intermediate\.dense|ffn\.lin[12])$")  # BERT, DistilBERT


def _model(model_type: str = "bert") -> PreTrainedModel:
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(tiny_config(model_type)).eval()


def _out(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK)[0]


def _pruned(model: PreTrainedModel, sparsity: float) -> Pruner:
    pruner = Pruner(model, PruningConfig(method="lowrank", sparsity=sparsity, schedule="oneshot"))
    pruner.start(1)
    pruner.update(0)
    return pruner


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the pure parts --------------------------------------------------------------------------------------
def test_svd_factors_rebuild_the_weight_and_components_are_measured_by_their_norm() -> None:
    weight = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    p, g, q = svd_factors(weight)
    assert p.shape == (6, 4) and g.shape == (4,) and q.shape == (4, 4)
    assert torch.allclose((p * g) @ q, weight, atol=1e-5)
    assert torch.allclose(component_norms(p, g, q), g)  # orthonormal factors: the singular values
    left, diagonal, right = (
        torch.tensor([[3.0, 0.0], [4.0, 1.0]]),
        torch.tensor([2.0, -3.0]),
        torch.eye(2) * 2,
    )
    right[0, 0] = 1.0  # rows of norm 1 and 2
    assert component_norms(left, diagonal, right).tolist() == [2 * 5 * 1, 3 * 1 * 2]


def test_a_split_pays_only_below_the_break_even_rank() -> None:
    assert split_pays(15, 32, 32) and not split_pays(16, 32, 32)  # 16 x 64 = 1024 = 32 x 32
    assert split_pays(21, 64, 32) and not split_pays(22, 64, 32)
    assert split_pays(383, 768, 768) and not split_pays(384, 768, 768)
    assert split_pays(614, 3072, 768) and not split_pays(615, 3072, 768)


def test_factorised_linear_computes_the_same_and_keeps_hooks() -> None:
    torch.manual_seed(0)
    holder = torch.nn.Sequential(torch.nn.Linear(8, 5))
    x = torch.randn(2, 3, 8)
    expected = holder(x)
    seen = []
    holder[0].register_forward_hook(lambda module, args, out: seen.append(type(module).__name__))
    holder.config = tiny_config()  # type: ignore[assignment]
    factorize(holder, ["0"])
    module = holder[0]
    assert isinstance(module, LowRankLinear) and module.weight.shape == (5,) and module.left.shape == (5, 5)
    assert torch.allclose(holder(x), expected, atol=1e-5) and seen == ["LowRankLinear"]
    assert getattr(holder.config, LOWRANK_KEY)["factorized"] == {"0": 5}


# -- pruning ---------------------------------------------------------------------------------------------
def test_pruner_removes_the_smallest_components_of_every_matrix() -> None:
    model = _model()
    dense = _out(model)
    pruner = Pruner(model, PruningConfig(method="lowrank", sparsity=0.5, schedule="oneshot"))
    assert (_out(model) - dense).abs().max() < 1e-5  # the factorisation alone changes nothing
    assert len(pruner.targets) == 12 and all(m.shape == (32,) for m in pruner.masks.values())
    modules = getattr(pruner.method, "modules")  # noqa: B009
    first = next(iter(modules.values()))
    with torch.no_grad():  # the smallest g, but P grew: its component is now the largest one
        first.left[:, -1] *= 1000.0
        first.weight[-1] /= 10.0
    norms = {name: component_norms(m.left, m.weight, m.right) for name, m in modules.items()}
    pruner.start(1)
    pruner.update(0)
    for name, mask in pruner.masks.items():
        assert int((~mask).sum()) == 16
        assert norms[name][~mask].max() <= norms[name][mask].min()  # the smaller half went
        assert bool((pruner.weights()[name][~mask] == 0).all())
    assert bool(next(iter(pruner.masks.values()))[-1])  # kept by its norm, though its g is the smallest
    model.train()
    model(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([0, 1, 0])).loss.backward()
    for name, g in pruner.weights().items():
        assert g.grad is not None and bool((g.grad[~pruner.masks[name]] == 0).all())
    # square matrices: 16 x (32 + 32) = 1024, no gain yet; FFN: 16 x 96 = 1536 of 2048
    assert pruner.method.log_metrics() == {"lowrank_weights": (8 * 1024 + 4 * 1536) / (8 * 1024 + 4 * 2048)}


def test_structured_methods_refuse_factorised_targets_and_others_prune_ranks() -> None:
    model = _model()
    _pruned(model, 0.25)
    with pytest.raises(PrunebertError, match="factorised"):
        Pruner(model, PruningConfig(method="heads", sparsity=0.5))
    further = Pruner(model, PruningConfig(method="magnitude", sparsity=0.5, schedule="oneshot"))
    assert all(m.shape == (32,) for m in further.masks.values())  # magnitude of g: rank components
    with pytest.raises(PrunebertError, match="is a Embedding"):
        Pruner(_model(), PruningConfig(method="lowrank", include_embeddings=True))


# -- saved and loaded --------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_saved_factorised_model_loads_back(
    model_type: str, tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    model = _model(model_type)
    pruner = _pruned(model, 0.5)
    save_pruned(model, tiny_tokenizer, pruner, tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert len(config[LOWRANK_KEY]["factorized"]) == 12 and not config[LOWRANK_KEY]["split"]
    assert all(not name.startswith(model.base_model_prefix) for name in config[LOWRANK_KEY]["factorized"])
    loaded = load_model(str(tmp_path / "run"), head="classification")
    assert not loaded.new_head and torch.equal(_out(loaded.model), _out(model))
    encoder = load_model(str(tmp_path / "run"), head="base").model  # headless: names are the base model's
    assert torch.equal(_out(encoder), _out(model.base_model))
    fixed = transfer_pruner(loaded.model, loaded.path, None)  # a later stage keeps the pruned components
    assert fixed is not None and all(torch.equal(fixed.masks[n], m) for n, m in pruner.masks.items())
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # it carries its own modeling code
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "run")


def test_bad_lowrank_entries_are_one_line_errors(tmp_path: Path) -> None:
    model = _model()
    _pruned(model, 0.5)
    model.save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    good = json.loads(path.read_text())
    name = "encoder.layer.0.attention.self.query"
    cases = [
        ({"version": 2}, "unreadable"),
        ({**good[LOWRANK_KEY], "factorized": {"encoder.layer.9.nothing": 4}}, "not a Linear of this model"),
        ({**good[LOWRANK_KEY], "factorized": {name: 40}}, "bad rank 40"),
        ({**good[LOWRANK_KEY], "factorized": {name: 16}}, "come from different models"),
    ]
    for entry, message in cases:
        path.write_text(json.dumps({**good, LOWRANK_KEY: entry}))
        with pytest.raises(PrunebertError, match=message):
            load_slim(tmp_path)


# -- slimmed ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_slim_splits_where_smaller_and_merges_elsewhere(model_type: str, tmp_path: Path) -> None:
    model = _model(model_type)
    _pruned(model, 0.4)  # 19 of 32 components kept: below break-even for 64 x 32 FFN matrices only
    expected, before = _out(model), _params(model)
    summary = slim_lowrank(model)
    assert (_out(model) - expected).abs().max().item() <= 1e-4
    assert summary["ranks_kept"] == [12 * 19, 12 * 32] and len(summary["merged"]) == 8
    assert sorted(summary["split"].values()) == [19] * 4 and all(FFN.search(n) for n in summary["split"])
    for name, module in model.named_modules():
        if FFN.search(name):
            assert isinstance(module, SplitLinear) and module.first.weight.shape[0] == 19
    dense = _model(model_type)
    ffn_saving = 4 * (64 * 32 - 19 * 96)
    # P, g and Q beyond the dense W: 8 square matrices of rank 32, 4 FFN ones (64 x 32 and 32 x 64)
    factorised_extra = 8 * (2 * 32 * 32 + 32) + 4 * (3 * 32 * 32 + 32) - (8 * 32 * 32 + 4 * 64 * 32)
    assert _params(model) == _params(dense) - ffn_saving
    assert before == _params(dense) + factorised_extra
    entry = getattr(model.config, LOWRANK_KEY)
    assert entry["factorized"] == {} and entry["split"] == summary["split"]
    model.save_pretrained(tmp_path)
    assert torch.equal(_out(load_slim(tmp_path)), _out(model))


def test_heads_are_cut_where_attention_is_plain_while_the_ffn_is_factorised(tmp_path: Path) -> None:
    model = _model()
    config = PruningConfig(method="lowrank", sparsity=0.6, schedule="oneshot", roles=["ffn_in", "ffn_out"])
    pruner = Pruner(model, config)
    pruner.start(1)
    pruner.update(0)
    with torch.no_grad():  # head 1 of layer 0 removed by hand
        model.bert.encoder.layer[0].attention.output.dense.weight[:, 8:16] = 0
    expected = _out(model)
    plan = plan_slim(model)
    assert plan.count("heads") == (7, 8) and plan.count("neurons") == (0, 0)  # FFN sets are factorised
    slim_model(model, plan)
    summary = slim_lowrank(model)
    assert set(summary["split"].values()) == {13} and len(summary["split"]) == 4
    assert (_out(model) - expected).abs().max().item() <= 1e-4
    layout = getattr(model.config, SLIM_KEY)
    assert layout["heads"] == [[0, 2, 3], [0, 1, 2, 3]] and layout["intermediate_sizes"] == [64, 64]
    model.save_pretrained(tmp_path)
    assert torch.equal(_out(load_slim(tmp_path)), _out(model))


def test_flops_count_the_factors() -> None:
    model = AutoModel.from_config(tiny_config())
    seq, attention = 8, 2 * 2 * (2 * 8 * 8 * 32)  # layers x (QK^T + AV), widths unchanged
    dense = 2 * (4 * 32 * 32 + 2 * 32 * 64) * 2 * seq + attention
    assert encoder_flops(model, seq) == {"dense": dense, "nonzero_weights": dense}
    _pruned(model, 0.6)  # 13 of 32 components kept in every matrix
    factorised = 2 * 2 * (4 * 32 * 64 + 2 * 32 * 96) * seq  # layers x 2 x r (out + in)
    kept = factorised * 13 // 32
    assert encoder_flops(model, seq) == {"dense": factorised + attention, "nonzero_weights": kept + attention}
    slim_lowrank(model)  # all split: 13 (out + in) per matrix, dense and nonzero alike
    assert encoder_flops(model, seq) == {"dense": kept + attention, "nonzero_weights": kept + attention}


def _without_layer_zero(model: PreTrainedModel) -> PreTrainedModel:
    reference = copy.deepcopy(model)
    name, layers = encoder_layers(reference)
    reference.set_submodule(name, torch.nn.ModuleList(list(layers)[1:]))
    return reference


def test_cli_slims_factorised_modules_and_drops_layers(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _model()
    pruner = _pruned(model, 0.6)  # 13 of 32 kept: every matrix splits
    expected = _out(_without_layer_zero(model))
    save_pruned(model, tiny_tokenizer, pruner, tmp_path / "run")
    assert main(["slim", str(tmp_path / "run"), str(tmp_path / "slim"), "--drop_layers", "0"]) == 0
    printed = capsys.readouterr().out
    # layer 0 goes first; the 6 matrices of the layer left keep 13 of 32 components each
    assert "rank components kept: 78 of 192; 6 matrices split in two, 0 multiplied back" in printed
    assert "attention heads kept" not in printed  # every projection is factorised: no heads to count
    summary = json.loads((tmp_path / "slim" / "slim.json").read_text())
    assert summary["lowrank"]["ranks_kept"] == [78, 192] and summary["layers_kept"] == [1, 2]
    split = summary[LOWRANK_KEY]["split"]  # the entries of layer 0 went with it, layer 1 renumbered
    assert (
        len(split) == 6
        and all(n.startswith("encoder.layer.0.") for n in split)
        and set(split.values()) == {13}
    )
    assert not (tmp_path / "slim" / MASKS_FILE).exists()  # every mask was on a removed diagonal
    loaded = load_model(str(tmp_path / "slim"), head="classification").model
    assert (_out(loaded) - expected).abs().max().item() <= 1e-4
    layer = loaded.bert.encoder.layer[0]
    assert isinstance(layer.attention.self.query, SplitLinear) and layer.output.dense.first.weight.shape == (
        13,
        64,
    )
    with pytest.raises(PrunebertError, match="no prunable"):  # split matrices are no longer targets
        find_targets(loaded, ["query", "ffn_in"])


def test_finetune_with_lowrank_then_slim_then_evaluate(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    """From the command line: prune rank components while fine-tuning, slim, evaluate: same predictions."""
    space = write_workspace(tmp_path, tiny_tokenizer)
    run, slim, fast = space / "ft", space / "slim", ["--train.batch_size", "4", "--max_seq_length", "16"]
    argv = ["finetune", "--model", str(space / "tiny-mlm"), "--task", str(space / "task.csv")]
    argv += ["--output_dir", str(run), "--train.max_steps", "10", "--pruning.method", "lowrank", *fast]
    assert main([*argv, "--pruning.sparsity", "0.7", "--train.logging_steps", "5"]) == 0
    tuned = json.loads((run / "results.json").read_text())
    assert tuned["sparsity"]["overall"] == pytest.approx(0.7, abs=0.5 / 32)
    assert any("lowrank_weights" in h for h in tuned["train"]["log_history"])
    assert main(["slim", str(run), str(slim)]) == 0
    summary = json.loads((slim / "slim.json").read_text())
    assert summary["max_abs_diff"] <= 1e-4 and summary["parameters_after"] < summary["parameters_before"]
    out = space / "eval.json"
    evaluate = ["evaluate", "--model", str(slim), "--task", str(space / "task.csv"), "--output", str(out)]
    assert main([*evaluate, "--max_seq_length", "16"]) == 0
    metrics = json.loads(out.read_text())["metrics"]
    for split_name, values in tuned["metrics"].items():
        assert metrics[split_name]["accuracy"] == values["accuracy"]
        assert metrics[split_name]["loss"] == pytest.approx(values["loss"], abs=1e-4)


def test_heads_slimmed_then_factorised_then_layerdrop_then_slimmed(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    """The three kinds of structure in sequence, each step saved and loaded as the next run would."""
    model = _model()
    with torch.no_grad():  # head 1 of layer 0 removed, then cut away
        model.bert.encoder.layer[0].attention.output.dense.weight[:, 8:16] = 0
    slim_model(model)
    _pruned(model, 0.5)  # the cut query of layer 0 is 24 x 32: rank 24
    assert getattr(model.config, LOWRANK_KEY)["factorized"]["encoder.layer.0.attention.self.query"] == 24
    layerdrop = Pruner(model, PruningConfig(method="layerdrop", sparsity=0.5))
    layerdrop.start(1)
    layerdrop.update(1)  # layer 1 goes: skipped from now on
    expected = _out(model)
    model.save_pretrained(tmp_path / "run")
    tiny_tokenizer.save_pretrained(tmp_path / "run")
    assert torch.equal(_out(load_model(str(tmp_path / "run"), head="classification").model), expected)
    assert main(["slim", str(tmp_path / "run"), str(tmp_path / "slim")]) == 0
    config = json.loads((tmp_path / "slim" / "config.json").read_text())
    assert config[SLIM_KEY]["layers"] == [0] and config[SLIM_KEY]["heads"][0] == [0, 2, 3]
    split = config[LOWRANK_KEY][
        "split"
    ]  # 12 of 24 (Q/K/V of layer 0) and 16 of 32 (FFN) pay; the rest merged
    assert not config[LOWRANK_KEY]["factorized"] and set(split.values()) == {12, 16}
    assert all(n.startswith("encoder.layer.0.") for n in split) and len(split) == 6
    slim = load_model(str(tmp_path / "slim"), head="classification").model
    assert len(encoder_layers(slim)[1]) == 1 and (_out(slim) - expected).abs().max().item() <= 1e-4
