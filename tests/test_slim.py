"""Slimming: removed heads / neurons give a smaller model with the same outputs, saved and loaded back."""

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prunebert.cli import main
from prunebert.config import PruningConfig
from prunebert.errors import PrunebertError
from prunebert.masks import MASKS_FILE
from prunebert.models import load_model, save_pruned, transfer_pruner
from prunebert.pruner import Pruner
from prunebert.structure import group_sets
from prunebert.targets import find_targets
from prunebert.transforms.slim import (
    SLIM_KEY,
    NoHeads,
    layer_count,
    load_slim,
    plan_slim,
    slice_masks,
    slim_model,
    slim_with_changes,
)
from tiny import PADDED_MASK, padded_ids, tiny_classifier, tiny_config, tiny_mlm, write_workspace

IDS = padded_ids(0)
MASK = PADDED_MASK
MODEL_TYPES = ["bert", "roberta", "distilbert", "electra"]


def _out(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK)[0]


def _structured(model: PreTrainedModel, sparsity: float = 0.5) -> Pruner:
    """Half the heads and neurons of each layer (magnitude, one shot); then layer 1's heads, layer 0's FFN."""
    options = {"criterion": "magnitude"}
    config = PruningConfig(
        method="structured", sparsity=sparsity, schedule="oneshot", scope="layer", options=options
    )
    pruner = Pruner(model, config)
    pruner.start(1)
    pruner.update(0)
    for s in group_sets(pruner.targets, model.config):
        if (s.kind, s.layer) in (("heads", 1), ("neurons", 0)):
            for target, _ in s.members():
                pruner.masks[target.param_name] = torch.zeros_like(pruner.masks[target.param_name])
    pruner.enforce()
    return pruner


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("kind", ["classifier", "base"])
def test_slim_matches_masked_model_and_loads_back(model_type: str, kind: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = tiny_config(model_type, num_labels=3)
    cls = AutoModelForSequenceClassification if kind == "classifier" else AutoModel
    model = cls.from_config(config).eval()
    _structured(model)
    expected, before = _out(model), _params(model)
    slim_model(model)
    assert (_out(model) - expected).abs().max().item() <= 1e-4
    # layer 0: 2 heads (4 x 8 rows of Q/K/V + W_o columns), no neuron; layer 1: no head, 32 neurons
    removed_attention = (2 * 8 * 4 * 32 + 2 * 8 * 3) + (4 * 8 * 4 * 32 + 4 * 8 * 3)  # weights + Q/K/V biases
    removed_ffn = (64 * 2 * 32 + 64) + (32 * 2 * 32 + 32)  # ffn_in rows + biases, ffn_out columns
    assert before - _params(model) == removed_attention + removed_ffn
    layout = getattr(model.config, SLIM_KEY)
    assert (
        layout["intermediate_sizes"] == [0, 32] and len(layout["heads"][0]) == 2 and layout["heads"][1] == []
    )
    model.save_pretrained(tmp_path)
    loaded = load_slim(tmp_path)
    assert type(loaded) is type(model) and not loaded.training
    assert torch.equal(_out(loaded), _out(model))
    assert set(loaded.state_dict()) == set(model.state_dict())


def test_layer_structure_after_slimming() -> None:
    model = tiny_classifier().eval()
    _structured(model)
    slim_model(model)
    layer0, layer1 = model.bert.encoder.layer
    assert isinstance(layer1.attention.self, NoHeads)
    assert layer0.attention.self.num_attention_heads == 2 and layer0.attention.self.all_head_size == 16
    assert layer0.attention.self.query.weight.shape == (16, 32)
    assert layer0.intermediate.dense.weight.shape == (0, 32) and layer1.output.dense.weight.shape == (32, 32)
    distil = tiny_classifier("distilbert").eval()
    _structured(distil)
    slim_model(distil)
    no_heads = distil.distilbert.transformer.layer[1].attention
    assert isinstance(no_heads, NoHeads) and no_heads.out_lin.weight.shape == (32, 0)  # keeps its bias
    assert distil.distilbert.transformer.layer[0].attention.n_heads == 2


def test_slimmed_model_trains() -> None:
    model = tiny_classifier()
    _structured(model)
    slim_model(model)
    loss = model(input_ids=IDS, attention_mask=MASK, labels=torch.tensor([0, 1, 0])).loss
    loss.backward()
    assert model.bert.encoder.layer[0].attention.self.query.weight.grad is not None


def test_masked_lm_keeps_tied_embeddings(tmp_path: Path) -> None:
    model = tiny_mlm().eval()
    _structured(model)
    expected = _out(model)
    slim_model(model).save_pretrained(tmp_path)
    loaded = load_slim(tmp_path)
    assert isinstance(loaded, type(model)) and (_out(loaded) - expected).abs().max().item() <= 1e-4
    decoder = loaded.get_output_embeddings().weight
    assert decoder.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()


def test_slimming_twice_keeps_original_head_numbers(tmp_path: Path) -> None:
    model = tiny_classifier().eval()
    with torch.no_grad():  # remove head 1 of layer 0 only
        model.bert.encoder.layer[0].attention.output.dense.weight[:, 8:16] = 0
    slim_model(model)
    assert getattr(model.config, SLIM_KEY)["heads"] == [[0, 2, 3], [0, 1, 2, 3]]
    with torch.no_grad():  # now the third kept head of layer 0 (originally head 3) and neuron 5 of layer 1
        model.bert.encoder.layer[0].attention.output.dense.weight[:, 16:24] = 0
        model.bert.encoder.layer[1].output.dense.weight[:, 5] = 0
    expected = _out(model)
    plan = plan_slim(model)
    assert plan.keep["heads.0"] == [0, 1] and plan.count("heads") == (6, 7)
    slim_model(model, plan)
    layout = getattr(model.config, SLIM_KEY)
    assert layout == {"version": 1, "heads": [[0, 2], [0, 1, 2, 3]], "intermediate_sizes": [64, 63]}
    model.save_pretrained(tmp_path)
    assert torch.equal(_out(load_slim(tmp_path)), _out(model))
    assert (_out(model) - expected).abs().max().item() <= 1e-4


def test_plain_transformers_refuses_a_slimmed_checkpoint(tmp_path: Path) -> None:
    model = tiny_classifier()
    _structured(model)
    slim_model(model).save_pretrained(tmp_path)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path)


