"""Never silently wrong (issue 15): every option value and every file prunebert reads back is checked where
it is read, bad data and numbers are refused, and a command on a locked run directory is refused.

Each case of `CASES` runs through the real CLI and must end in one line naming the problem and the fix,
exit status 2, with its output directory (if any) left as it was; `scripts/error_table.py` prints them
with those of `tests/test_bad_inputs.py`. Behaviour that must be right rather than refused (masks kept,
a finished run not trained further, locks broken when stale) has tests of its own below.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerBase

from prunebert.config import PruningConfig
from prunebert.io import LOCK_FILE
from prunebert.masks import MASKS_FILE
from prunebert.models import save_pruned
from prunebert.pruner import Pruner
from test_bad_inputs import OUT, assert_one_line_error, run_cli
from test_bad_inputs import _ft as bad_inputs_ft
from tiny import tiny_mlm, write_workspace


def _dead_pid() -> int:
    """The PID of a process that has ended."""
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def _pruned(ws: Path, name: str, sparsity: float = 0.5) -> Path:
    """tiny-mlm pruned one-shot by magnitude in all its default targets, saved with its masks."""
    model = tiny_mlm()
    pruner = Pruner(model, PruningConfig(sparsity=sparsity, schedule="oneshot"))
    pruner.start(1)
    pruner.update(0)
    save_pruned(model, _tokenizer(ws), pruner, ws / name)
    return ws / name


def _tokenizer(ws: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(ws / "tiny-mlm"))


def _csv(ws: Path, name: str, lines: list[str]) -> None:
    (ws / name).write_text("\n".join(lines) + "\n")


def build_workspace(root: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """The tiny workspace plus every damaged file and bad data set of `CASES`."""
    ws = write_workspace(root, tokenizer)
    rows = [f"a good film {i},{i % 2}" for i in range(40)]
    _csv(ws, "nan-label.csv", ["text,label", *rows[:10], "a film,nan", *rows[10:]])
    _csv(ws, "one-class.csv", ["text,label", *(f"a good film {i},pos" for i in range(40))])
    _csv(ws, "extra-field.csv", ["text,label", *rows[:5], "great, funny film 3,pos", *rows[5:]])
    _csv(ws, "twice.csv", ["text,text,label", *(f"a,b,{i % 2}" for i in range(40))])
    _csv(ws, "blank-label.csv", ["text,label", *rows[:3], "a film, ", *rows[3:]])
    shutil.copytree(ws / "tiny-mlm", ws / "no-tokenizer")
    for item in (ws / "no-tokenizer").iterdir():
        if item.name not in ("config.json", "model.safetensors"):
            item.unlink()
    pruned = _pruned(ws, "pruned")
    shutil.copytree(pruned, ws / "bad-meta")
    masks = load_file(str(pruned / MASKS_FILE))
    save_file(masks, str(ws / "bad-meta" / MASKS_FILE), metadata={"prunebert": "{not json"})
    shutil.copytree(ws / "tiny-mlm", ws / "bad-index")
    (ws / "bad-index" / "model.safetensors.index.json").write_text('{"weight_map": ')
    (ws / "bad-recipe").mkdir()
    (ws / "bad-recipe" / "recipe.yaml").write_text("model: [unclosed\n")
    (ws / "study").mkdir()
    (ws / "study" / "results.json").write_text('{"cells": [{"stage": "fine')
    (ws / "locked").mkdir()
    (ws / "locked" / LOCK_FILE).write_text(f"{os.getppid()} {socket.gethostname()}\n")
    assert run_cli(["compress", str(pruned), str(ws / "compressed")])[0] == 0
    return ws


def _ft(ws: Path, *extra: str, model: str = "tiny-mlm", task: str = "task.csv", out: str = OUT) -> list[str]:
    """test_bad_inputs' finetune argv, for 4 steps of batch 8."""
    return bad_inputs_ft(ws, "--train.batch_size", "8", *extra, model=model, task=task, out=out, max_steps=4)


