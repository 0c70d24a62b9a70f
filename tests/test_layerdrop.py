"""LayerDrop: seeded structured dropout of whole layers, then the chosen layers skipped, saved and slimmed."""

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from prunebert.cli import main
from prunebert.config import PruningConfig
from prunebert.errors import PrunebertError
from prunebert.masks import MASKS_FILE, load_masks
from prunebert.methods.layerdrop import LayerDrop, drop_decisions, every_other
from prunebert.models import load_model, save_pruned
from prunebert.pruner import Pruner
from prunebert.structure import encoder_layers
from prunebert.transforms.layer_skip import SKIP_KEY, restore_skipped_layers, skip_layers, skipped_layers
from prunebert.transforms.saved_config import read_config
from prunebert.transforms.slim import layer_count
from tiny import PADDED_MASK, padded_ids, tiny_config, write_workspace

IDS = padded_ids()
MASK = PADDED_MASK
LABELS = torch.tensor([0, 1, 0])


def _model(model_type: str = "bert", layers: int = 4) -> PreTrainedModel:
    torch.manual_seed(0)
    sizes = {"n_layers": layers} if model_type == "distilbert" else {"num_hidden_layers": layers}
    model = AutoModelForSequenceClassification.from_config(tiny_config(model_type, **sizes))
    with torch.no_grad():  # biases and LayerNorms away from their identity-like init, as after training
        for param in model.parameters():
            if param.dim() == 1:
                param.add_(0.2 * torch.randn_like(param))
    return model


def _pruner(model: PreTrainedModel, sparsity: float = 0.5, **options: object) -> Pruner:
    config = PruningConfig(method="layerdrop", sparsity=sparsity, options=options, seed=7)
    return Pruner(model, config)


def _method(pruner: Pruner) -> LayerDrop:
    assert isinstance(pruner.method, LayerDrop)
    return pruner.method


def _out(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=MASK)[0]


def _without_layers(model: PreTrainedModel, dropped: set[int]) -> PreTrainedModel:
    """A copy whose encoder simply has no `dropped` layers (and no skips of its own)."""
    reference = copy.deepcopy(model)
    name, layers = encoder_layers(reference)
    kept = [layer for i, layer in enumerate(layers) if i not in dropped]
    for layer in kept:
        layer.__dict__.pop("forward", None)
    reference.set_submodule(name, torch.nn.ModuleList(kept))
    return reference.eval()


def _layer_of(name: str) -> int:
    return int(name.split(".layer.")[1].split(".")[0])


# -- the pure parts --------------------------------------------------------------------------------------
def test_every_other_is_the_papers_pattern() -> None:
    assert every_other(12, 6) == [1, 3, 5, 7, 9, 11]  # d = 0 (mod 2), 1-based depth
    assert every_other(12, 4) == [2, 5, 8, 11]  # d = 0 (mod 3)
    assert every_other(12, 3) == [3, 7, 11]
    assert every_other(6, 2) == [2, 5] and every_other(2, 1) == [1] and every_other(5, 0) == []
    assert every_other(12, 5) == [1, 3, 6, 8, 11]  # spread evenly when n does not divide L


def test_decisions_are_a_pure_function_of_seed_step_and_forward() -> None:
    torch.manual_seed(1)
    first = drop_decisions(12, 0.3, seed=5, step=9, forward=1)
    torch.manual_seed(2)  # the global RNG plays no part: every process draws the same
    assert torch.equal(drop_decisions(12, 0.3, seed=5, step=9, forward=1), first)
    others = [
        drop_decisions(12, 0.3, 5, 9, 0),
        drop_decisions(12, 0.3, 5, 10, 1),
        drop_decisions(12, 0.3, 6, 9, 1),
    ]
    assert not all(torch.equal(o, first) for o in others)
    draws = torch.stack([drop_decisions(12, 0.3, 0, step, 0) for step in range(2000)])
    assert draws.float().mean().item() == pytest.approx(0.3, abs=0.01)
    assert not drop_decisions(12, 0.0, 0, 0, 0).any()