def test_load_model_reads_slimmed_directories(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    model = tiny_classifier().eval()
    _structured(model)
    slim_model(model).save_pretrained(tmp_path / "cls")
    tiny_tokenizer.save_pretrained(tmp_path / "cls")
    loaded = load_model(str(tmp_path / "cls"), head="classification", num_labels=2)
    assert not loaded.new_head and torch.equal(_out(loaded.model), _out(model))
    encoder = load_model(str(tmp_path / "cls"), head="base")  # the encoder alone, keys without "bert."
    assert torch.equal(_out(encoder.model), _out(model.bert))
    base = AutoModel.from_config(tiny_config()).eval()
    _structured(base)
    slim_model(base).save_pretrained(tmp_path / "base")
    tiny_tokenizer.save_pretrained(tmp_path / "base")
    headed = load_model(str(tmp_path / "base"), head="classification", num_labels=3)
    assert headed.new_head and headed.model.classifier.out_features == 3
    assert torch.equal(_out(headed.model.bert), _out(base))


def test_slice_masks_cuts_like_the_weights() -> None:
    index = torch.tensor([0, 2])
    masks = {
        "a": torch.tensor([[True, False, True], [False, True, True]]),
        "b": torch.ones(2, 2, dtype=torch.bool),
    }
    cut = slice_masks({**masks, "gone": masks["b"]}, {"a": (1, index)}, ["gone"])
    assert cut["a"].tolist() == [[True, True], [False, True]] and torch.equal(cut["b"], masks["b"])
    assert "gone" not in cut


def test_bad_slim_directories_are_one_line_errors(tmp_path: Path) -> None:
    model = tiny_classifier()
    model.save_pretrained(tmp_path / "dense")
    with pytest.raises(PrunebertError, match="not a slimmed model"):
        load_slim(tmp_path / "dense")
    _structured(model)
    slim_model(model).save_pretrained(tmp_path / "slim")
    config_path = tmp_path / "slim" / "config.json"
    good = json.loads(config_path.read_text())
    broken = {**good, SLIM_KEY: {**good[SLIM_KEY], "heads": [[0, 9], []]}}
    config_path.write_text(json.dumps(broken))
    with pytest.raises(PrunebertError, match="bad heads list of layer 0"):
        load_slim(tmp_path / "slim")
    config_path.write_text(json.dumps({**good, SLIM_KEY: {**good[SLIM_KEY], "intermediate_sizes": [0, 30]}}))
    with pytest.raises(PrunebertError, match="come from different models"):
        load_slim(tmp_path / "slim")
    config_path.write_text(json.dumps({**good, SLIM_KEY: {"version": 2}}))
    with pytest.raises(PrunebertError, match="unreadable"):
        load_slim(tmp_path / "slim")


def test_cli_slims_a_pruned_run_and_keeps_its_masks(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_classifier().eval()
    # structured pruning of heads and neurons, plus unstructured zeros inside what is kept
    pruner = _structured(model, sparsity=0.5)
    extra = Pruner(model, PruningConfig(method="magnitude", sparsity=0.7, schedule="oneshot"))
    extra.start(1)
    extra.update(0)
    for name in pruner.masks:
        pruner.masks[name] &= extra.masks[name]
    expected = _out(model)
    save_pruned(model, tiny_tokenizer, pruner, tmp_path / "run")
    assert main(["slim", str(tmp_path / "run"), str(tmp_path / "slim")]) == 0
    printed = capsys.readouterr().out
    assert "parameters: " in printed and "attention heads kept: 2 of 8" in printed
    summary = json.loads((tmp_path / "slim" / "slim.json").read_text())
    assert summary["parameters_after"] < summary["parameters_before"] and summary["max_abs_diff"] <= 1e-4
    assert summary["heads_kept"] == [2, 8] and summary["neurons_kept"] == [32, 128]
    loaded = load_model(str(tmp_path / "slim"), head="classification")
    assert (_out(loaded.model) - expected).abs().max().item() <= 1e-4
    masks = load_file(str(tmp_path / "slim" / MASKS_FILE))
    fixed = transfer_pruner(loaded.model, loaded.path, None)  # further training keeps the remaining zeros
    assert fixed is not None and set(fixed.masks) == set(masks)
    for name, weight in fixed.weights().items():
        assert weight.shape == masks[name].shape and bool((weight[~fixed.masks[name]] == 0).all())
    assert fixed.overall_sparsity() > 0.3

    assert main(["slim", str(tmp_path / "run"), str(tmp_path / "slim")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["slim", str(tmp_path / "run"), str(tmp_path / "slim"), "--overwrite"]) == 0


def test_cli_refuses_a_model_without_structure(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(method="magnitude", sparsity=0.5, schedule="oneshot"))
    pruner.start(1)
    pruner.update(0)
    save_pruned(model, tiny_tokenizer, pruner, tmp_path / "run")
    assert main(["slim", str(tmp_path / "run"), str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' loading bar
    assert error.startswith("prunebert: error: ") and "--pruning.method heads, neurons or structured" in error
    assert not (tmp_path / "out").exists()


def test_pruning_a_slimmed_model_further() -> None:
    """Methods work on per-layer shapes that differ, including zero-width layers."""
    model = tiny_classifier()
    _structured(model)
    slim_model(model)
    sets = group_sets(find_targets(model), model.config)
    assert [(s.kind, s.layer, len(s.inputs)) for s in sets] == [
        ("heads", 0, 3),
        ("neurons", 0, 1),
        ("heads", 1, 0),
        ("neurons", 1, 1),
    ]
    pruner = Pruner(model, PruningConfig(method="heads", sparsity=0.5, schedule="oneshot"))
    pruner.start(1)
    model(input_ids=IDS, labels=torch.tensor([0, 1, 0])).loss.backward()
    pruner.after_backward()
    pruner.update(0)
    assert plan_slim(model).count("heads") == (1, 2)


def test_finetune_structured_then_slim_then_evaluate(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase, capsys: pytest.CaptureFixture[str]
) -> None:
    """The whole path from the command line: prune heads and neurons while fine-tuning, slim, evaluate."""
    space = write_workspace(tmp_path, tiny_tokenizer)
    run, slim, fast = space / "ft", space / "slim", ["--train.batch_size", "4", "--max_seq_length", "16"]
    argv = ["finetune", "--model", str(space / "tiny-mlm"), "--task", str(space / "task.csv")]
    argv += ["--output_dir", str(run), "--train.max_steps", "10", "--pruning.method", "structured", *fast]
    assert main([*argv, "--pruning.sparsity", "0.5", "--train.save_steps", "100"]) == 0
    tuned = json.loads((run / "results.json").read_text())
    assert tuned["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-6)
    assert main(["slim", str(run), str(slim)]) == 0
    summary = json.loads((slim / "slim.json").read_text())
    assert summary["heads_kept"] == [4, 8] and summary["neurons_kept"] == [64, 128]
    out = space / "eval.json"
    evaluate = ["evaluate", "--model", str(slim), "--task", str(space / "task.csv"), "--output", str(out)]
    assert main([*evaluate, "--max_seq_length", "16"]) == 0
    assert json.loads(out.read_text())["metrics"] == tuned["metrics"]


# -- whole layers ------------------------------------------------------------------------------------
def _without_layers(model: PreTrainedModel, dropped: set[int]) -> PreTrainedModel:
    """A copy of `model` whose encoder simply skips the `dropped` layers: what dropping them must give."""
    reference = copy.deepcopy(model)
    name = "transformer.layer" if reference.config.model_type == "distilbert" else "encoder.layer"
    layers = reference.base_model.get_submodule(name)
    kept = torch.nn.ModuleList(layer for i, layer in enumerate(layers) if i not in dropped)
    reference.base_model.set_submodule(name, kept)
    return reference


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_dropping_layers_equals_skipping_them_and_loads_back(model_type: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(
        tiny_config(model_type, num_hidden_layers=3)
    ).eval()
    _structured(model)
    expected = _out(_without_layers(model, {1}))
    _, dropped, renamed = slim_with_changes(model, plan_slim(model, drop_layers=[1]))
    assert layer_count(model) == 2 and (_out(model) - expected).abs().max().item() <= 1e-4
    prefix = "distilbert.transformer.layer" if model_type == "distilbert" else "bert.encoder.layer"
    moved = {k: v for k, v in renamed.items() if k.startswith(f"{prefix}.2.")}
    assert moved and all(v == k.replace(f"{prefix}.2.", f"{prefix}.1.") for k, v in moved.items())
    assert {k.split(".")[3] for k in dropped if k.startswith(prefix)} == {"1"}
    assert getattr(model.config, SLIM_KEY)["layers"] == [0, 2]
    model.save_pretrained(tmp_path)
    loaded = load_slim(tmp_path)
    assert layer_count(loaded) == 2 and torch.equal(_out(loaded), _out(model))


def test_dropping_layers_twice_keeps_original_layer_numbers(tmp_path: Path) -> None:
    model = AutoModelForSequenceClassification.from_config(tiny_config(num_hidden_layers=4)).eval()
    slim_model(model, plan_slim(model, drop_layers=[1]))
    with torch.no_grad():  # remove head 0 of the layer now numbered 2 (originally 3)
        model.bert.encoder.layer[2].attention.output.dense.weight[:, :8] = 0
    slim_model(model, plan_slim(model, drop_layers=[0]))
    layout = getattr(model.config, SLIM_KEY)
    assert (
        layout["layers"] == [2, 3] and layout["heads"][3] == [1, 2, 3] and layout["heads"][2] == [0, 1, 2, 3]
    )
    model.save_pretrained(tmp_path)
    assert torch.equal(_out(load_slim(tmp_path)), _out(model))


def test_bad_layer_choices_are_one_line_errors(tmp_path: Path) -> None:
    model = tiny_classifier()
    for bad in ([2], [0, 1], [-1]):
        with pytest.raises(PrunebertError, match="keep at least one layer"):
            plan_slim(model, drop_layers=bad)
    slim_model(model, plan_slim(model, drop_layers=[0])).save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    good = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**good, SLIM_KEY: {**good[SLIM_KEY], "layers": [5]}}))
    with pytest.raises(PrunebertError, match="bad layers list"):
        load_slim(tmp_path)


def test_cli_drops_layers_and_renames_masks(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_classifier().eval()
    pruner = _structured(model)
    save_pruned(model, tiny_tokenizer, pruner, tmp_path / "run")
    expected = _out(_without_layers(model, {0}))
    assert main(["slim", str(tmp_path / "run"), str(tmp_path / "slim"), "--drop_layers", "0"]) == 0
    assert "encoder layers kept: 1 of 2" in capsys.readouterr().out
    summary = json.loads((tmp_path / "slim" / "slim.json").read_text())
    assert summary["layers_kept"] == [1, 2] and summary["heads_kept"] == [0, 8]  # layer 1 had no head left
    loaded = load_model(str(tmp_path / "slim"), head="classification")
    assert (_out(loaded.model) - expected).abs().max().item() <= 1e-4
    masks = load_file(str(tmp_path / "slim" / MASKS_FILE))
    assert all(".layer.0." in k for k in masks)  # the old layer 1, renumbered
    fixed = transfer_pruner(loaded.model, loaded.path, None)
    assert fixed is not None and set(fixed.masks) == set(masks)
