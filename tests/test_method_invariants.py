"""Every registered method through the same invariants, in a stock Trainer on a tiny random BERT.

Target sparsity reached (within 0.5%); pruned weights exactly zero after training; a run resumed from a
mid-training checkpoint ends with the same masks and weights as an uninterrupted one; the baked model
has clean keys and loads in plain transformers with the same zeros and outputs (plus the transforms its
config records: skipped layers, factorised modules; see `_load_baked`). A method that asks for gradient
samples at each mask update (`obs`) gets them from the Trainer's training data through PruningCallback,
so the resume check also shows that sampling leaves the run's randomness, data order and gradients alone.
"""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase, Trainer

from prunebert import PruningCallback, PruningConfig, available_methods
from prunebert.models import save_pruned
from prunebert.pruner import Pruner
from prunebert.structure import kept_groups
from prunebert.transforms.layer_skip import restore_skipped_layers
from prunebert.transforms.lowrank import LOWRANK_KEY
from prunebert.transforms.saved_config import read_config
from prunebert.transforms.slim import load_slim
from tiny import StopAt, tiny_classifier, tiny_dataset, tiny_training_args

STEPS = 16
SPARSITY = 0.6


def _run(out: Path, method: str, stop_at: int | None = None, resume: bool = False) -> tuple[Pruner, Trainer]:
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(method=method, sparsity=SPARSITY, frequency=2))
    callbacks = [PruningCallback(pruner), *([StopAt(stop_at)] if stop_at else [])]
    args = tiny_training_args(out, STEPS)
    trainer = Trainer(model=model, args=args, train_dataset=tiny_dataset(), callbacks=callbacks)
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-8") if resume else None)
    return pruner, trainer


def _sparsity_tolerance(pruner: Pruner) -> float:
    """0.5% for per-weight methods; half a group's share of the weights for structured ones.

    A structured method removes whole heads / neurons: each kind loses exactly round(SPARSITY * groups)
    of its groups (checked here), so the weight sparsity is the nearest multiple of one group's share
    (5 of 8 heads: 0.625), within half a group of SPARSITY. LayerDrop removes whole layers the same way:
    exactly round(SPARSITY * layers) of them (checked), within half a layer's share. A per-weight method
    in layer scope rounds each target to whole entries: within half an entry of the smallest target,
    which matters only for lowrank, whose targets are rank diagonals (32 entries here: 19 of 32 pruned).
    """
    if pruner.method.name == "layerdrop":
        layers = getattr(pruner.method, "num_layers")  # noqa: B009
        emptied = {t.layer for t in pruner.targets if not pruner.masks[t.param_name].any()}
        assert len(emptied) == round(SPARSITY * layers), f"{len(emptied)} of {layers} layers dropped"
        return 0.5 / layers
    if not pruner.method.structured:
        return max(0.005, 0.5 / min(m.numel() for m in pruner.masks.values()))
    totals: dict[str, list[int]] = {}
    for s in getattr(pruner.method, "sets"):  # noqa: B009
        kept = kept_groups(pruner.masks[s.output.param_name], s.group_size)
        counts = totals.setdefault(s.kind, [0, 0])
        counts[0] += int((~kept).sum())
        counts[1] += kept.numel()
    for kind, (pruned, total) in totals.items():
        assert pruned == round(SPARSITY * total), f"{kind}: {pruned} of {total} pruned"
    return max(0.5 / total for _, total in totals.values())


def _load_baked(path: Path) -> torch.nn.Module:
    """The baked model as plain transformers loads it, plus what its config records.

    Skipped layers (layerdrop) are re-applied on top of a load with the plain config (a zeroed layer still
    applies its biases and LayerNorms; `prunebert.models.load_model` does the same; the saved model is a
    custom-code one that plain transformers loads only with trust_remote_code). A factorised model
    (lowrank) cannot be built from the plain config (its shapes differ): prunebert's loader builds it.
    """
    if LOWRANK_KEY in json.loads((path / "config.json").read_text()):
        model = load_slim(path)
    else:
        config = read_config(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, config=config).eval()
    restore_skipped_layers(model)
    return model


@pytest.mark.parametrize("method", available_methods())
def test_method_invariants(method: str, tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    pruner, trainer = _run(tmp_path / "full", method)
    # a method whose own threshold sets the final masks (soft movement) reaches what it gives, and says so
    target = SPARSITY if pruner.method.exact_sparsity else getattr(pruner.method, "achieved")  # noqa: B009
    assert pruner.overall_sparsity() == pytest.approx(target, abs=_sparsity_tolerance(pruner))
    for name, weight in pruner.weights().items():
        assert bool((weight[~pruner.masks[name]] == 0).all()), f"{method}: pruned weight moved in {name}"

    _run(tmp_path / "cut", method, stop_at=8)
    resumed, resumed_trainer = _run(tmp_path / "cut", method, resume=True)
    assert all(torch.equal(pruner.masks[n], resumed.masks[n]) for n in pruner.masks), (
        f"{method}: masks differ"
    )
    for (name, a), b in zip(
        trainer.model.state_dict().items(), resumed_trainer.model.state_dict().values(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), f"{method}: resumed run diverged at {name}"
    state, resumed_state = pruner.method.state_dict(), resumed.method.state_dict()
    assert set(state) == set(resumed_state), f"{method}: method state differs"
    for key, value in state.items():  # e.g. movement's scores and the shadow of its pruned weights
        assert torch.allclose(value, resumed_state[key], atol=1e-5), f"{method}: {key} diverged"

    model = trainer.model.eval()
    ids = torch.randint(5, 29, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    save_pruned(model, tiny_tokenizer, pruner, tmp_path / "baked")
    plain = _load_baked(tmp_path / "baked")
    assert set(plain.state_dict()) == set(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-6)
    for name, mask in pruner.masks.items():
        assert torch.equal(plain.state_dict()[name] == 0, ~mask) or bool(
            (plain.state_dict()[name][~mask] == 0).all()
        )
    assert not (tmp_path / "baked" / "prunebert_method_state.safetensors").exists()
