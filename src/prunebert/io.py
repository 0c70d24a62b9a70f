"""Atomic file writes (an interrupted write never damages the file that was there before) and reading back
what prunebert wrote (a damaged file is a one-line error, never a traceback)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from prunebert.errors import PrunebertError

__all__ = [
    "LOCK_FILE",
    "DirectoryInUseError",
    "atomic_path",
    "check_output_dir",
    "expect_mapping",
    "lock_dir",
    "move_into_place",
    "read_json",
    "read_yaml",
    "staged_dir",
    "unlock_all",
    "unlock_dir",
    "write_json",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp makes 0600; results and masks are meant to be shared
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: Path, what: str, fix: str) -> Any:
    """Parse a JSON file prunebert wrote earlier; unreadable or damaged is a one-line error naming `fix`."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PrunebertError(f"cannot read {what} {path} ({exc.strerror}); {fix}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise PrunebertError(f"{what} {path} is damaged ({reason}); {fix}") from None


def read_yaml(path: Path, what: str, fix: str) -> Any:
    """Parse a YAML file prunebert wrote earlier; unreadable or damaged is a one-line error naming `fix`."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise PrunebertError(f"cannot read {what} {path} ({exc.strerror}); {fix}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise PrunebertError(f"{what} {path} is damaged (not valid YAML{line}); {fix}") from None


def expect_mapping(data: Any, path: Path, what: str, fix: str) -> dict[str, Any]:
    """`data` if it is a JSON/YAML object, else a one-line error: the file holds something else."""
    if not isinstance(data, dict):
        raise PrunebertError(f"{what} {path} holds {type(data).__name__}, not an object; {fix}")
    return data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale_staging(out: Path) -> None:
    """Staging directories of `out` left by a killed command (its PID is dead) are deleted."""
    for old in out.parent.glob(f".{out.name}.staging-*"):
        pid = old.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def check_output_dir(out: Path, src: Path, overwrite: bool, holds: str = "") -> None:
    """OUT must differ from SRC (and not lie inside it, nor SRC inside OUT); a non-empty OUT needs
    `overwrite`. `holds`: a file whose presence alone makes OUT taken (e.g. config.json)."""
    out_r, src_r = out.resolve(), src.resolve()
    if out_r == src_r or src_r in out_r.parents or out_r in src_r.parents:
        raise PrunebertError(
            f"output {out} is, contains or lies inside the input {src}; pass a directory apart from it"
        )
    if out.exists() and not out.is_dir():
        raise PrunebertError(f"{out} is a file, not a directory; pass another output directory")
    taken = (out / holds).exists() if holds else out.is_dir() and any(out.iterdir())
    if taken and not overwrite:
        raise PrunebertError(f"{out} exists and is not empty; pass a new directory or --overwrite")


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield an empty staging directory beside `out`; on success fsync its files and rename it to `out`
    whole (an old `out` is moved aside first, then removed). A failure or a kill never leaves a
    half-written `out`, nor an old `out` mixed with new files."""
    out = out.absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(out)
    stage = out.with_name(f".{out.name}.staging-{os.getpid()}")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(mode=0o777 & ~_umask())
    try:
        yield stage
        for path in stage.rglob("*"):
            if path.is_file():
                with path.open("rb") as f:
                    os.fsync(f.fileno())
        move_into_place(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished directory `tmp` to `out`; an existing `out` is moved aside first, then removed."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


LOCK_FILE = ".prunebert.lock"


class DirectoryInUseError(PrunebertError):
    """Another live prunebert command holds the directory's lock."""


_held: dict[Path, bool] = {}  # lock file -> whether this process created the directory it locks


def lock_dir(directory: Path) -> None:
    """Lock `directory` for this process (a `.prunebert.lock` file holding the PID); another live
    command's lock is a one-line error, a dead process's lock is broken with a note. Re-entrant."""
    lock = (directory / LOCK_FILE).absolute()
    if lock in _held:
        return
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _break_stale(lock, directory)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {socket.gethostname()}\n")
        _held[lock] = created
        return
    raise PrunebertError(f"cannot lock {directory}: {lock} keeps coming back; check who writes there")


def _break_stale(lock: Path, directory: Path) -> None:
    """Remove `lock` if its process is gone; else the directory is in use: a one-line error."""
    try:
        pid_text, _, host = lock.read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        pid, host = -1, ""  # unreadable: a lock torn by a crash mid-write
    if pid == os.getpid() and host == socket.gethostname():
        lock.unlink(missing_ok=True)  # our own, from an earlier command in this process
        return
    if pid > 0 and (host != socket.gethostname() or _pid_alive(pid)):
        where = f"PID {pid}" + (f" on {host}" if host != socket.gethostname() else "")
        raise DirectoryInUseError(
            f"{directory} is in use by another prunebert command ({where}); wait for it to finish, or "
            f"pass another output directory (delete {lock} only if no such command runs)"
        )
    print(f"prunebert: note: removed the stale lock {lock} of a process that no longer runs", file=sys.stderr)
    lock.unlink(missing_ok=True)


def unlock_dir(directory: Path) -> None:
    """Release this process's lock of `directory` (a directory created only to hold it is removed)."""
    lock = (directory / LOCK_FILE).absolute()
    if lock in _held:
        created = _held.pop(lock)
        lock.unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                lock.parent.rmdir()  # only if empty


def unlock_all() -> None:
    """Release every lock this process holds (the CLI does at exit)."""
    for lock in list(_held):
        unlock_dir(lock.parent)
