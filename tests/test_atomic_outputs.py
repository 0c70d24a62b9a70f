"""`compress`, `decompress` and `slim` write OUT whole or not at all (issue 15, case 9).

A kill is simulated at every file boundary by raising inside the writers after their N-th file; OUT must
then be exactly what it was before (absent, or the old output under --overwrite), never a mix. A staging
directory left by a real SIGKILL is removed by the next command.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prunebert.deploy import slim_job, storage
from prunebert.masks import MASKS_FILE
from prunebert.models import save_pruned
from test_bad_inputs import _snapshot, run_cli
from test_slim import _structured
from tiny import tiny_classifier, tiny_mlm


class Killed(BaseException):
    """What the simulated kill raises (not an Exception: nothing may catch it)."""


@contextlib.contextmanager
def kill_after(
    monkeypatch: pytest.MonkeyPatch, writers: list[tuple[Any, str]], n: int
) -> Iterator[list[int]]:
    """Make the `n`-th file write raise `Killed` (before it, for n = 0; after the n-th otherwise)."""
    count = [0]

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def write(*args: Any, **kwargs: Any) -> Any:
            if count[0] >= n:
                raise Killed
            result = original(*args, **kwargs)
            count[0] += 1
            return result

        return write

    with monkeypatch.context() as patch:
        for owner, name in writers:
            patch.setattr(owner, name, wrap(getattr(owner, name)))
        yield count


STORAGE_WRITERS = [(storage, "save_file"), (storage.shutil, "copyfile")]
SLIM_WRITERS = [
    (PreTrainedModel, "save_pretrained"),
    (PreTrainedTokenizerBase, "save_pretrained"),
    (slim_job, "save_masks"),
    (slim_job, "write_json"),
]


@pytest.fixture
def models(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    """`a/`: a structured-pruned classifier with masks; `b/`: a plain model without masks."""
    model = tiny_classifier()
    save_pruned(model, tiny_tokenizer, _structured(model), tmp_path / "a")
    tiny_mlm(seed=1).save_pretrained(tmp_path / "b")
    tiny_tokenizer.save_pretrained(tmp_path / "b")
    return tmp_path


def _writes(monkeypatch: pytest.MonkeyPatch, writers: list[tuple[Any, str]], argv: list[str]) -> int:
    """How many file writes a successful `argv` makes."""
    with kill_after(monkeypatch, writers, 10**6) as count:
        assert run_cli(argv)[0] == 0
    return count[0]


def _killed_at_every_boundary(
    monkeypatch: pytest.MonkeyPatch, writers: list[tuple[Any, str]], argv: list[str], out: Path
) -> None:
    before = _snapshot(out)
    total = _writes(monkeypatch, writers, [*argv[:2], str(out.parent / "probe"), *argv[3:]])
    assert total >= 3
    for n in range(total):
        with kill_after(monkeypatch, writers, n), pytest.raises(Killed):
            run_cli(argv)
        assert _snapshot(out) == before, f"killed after {n} of {total} files"
        assert not list(out.parent.glob(f".{out.name}.*")), "staging left behind"


@pytest.mark.parametrize("overwrite", [False, True])
def test_compress_killed_at_every_file_boundary(
    models: Path, monkeypatch: pytest.MonkeyPatch, overwrite: bool
) -> None:
    out = models / "out"
    if overwrite:  # an old, complete output from another model must survive whole
        assert run_cli(["compress", str(models / "b"), str(out)])[0] == 0
    argv = ["compress", str(models / "a"), str(out), *(["--overwrite"] if overwrite else [])]
    _killed_at_every_boundary(monkeypatch, STORAGE_WRITERS, argv, out)


def test_decompress_killed_at_every_file_boundary(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_cli(["compress", str(models / "a"), str(models / "packed")])[0] == 0
    argv = ["decompress", str(models / "packed"), str(models / "out")]
    _killed_at_every_boundary(monkeypatch, STORAGE_WRITERS, argv, models / "out")


def test_slim_killed_at_every_file_boundary(models: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["slim", str(models / "a"), str(models / "out")]
    _killed_at_every_boundary(monkeypatch, SLIM_WRITERS, argv, models / "out")
    assert run_cli(argv)[0] == 0  # and unhindered, the whole output appears
    assert {"config.json", "model.safetensors", MASKS_FILE, "slim.json"} <= {
        p.name for p in (models / "out").iterdir()
    }


def test_overwrite_never_mixes_an_old_output_with_a_new_one(models: Path) -> None:
    """`compress A OUT; compress B OUT --overwrite`: B has no masks, so OUT must have none."""
    out = models / "out"
    assert run_cli(["compress", str(models / "a"), str(out)])[0] == 0
    assert any(p.name.startswith("prunebert_masks") for p in out.iterdir())
    assert run_cli(["compress", str(models / "b"), str(out), "--overwrite"])[0] == 0
    assert not any(p.name.startswith("prunebert_masks") for p in out.iterdir())
    assert run_cli(["decompress", str(out), str(models / "plain")])[0] == 0
    assert not (models / "plain" / MASKS_FILE).exists()


def test_failed_decompress_leaves_no_output(models: Path) -> None:
    assert run_cli(["compress", str(models / "a"), str(models / "packed")])[0] == 0
    packed = next((models / "packed").glob("model*" + storage.SUFFIX))
    packed.write_bytes(packed.read_bytes()[:-64])  # the weights file damaged; the others are fine
    status, err = run_cli(["decompress", str(models / "packed"), str(models / "out")])
    assert status == 2 and "damaged" in err
    assert not (models / "out").exists()


def test_a_killed_commands_staging_is_removed_by_the_next(models: Path) -> None:
    """A real SIGKILL leaves `.OUT.staging-PID`; once that PID is gone, the next command removes it."""
    pid = int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout
    )
    stale = models / f".out.staging-{pid}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    assert run_cli(["compress", str(models / "a"), str(models / "out")])[0] == 0
    assert not stale.exists()