# -- training --------------------------------------------------------------------------------------------
def _mixed_seed(layers: int, p: float) -> int:
    """A seed whose first draw skips some layers and keeps others (found, not hoped for)."""
    for seed in range(100):
        skip = drop_decisions(layers, p, seed, 0, 0)
        if 0 < int(skip.sum()) < layers:
            return seed
    raise AssertionError("no mixed draw")


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_skipped_layers_get_no_gradient_and_eval_runs_every_layer(model_type: str) -> None:
    model = _model(model_type).eval()
    dense = _out(model)
    seed = _mixed_seed(4, 0.5)
    Pruner(model, PruningConfig(method="layerdrop", sparsity=0.5, options={"p": 0.5}, seed=seed))
    assert torch.equal(_out(model), dense) and torch.equal(_out(model), dense)  # eval: nothing skipped
    skip = drop_decisions(4, 0.5, seed, 0, 0).tolist()
    model.train()
    out = model(input_ids=IDS, attention_mask=MASK, labels=LABELS)
    out.loss.backward()
    for i, layer in enumerate(encoder_layers(model)[1]):
        grads = [p.grad for p in layer.parameters()]
        if skip[i]:
            assert all(g is None for g in grads), f"skipped layer {i} got a gradient"
        else:
            assert all(g is not None for g in grads), f"layer {i} ran but got no gradient"


def test_training_forward_equals_the_model_without_the_drawn_layers() -> None:
    model = _model()
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    for module in model.modules():  # no dropout: train and eval forwards compute the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    seed = _mixed_seed(4, 0.5)
    method = _method(
        Pruner(model, PruningConfig(method="layerdrop", sparsity=0.5, options={"p": 0.5}, seed=seed))
    )
    reference = _without_layers(model, {i for i, s in enumerate(drop_decisions(4, 0.5, seed, 0, 0)) if s})
    model.train()
    with torch.no_grad():
        got = model(input_ids=IDS, attention_mask=MASK)[0]
    assert torch.equal(got, _out(reference)) and method.forwards == 1


def test_decisions_continue_identically_after_a_resume() -> None:
    """A checkpoint's method state carries the (step, forward) counters: the resumed stream is the same."""

    def run(method: LayerDrop, model: PreTrainedModel, steps: int, accumulation: int = 2) -> list[list[bool]]:
        seen = []
        model.train()
        for _ in range(steps):
            for _ in range(accumulation):
                with torch.no_grad():
                    model(input_ids=IDS, attention_mask=MASK)
                assert method._draw.skip is not None
                seen.append(list(method._draw.skip))
            method.after_optimizer_step({}, 0.0)
        return seen

    full_model, cut_model, resumed_model = _model(), _model(), _model()
    full = _method(_pruner(full_model, p=0.5))
    uninterrupted = run(full, full_model, 6)
    cut = _method(_pruner(cut_model, p=0.5))
    first = run(cut, cut_model, 3)
    torch.manual_seed(123)  # a resumed process starts from another global RNG state
    resumed = _method(_pruner(resumed_model, p=0.5))
    resumed.load_state_dict(cut.state_dict())
    assert first + run(resumed, resumed_model, 3) == uninterrupted
    assert any(any(step) for step in uninterrupted) and any(not all(step) for step in uninterrupted)


# -- the final selection -----------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_selection_drops_the_right_layers_and_skips_them_for_good(model_type: str) -> None:
    model = _model(model_type)
    pruner = _pruner(model, p=0.5)
    pruner.start(10)
    assert pruner.schedule.sparsity_at(9) == 0.0 and pruner.schedule.sparsity_at(10) == 0.5  # at the end
    pruner.update(10)
    assert _method(pruner).dropped == [1, 3] and getattr(model.config, SKIP_KEY)["layers"] == [1, 3]
    for name, mask in pruner.masks.items():  # whole layers: every target of 1 and 3 pruned, nothing else
        assert bool(mask.all()) if _layer_of(name) not in (1, 3) else not mask.any()
    assert pruner.overall_sparsity() == 0.5
    model.train()  # from now on no random skipping: layers 1 and 3 always, the others never
    model(input_ids=IDS, attention_mask=MASK, labels=LABELS).loss.backward()
    for i, layer in enumerate(encoder_layers(model)[1]):
        assert all((p.grad is None) == (i in (1, 3)) for p in layer.parameters())
    assert torch.equal(_out(model.eval()), _out(_without_layers(model, {1, 3})))


