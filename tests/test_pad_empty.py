"""`pad_empty_blocks`: a slimmed model's empty attention and FFN blocks, rewritten without zero-width
tensors (for OpenVINO), compute the same function."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from prunebert.deploy.export import ExportOptions, export_model
from prunebert.transforms.pad_empty import pad_empty_blocks
from prunebert.transforms.slim import SlimPlan, slim_model
from tiny import padded_ids, tiny_classifier


def _empty_blocks(model_type: str) -> nn.Module:
    """A tiny classifier whose layer 0 keeps no head and layer 1 no FFN neuron (random weights)."""
    model = tiny_classifier(model_type).eval()
    keep = {"heads.0": [], "heads.1": [0, 2], "neurons.0": list(range(10)), "neurons.1": []}
    totals = {"heads.0": 4, "heads.1": 4, "neurons.0": 64, "neurons.1": 64}
    slim_model(model, SlimPlan(keep, totals))
    return model


def _logits(model: nn.Module) -> torch.Tensor:
    ids = padded_ids()
    with torch.no_grad():
        out: torch.Tensor = model(input_ids=ids, attention_mask=(ids != 0).long()).logits
    return out


@pytest.mark.parametrize("model_type", ["bert", "distilbert", "roberta"])
def test_padding_keeps_the_function_and_leaves_no_zero_width(model_type: str) -> None:
    model = _empty_blocks(model_type)
    before = _logits(model)
    zero_width = [m for m in model.modules() if isinstance(m, nn.Linear) and 0 in m.weight.shape]
    assert zero_width  # the slimmed model really has them
    assert pad_empty_blocks(model) >= len(zero_width) + 1  # + the NoHeads stand-in
    assert not [m for m in model.modules() if isinstance(m, nn.Linear) and 0 in m.weight.shape]
    assert torch.allclose(_logits(model), before, atol=1e-6)


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="OpenVINO not installed")
def test_openvino_exports_a_model_with_empty_blocks(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    _empty_blocks("bert").save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    manifest = export_model(
        ExportOptions(model=str(tmp_path / "model"), out=str(tmp_path / "ov"), format="openvino")
    )
    assert max(f["max_abs_diff"] for f in manifest["files"].values()) < 1e-4


@pytest.mark.parametrize("calibrated", [False, True])
def test_onnx_int8_quantizes_a_model_with_empty_blocks(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase, calibrated: bool
) -> None:
    # ONNX Runtime's static quantizer fails on a zero-size weight ("scale must a float32 ... float64"):
    # the int8 export pads the empty blocks first, and fp32 and int8 still match the slimmed model
    from tiny import write_workspace

    root = write_workspace(tmp_path, tiny_tokenizer)
    _empty_blocks("bert").save_pretrained(tmp_path / "model")
    tiny_tokenizer.save_pretrained(tmp_path / "model")
    calibration = str(root / "task.csv") if calibrated else None
    manifest = export_model(
        ExportOptions(
            model=str(tmp_path / "model"),
            out=str(tmp_path / "onnx"),
            int8=True,
            calibration=calibration,
            max_length=16,
        )
    )
    assert manifest["files"]["model.onnx"]["max_abs_diff"] < 1e-4
    assert "int8" in manifest["files"]["model.int8.onnx"]["precision"]
