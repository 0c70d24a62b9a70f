"""`finetune --quantization.qat int8` -> `export --int8`: the int8 ONNX carries the trained input ranges,
its weights are quantized as in training, and it computes what the fake-quantised model computed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.deploy.qat_export import linear_nodes
from prunebert.deploy.runtimes import available, onnxruntime_runner
from prunebert.quantization.maths import weight_scales
from prunebert.quantization.qat import QAT_FILE, QuantizationAware, QuantizationConfig
from prunebert.recipes import dump_recipe, load_recipe, validate_recipe
from prunebert.stages.finetune import FinetuneConfig
from tiny import write_workspace

pytestmark = pytest.mark.skipif(
    not all(available(m) for m in ("onnx", "onnxscript", "onnxruntime")),
    reason="pip install 'prunebert[export]'",
)
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    """A tiny encoder fine-tuned with magnitude pruning to 50%, then QAT from step 6 of 12."""
    root = write_workspace(tmp_path_factory.mktemp("qat"), tiny_tokenizer)
    args = ["finetune", "--model", str(root / "tiny-encoder"), "--task", str(root / "task.csv")]
    args += ["--output_dir", str(root / "run"), "--max_seq_length", "16", "--train.max_steps", "12"]
    args += ["--train.batch_size", "8", "--train.learning_rate", "1e-3", "--pruning.sparsity", "0.5"]
    args += ["--pruning.end_fraction", "0.5", "--pruning.frequency", "2", "--quantization.qat", "int8"]
    assert main([*args, "--quantization.ema_decay", "0.9"]) == 0
    return root


def _inputs(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"input_ids": rng.integers(5, 29, (8, 12)), "attention_mask": np.ones((8, 12), np.int64)}
    arrays["attention_mask"][0, 6:] = 0
    return {**arrays, "token_type_ids": np.zeros((8, 12), np.int64)}


def _fake_quantised(model_dir: Path) -> torch.nn.Module:
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    QuantizationAware(model, QuantizationConfig(qat="int8")).load(model_dir)
    return model


def test_qat_finetune_records_ranges_beside_plain_fp32_weights(qat_run: Path) -> None:
    results = json.loads((qat_run / "run" / "results.json").read_text())
    record = results["quantization"]
    assert (record["qat"], record["start_step"], record["linears"]) == ("int8", 6, 14)
    assert results["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
    saved = json.loads((qat_run / "run" / "model" / QAT_FILE).read_text())
    assert saved["active"] and len(saved["linears"]) == 14
    model = AutoModelForSequenceClassification.from_pretrained(qat_run / "run" / "model")  # plain, no warning
    query = model.bert.encoder.layer[0].attention.self.query.weight
    assert (query == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)


def test_int8_onnx_carries_the_trained_scales_and_matches_the_fake_quantised_model(
    qat_run: Path, tmp_path: Path
) -> None:
    import onnx

    model_dir = qat_run / "run" / "model"
    assert main(["export", str(qat_run / "run"), str(tmp_path / "qat"), "--int8"]) == 0
    manifest = json.loads((tmp_path / "qat" / "prunebert_export.json").read_text())
    assert "quantization-aware" in manifest["int8"]["method"] and manifest["int8"]["qat"]["linears"] == 14
    fp32 = onnx.load(str(tmp_path / "qat" / "model.onnx")).graph
    graph = onnx.load(str(tmp_path / "qat" / "model.int8.onnx")).graph
    values = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    trained = json.loads((model_dir / QAT_FILE).read_text())["linears"]
    reference = AutoModelForSequenceClassification.from_pretrained(model_dir)
    for module, node in linear_nodes(fp32).items():
        quantize = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == node.input[0]]
        assert quantize, module
        for q in quantize:  # one pair per Linear reading the tensor; all with the trained range
            assert values[q.input[1]] == np.float32(trained[module]["scale"]), module
            assert values[q.input[2]] == trained[module]["zero_point"], module
        weight = reference.get_submodule(module).weight
        dequantize = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in values]
        shapes = (weight.shape, weight.shape[::-1])  # Gemm keeps (out, in), MatMul holds (in, out)
        scales = [values[n.input[1]] for n in dequantize if values[n.input[0]].shape in shapes]
        assert any(np.array_equal(s, weight_scales(weight).numpy()[:, 0]) for s in scales), module

    assert main(["export", str(model_dir), str(tmp_path / "ptq"), "--int8", "--ignore-qat",
                 "--calibration", str(qat_run / "task.csv")]) == 0  # fmt: skip
    simulated = _fake_quantised(model_dir)
    qat_int8 = onnxruntime_runner(tmp_path / "qat" / "model.int8.onnx", threads=1)
    ptq_int8 = onnxruntime_runner(tmp_path / "ptq" / "model.int8.onnx", threads=1)
    qat_diff, ptq_diff = (_max_diff_from(simulated, run) for run in (qat_int8, ptq_int8))
    # end to end the two differ only where a float-rounding difference upstream (attention) flips one
    # integer, which a tiny model's LayerNorms amplify; Linear by Linear they compute the same numbers
    assert qat_diff < 1e-3 and qat_diff * 10 < ptq_diff, (qat_diff, ptq_diff)
    _assert_each_linear_matches(tmp_path / "qat" / "model.int8.onnx", linear_nodes(fp32), simulated)


def _max_diff_from(simulated: torch.nn.Module, run: Callable[[dict[str, np.ndarray]], np.ndarray]) -> float:
    """Largest |logit difference| of an exported model from the fake-quantised one over four batches."""
    diff = 0.0
    for seed in range(4):
        x = _inputs(seed)
        with torch.no_grad():
            expected = simulated(**{k: torch.from_numpy(v) for k, v in x.items()}).logits.numpy()
        diff = max(diff, float(np.abs(run(x) - expected).max()))
    return diff


def _assert_each_linear_matches(path: Path, nodes: dict, simulated: torch.nn.Module) -> None:
    """Every Linear of the fake-quantised model, given the int8 graph's own input, gives its output."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    names = {n for node in nodes.values() for n in (node.input[0], node.output[0])} - {"logits"}
    proto.graph.output.extend(
        onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names
    )
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    found = dict(zip([o.name for o in session.get_outputs()], session.run(None, _inputs(9)), strict=True))
    for module, node in nodes.items():
        linear = simulated.get_submodule(module)
        with torch.no_grad():  # a MatMul's output is before the bias is added, a Gemm's after
            out = linear(torch.from_numpy(found[node.input[0]])) - (
                linear.bias if node.op_type == "MatMul" else 0
            )
        assert np.abs(out.numpy() - found[node.output[0]]).max() < 1e-5, module


