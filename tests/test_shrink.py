"""`prunebert.shrink` on tiny models: mask gradients, gates, the whole pipeline, the command and its cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from prunebert.cli.main import main
from prunebert.deploy.bench import encoder_flops
from prunebert.models import load_model
from prunebert.shrink import LayerCosts, ShrinkSettings, flop_costs, shrink
from prunebert.shrink.config import ShrinkConfig
from prunebert.shrink.gates import fold_scales, gated, layer_groups, mask_grams
from prunebert.shrink.latency import ffn_size
from prunebert.transforms.slim import layer_count
from tiny import tiny_classifier, write_workspace


def _batches(n: int = 4, size: int = 6, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, 128, (size, 12), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0  # some padding
        out.append({"input_ids": ids, "attention_mask": mask, "labels": ids[:, 0] % 2})
    return out


def _logits(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**{k: v for k, v in b.items() if k != "labels"}).logits for b in batches])


def _costs(model: torch.nn.Module) -> LayerCosts:
    c = model.config
    return flop_costs(c.hidden_size, c.num_attention_heads, ffn_size(c), 12)


def test_mask_gradients_are_per_example() -> None:
    model = tiny_classifier().eval()
    groups = layer_groups(model)
    batch = _batches(1, size=3)[0]
    heads, neurons = mask_grams(model, groups, [batch])
    expected = torch.zeros_like(heads[0].diagonal())
    for i in range(3):  # one example at a time: its own gradient, squared
        gate = torch.ones(4, requires_grad=True)
        with gated(model, groups, {0: gate}, {}):
            loss = model(**{k: v[i : i + 1] for k, v in batch.items()}).loss
        expected += torch.autograd.grad(loss, gate)[0].double() ** 2
    assert torch.allclose(heads[0].diagonal(), expected, atol=1e-8)
    assert heads.shape == (2, 4, 4) and neurons.shape == (2, 64, 64)


def test_gates_equal_folded_weights() -> None:
    model = tiny_classifier().eval()
    groups = layer_groups(model)
    batches = _batches(2)
    heads = torch.tensor([[1.0, 0.0, 2.0, 0.5], [0.0, 0.0, 1.0, 1.0]])
    neurons = torch.rand(2, 64, generator=torch.Generator().manual_seed(1))
    with gated(model, groups, dict(enumerate(heads)), dict(enumerate(neurons))):
        through_gates = _logits(model, batches)
    fold_scales(model, groups, heads, neurons)
    assert torch.allclose(_logits(model, batches), through_gates, atol=1e-6)


@pytest.mark.parametrize("model_type", ["bert", "distilbert"])
def test_shrink_to_half_the_flops_slims_exactly(model_type: str) -> None:
    model = tiny_classifier(model_type).eval()
    batches = _batches()
    costs = _costs(model)
    dense_flops = encoder_flops(model, 12)
    result = shrink(model, batches, costs, 0.5 * costs.dense_cost(2))
    assert result.predicted_cost <= 0.5 * result.dense_cost
    folded = _logits(model, batches)
    result.slim()
    assert torch.allclose(_logits(model, batches), folded, atol=1e-5)  # slimming the folded model is exact
    slim_flops = encoder_flops(model, 12)
    assert dense_flops is not None and slim_flops is not None
    assert slim_flops["dense"] <= 0.5 * dense_flops["dense"] * 1.01
    assert all(line["error_after"] <= line["error_before"] + 1e-9 for line in result.tuning)
    heads, neurons = result.keep_heads.any(dim=1).tolist(), result.keep_neurons.any(dim=1).tolist()
    blocks = [
        b for h, n in zip(heads, neurons, strict=True) for b, kept in (("attention", h), ("ffn", n)) if kept
    ]
    assert [line["block"] for line in result.tuning] == blocks  # one refit per block that keeps anything


def test_tuning_brings_the_outputs_closer_to_dense() -> None:
    dense = _logits(tiny_classifier().eval(), _batches(8))
    errors = {}
    for tune in ("none", "scales", "weights"):
        model = tiny_classifier().eval()
        costs = _costs(model)
        shrink(model, _batches(8), costs, 0.6 * costs.dense_cost(2), ShrinkSettings(tune=tune))  # type: ignore[arg-type]
        errors[tune] = float((_logits(model, _batches(8)) - dense).pow(2).mean())
    # one scale per group helps; refitting every kept column (a superset of scalings) helps more
    assert errors["weights"] < errors["scales"] < errors["none"]


def test_an_empty_layer_is_dropped() -> None:
    model = tiny_classifier().eval()
    # a kept layer costs as much as its whole content: 1.9 x that affords one layer, not two
    flops = _costs(model)
    layer = float(flops.heads[-1] + flops.neurons[-1])
    costs = LayerCosts(flops.heads, flops.neurons, layer, 0.0, "flops")
    result = shrink(model, _batches(), costs, 1.9 * layer)
    assert len(result.drop_layers) == 1
    result.slim()
    assert layer_count(model) == 1
    assert _logits(model, _batches()).shape == (24, 2)


def test_config_needs_exactly_one_target() -> None:
    with pytest.raises(ValueError, match="exactly one of speedup"):
        ShrinkConfig()
    with pytest.raises(ValueError, match="exactly one of speedup"):
        ShrinkConfig(speedup=2, flops=0.5)
    assert ShrinkConfig(speedup=2).runtime == "torch"


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    root = write_workspace(tmp_path_factory.mktemp("shrink"), tiny_tokenizer)
    tiny_classifier().save_pretrained(root / "classifier")  # a "fine-tuned" classifier: its head is saved
    tiny_tokenizer.save_pretrained(root / "classifier")
    return root


def _shrink_cli(space: Path, out: Path, *extra: str) -> dict[str, object]:
    argv = ["shrink", str(space / "classifier"), "--task", str(space / "task.csv"), "--max_seq_length", "16"]
    argv += ["--output_dir", str(out), "--calibration", "48", "--calibration_batch_size", "16", *extra]
    assert main(argv) == 0
    report: dict[str, object] = json.loads((out / "shrink.json").read_text())
    return report


def test_shrink_command_flops_saves_a_loadable_slim_model(space: Path, tmp_path: Path) -> None:
    report = _shrink_cli(space, tmp_path / "out", "--flops", "0.5", "--bench", "false")
    loaded = load_model(str(tmp_path / "out"), head="classification")  # OUT/model, like any slimmed model
    assert not loaded.new_head
    assert "prunebert_slim" in loaded.model.config.to_dict()
    assert report["target"]["kind"] == "flops"  # type: ignore[index]
    assert (
        main(["shrink", str(space / "classifier"), "--flops", "0.5", "--output_dir", str(tmp_path / "out")])
        == 2
    )


def test_shrink_command_speedup_measures_caches_and_benches(
    space: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PRUNEBERT_CACHE", str(tmp_path / "cache"))
    args = ("--speedup", "1.3", "--grid_points", "3", "--seq_len", "16", "--bench_rounds", "2")
    first = _shrink_cli(space, tmp_path / "a", *args)
    second = _shrink_cli(space, tmp_path / "b", *args)
    assert first["target"]["from_cache"] is False and second["target"]["from_cache"] is True  # type: ignore[index]
    assert len(list((tmp_path / "cache" / "latency").glob("torch-b1-s16-t1-*.json"))) == 1
    measured = second["measured"]
    assert isinstance(measured, dict) and measured["speedup"] > 0 and measured["flops_fraction"] < 1


def test_shrink_command_distills_from_the_dense_model(space: Path, tmp_path: Path) -> None:
    report = _shrink_cli(
        space, tmp_path / "out", "--flops", "0.6", "--bench", "false", "--distill_steps", "2"
    )
    assert (tmp_path / "out" / "zero-step" / "config.json").is_file()
    assert (tmp_path / "out" / "distill" / "results.json").is_file()
    assert "distilled" in report["metrics"]  # type: ignore[operator]
    loaded = load_model(str(tmp_path / "out"), head="classification")
    assert "prunebert_slim" in loaded.model.config.to_dict()


def test_shrink_searches_again_until_the_measured_speedup_matches(
    space: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a runtime 20% slower than its latency table predicts, then on target: one corrected search, with
    # the budget scaled by measured / requested and the mask gradients reused, not recomputed
    from prunebert.shrink import api, job

    monkeypatch.setenv("PRUNEBERT_CACHE", str(tmp_path / "cache"))
    speeds = iter([0.8 * 1.3, 0.99 * 1.3])
    monkeypatch.setattr(
        job, "bench_shrunk", lambda *a: {"speedup": next(speeds), "dense_runtime_speedup": 1.0}
    )
    passes = []
    real_grams = api.mask_grams
    monkeypatch.setattr(api, "mask_grams", lambda *a: passes.append(1) or real_grams(*a))
    args = ("--speedup", "1.3", "--grid_points", "3", "--seq_len", "16", "--bench_rounds", "1")
    report = _shrink_cli(space, tmp_path / "out", *args)
    attempts = report["attempts"]
    assert isinstance(attempts, list) and len(attempts) == 2 and len(passes) == 1
    target = report["target"]
    cheapest = target["baseline_torch_fp32_s"] / target["max_speedup"]  # type: ignore[index]
    # scaled by measured / requested, never below the cheapest model (on a fast machine the tiny model's
    # fixed costs make that floor bind)
    assert attempts[1]["budget"] == pytest.approx(max(0.8 * attempts[0]["budget"], 1.02 * cheapest))
    assert attempts[1]["budget"] < attempts[0]["budget"]
    assert report["measured"]["speedup"] == pytest.approx(0.99 * 1.3)  # type: ignore[index]
    assert load_model(str(tmp_path / "out"), head="classification").model is not None


def test_shrink_in_bf16_scores_the_result_in_bf16(space: Path, tmp_path: Path) -> None:
    # the accuracy beside a runtime's speed-up is the runtime's own, not the fp32 twin's
    report = _shrink_cli(
        space,
        tmp_path / "out",
        "--flops",
        "0.5",
        "--runtime",
        "torch-bf16",
        "--bench",
        "false",
        "--evaluate",
        "true",
    )
    deployed = report["deployed"]
    assert isinstance(deployed, dict) and deployed["runtime"] == "torch-bf16" and deployed["split"] == "test"
    assert deployed["runner"]["precision"] == "bf16" and 0 <= deployed["metrics"]["accuracy"] <= 1
    plain = _shrink_cli(space, tmp_path / "fp32", "--flops", "0.5", "--bench", "false", "--evaluate", "true")
    assert "deployed" not in plain  # torch fp32 is what the metrics already measure


def test_a_result_far_faster_than_asked_is_kept_when_only_dense_is_slower(
    space: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # measured 5x the request: the corrected budget exceeds the dense model's cost, so the search would
    # remove nothing; the loop keeps the model it measured instead of failing on an empty shrink
    from prunebert.shrink import job

    monkeypatch.setenv("PRUNEBERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(job, "bench_shrunk", lambda *a: {"speedup": 5 * 1.3, "dense_runtime_speedup": 1.0})
    args = ("--speedup", "1.3", "--grid_points", "3", "--seq_len", "16", "--bench_rounds", "1")
    report = _shrink_cli(space, tmp_path / "out", *args)
    attempts = report["attempts"]
    assert isinstance(attempts, list) and len(attempts) == 1 and "dense" in attempts[0]["stopped"]
    assert report["measured"]["speedup"] == pytest.approx(5 * 1.3)  # type: ignore[index]
    assert "prunebert_slim" in load_model(str(tmp_path / "out"), head="classification").model.config.to_dict()


def test_next_budget_follows_the_measured_curve() -> None:
    from prunebert.shrink.job import next_budget

    # one attempt: speed-up taken as inversely proportional to the budget
    assert next_budget([{"budget": 10.0, "measured_speedup": 1.5, "ratio": 0.75}], 0.0) == pytest.approx(7.5)
    # two attempts on speed = budget ** -0.5: the exponent is read off them and the next budget hits 4x
    speed = lambda b: b**-0.5  # noqa: E731
    attempts = [{"budget": b, "measured_speedup": speed(b), "ratio": speed(b) / 4} for b in (0.25, 0.09)]
    assert speed(next_budget(attempts, 0.0)) == pytest.approx(4.0)
    # a slower result at a smaller budget is noise: fall back to k = 1; never below the floor
    noisy = [
        {"budget": 2.0, "measured_speedup": 3.0, "ratio": 0.75},
        {"budget": 1.0, "measured_speedup": 2.0, "ratio": 0.5},
    ]
    assert next_budget(noisy, 0.0) == pytest.approx(0.5)
    assert next_budget(noisy, 0.8) == 0.8


def test_the_speed_loop_keeps_the_closest_attempt_not_the_last(
    space: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prunebert.shrink import job

    monkeypatch.setenv("PRUNEBERT_CACHE", str(tmp_path / "cache"))
    speeds = iter([0.9 * 1.3, 1.3 * 1.3, 1.25 * 1.3])  # undershoot, then overshoot twice
    monkeypatch.setattr(
        job, "bench_shrunk", lambda *a: {"speedup": next(speeds), "dense_runtime_speedup": 1.0}
    )
    written = []
    real_write = job._write
    monkeypatch.setattr(job, "_write", lambda result, *a: written.append(result) or real_write(result, *a))
    args = ("--speedup", "1.3", "--grid_points", "3", "--seq_len", "16", "--speed_retries", "2")
    report = _shrink_cli(space, tmp_path / "out", *args)
    attempts = report["attempts"]
    assert isinstance(attempts, list) and [a["kept"] for a in attempts] == [True, False, False]
    assert report["measured"]["speedup"] == pytest.approx(0.9 * 1.3)  # type: ignore[index]
    assert len(written) == 4 and written[-1] is written[0]  # the first search's model, written again
