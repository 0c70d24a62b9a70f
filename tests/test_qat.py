"""Quantization-aware training: the Linear swap is invisible to state dicts and masks; a QAT run keeps
every pruned weight exactly zero, resumes with its ranges, and saves them beside plain fp32 weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import Trainer, TrainerCallback

from prunebert import PruningCallback, PruningConfig
from prunebert.errors import PrunebertError
from prunebert.pruner import Pruner
from prunebert.quantization.maths import fake_quantize_weight
from prunebert.quantization.qat import (
    QAT_FILE,
    FakeQuantLinear,
    QATCallback,
    QuantizationAware,
    QuantizationConfig,
)
from prunebert.stages.distill import DistillationTrainer, DistillConfig, Distiller
from tiny import PADDED_MASK, StopAt, padded_ids, tiny_classifier, tiny_dataset, tiny_training_args

INT8 = QuantizationConfig(qat="int8", start_fraction=0.5, ema_decay=0.9)


def test_swap_keeps_parameters_keys_and_outputs_until_switched_on() -> None:
    model = tiny_classifier().eval()
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    before = model(padded_ids(), attention_mask=PADDED_MASK).logits
    qat = QuantizationAware(model, INT8)
    assert len(qat.modules) == 2 * 6 + 2  # six Linears per layer, pooler, classifier
    assert list(model.state_dict()) == keys  # ranges are not state-dict entries: save_pretrained is clean
    assert all(p is params[n] for n, p in model.named_parameters())
    assert torch.equal(model(padded_ids(), attention_mask=PADDED_MASK).logits, before)
    qat.set_active(True)
    assert torch.equal(model(padded_ids(), attention_mask=PADDED_MASK).logits, before)  # eval, no range yet
    assert qat.detach() is model and all(type(m) is not FakeQuantLinear for m in model.modules())


def test_an_active_linear_computes_with_int8_weights_and_uint8_inputs() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(8, 4)
    qat = QuantizationAware(nn.Sequential(linear), INT8)
    qat.set_active(True)
    x = torch.randn(5, 8)
    out = linear(x)  # training mode: the first batch sets the range to its min / max
    module = qat.modules["0"]
    assert (module.low.item(), module.high.item()) == (x.min().item(), x.max().item())
    scale, zero = module.qparams()
    x_q = (torch.clamp(torch.round(x / scale) + zero, 0, 255) - zero) * scale
    assert torch.allclose(out, x_q @ fake_quantize_weight(linear.weight).T + linear.bias, atol=1e-6)
    linear(x * 3)
    assert module.high.item() == pytest.approx(0.9 * x.max().item() + 0.1 * 3 * x.max().item())


def test_state_round_trips_in_memory_and_across_base_prefixes(tmp_path: Path) -> None:
    model = tiny_classifier()
    qat = QuantizationAware(model, INT8)
    qat.set_active(True)
    model(padded_ids(), attention_mask=PADDED_MASK)
    qat.save(tmp_path)
    saved = json.loads((tmp_path / QAT_FILE).read_text())
    assert (
        saved["config"]["qat"] == "int8" and "bert.encoder.layer.0.attention.self.query" in saved["linears"]
    )
    other = QuantizationAware(tiny_classifier(seed=1), INT8)
    other.load(tmp_path)
    assert other.state_dict() == qat.state_dict()
    encoder = QuantizationAware(tiny_classifier().bert, INT8)  # headless: names lose `bert.`
    encoder.load_state_dict(
        {
            **qat.state_dict(),
            "linears": {k: v for k, v in qat.state_dict()["linears"].items() if k.startswith("bert.")},
        }
    )
    assert encoder.modules["encoder.layer.1.output.dense"].observed()
    with pytest.raises(PrunebertError, match="does not have"):
        encoder.load(tmp_path)  # the classifier's range names a Linear the encoder lacks


def _train(out: Path, steps: int, stop_at: int | None = None, resume: str | None = None):
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(sparsity=0.5, schedule="cubic", end_fraction=0.5, frequency=2))
    qat = QuantizationAware(model, INT8)
    callbacks: list[TrainerCallback] = [PruningCallback(pruner), QATCallback(qat)]
    if stop_at is not None:
        callbacks.append(StopAt(stop_at))
    trainer = Trainer(
        model=model, args=tiny_training_args(out, steps), train_dataset=tiny_dataset(), callbacks=callbacks
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, pruner, qat


def test_qat_with_pruning_keeps_masks_and_exact_zeros(tmp_path: Path) -> None:
    _, pruner, qat = _train(tmp_path, 12)
    assert qat.active and pruner.overall_sparsity() == pytest.approx(0.5, abs=1e-3)
    for name, weight in pruner.weights().items():
        assert torch.equal(weight == 0, ~pruner.masks[name])
        module = qat.modules[name.removesuffix(".weight")]
        assert torch.equal(fake_quantize_weight(weight) == 0, weight == 0)  # zeros stay zeros in int8
        assert module.observed() and module.low <= 0 <= module.high
    assert (tmp_path / "checkpoint-8" / QAT_FILE).is_file()
    early = json.loads((tmp_path / "checkpoint-4" / QAT_FILE).read_text())
    assert early["linears"] == {} and not early["active"]  # QAT starts at step 6


def test_resumed_qat_run_ends_with_the_same_ranges_and_weights(tmp_path: Path) -> None:
    full_model, _, full = _train(tmp_path / "full", 12)
    _train(tmp_path / "cut", 12, stop_at=8)
    model, _, resumed = _train(tmp_path / "cut", 12, resume=str(tmp_path / "cut" / "checkpoint-8"))
    for name, entry in full.state_dict()["linears"].items():
        assert resumed.state_dict()["linears"][name] == pytest.approx(entry, rel=1e-5), name
    for (name, a), b in zip(full_model.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


def test_qat_student_distils_from_an_fp32_teacher_with_hidden_states(tmp_path: Path) -> None:
    student, teacher = tiny_classifier(seed=0), tiny_classifier(seed=1)
    pruner = Pruner(student, PruningConfig(sparsity=0.5, schedule="oneshot"))
    qat = QuantizationAware(student, QuantizationConfig(qat="int8", start_fraction=0.0))
    config = DistillConfig(teacher="unused", alpha_hard=0.5, alpha_soft=0.5, alpha_hidden=1.0)
    trainer = DistillationTrainer(
        model=student,
        args=tiny_training_args(tmp_path, 4, save_strategy="no", logging_steps=1),
        train_dataset=tiny_dataset(32),
        distiller=Distiller(teacher, config),
        callbacks=[PruningCallback(pruner), QATCallback(qat)],
    )
    trainer.train()
    assert all(isinstance(m, FakeQuantLinear) and m.observed() for m in qat.modules.values())
    assert not any(isinstance(m, FakeQuantLinear) for m in teacher.modules())
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.equal(w == 0, ~pruner.masks[n]) for n, w in pruner.weights().items())


def test_fake_quantised_linear_computes_in_float32_under_bf16_autocast() -> None:
    """Half precision would round the int8 grid (x / scale, q * s): the simulation must stay exact."""
    torch.manual_seed(0)
    linear = nn.Linear(16, 8)
    qat = QuantizationAware(nn.Sequential(linear), INT8)
    qat.set_active(True)
    x = torch.randn(4, 16) * 20
    linear(x)  # the range
    linear.eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        found = linear(x.bfloat16())
    assert found.dtype == torch.float32
    assert torch.allclose(found, linear(x.bfloat16().float()), atol=1e-5)


def test_fp32_linears_stay_plain_and_a_pattern_matching_nothing_is_an_error() -> None:
    model = tiny_classifier()
    qat = QuantizationAware(model, QuantizationConfig(qat="int8", fp32_linears=r"layer\.\d+\.output\.dense$"))
    assert qat.fp32 == ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
    assert all(type(model.get_submodule(n)) is nn.Linear for n in qat.fp32)
    assert len(qat.modules) == 2 * 6 + 2 - 2 and not set(qat.fp32) & set(qat.modules)
    assert qat.state_dict()["fp32_linears"] == qat.fp32
    with pytest.raises(PrunebertError, match=r"matches no Linear of this model \(names look like 'bert\."):
        QuantizationAware(tiny_classifier(), QuantizationConfig(qat="int8", fp32_linears="ffn\\.lin2"))
    with pytest.raises(ValueError, match="fp32_linears is not a regular expression"):
        QuantizationConfig(qat="int8", fp32_linears="(")