# (input, argv in the workspace, what the one-line message must say)
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    (
        "invalid regex in pruning.targets",
        lambda ws: _ft(ws, "--pruning.targets", "['query(']"),
        "not a valid regular expression",
    ),
    ("malformed YAML option value", lambda ws: _ft(ws, "--pruning.options", "{lam: 0.1"), "not valid YAML"),
    ("non-finite option value", lambda ws: _ft(ws, "--train.epochs", ".inf"), "'train.epochs'"),
    ("negative option value", lambda ws: _ft(ws, "--train.learning_rate", "-1e-5"), "greater than 0"),
    ("zero training steps", lambda ws: _ft(ws, "--train.max_steps", "0"), "max_steps 0"),
    (
        "layerdrop with the cubic schedule",
        lambda ws: _ft(ws, "--pruning.method", "layerdrop", "--pruning.schedule", "cubic"),
        "--pruning.schedule oneshot",
    ),
    (
        "schedule that cannot reach its target",
        lambda ws: _ft(ws, "--pruning.schedule", "iterative", "--pruning.iterations", "10"),
        "fewer --pruning.iterations",
    ),
    ("mask metadata that is not JSON", lambda ws: _ft(ws, model="bad-meta"), "is damaged"),
    ("mask metadata that is not JSON (info)", lambda ws: ["info", str(ws / "bad-meta")], "is damaged"),
    ("damaged weight index (info)", lambda ws: ["info", str(ws / "bad-index")], "weight index"),
    ("info on a compressed model", lambda ws: ["info", str(ws / "compressed")], "prunebert decompress"),
    ("unfinished run whose recipe.yaml is damaged", lambda ws: _ft(ws, out="bad-recipe"), "recorded recipe"),
    ("truncated study results.json", lambda ws: ["report", str(ws / "study")], "study results"),
    ("non-finite label", lambda ws: _ft(ws, task="nan-label.csv"), "line 12 of"),
    ("one class only", lambda ws: _ft(ws, task="one-class.csv"), "one class only"),
    ("csv row with more fields than the header", lambda ws: _ft(ws, task="extra-field.csv"), "line 7 of"),
    ("csv header naming a column twice", lambda ws: _ft(ws, task="twice.csv"), "twice"),
    ("empty label (names the file's line)", lambda ws: _ft(ws, task="blank-label.csv"), "line 5 of"),
    (
        "model directory without tokenizer files",
        lambda ws: _ft(ws, model="no-tokenizer"),
        "no usable tokenizer",
    ),
    ("run directory in use by another command", lambda ws: _ft(ws, out="locked"), "in use by another"),
    ("compress into its own input", lambda ws: ["compress", str(ws / "pruned"), str(ws / "pruned")], "input"),
    (
        "decompress into its input",
        lambda ws: ["decompress", str(ws / "compressed"), str(ws / "compressed" / "x")],
        "apart from it",
    ),
    ("slim into its own input", lambda ws: ["slim", str(ws / "pruned"), str(ws / "pruned")], "apart from it"),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    return build_workspace(tmp_path_factory.mktemp("silent"), tiny_tokenizer)


@pytest.mark.parametrize(("argv", "expected"), [pytest.param(a, e, id=name) for name, a, e in CASES])
def test_bad_input_is_one_line_error(
    workspace: Path, argv: Callable[[Path], list[str]], expected: str
) -> None:
    assert_one_line_error(argv(workspace), expected)


# -- behaviour that must be right ------------------------------------------------------------------------


def test_transferred_masks_stay_beside_new_targets(workspace: Path, tmp_path: Path) -> None:
    """Issue 15, case 1: pruning query further keeps the other transferred masks (a new mask only adds 0s)."""
    args = _ft(workspace, "--pruning.roles", "[query]", "--pruning.sparsity", "0.6", model="pruned")
    args[args.index("--output_dir") + 1] = str(tmp_path / "run")
    assert run_cli([*args, "--pruning.schedule", "oneshot", "--train.learning_rate", "1e-2"])[0] == 0
    before = load_file(str(workspace / "pruned" / MASKS_FILE))
    after = load_file(str(tmp_path / "run" / "model" / MASKS_FILE))
    weights = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert set(after) == set(before)
    for name, old in before.items():
        new = after[name]
        assert not (new & ~old).any(), f"{name}: a transferred zero regrew"
        assert (weights[name][~new] == 0).all()
        zeros = 1 - new.float().mean().item()
        assert zeros == pytest.approx(0.6 if ".query." in name else 0.5, abs=1e-3), name


