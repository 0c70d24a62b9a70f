"""What a report reads: the study's aggregate JSON, and the masks and models its rows point to."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunebert.errors import PrunebertError
from prunebert.io import expect_mapping, read_json
from prunebert.masks import load_masks
from prunebert.study.results import JSON_FILE

__all__ = [
    "DEFAULT_WORDS",
    "STAGE_ORDER",
    "Chosen",
    "ReportOptions",
    "Section",
    "Skip",
    "StudyResults",
    "choose",
    "layer_of",
    "load_results",
    "load_seeds",
    "mask_set",
    "short_name",
    "test_metrics",
]

STAGE_ORDER = ("pretrain", "finetune", "after-finetune")
#: seed words of the embedding figure: sentiment (rotten-tomatoes) and topics of Reuters R8
DEFAULT_WORDS = ("good", "bad", "film", "oil", "profit", "wheat", "ship")
_LAYER = re.compile(r"layer\.(\d+)\.")
_ENCODER_PART = re.compile(r"(encoder|transformer|embeddings)\..*$")


class Skip(Exception):  # noqa: N818 -- a signal, not an error: the figure is left out with this note
    """A figure cannot be drawn from what the study holds; the message says why."""


@dataclass
class Section:
    """One figure of the report: its PNG (None when skipped, with `note` saying why) and caption."""

    name: str
    title: str
    png: Path | None = None
    caption: str = ""
    note: str = ""
    table: list[list[str]] = field(default_factory=list)  # optional table under the figure, first row = head


@dataclass
class ReportOptions:
    """Which model the per-model figures show, and what they look at (None: chosen automatically)."""

    stage: str | None = None
    task: str | None = None
    method: str | None = None
    sparsity: float | None = None
    layers: list[int] | None = None
    words: list[str] = field(default_factory=lambda: list(DEFAULT_WORDS))
    neighbours: int = 5
    bench: Path | None = None  # a `prunebert bench --json-out` file: speeds for the comparison table
    seed_dirs: list[Path] = field(default_factory=list)  # the same study run with other seeds: mean ± sd


@dataclass
class StudyResults:
    """The aggregate of a study and the directory its relative paths start from."""

    root: Path
    table: dict[str, Any]
    #: the same study run with other seeds (other output_dirs): their rows join the curves and the summary
    others: list[StudyResults] = field(default_factory=list)

    @property
    def cells(self) -> list[dict[str, Any]]:
        """One row per finished grid cell."""
        return list(self.table.get("cells", []))

    @property
    def pretrain_runs(self) -> list[dict[str, Any]]:
        """One row per finished MLM run."""
        return list(self.table.get("pretrain_runs", []))

    @property
    def seed(self) -> int | None:
        """The seed every run of this study used."""
        seed = self.table.get("study", {}).get("seed")
        return seed if isinstance(seed, int) else None

    def seeds(self) -> list[int | None]:
        """The seed of this study and of each of `others`."""
        return [self.seed, *(o.seed for o in self.others)]

    def replicated(self, runs: str = "cells") -> list[dict[str, Any]]:
        """Rows of every seed (`cells` or `pretrain_runs`), each with its `seed`: what curves average."""
        return [
            {**row, "seed": study.seed} for study in (self, *self.others) for row in study.table.get(runs, [])
        ]

    def tasks(self) -> list[str]:
        """Tasks in the order of the study."""
        return list(dict.fromkeys(row["task"] for row in self.cells))

    def methods(self) -> list[str]:
        """Pruning arms (not dense) in the order of the study."""
        return list(dict.fromkeys(row["method"] for row in self.cells if row["method"] != "dense"))

    def path(self, relative: str | None) -> Path | None:
        """A path of the aggregate under the study directory, if it is there."""
        if not relative:
            return None
        path = self.root / relative
        return path if path.exists() else None


def test_metrics(res: StudyResults) -> dict[tuple[str, str, str, float], list[float]]:
    """Test metric of every (task, stage, method, sparsity) over every seed, one value per seed."""
    groups: dict[tuple[str, str, str, float], list[float]] = {}
    for row in res.replicated():
        if row.get("test_metric") is not None:
            key = (row["task"], row["stage"], row["method"], round(float(row["sparsity"]), 6))
            groups.setdefault(key, []).append(float(row["test_metric"]))
    return groups


def load_seeds(roots: list[Path]) -> StudyResults:
    """The first study, with the others (the same grid run with other seeds) attached for mean ± sd."""
    first, *others = [load_results(root) for root in roots]
    first.others = others
    return first


def load_results(root: Path) -> StudyResults:
    """Read `root/results.json` written by `prunebert study`."""
    path = root / JSON_FILE
    if not path.is_file():
        raise PrunebertError(f"no {JSON_FILE} in {root}; pass the output_dir of a `prunebert study` run")
    fix = "re-run `prunebert study` on its recipe to rewrite it"
    table = expect_mapping(read_json(path, "study results", fix), path, "study results", fix)
    if not isinstance(table.get("cells"), list):
        raise PrunebertError(f"{path} is not a study aggregate (no 'cells'); pass a study's output_dir")
    return StudyResults(root, table)


@dataclass(frozen=True)
class Chosen:
    """The pruned model the per-model figures show, and the dense model of the same stage and task."""

    label: str
    method: str
    sparsity: float
    masks: Path
    model: Path
    dense_model: Path | None


def _candidates(res: StudyResults, opts: ReportOptions) -> list[dict[str, Any]]:
    rows = [r for r in res.cells if r["method"] != "dense" and (r.get("mlm_masks") or r.get("masks"))]
    wanted = {"stage": opts.stage, "task": opts.task, "method": opts.method, "sparsity": opts.sparsity}
    for key, value in wanted.items():
        if value is not None:
            rows = [r for r in rows if (abs(r[key] - value) < 1e-9 if key == "sparsity" else r[key] == value)]
    return rows


def choose(res: StudyResults, opts: ReportOptions) -> Chosen:
    """The options' cell; by default magnitude (else the first arm), pretrain first, the highest sparsity."""
    rows = _candidates(res, opts)
    if not rows:
        raise Skip("no pruned cell with a mask file matches the chosen stage/task/method/sparsity")
    methods, tasks = res.methods(), res.tasks()
    rows.sort(
        key=lambda r: (
            r["method"] != "magnitude",
            methods.index(r["method"]),
            STAGE_ORDER.index(r["stage"]),
            -r["sparsity"],
            tasks.index(r["task"]),
        )
    )
    row = rows[0]
    if row["stage"] == "pretrain":  # the pruned pre-trained encoder itself (the transfer keeps its mask)
        dense = next((m for m in res.pretrain_runs if m["method"] == "dense"), None)
        label = f"pretrain (MLM) {row['method']} {row['sparsity']:.0%}"
        masks, model = res.path(row["mlm_masks"]), res.path(f"{row['mlm_run_dir']}/model")
    else:
        dense = next(
            (
                r
                for r in res.cells
                if (r["stage"], r["task"], r["method"]) == (row["stage"], row["task"], "dense")
            ),
            None,
        )
        label = f"{row['stage']} {row['task']} {row['method']} {row['sparsity']:.0%}"
        masks, model = res.path(row["masks"]), res.path(row["model_dir"])
    if masks is None or model is None:
        raise Skip(f"the mask file or model of {label} is not in {res.root}")
    dense_model = res.path(dense["model_dir"]) if dense else None
    return Chosen(label, row["method"], row["sparsity"], masks, model, dense_model)


def short_name(key: str) -> str:
    """A weight's name from the encoder on (`bert.encoder.layer.0...` -> `encoder.layer.0...`)."""
    match = _ENCODER_PART.search(key)
    return match.group(0) if match else key


def layer_of(key: str) -> int:
    """The encoder layer index in a weight name, -1 outside the layers (embeddings)."""
    match = _LAYER.search(key)
    return int(match.group(1)) if match else -1


def mask_set(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Masks (True = kept) and roles of a mask file, keyed by `short_name`."""
    masks, meta = load_masks(path)
    roles = meta.get("roles", {})
    roles = roles if isinstance(roles, dict) else {}
    return (
        {short_name(k): m for k, m in masks.items()},
        {short_name(k): str(roles.get(k, "custom")) for k in masks},
    )
