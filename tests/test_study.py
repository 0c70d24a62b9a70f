"""`prunebert study`: the recipe schema, the plan it makes, and a tiny study run twice (resumable)."""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.errors import PrunebertError
from prunebert.io import LOCK_FILE
from prunebert.masks import load_masks
from prunebert.recipes import dump_recipe, load_recipe, validate_recipe
from prunebert.study import StudyConfig, load_study, run_study, study_plan
from prunebert.study.results import final_train_loss
from prunebert.study.run import _needs
from tinystudy import RECIPE, chdir, tiny_study

DEFAULT = Path(__file__).resolve().parents[1] / "recipes" / "study-default.yaml"
TASKS = ("task-a", "task-b")
EXPECTED = {
    (task, stage, method, sparsity)
    for task in TASKS
    for stage, method, sparsity in [
        ("pretrain", "dense", 0.0),
        ("pretrain", "magnitude", 0.5),
        ("finetune", "dense", 0.0),
        ("finetune", "magnitude", 0.5),
        ("finetune", "random", 0.5),
        ("finetune", "magnitude+kd", 0.5),
        ("after-finetune", "dense", 0.0),
        ("after-finetune", "magnitude", 0.5),
    ]
}
MINIMAL = {"tasks": ["rotten-tomatoes"], "methods": ["magnitude"], "sparsities": [0.0, 0.5]}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    return tiny_study(tmp_path_factory.getbasetemp(), tiny_tokenizer)


def _table(workspace: Path) -> dict:
    return json.loads((workspace / "study" / "results.json").read_text())


def _key(row: dict) -> tuple:
    return (row["task"], row["stage"], row["method"], float(row["sparsity"]))


