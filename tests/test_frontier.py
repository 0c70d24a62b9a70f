"""benchmarks/frontier.py: its points, the structure copied onto a bigger encoder, and (slow) the whole
benchmark on a tiny model and task: every point with accuracies, speedups and goals, then resumed."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from prunebert.transforms.slim import SLIM_KEY, plan_slim
from tiny import tiny_classifier, tiny_config, write_workspace

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def frontier(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the benchmarks import each other as scripts do
    import frontier

    return frontier


def test_points_parse_and_layers_are_dropped_evenly(frontier: ModuleType) -> None:
    assert frontier.parse_point("3x0.5") == frontier.Point(3, 0.5)
    assert [frontier.parse_point(p).name for p in frontier.POINTS] == list(frontier.POINTS)
    for bad in ("3", "x0.5", "3x1.0", "0x0.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            frontier.parse_point(bad)
    assert frontier.dropped_layers(6, 3) == [1, 3, 5]
    assert frontier.dropped_layers(12, 6) == [1, 3, 5, 7, 9, 11]
    assert frontier.dropped_layers(6, 6) == [] and frontier.dropped_layers(2, 1) == [1]


def test_a_bigger_encoder_is_cut_to_the_same_fractions_and_layers(
    frontier: ModuleType, tmp_path: Path
) -> None:
    small = tiny_classifier().config  # 2 layers of 4 heads and 64 neurons
    layout = {"version": 1, "heads": [[0, 2], [0, 1, 2, 3]], "intermediate_sizes": [16, 64], "layers": [0]}
    setattr(small, SLIM_KEY, layout)
    small.save_pretrained(tmp_path)
    big = AutoModelForSequenceClassification.from_config(
        tiny_config(num_hidden_layers=4, intermediate_size=128)
    )
    assert frontier.cut_like(big, tmp_path) == [2, 3]  # its layers 0, 1 match layer 0; 2, 3 match 1
    keep = plan_slim(big).keep
    assert keep["heads.0"] == keep["heads.1"] == [2, 3]  # half the heads, the first ones cut
    assert keep["neurons.0"] == keep["neurons.1"] == list(range(96, 128))  # a quarter of the neurons
    assert keep["heads.2"] == [0, 1, 2, 3] and len(keep["neurons.3"]) == 128  # dropped whole instead


def _run(*argv: str) -> str:
    script = [sys.executable, str(BENCHMARKS / "frontier.py"), *argv]
    return subprocess.run(script, check=True, capture_output=True, text=True).stdout


@pytest.mark.slow
def test_the_frontier_on_a_tiny_model_then_resumed(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    space = write_workspace(tmp_path, tiny_tokenizer)
    out = tmp_path / "frontier.json"
    argv = ["--model", str(space / "tiny-mlm"), "--task", str(space / "task.csv"), "--max-steps", "10"]
    argv += ["--points", "2x0.5", "1x0.0", "--bert-size", "tiny", "--seq-len", "32", "--rounds", "1"]
    argv += ["--iters", "1", "--runs", str(tmp_path / "runs"), "--output", str(out)]
    _run(*argv)
    table = json.loads(out.read_text())
    rows = {row["point"]: row for row in table["cells"]}
    assert table["complete"] and list(rows) == ["dense", "2x0.5", "1x0.0"]
    variants = ["torch", "torch-bf16", "torch-int8", "onnxruntime-int8", "openvino-int8"]
    for row in rows.values():
        assert set(variants) <= set(row["accuracy"]) and all(0 <= a <= 1 for a in row["accuracy"].values())
        assert row["test_examples"] == 20 and row["bytes"]["onnxruntime-int8"] > 0
        for latency in (row["speedup"], row["bert_base"]["speedup"]):
            assert sorted(latency) == sorted(variants)
            assert all(latency[v][b]["median"] > 0 for v in variants for b in ("batch_1", "batch_8"))
        assert set(row["goals"]) == {"batch_1", "batch_8"}
    assert rows["dense"]["accuracy_delta_points"]["torch"] == 0.0 and rows["dense"].get("slim") is None
    assert rows["2x0.5"]["slim"]["heads_kept"] == [4, 8] and rows["1x0.0"]["slim"]["layers_kept"] == [1, 2]
    assert rows["dense"]["parameters"] > rows["2x0.5"]["parameters"] > rows["1x0.0"]["parameters"]
    assert rows["dense"]["bert_base"]["parameters"] > rows["2x0.5"]["bert_base"]["parameters"]
    _run(*argv)  # every run, slim, export, accuracy and bench is reused
    assert json.loads(out.read_text())["cells"] == table["cells"]
    assert "| 2x0.5 |" in _run("--table", "--output", str(out))


def test_cached_results_are_reused_only_for_the_same_weights(frontier: ModuleType, tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights")
    cache = tmp_path / "cache.json"
    assert frontier._stamped(cache, model) is None
    cache.write_text(json.dumps({"accuracy": 0.8, "weights_stamp": frontier.weights_stamp(model)}))
    assert frontier._stamped(cache, model) == json.loads(cache.read_text())
    (model / "model.safetensors").write_bytes(b"retrained weights")  # a new run of the point
    assert frontier._stamped(cache, model) is None
