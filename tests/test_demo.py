"""The demo's plan, its seed-averaged summary and its refusal to reuse a stale step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prunebert.cli import main
from prunebert.errors import PrunebertError
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.runner import StageConfig, run_or_reuse
from prunebert.study import demo
from prunebert.study.demo import demo_plan, summarize


def test_plan_runs_every_seed_of_both_arms_from_their_own_mlm_run(tmp_path: Path) -> None:
    plan = dict(demo_plan(tmp_path, seeds=(3, 4)))
    assert list(plan) == [
        "head", "mlm-dense", "ft-dense-s3", "ft-dense-s4", "mlm-sparse", "ft-sparse-s3", "ft-sparse-s4"
    ]  # fmt: skip
    ft = plan["ft-sparse-s4"]
    assert isinstance(ft, FinetuneConfig) and ft.seed == 4 and ft.model == str(tmp_path / "10-mlm-sparse")
    assert plan["mlm-dense"].pruning is None  # type: ignore[union-attr]
    assert plan["mlm-sparse"].pruning.sparsity == 0.4  # type: ignore[union-attr]


def _ft(dev: float, test: float) -> dict[str, object]:
    return {"metrics": {"dev": {"accuracy": dev}, "test": {"accuracy": test}}}


def test_summary_averages_the_seeds() -> None:
    mlm = {"sparsity": {"overall": 0.0}, "metrics": {"mlm_loss": 3.0, "mlm_accuracy": 0.4}}
    results = {
        "head": {"metrics": {}},
        "mlm-dense": mlm,
        "mlm-sparse": {**mlm, "sparsity": {"overall": 0.4}},
        "ft-dense-s0": _ft(0.80, 0.82),
        "ft-dense-s1": _ft(0.82, 0.84),
        "ft-sparse-s0": _ft(0.79, 0.80),
        "ft-sparse-s1": _ft(0.81, 0.81),
    }
    summary = summarize(results, (0, 1))
    dense, sparse = summary["rows"]
    assert dense["test_accuracy"] == pytest.approx(0.83)
    assert dense["test_accuracy_sd"] == pytest.approx(0.0141421, abs=1e-6)
    assert sparse["dev_accuracy"] == pytest.approx(0.80)
    assert summary["test_accuracy_gap"] == pytest.approx(0.83 - 0.805)


def test_a_finished_step_of_another_recipe_is_refused(tmp_path: Path) -> None:
    _, config = demo_plan(tmp_path, seeds=(0,))[2]
    config.output_dir.mkdir(parents=True)
    stale = {"recipe": {**config.model_dump(mode="json"), "max_seq_length": 128}, "metrics": {}}
    (config.output_dir / "results.json").write_text(json.dumps(stale))
    with pytest.raises(PrunebertError, match="another recipe"):
        run_or_reuse(config)
    (config.output_dir / "results.json").write_text(
        json.dumps({**stale, "recipe": config.model_dump(mode="json")})
    )
    assert run_or_reuse(config)["metrics"] == {}


def test_stdout_holds_the_json_result_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Progress and the stages' log lines on stderr, the comparison as JSON on stdout (stages faked)."""
    mlm = {"sparsity": {"overall": 0.4}, "metrics": {"mlm_loss": 3.0, "mlm_accuracy": 0.4}}

    def fake_stage(config: StageConfig) -> dict[str, object]:
        print("{'loss': 1.0}")  # as the Trainer logs, on stdout
        name = config.output_dir.name
        return _ft(0.8, 0.81) if name.startswith("20-ft") else {**mlm, "metrics": {**mlm["metrics"]}}

    monkeypatch.setattr(demo, "run_or_reuse", fake_stage)
    assert main(["demo", "--output_dir", str(tmp_path), "--quick", "--seeds", "0", "1"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # nothing else on stdout
    assert result["results"] == str(tmp_path / "comparison.json") and result["quick"] is True
    assert result == {"results": result["results"], **json.loads((tmp_path / "comparison.json").read_text())}
    assert [row["test_accuracy"] for row in result["rows"]] == [pytest.approx(0.81)] * 2
    assert "[demo 1/7] head" in captured.err and captured.err.count("{'loss': 1.0}") == 7
    assert "| model | encoder sparsity |" in captured.err  # the readable table
