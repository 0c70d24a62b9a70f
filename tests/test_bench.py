"""`prunebert bench`: JSON structure, ratios computed within the same rounds, disturbed-round rejection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from transformers import BertModel, PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.deploy.bench import BenchSettings, encoder_flops, run_bench, summarize_rounds
from prunebert.deploy.runtimes import available
from prunebert.errors import PrunebertError
from tiny import tiny_classifier, tiny_config


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> list[str]:
    """A tiny dense classifier, a copy with 80% of its encoder weights zeroed, and a slimmed copy."""
    root = tmp_path_factory.mktemp("bench")
    for name, sparsity in (("dense", 0.0), ("sparse", 0.8), ("structured", 0.0)):
        model = tiny_classifier()
        with torch.no_grad():
            for key, p in model.named_parameters():
                if ".encoder." in key and p.dim() == 2:
                    p.mul_(torch.rand_like(p) >= sparsity)
            if name == "structured":  # half the FFN neurons of every layer
                for layer in model.bert.encoder.layer:
                    layer.output.dense.weight[:, :32] = 0
        model.save_pretrained(root / name)
        tiny_tokenizer.save_pretrained(root / name)
    assert main(["slim", str(root / "structured"), str(root / "slim")]) == 0
    return [str(root / "dense"), str(root / "sparse"), str(root / "slim")]


def test_summarize_rounds_discards_disturbed_rounds_golden() -> None:
    baseline = [1.0, 1.1, 3.0, 0.9, 1.0]  # round 2 was disturbed (3x the median)
    other = [0.5, 0.5, 0.5, 0.6, 0.4]
    out = summarize_rounds([baseline, other], disturbance=0.2)
    assert out["rounds"] == 5 and out["discarded_rounds"] == [2]
    base, run = out["runners"]
    assert base["speedup"] == {"min": 1.0, "median": 1.0, "max": 1.0}
    assert run["latency_s"] == {"min": 0.4, "median": 0.5, "max": 0.6}
    assert run["speedup"] == pytest.approx({"min": 1.5, "median": 2.1, "max": 2.5})  # 2, 2.2, 1.5, 2.5
    assert run["speedup_of_medians"] == pytest.approx(1.0 / 0.5)
    assert run["round_latency_s"] == other  # every round kept in the JSON, discarded ones too
    two = summarize_rounds([[1.0, 2.0], [1.0, 1.0]], disturbance=0.2)  # even count: the low median
    assert two["discarded_rounds"] == [1] and two["runners"][1]["speedup"]["median"] == 1.0


def test_encoder_flops_golden() -> None:
    config = tiny_config()  # hidden 32, intermediate 64, 2 layers
    model = BertModel(config)
    with torch.no_grad():
        model.encoder.layer[0].intermediate.dense.weight.zero_()
    seq = 8
    linears = 2 * (4 * 32 * 32 + 2 * 32 * 64) * 2 * seq
    attention = 2 * 2 * (2 * seq * seq * 32)  # layers x (QK^T + AV)
    flops = encoder_flops(model, seq)
    assert flops == {"dense": linears + attention, "nonzero_weights": linears + attention - 2 * 32 * 64 * seq}


def test_bench_json_structure_and_same_run_ratios(models: list[str]) -> None:
    dense, sparse, slim = models
    settings = BenchSettings(
        variants=("torch", "torch-int8", "torch-csr"),
        batch_sizes=(1, 2),
        seq_len=8,
        rounds=2,
        iters=2,
        warmup=1,
    )
    result = run_bench([dense, sparse, slim], settings)
    assert result["baseline"] == {"model": dense, "variant": "torch"}
    assert set(result["models"]) == {dense, sparse, slim}
    slim_flops = result["models"][slim]["flops_per_sequence"]["dense"]
    dense_flops = result["models"][dense]["flops_per_sequence"]["dense"]
    # 2 layers x 2 FLOPs x 2 matrices (FFN in, out) x 32 neurons x 32 wide x 8 tokens
    assert slim_flops == dense_flops - 2 * 2 * 2 * 32 * 32 * 8
    assert result["models"][slim]["params"] < result["models"][dense]["params"]
    facts = result["models"][sparse]
    assert facts["nonzero_params"] < facts["params"] == result["models"][dense]["params"]
    assert facts["flops_per_sequence"]["nonzero_weights"] < facts["flops_per_sequence"]["dense"]
    assert facts["weight_bytes"] > 0
    assert [b["batch_size"] for b in result["results"]] == [1, 2]
    for block in result["results"]:
        assert block["rounds"] == 2 and block["seq_len"] == 8
        rows = block["runners"]
        assert [(r["role"], r["variant"]) for r in rows][:2] == [("baseline", "torch"), ("runner", "torch")]
        assert len(rows) == 1 + 3 * 3
        kept = [i for i in range(2) if i not in block["discarded_rounds"]]
        baseline_rounds = rows[0]["round_latency_s"]
        assert rows[0]["speedup"] == {"min": 1.0, "median": 1.0, "max": 1.0}
        for row in rows:
            assert set(row["latency_s"]) == {"min", "median", "max"} and len(row["round_latency_s"]) == 2
            ratios = [baseline_rounds[i] / row["round_latency_s"][i] for i in kept]  # the same rounds
            assert row["speedup"]["min"] == pytest.approx(min(ratios))
            assert row["speedup"]["max"] == pytest.approx(max(ratios))
        control = rows[1]  # the baseline model timed again as a runner (its ratio is load noise: no bound)
        assert control["speedup"]["median"] > 0.0
        assert control["max_abs_diff_vs_torch_fp32"] == 0.0
        int8 = next(r for r in rows if r["variant"] == "torch-int8")
        assert 0.0 < int8["max_abs_diff_vs_torch_fp32"] < 0.05
        csr = next(r for r in rows if r["variant"] == "torch-csr" and r["model"] == sparse)
        assert csr["info"]["csr"]["probed"] == 12  # 80%-sparse encoder matrices were timed
    assert result["environment"]["threads"] == torch.get_num_threads()
    json.dumps(result, allow_nan=False)  # strict JSON


def test_bench_cli_writes_json_and_table(
    models: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    variants = "torch,onnxruntime-int8" if available("onnxruntime") and available("onnxscript") else "torch"
    out = tmp_path / "bench.json"
    args = ["bench", models[2], "--baseline", models[0], "--variants", variants, "--batch-sizes", "1"]
    args += ["--seq-len", "8", "--rounds", "2", "--iters", "1", "--threads", "1", "--json-out", str(out)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "batch 1 x seq 8" in table and "(baseline)" in table and "rounds kept" in table
    result = json.loads(out.read_text())
    assert result["environment"]["threads"] == 1
    variants_run = [r["variant"] for r in result["results"][0]["runners"]]
    assert variants_run == ["torch", *variants.split(",")]
    if "onnxruntime-int8" in variants:
        ort = result["results"][0]["runners"][-1]
        assert "dynamic" in ort["info"]["int8"]["method"] and ort["info"]["bytes"] > 0


def test_bench_refuses_bad_settings(models: list[str]) -> None:
    with pytest.raises(PrunebertError, match="unknown bench variant"):
        run_bench(models, BenchSettings(variants=("torch-fp8",)))
    with pytest.raises(ValidationError, match="rounds"):
        BenchSettings(rounds=0)
    with pytest.raises(PrunebertError, match="sequence length"):
        run_bench(models[:1], BenchSettings(variants=("torch",), seq_len=4096, rounds=1, iters=1))


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--rounds", "0"],
            "bad value for 'rounds': Input should be greater than or equal to 1 (got 0); fix --rounds",
        ),
        (["--batch-sizes", "1,0"], "fix --batch-sizes"),
        (["--csr-threshold", "-1"], "bad value for 'csr.threshold'"),
        (["--seq-len", "long"], "fix --seq-len"),
        (["--openvino-precision", "f16"], "fix --openvino-precision"),
    ],
)
def test_bad_bench_options_are_one_line_errors(
    options: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bench", "no-such-model", *options]) == 2  # refused before any model is read
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunebert: error: ") and expected in err and "\n" not in err


def test_bench_help_is_the_settings_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for field in ("rounds", "disturbance", "openvino_precision"):
        assert BenchSettings.model_fields[field].description in text
    assert "(default: 5)" in text and "(default: [1, 8])" in text and "{f32,bf16}" in text
