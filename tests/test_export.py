"""Export: ONNX Runtime and OpenVINO outputs match PyTorch (<= 1e-4); int8 exports run and are scored."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModel, AutoModelForSequenceClassification, PreTrainedTokenizerBase

from conftest import TINY_WORDS
from prunebert.cli import main
from prunebert.deploy.export import EXPORT_FILE, ExportOptions, _child_error, export_model
from prunebert.deploy.runtimes import Runner, available, onnxruntime_runner, openvino_runner
from prunebert.errors import PrunebertError
from prunebert.models import load_model
from tiny import tiny_classifier, tiny_config

needs_onnx = pytest.mark.skipif(
    not all(available(m) for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="onnx/onnxscript/onnxruntime not installed: pip install 'prunebert[export]'",
)
needs_openvino = pytest.mark.skipif(
    not all(available(m) for m in ("openvino", "nncf")),
    reason="openvino/nncf not installed: pip install 'prunebert[openvino]'",
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    """A tiny BERT classifier (40% of encoder weights zeroed), a tiny DistilBERT encoder, a labelled csv."""
    root = tmp_path_factory.mktemp("export")
    model = tiny_classifier()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".encoder." in name and p.dim() == 2:
                p.mul_(torch.rand_like(p) > 0.4)
        model.classifier.weight.mul_(50)  # logits of order 1, so int8 error is measured against a real scale
    model.save_pretrained(root / "bert-cls")
    tiny_tokenizer.save_pretrained(root / "bert-cls")
    torch.manual_seed(1)
    AutoModel.from_config(tiny_config("distilbert")).save_pretrained(root / "distil")
    tiny_tokenizer.save_pretrained(root / "distil")
    rng = random.Random(0)
    rows = []
    for _ in range(80):
        label = rng.randint(0, 1)
        words = [rng.choice(TINY_WORDS[:12]) for _ in range(rng.randint(3, 9))]
        words.insert(rng.randint(0, len(words)), "good" if label else "bad")
        rows.append(f"{' '.join(words)},{label}\n")
    (root / "task.csv").write_text("text,label\n" + "".join(rows))
    _slimmed(root, tiny_tokenizer)
    return root


def _slimmed(root: Path, tokenizer: PreTrainedTokenizerBase) -> None:
    """`slim/`: a classifier with heads and FFN neurons zeroed, physically removed by `prunebert slim`."""
    model = tiny_classifier(seed=2)
    with torch.no_grad():
        for i, layer in enumerate(model.bert.encoder.layer):  # head size 8: drop head 1, then heads 0-2
            layer.attention.output.dense.weight[:, slice(8, 16) if i == 0 else slice(0, 24)] = 0
            layer.output.dense.weight[:, :40] = 0
    model.save_pretrained(root / "structured")
    tokenizer.save_pretrained(root / "structured")
    assert main(["slim", str(root / "structured"), str(root / "slim")]) == 0


def _inputs(names: list[str], batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "input_ids": rng.integers(5, 29, (batch, seq), dtype=np.int64),
        "attention_mask": np.ones((batch, seq), np.int64),
        "token_type_ids": np.zeros((batch, seq), np.int64),
    }
    arrays["attention_mask"][0, seq // 2 :] = 0  # padding must be masked out identically
    return {n: arrays[n] for n in names}


def _torch_out(model: torch.nn.Module, inputs: dict[str, np.ndarray], output: str) -> np.ndarray:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in inputs.items()})
    return getattr(out, output).numpy()


def _assert_tracks(fp32: Runner, int8: Runner, names: list[str]) -> None:
    """int8 logits follow fp32 ones over 64 inputs (a tiny random 32-wide model quantizes coarsely)."""
    x = _inputs(names, 64, 12, 7)
    reference, quantized = fp32(x), int8(x)
    assert quantized.shape == reference.shape and np.isfinite(quantized).all()
    assert np.corrcoef(reference.ravel(), quantized.ravel())[0, 1] > 0.7


def _assert_u8s8(graph: Any) -> None:
    """Static int8 is U8S8: activations quantized to uint8, weights to int8 (symmetric int8 activations
    cost the fine-tuned minilm-l6 3.8 test points and ran slower than fp32)."""
    from onnx import TensorProto

    types = {i.name: i.data_type for i in graph.initializer}
    quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and types.get(n.input[0])]
    assert quantize and all(types[n.input[2]] == TensorProto.UINT8 for n in quantize)
    assert len(weights) >= 6 and all(types[n.input[0]] == TensorProto.INT8 for n in weights)


@needs_onnx
def test_onnx_classifier_matches_pytorch_and_int8_is_scored(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "onnx"
    task = str(workspace / "task.csv")
    manifest = export_model(
        ExportOptions(model=str(workspace / "bert-cls"), out=str(out), int8=True, calibration=task)
    )
    assert manifest["check"]["max_abs_diff"] <= 1e-4
    assert manifest["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert set(manifest["files"]) == {"model.onnx", "model.int8.onnx"}
    assert "static" in manifest["int8"]["method"]
    import onnx

    reference = AutoModelForSequenceClassification.from_pretrained(workspace / "bert-cls").eval()
    fp32 = onnxruntime_runner(out / "model.onnx", threads=1)
    int8 = onnxruntime_runner(out / "model.int8.onnx", threads=1)
    for batch, seq, seed in [(1, 5, 0), (4, 23, 1)]:  # shapes unlike the export's: dynamic axes
        x = _inputs(manifest["inputs"], batch, seq, seed)
        assert np.abs(fp32(x) - _torch_out(reference, x, "logits")).max() <= 1e-4
    _assert_tracks(fp32, int8, manifest["inputs"])
    _assert_u8s8(onnx.load(str(out / "model.int8.onnx")).graph)
    accuracy = manifest["accuracy"]
    assert accuracy["split"] == "test" and accuracy["examples"] == 8  # 10% of 80 rows
    assert set(accuracy["scores"]) == {"torch_fp32", "onnx_fp32", "onnx_int8"}
    assert accuracy["scores"]["onnx_fp32"] == accuracy["scores"]["torch_fp32"]
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not list(tmp_path.glob(".onnx.partial-*"))


@needs_onnx
def test_onnx_export_runs_in_a_child_process(
    workspace: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An encoder without token_type_ids; torch.onnx.export is unusable in this process, yet it works."""

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("torch.onnx.export ran in the calling process")

    monkeypatch.setattr(torch.onnx, "export", forbidden)
    manifest = export_model(ExportOptions(model=str(workspace / "distil"), out=str(tmp_path / "o")))
    assert manifest["inputs"] == ["input_ids", "attention_mask"] and manifest["output"] == "last_hidden_state"
    assert manifest["int8"] is None and "--calibration" in manifest["accuracy_note"]
    x = _inputs(manifest["inputs"], 3, 17, 2)
    expected = _torch_out(AutoModel.from_pretrained(workspace / "distil").eval(), x, "last_hidden_state")
    assert np.abs(onnxruntime_runner(tmp_path / "o/model.onnx", 1)(x) - expected).max() <= 1e-4