def test_jsonl_labels_are_stripped_like_csv_labels(tmp_path: Path) -> None:
    """Issue 15, case 5: " pos" and "pos" are one class in every reader."""
    from prunebert.data import load_task

    rows = [{"text": f"film {i}", "label": [" pos", "pos", "neg "][i % 3]} for i in range(30)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_task(str(tmp_path / "d.jsonl")).label_names == ["neg", "pos"]


def test_diverging_run_stops_with_one_line_and_saves_nothing(workspace: Path, tmp_path: Path) -> None:
    """Issue 15, case 2: a loss or weight that becomes NaN ends the run; no model, no results, and no
    checkpoint of the diverged model counts as complete."""
    from prunebert.stages.checkpoints import last_complete

    args = _ft(
        workspace, "--train.learning_rate", "5e5", "--train.save_steps", "2", "--train.logging_steps", "1"
    )
    args[args.index("--output_dir") + 1] = str(tmp_path / "run")
    status, err = run_cli(args)
    errors = err.split("prunebert: error: ")[1:]  # the Trainer's progress bar may share its line
    assert status == 2 and len(errors) == 1 and "training diverged" in errors[0], err[-2000:]
    assert not (tmp_path / "run" / "results.json").exists() and not (tmp_path / "run" / "model").exists()
    good = last_complete(tmp_path / "run" / "checkpoints")
    if good is not None:
        assert all(torch.isfinite(t).all() for t in load_file(str(good / "model.safetensors")).values())


def test_resume_after_the_final_checkpoint_trains_no_extra_step(workspace: Path, tmp_path: Path) -> None:
    """Issue 15, case 8: killed after the last checkpoint, the re-run ends the same, with max_steps steps."""
    args = _ft(workspace, "--train.save_steps", "2", "--pruning.sparsity", "0.5")
    args[args.index("--output_dir") + 1] = str(tmp_path / "run")
    assert run_cli(args)[0] == 0
    full = json.loads((tmp_path / "run" / "results.json").read_text())
    weights = (tmp_path / "run" / "model" / "model.safetensors").read_bytes()
    (tmp_path / "run" / "results.json").unlink()  # as if killed while saving the final model
    shutil.rmtree(tmp_path / "run" / "model")
    assert run_cli(args)[0] == 0
    again = json.loads((tmp_path / "run" / "results.json").read_text())
    assert again["train"]["steps"] == full["train"]["steps"] == 4
    assert again["metrics"] == full["metrics"]
    assert (tmp_path / "run" / "model" / "model.safetensors").read_bytes() == weights


def test_stale_lock_is_broken_with_a_note_and_released(workspace: Path, tmp_path: Path) -> None:
    """Issue 15, case 10: a dead process's lock is broken with a note; the command's own lock goes at exit."""
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_FILE).write_text(f"{_dead_pid()} {socket.gethostname()}\n")
    args = _ft(workspace)
    args[args.index("--output_dir") + 1] = str(run)
    status, err = run_cli(args)
    assert status == 0, err[-2000:]
    assert "removed the stale lock" in err
    assert not (run / LOCK_FILE).exists()


def test_lock_of_a_bad_input_leaves_no_directory(workspace: Path, tmp_path: Path) -> None:
    """Taking the lock creates the run directory; a bad input found later removes it again."""
    args = _ft(workspace, task="one-class.csv")
    args[args.index("--output_dir") + 1] = str(tmp_path / "new")
    assert run_cli(args)[0] == 2
    assert not (tmp_path / "new").exists()