def test_a_checkpoint_taken_after_the_selection_skips_its_layers_on_resume() -> None:
    model = _model()
    pruner = _pruner(model)
    pruner.start(1)
    pruner.update(1)
    resumed_model = _model()
    resumed = _method(_pruner(resumed_model))
    resumed.load_state_dict(_method(pruner).state_dict())
    resumed_model.load_state_dict(model.state_dict())  # what the Trainer restores
    assert resumed.dropped == [1, 3] and skipped_layers(resumed_model.config) == [1, 3]
    resumed_model.train()
    with torch.no_grad():
        resumed_model(input_ids=IDS)
    assert resumed._draw.skip is None  # no more random skipping
    assert torch.equal(_out(resumed_model.eval()), _out(model.eval()))


def test_explicit_drop_option_and_log_metrics() -> None:
    model = _model()
    pruner = Pruner(
        model, PruningConfig(method="layerdrop", sparsity=0.25, options={"drop": [0]}, schedule="oneshot")
    )
    model.train()
    with torch.no_grad():
        model(input_ids=IDS)
    assert "layers_skipped" in _method(pruner).log_metrics()
    pruner.start(1)
    pruner.update(1)
    assert _method(pruner).dropped == [0] and _method(pruner).log_metrics() == {"layers_dropped": 0.25}
    assert torch.equal(_out(model.eval()), _out(_without_layers(model, {0})))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"sparsity": 0.5, "options": {"drop": [0]}}, "must name 2 of the layers"),
        ({"sparsity": 0.25, "options": {"drop": [4]}}, "must name 1 of the layers"),
        ({"sparsity": 0.9}, "drops all 4 layers"),
        ({"schedule": "cubic", "start_fraction": 0.0}, "use --pruning.schedule oneshot"),
        ({"include_embeddings": True}, "not in an encoder layer"),
    ],
)
def test_bad_setups_are_one_line_errors(config: dict, message: str) -> None:
    with pytest.raises(PrunebertError, match=message):
        Pruner(_model(), PruningConfig(method="layerdrop", **config))


def test_bad_options_and_an_already_skipping_model() -> None:
    for options in ({"p": 1.0}, {"p": -0.1}, {"p": True}, {"drop": [1, 1]}, {"drop": "1"}, {"q": 1}):
        with pytest.raises(PrunebertError, match="method 'layerdrop'"):
            PruningConfig(method="layerdrop", options=options)
    model = _model()
    skip_layers(model, [2])
    with pytest.raises(PrunebertError, match="slim it first"):
        _pruner(model)


# -- saved, loaded, slimmed --------------------------------------------------------------------------------
def _trained_run(
    tmp_path: Path, tokenizer: PreTrainedTokenizerBase, model_type: str = "bert"
) -> PreTrainedModel:
    model = _model(model_type)
    pruner = _pruner(model)
    pruner.start(1)
    pruner.update(1)
    save_pruned(model.eval(), tokenizer, pruner, tmp_path / "run")
    return model


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_saved_model_skips_its_layers_again_and_slims_exactly(
    model_type: str,
    tmp_path: Path,
    tiny_tokenizer: PreTrainedTokenizerBase,
    capsys: pytest.CaptureFixture[str],
) -> None:
    model = _trained_run(tmp_path, tiny_tokenizer, model_type)
    expected = _out(_without_layers(model, {1, 3}))
    assert torch.equal(_out(model), expected)
    loaded = load_model(str(tmp_path / "run"), head="classification")
    assert torch.equal(_out(loaded.model), expected)
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # never runs the skipped layers silently
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "run")
    config = read_config(tmp_path / "run")  # the plain BERT config it was saved from
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run", config=config).eval()
    assert (_out(plain) - expected).abs().max() > 1e-3  # zeroed layers still apply biases and LayerNorm
    assert restore_skipped_layers(plain) == [1, 3] and torch.equal(_out(plain), expected)

    assert main(["slim", str(tmp_path / "run"), str(tmp_path / "slim")]) == 0
    printed = capsys.readouterr().out
    assert "encoder layers kept: 2 of 4" in printed and "change by design" not in printed
    summary = json.loads((tmp_path / "slim" / "slim.json").read_text())
    assert summary["layers_skipped_before"] == [1, 3] and summary["max_abs_diff"] == 0.0
    assert summary["parameters_after"] < summary["parameters_before"]
    config = json.loads((tmp_path / "slim" / "config.json").read_text())
    assert SKIP_KEY not in config and config["prunebert_slim"]["layers"] == [0, 2]
    slim = load_model(str(tmp_path / "slim"), head="classification").model
    assert layer_count(slim) == 2 and torch.equal(_out(slim), expected)  # exact
    masks, _ = load_masks(tmp_path / "slim" / MASKS_FILE)
    assert {_layer_of(k) for k in masks} == {0, 1} and all(bool(m.all()) for m in masks.values())


