"""The JSON every resumable benchmark rewrites after each finished cell (a partial table stays valid)."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from prunebert.stages.common import environment


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