@needs_onnx
def test_slimmed_model_exports_and_matches(workspace: Path, tmp_path: Path) -> None:
    manifest = export_model(ExportOptions(model=str(workspace / "slim"), out=str(tmp_path / "o")))
    slim = load_model(str(workspace / "slim"), "classification").model.eval()
    assert slim.bert.encoder.layer[1].intermediate.dense.out_features == 24  # really smaller
    x = _inputs(manifest["inputs"], 2, 19, 4)
    got = onnxruntime_runner(tmp_path / "o/model.onnx", 1)(x)
    assert np.abs(got - _torch_out(slim, x, "logits")).max() <= 1e-4


@needs_openvino
def test_openvino_from_torch_matches_and_int8_is_calibrated(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    code = main(
        [
            *("export", str(workspace / "bert-cls"), str(out), "--format", "openvino", "--int8"),
            *("--calibration", str(workspace / "task.csv"), "--calibration-examples", "40"),
        ]
    )
    assert code == 0
    manifest = json.loads((out / EXPORT_FILE).read_text())
    assert manifest["check"]["max_abs_diff"] <= 1e-4
    assert "nncf.quantize" in manifest["int8"]["method"]
    assert set(manifest["accuracy"]["scores"]) == {"torch_fp32", "openvino_fp32", "openvino_int8"}
    reference = AutoModelForSequenceClassification.from_pretrained(workspace / "bert-cls").eval()
    x = _inputs(manifest["inputs"], 2, 31, 3)
    expected = _torch_out(reference, x, "logits")
    assert np.abs(openvino_runner(out / "openvino_model.xml", 1)(x) - expected).max() <= 1e-4
    _assert_tracks(
        openvino_runner(out / "openvino_model.xml", 1),
        openvino_runner(out / "openvino_model.int8.xml", 1),
        manifest["inputs"],
    )
    assert "FakeQuantize" in (out / "openvino_model.int8.xml").read_text()


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["--format", "tflite"], "bad value for 'format': Input should be 'onnx' or 'openvino'"),
        (["--calibration", "rotten-tomatoes"], "--calibration only applies to int8; add --int8"),
        (["--int8", "--calibration-examples", "0"], "fix --calibration-examples"),
        (["--eval-split", "validation"], "fix --eval-split"),
    ],
)
def test_bad_export_options_are_one_line_errors(
    options: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", "m", str(tmp_path / "o"), *options]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunebert: error: ") and expected in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_options_reach_the_child_as_json() -> None:
    options = ExportOptions(model="m", out="o", format="openvino", int8=True, calibration="t", opset=17)
    assert ExportOptions.model_validate_json(options.model_dump_json()) == options
    with pytest.raises(ValidationError, match="only applies to int8"):
        ExportOptions(model="m", out="o", calibration="t")


def test_a_full_output_directory_is_left_alone(workspace: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    assert main(["export", str(workspace / "bert-cls"), str(tmp_path / "full")]) == 2
    assert (tmp_path / "full" / "x").read_text() == "keep me"


def test_errors_are_one_line_before_and_after_the_child(tmp_path: Path) -> None:
    with pytest.raises(PrunebertError, match=r"no config\.json") as info:  # caught before any child starts
        export_model(ExportOptions(model=str(tmp_path), out=str(tmp_path / "out")))
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()
    child_log = (
        "Traceback ...\nprunebert: error: onnx outputs differ from PyTorch by 1e-2 > 1e-4; report it\n"
    )
    assert _child_error(child_log, 2) == "onnx outputs differ from PyTorch by 1e-2 > 1e-4; report it"
    crash = _child_error("Traceback (most recent call last):\n  ...\nRuntimeError: boom\n", 1)
    assert "RuntimeError: boom" in crash and "--verbose" in crash and "\n" not in crash


def test_exporting_a_qa_model_says_its_head_is_not_exported(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    """Issue 15: a question-answering model exports as its encoder, and the export says so."""
    from transformers import AutoModelForQuestionAnswering

    AutoModelForQuestionAnswering.from_config(tiny_config()).save_pretrained(tmp_path / "qa")
    tiny_tokenizer.save_pretrained(tmp_path / "qa")
    manifest = export_model(ExportOptions(model=str(tmp_path / "qa"), out=str(tmp_path / "o")))
    assert manifest["output"] == "last_hidden_state"
    assert "BertForQuestionAnswering" in manifest["head_note"] and "not exported" in manifest["head_note"]