def test_more_layers_can_be_dropped_on_top(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    model = _trained_run(tmp_path, tiny_tokenizer)
    expected = _out(_without_layers(model, {0, 1, 3}))
    assert main(["slim", str(tmp_path / "run"), str(tmp_path / "slim"), "--drop_layers", "0"]) == 0
    slim = load_model(str(tmp_path / "slim"), head="classification").model
    assert layer_count(slim) == 1 and torch.equal(_out(slim), expected)


def test_finetune_with_layerdrop_then_slim_then_evaluate(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    """From the command line: train with LayerDrop, drop half the layers at the end, slim, evaluate."""
    space = write_workspace(tmp_path, tiny_tokenizer)
    run, slim, fast = space / "ft", space / "slim", ["--train.batch_size", "4", "--max_seq_length", "16"]
    argv = ["finetune", "--model", str(space / "tiny-mlm"), "--task", str(space / "task.csv")]
    argv += ["--output_dir", str(run), "--train.max_steps", "8", "--pruning.method", "layerdrop", *fast]
    argv += ["--train.logging_steps", "2", "--pruning.sparsity", "0.5", "--pruning.options", "{p: 0.5}"]
    assert main(argv) == 0
    tuned = json.loads((run / "results.json").read_text())
    assert tuned["sparsity"]["overall"] == 0.5
    skipped = [h["layers_skipped"] for h in tuned["train"]["log_history"] if "layers_skipped" in h]
    assert skipped and 0 < sum(skipped) / len(skipped) < 1
    assert main(["slim", str(run), str(slim)]) == 0
    assert json.loads((slim / "slim.json").read_text())["layers_kept"] == [1, 2]
    out = space / "eval.json"
    evaluate = ["evaluate", "--model", str(slim), "--task", str(space / "task.csv"), "--output", str(out)]
    assert main([*evaluate, "--max_seq_length", "16"]) == 0
    assert json.loads(out.read_text())["metrics"] == tuned["metrics"]


@pytest.mark.slow
def test_two_processes_skip_the_same_layers_as_one(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    """DDP (gloo, 2 CPU processes, batch 4 each) against one process with batch 8: the same decisions on
    both ranks (no hang on the skipped layers' unused parameters) give the same model."""
    space = write_workspace(tmp_path, tiny_tokenizer)
    torch.manual_seed(0)  # no dropout: two processes then compute exactly the global batch's gradient
    config = tiny_config(num_hidden_layers=4, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    AutoModelForMaskedLM.from_config(config).save_pretrained(space / "m")
    tiny_tokenizer.save_pretrained(space / "m")

    def argv(out: Path, batch: int) -> list[str]:
        return [
            *("finetune", "--model", str(space / "m"), "--task", str(space / "task.csv"), "--max_seq_length"),
            *("16", "--output_dir", str(out), "--train.max_steps", "12", "--train.batch_size", str(batch)),
            *("--train.learning_rate", "1e-3", "--train.logging_steps", "3", "--pruning.method", "layerdrop"),
            *("--pruning.sparsity", "0.5", "--pruning.options", "{p: 0.5}"),
        ]

    assert main(argv(tmp_path / "one", 8)) == 0
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", port]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "prunebert.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run(
        [*cmd, *argv(tmp_path / "two", 4)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    single, ddp = (json.loads((tmp_path / r / "results.json").read_text()) for r in ("one", "two"))
    skipped = [
        [h["layers_skipped"] for h in r["train"]["log_history"] if "layers_skipped" in h]
        for r in (single, ddp)
    ]
    assert skipped[0] == skipped[1] and 0 < sum(skipped[0]) < len(skipped[0])
    digests = ddp["sparsity"]["mask_sha256"]
    assert digests[0] == digests[1] == single["sparsity"]["mask_sha256"][0]
    a, b = (load_file(str(tmp_path / r / "model" / "model.safetensors")) for r in ("one", "two"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