def test_quantization_section_round_trips_and_is_left_out_when_off(tmp_path: Path) -> None:
    plain = FinetuneConfig()
    assert "quantization" not in plain.model_dump(mode="json")
    cfg = FinetuneConfig(quantization=QuantizationConfig(qat="int8", start_fraction=0.75))
    (tmp_path / "recipe.yaml").write_text(dump_recipe(cfg))
    again = validate_recipe(FinetuneConfig, load_recipe(tmp_path / "recipe.yaml"))
    assert again == cfg and again.quantization.start_step(100) == 75


@pytest.mark.skipif(
    not all(available(m) for m in ("openvino", "nncf")), reason="pip install 'prunebert[openvino]'"
)
def test_openvino_int8_carries_the_trained_scales(qat_run: Path, tmp_path: Path) -> None:
    from prunebert.deploy.runtimes import openvino_runner

    model_dir = qat_run / "run" / "model"
    args = ["export", str(qat_run / "run"), str(tmp_path / "qat"), "--int8", "--format", "openvino"]
    assert main(args) == 0
    manifest = json.loads((tmp_path / "qat" / "prunebert_export.json").read_text())
    assert "quantization-aware" in manifest["int8"]["method"] and manifest["int8"]["qat"]["linears"] == 14
    assert main(["export", str(model_dir), str(tmp_path / "ptq"), "--int8", "--ignore-qat", "--format",
                 "openvino", "--calibration", str(qat_run / "task.csv")]) == 0  # fmt: skip
    simulated = _fake_quantised(model_dir)
    qat_int8 = openvino_runner(tmp_path / "qat" / "openvino_model.int8.xml", 1, precision="f32")
    ptq_int8 = openvino_runner(tmp_path / "ptq" / "openvino_model.int8.xml", 1, precision="f32")
    qat_diff, ptq_diff = (_max_diff_from(simulated, run) for run in (qat_int8, ptq_int8))
    assert qat_diff < 1e-3 and qat_diff * 10 < ptq_diff, (qat_diff, ptq_diff)
    assert _openvino_int8_linears(tmp_path / "qat" / "openvino_model.int8.xml") == 14  # int8 kernels run


def _openvino_int8_linears(path: Path) -> int:
    """How many Linears OpenVINO's CPU plugin runs on (u)int8 inputs once compiled."""
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU")
    found = 0
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind, precision = (info[k].astype(str) for k in ("layerType", "runtimePrecision"))
        found += kind == "FullyConnected" and precision in ("u8", "i8")
    return found


def test_fp32_linears_are_trained_and_exported_in_fp32(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    import onnx

    root = write_workspace(tmp_path, tiny_tokenizer)
    args = ["finetune", "--model", str(root / "tiny-encoder"), "--task", str(root / "task.csv")]
    args += ["--output_dir", str(root / "run"), "--max_seq_length", "16", "--train.max_steps", "4"]
    args += ["--quantization.qat", "int8", "--quantization.start_fraction", "0"]
    assert main([*args, "--quantization.fp32_linears", r"layer\.\d+\.output\.dense$"]) == 0
    record = json.loads((root / "run" / "results.json").read_text())["quantization"]
    kept = ["bert.encoder.layer.0.output.dense", "bert.encoder.layer.1.output.dense"]
    assert record["fp32_kept"] == kept and record["linears"] == 12
    assert main(["export", str(root / "run"), str(tmp_path / "out"), "--int8"]) == 0
    manifest = json.loads((tmp_path / "out" / "prunebert_export.json").read_text())
    assert manifest["int8"]["qat"]["fp32_linears"] == kept and manifest["int8"]["qat"]["linears"] == 12
    nodes = linear_nodes(onnx.load(str(tmp_path / "out" / "model.onnx")).graph)
    graph = onnx.load(str(tmp_path / "out" / "model.int8.onnx")).graph
    quantized_inputs = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    for module, node in nodes.items():
        assert (node.input[0] in quantized_inputs) == (module not in kept), module