def _run(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_every_cell_has_its_results(workspace: Path) -> None:
    table = _table(workspace)
    assert table["complete"] and table["runs_total"] == 19
    assert {_key(r) for r in table["cells"]} == EXPECTED and len(table["cells"]) == len(EXPECTED)
    for row in table["cells"]:
        assert row["achieved_sparsity"] == pytest.approx(row["sparsity"], abs=1e-3)
        assert 0.0 <= row["test_metric"] <= 1.0 and row["metric"] == "accuracy"
        assert row["test_metric"] == row["test_accuracy"] and row["dev_metric"] == row["dev_accuracy"]
        assert row["final_train_loss"] > 0 and row["train_steps"] == (
            4 if row["stage"] == "after-finetune" else 8
        )
        assert (row["masks"] is not None) == (row["sparsity"] > 0)
        assert (row.get("mlm_loss") is not None) == (row["stage"] == "pretrain")


def test_one_pretrained_model_per_sparsity_serves_every_task(workspace: Path) -> None:
    table = _table(workspace)
    rows = [r for r in table["cells"] if r["stage"] == "pretrain" and r["method"] == "magnitude"]
    assert {r["mlm_run_dir"] for r in rows} == {"pretrain/mlm/magnitude-50"}
    assert [(m["method"], m["sparsity"]) for m in table["pretrain_runs"]] == [
        ("dense", 0.0),
        ("magnitude", 0.5),
    ]
    for run in table["pretrain_runs"]:  # how far the embeddings moved from the start, beside MLM
        result = _run(workspace / "study" / run["run_dir"])["metrics"]
        assert run["representation_cosine"] == result["representation_cosine"] <= 1.0
    assert all(-1 <= r["representation_cosine"] <= 1 for r in rows)
    study = workspace / "study"
    mlm, _ = load_masks(study / rows[0]["mlm_masks"])
    for row in rows:  # the transferred mask is exactly the pre-training mask: kept fixed
        tuned, _ = load_masks(study / row["masks"])
        assert tuned.keys() == mlm.keys() and all(torch.equal(tuned[k], mlm[k]) for k in mlm)
        assert _run(study / row["run_dir"])["transferred_mask"]


def test_after_finetune_starts_from_the_dense_finetuned_model_and_kd_uses_it(workspace: Path) -> None:
    study = workspace / "study"
    for task in TASKS:
        dense = str(Path("study") / "finetune" / task / "dense")
        after = _run(study / "after-finetune" / task / "magnitude-50")["recipe"]
        assert after["model"] == dense and after["pruning"]["schedule"] == "oneshot"
        assert after["train"]["max_steps"] == 4 and after["train"]["batch_size"] == 8  # merged over finetune
        kd = _run(study / "finetune" / task / "magnitude+kd-50")
        assert kd["recipe"]["distill"]["teacher"] == dense and kd["distill"]["teacher"].endswith(
            "dense/model"
        )


def test_aggregate_csv_matches_json(workspace: Path) -> None:
    with (workspace / "study" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    json_rows = {_key(r): r for r in _table(workspace)["cells"]}
    assert {_key(r) for r in rows} == set(json_rows)
    for row in rows:
        expected = json_rows[_key(row)]
        assert float(row["test_metric"]) == pytest.approx(expected["test_metric"])
        assert float(row["final_train_loss"]) == pytest.approx(expected["final_train_loss"])


def test_rerun_reuses_every_finished_run(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = sorted((workspace / "study").rglob("results.json"))
    before = {p: p.stat().st_mtime_ns for p in results if p.parent != workspace / "study"}
    capsys.readouterr()
    with chdir(workspace):
        assert main(["study", RECIPE.name]) == 0
    err = capsys.readouterr().err
    progress = [line for line in err.splitlines() if line.startswith("[study ")]
    assert len(progress) == 19 and all(line.endswith("(finished: reused)") for line in progress)
    assert progress[6].startswith("[study 7/19] ") and "ran 0 of 19 runs" in err
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_stdout_holds_the_json_result_alone(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workspace / "study" / "finetune" / "task-b" / "random-50" / "results.json").unlink()  # one to resume
    capsys.readouterr()
    with chdir(workspace):
        assert main(["study", RECIPE.name]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # nothing else on stdout
    assert result["runs_executed"] == 1 and result["runs_total"] == 19 and result["complete"]
    assert result["results_csv"] == str(Path("study") / "results.csv")
    assert {_key(r) for r in result["cells"]} == EXPECTED
    assert {_key(r): r["test_metric"] for r in result["cells"]} == {
        _key(r): r["test_metric"] for r in _table(workspace)["cells"]
    }
    assert "[study 1/19]" in captured.err and "ran 1 of 19 runs" in captured.err  # progress, summary


def test_an_interrupted_run_is_run_again_alone(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cell = workspace / "study" / "finetune" / "task-b" / "random-50"
    expected = _run(cell)["metrics"]
    (cell / "results.json").unlink()  # as if the process died after its last checkpoint
    capsys.readouterr()
    with chdir(workspace):
        assert main(["study", RECIPE.name]) == 0
    err = capsys.readouterr().err
    assert "ran 1 of 19 runs" in err
    assert next(line for line in err.splitlines() if "random 50%" in line and "task-b" in line).endswith(
        "random-50"
    )
    assert _run(cell)["metrics"]["test"]["accuracy"] == pytest.approx(expected["test"]["accuracy"])


def test_default_recipe_plans_the_issue_study() -> None:
    cfg = load_study(DEFAULT)
    plan = study_plan(cfg)
    assert len(plan.cells) == 2 * (5 + 17 + 5) and len(plan.runs) == 60
    assert len({r.key for r in plan.runs}) == len(plan.runs)
    order = [r.key for r in plan.runs]
    for run in plan.runs:  # every run's inputs (start model, teacher) are planned before it
        config = run.config.model_dump(mode="json")
        for dep in (config["model"], (config.get("distill") or {}).get("teacher")):
            if dep and dep.startswith(str(cfg.output_dir)):
                assert order.index(str(Path(dep).relative_to(cfg.output_dir))) < order.index(run.key)


def test_recipe_round_trip_and_shorthands(tmp_path: Path) -> None:
    cfg = validate_recipe(StudyConfig, {**MINIMAL, "finetune": {"train": {"max_steps": 3}}})
    assert cfg.tasks[0].task == "rotten-tomatoes" and cfg.methods[0].name == "magnitude"
    (tmp_path / "s.yaml").write_text(dump_recipe(cfg))
    assert validate_recipe(StudyConfig, load_recipe(tmp_path / "s.yaml")) == cfg
    assert validate_recipe(StudyConfig, {**MINIMAL, "sparsities": [0.5, 0.0]}).sparsities == [0.0, 0.5]


@pytest.mark.parametrize(
    "change,match",
    [
        ({"seeds": [0, 1]}, r"unknown recipe key 'seeds'"),
        ({"sparsities": [1.0]}, r"bad value for 'sparsities'"),
        ({"finetune": {"model": "x"}}, r"'model' is set by the study"),
        ({"pretrain": {"text": "x"}}, r"'text' is set by the study"),
        ({"finetune": {"pruning": {"sparsity": 0.3}}}, r"'pruning.sparsity' is set by the grid"),
        ({"finetune": {"train": {"lr": 1}}}, r"study section 'finetune': unknown recipe key 'train.lr'"),
        (
            {"pretrain": {"pruning": {"schedul": "cubic"}}},
            r"study section 'pretrain': unknown .*'pruning.schedul'",
        ),
        ({"methods": [{"name": "m", "method": "nope"}]}, r"unknown pruning method 'nope'"),
        ({"methods": ["magnitude", "magnitude"]}, r"two methods share a name"),
        (
            {"methods": [{"name": "kd", "method": "magnitude", "distill": {"teacher": "t"}}]},
            r"omit `teacher`",
        ),
        (
            {"methods": [{"name": "m", "method": "magnitude", "pruning": {"sparsity": 0.1}}]},
            r"set by the grid",
        ),
        ({"stages": ["finetune"], "methods": [{"name": "m", "stages": ["pretrain"]}]}, r"not in `stages`"),
        ({"tasks": [{"task": "a.csv", "name": "mlm"}]}, r"task name 'mlm'"),
    ],
)
def test_bad_recipes_are_one_line_errors(tmp_path: Path, change: dict, match: str) -> None:
    import yaml

    (tmp_path / "s.yaml").write_text(yaml.safe_dump({**MINIMAL, **change}))
    with pytest.raises(PrunebertError, match=match):
        load_study(tmp_path / "s.yaml")


def test_final_train_loss_averages_the_last_fifth() -> None:
    logs = [{"step": s, "loss": float(s)} for s in (10, 20, 30, 40, 50)] + [{"step": 50, "train_loss": 9.0}]
    assert final_train_loss({"steps": 50, "log_history": logs}) == 45.0  # steps 40 and 50
    assert final_train_loss({"steps": 50, "log_history": logs[:1]}) == 10.0
    assert final_train_loss({"steps": 5, "log_history": [], "train_loss": 0.7}) == 0.7
    distilled = [{"step": s, "loss": 9.0, "loss_task": float(s)} for s in (10, 20, 30, 40, 50)]
    assert final_train_loss({"steps": 50, "log_history": distilled}) == 45.0  # the task's own loss


def test_distilled_cells_report_their_task_loss(workspace: Path) -> None:
    rows = {_key(r): r for r in _table(workspace)["cells"]}
    for task in TASKS:
        kd = _run(workspace / "study" / "finetune" / task / "magnitude+kd-50")["train"]["log_history"]
        task_losses = [e["loss_task"] for e in kd if "loss_task" in e and e["step"] >= 0.8 * 8]
        assert task_losses and rows[(task, "finetune", "magnitude+kd", 0.5)][
            "final_train_loss"
        ] == pytest.approx(sum(task_losses) / len(task_losses))


def test_needs_are_the_start_model_and_teacher_runs(workspace: Path) -> None:
    with chdir(workspace):
        needs = _needs(study_plan(load_study(Path(RECIPE.name))))
    assert needs["pretrain/mlm/head"] == set()
    assert needs["pretrain/mlm/magnitude-50"] == {"pretrain/mlm/head"}
    assert needs["pretrain/task-b/magnitude-50"] == {"pretrain/mlm/magnitude-50"}
    assert needs["finetune/task-b/magnitude+kd-50"] == {"finetune/task-b/dense"}
    assert needs["after-finetune/task-b/magnitude-50"] == {"finetune/task-b/dense"}


def test_a_run_another_command_holds_is_skipped_then_run_once_it_is_free(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two commands share a study: a run locked by a live process is left to it; this command runs the
    rest, waits, and runs the held run itself once its holder has died (its stale lock broken)."""
    study = workspace / "study"
    held, free = (
        study / "finetune" / "task-b" / "random-50",
        study / "after-finetune" / "task-b" / "magnitude-50",
    )
    for run in (held, free):
        (run / "results.json").unlink()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    threading.Thread(target=holder.wait, daemon=True).start()  # reaped when it ends: no zombie stays "alive"
    (held / LOCK_FILE).write_text(f"{holder.pid} {socket.gethostname()}\n")
    capsys.readouterr()
    with chdir(workspace):
        table = run_study(load_study(Path(RECIPE.name)), poll_s=0.2)
    err = capsys.readouterr().err.splitlines()
    ran = [line for line in err if line.startswith("[study ") and not line.endswith("(finished: reused)")]
    assert [line.rsplit(" -> ", 1)[1] for line in ran] == [
        str(p.relative_to(workspace)) for p in (free, held)
    ]
    assert any("runs left, each running in another command" in line for line in err)
    assert table["complete"] and table["runs_executed"] == 2 and (held / "results.json").is_file()
