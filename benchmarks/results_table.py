"""The JSON every resumable benchmark rewrites after each finished cell (a partial table stays valid)."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from prunebert.hardware import environment

Key = TypeVar("Key", bound=Hashable)


def write_results(
    output: Path,
    benchmark: str,
    settings: dict[str, Any],
    rows: list[dict[str, Any]],
    complete: bool,
    started: float,
) -> None:
    """Write `rows` with the command, the shared settings and the machine, under `output`."""
    table = {
        "benchmark": benchmark,
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "settings": settings,
        "cells": rows,
        "complete": complete,
        "elapsed_s": time.time() - started,
        "environment": environment(),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(table, indent=2) + "\n")


def with_committed(
    rows: list[dict[str, Any]],
    known: Mapping[Key, dict[str, Any]],
    key: Callable[[dict[str, Any]], Key],
    expected: Iterable[Key],
) -> tuple[list[dict[str, Any]], bool]:
    """`rows` plus the committed cells they did not redo (a run of part of a grid must not drop the
    rest), and whether every `expected` cell is now in."""
    done = {key(row) for row in rows}
    cells = rows + [row for k, row in known.items() if k not in done]
    return cells, set(expected) <= done | set(known)
