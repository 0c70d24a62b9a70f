"""`prunebert study`: where pruning happens, as a grid of methods x sparsities x stages x tasks.

The stages are those the seed papers compare (Gordon et al. 2020; Guo et al. 2019; Xu et al. 2021):

- `pretrain`: prune during continued masked-LM pre-training, then fine-tune on each task with the mask
  fixed. One pruned pre-trained model serves every task ("prune once").
- `finetune`: prune while fine-tuning the (dense) model on the task.
- `after-finetune`: prune a model already fine-tuned densely, then recover by fine-tuning with the mask
  ("information deletion").

A sparsity of 0 is the dense baseline of a stage, run once per stage and task whatever the methods.
Each run is an ordinary stage run in its own directory under `output_dir`, so a finished run is reused and
an interrupted one resumes from its checkpoint; the aggregate `results.json`/`results.csv` is rewritten
after every run (see `prunebert.study.results`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from prunebert.data.local import SUFFIXES
from prunebert.data.spec import TaskSpec
from prunebert.recipes import StrictModel
from prunebert.stages.distill import DistillConfig

__all__ = ["SHRINK", "STAGES", "STUDY_FILE", "Stage", "StudyConfig", "StudyMethod", "StudyTask"]

Stage = Literal["pretrain", "finetune", "after-finetune"]
STAGES: tuple[Stage, ...] = ("pretrain", "finetune", "after-finetune")
STUDY_FILE = "study.yaml"
#: the method name of retraining-free structured pruning (`prunebert shrink`): an after-finetune arm whose
#: sparsity is the fraction of encoder FLOPs removed and whose `pruning` holds `shrink` options
SHRINK = "shrink"
_SHRINK_FIXED = {"model", "output_dir", "seed", "speedup", "flops", "distill_steps", *TaskSpec.model_fields}
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
#: keys a stage section may not set: the study decides them per run
_PRETRAIN_FIXED = {"model", "text", "output_dir", "seed"}
_FINETUNE_FIXED = {"model", "output_dir", "seed", "distill", *TaskSpec.model_fields}


class StudyTask(TaskSpec):
    """A downstream task (anything `finetune --task` takes) and its short name in directories and plots."""

    name: str | None = Field(None, description="label in run directories, tables and plots (default: task)")

    @property
    def label(self) -> str:
        """`name`, else the task spec made path-safe (`data/x.csv` -> `x`, `glue/sst2` -> `glue-sst2`)."""
        if self.name is not None:
            return self.name
        path = Path(self.task)
        return path.stem if path.suffix.lower() in SUFFIXES else re.sub(r"[/:\\]+", "-", self.task)

    def spec(self) -> dict[str, Any]:
        """The task fields of a `finetune` recipe."""
        return self.model_dump(mode="json", exclude={"name"})


class StudyMethod(StrictModel):
    """One pruning arm of the grid: a registered method with its options, optionally distilled."""

    name: str = Field(..., description="label of the arm in run directories, tables and plots")
    method: str | None = Field(None, description="registered pruning method (default: `name`)")
    pruning: dict[str, Any] = Field(
        default_factory=dict, description="more pruning fields for this arm (options, schedule, scope, ...)"
    )
    distill: DistillConfig | None = Field(
        None, description="add a distillation loss; the teacher is the study's dense fine-tuned model"
    )
    stages: list[Stage] | None = Field(None, description="stages this arm runs in (default: all)")

    @property
    def registered(self) -> str:
        """The registered method name."""
        return self.method or self.name

    @field_validator("pruning")
    @classmethod
    def _grid_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        clash = sorted({"method", "sparsity"} & set(value))
        if clash:
            raise ValueError(f"{clash[0]!r} is set by the grid; use the arm's `method` field / `sparsities`")
        return value

    @field_validator("distill")
    @classmethod
    def _auto_teacher(cls, value: DistillConfig | None) -> DistillConfig | None:
        if value is not None and value.teacher != "auto":
            raise ValueError("a study's teacher is its dense fine-tuned model of each task; omit `teacher`")
        return value


class StudyConfig(StrictModel):
    """Recipe of `prunebert study`: the grid and the settings of each stage's runs."""

    model: str = Field("minilm-l6", description="built-in name, hub name or local directory")
    text: str = Field("wiki-sample", description="MLM text of the pretrain stage")
    output_dir: Path = Field(Path("runs/study"), description="where every run and the aggregate go")
    seed: int = Field(0, description="seed of every run (data order, masking, heads)")
    tasks: list[StudyTask] = Field(..., min_length=1, description="downstream tasks (names or task specs)")
    methods: list[StudyMethod] = Field(..., min_length=1, description="pruning arms (names or specs)")
    sparsities: list[float] = Field(..., min_length=1, description="target sparsities; 0 = dense baseline")
    stages: list[Stage] = Field(default_factory=lambda: list(STAGES), min_length=1, description="stages")
    pretrain: dict[str, Any] = Field(
        default_factory=dict, description="`pretrain` recipe fields of the MLM runs (+ partial `pruning`)"
    )
    finetune: dict[str, Any] = Field(
        default_factory=dict, description="`finetune` recipe fields of every task run (+ partial `pruning`)"
    )
    after_finetune: dict[str, Any] = Field(
        default_factory=dict, description="overrides of `finetune` for the after-finetune recovery runs"
    )

    @field_validator("tasks", "methods", mode="before")
    @classmethod
    def _names(cls, value: Any, info: ValidationInfo) -> Any:
        """A bare string is shorthand: `rotten-tomatoes` for {task: ...}, `magnitude` for {name: ...}."""
        key = "task" if info.field_name == "tasks" else "name"
        return [{key: v} if isinstance(v, str) else v for v in value] if isinstance(value, list) else value

    @field_validator("sparsities")
    @classmethod
    def _sparsities(cls, value: list[float]) -> list[float]:
        bad = [s for s in value if not 0.0 <= s < 1.0]
        if bad:
            raise ValueError(f"sparsity {bad[0]} is not in [0, 1)")
        if len(set(value)) != len(value):
            raise ValueError("a sparsity is listed twice")
        return sorted(value)

    @field_validator("pretrain")
    @classmethod
    def _pretrain_fixed(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _no_fixed_keys(value, _PRETRAIN_FIXED)

    @field_validator("finetune", "after_finetune")
    @classmethod
    def _finetune_fixed(cls, value: dict[str, Any]) -> dict[str, Any]:
        return _no_fixed_keys(value, _FINETUNE_FIXED)

    @model_validator(mode="after")
    def _labels(self) -> StudyConfig:
        _unique_slugs([t.label for t in self.tasks], "task", reserved={"mlm"})
        _unique_slugs([m.name for m in self.methods], "method", reserved={"dense"})
        for m in self.methods:
            if m.registered == SHRINK and (m.stages or self.stages) != ["after-finetune"]:
                raise ValueError(
                    f"method {m.name!r} (shrink) starts fine-tuned; give it `stages: [after-finetune]`"
                )
            clash = sorted(_SHRINK_FIXED & set(m.pruning)) if m.registered == SHRINK else []
            if clash:
                raise ValueError(
                    f"method {m.name!r}: {clash[0]!r} is set by the study (the sparsity is FLOPs)"
                )
            extra = sorted(set(m.stages or []) - set(self.stages))
            if extra:
                raise ValueError(f"method {m.name!r} runs in stage {extra[0]!r}, which is not in `stages`")
        return self

    def arms(self, stage: Stage) -> list[StudyMethod]:
        """The methods that run in `stage`."""
        return [m for m in self.methods if stage in (m.stages or self.stages)] if stage in self.stages else []


def _no_fixed_keys(section: dict[str, Any], fixed: set[str]) -> dict[str, Any]:
    clash = sorted(fixed & set(section))
    if clash:
        raise ValueError(f"{clash[0]!r} is set by the study (per run or per task), not in a stage section")
    pruning = section.get("pruning") or {}
    grid = sorted({"method", "sparsity"} & set(pruning if isinstance(pruning, dict) else {}))
    if grid:
        raise ValueError(f"'pruning.{grid[0]}' is set by the grid (`methods`, `sparsities`)")
    return section


def _unique_slugs(labels: list[str], what: str, reserved: set[str]) -> None:
    for label in labels:
        if not _SLUG.match(label) or label in reserved:
            raise ValueError(f"{what} name {label!r} must be a path-safe word other than {sorted(reserved)}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"two {what}s share a name; give them distinct `name`s")
