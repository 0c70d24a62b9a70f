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
after every run (see `prunebert.study_results`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from prunebert.config import StrictModel
from prunebert.data.local import SUFFIXES
from prunebert.distill import DistillConfig
from prunebert.errors import PrunebertError
from prunebert.io import atomic_path
from prunebert.recipes import dump_recipe, load_recipe, validate_recipe
from prunebert.stages.evaluate import TaskSpec
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.pretrain import PretrainConfig
from prunebert.stages.runner import StageConfig, finished_run, run_stage
from prunebert.study_results import aggregate, write_tables

__all__ = [
    "STAGES",
    "Cell",
    "PlannedRun",
    "StudyConfig",
    "StudyMethod",
    "StudyPlan",
    "StudyTask",
    "load_study",
    "run_study",
    "study_plan",
]

Stage = Literal["pretrain", "finetune", "after-finetune"]
STAGES: tuple[Stage, ...] = ("pretrain", "finetune", "after-finetune")
STUDY_FILE = "study.yaml"
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


@dataclass(frozen=True)
class PlannedRun:
    """One stage run of the study; `key` is its directory relative to the study's output_dir."""

    key: str
    label: str
    config: StageConfig


@dataclass(frozen=True)
class Cell:
    """One grid point: whose downstream results (`run`) and, for pretrain, which MLM run (`mlm`)."""

    stage: Stage
    task: str
    method: str  # "dense" for the baseline
    sparsity: float
    run: str
    mlm: str | None = None
    start: str | None = None  # after-finetune: the dense fine-tuned model it started from


@dataclass
class StudyPlan:
    """Every run in dependency order, and the grid cells they answer."""

    runs: list[PlannedRun]
    cells: list[Cell]

    def add(self, key: str, label: str, config: StageConfig) -> str:
        """Append a run unless planned already (dense runs are shared); returns its key."""
        if all(r.key != key for r in self.runs):
            self.runs.append(PlannedRun(key, label, config))
        return key


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` over `base`, nested mappings merged key by key."""
    out = dict(base)
    for key, value in override.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict)
        out[key] = _merge(out[key], value) if nested else value
    return out


def _validated(cls: type[StageConfig], recipe: dict[str, Any], where: str) -> StageConfig:
    try:
        return validate_recipe(cls, recipe)
    except PrunebertError as exc:
        raise PrunebertError(f"study section {where!r}: {exc}") from None


def _pct(sparsity: float) -> str:
    return f"{sparsity * 100:g}"


class _Planner:
    """Builds the stage configs of a study; each method returns the key of the run it planned."""

    def __init__(self, cfg: StudyConfig) -> None:
        self.cfg, self.plan = cfg, StudyPlan([], [])
        self.after = _merge(cfg.finetune, cfg.after_finetune)

    def pruning(self, section: dict[str, Any], arm: StudyMethod, sparsity: float) -> dict[str, Any]:
        """Section defaults < the arm's fields < the grid's method and sparsity."""
        return {
            **(section.get("pruning") or {}),
            **arm.pruning,
            "method": arm.registered,
            "sparsity": sparsity,
        }

    def finetune(
        self, key: str, label: str, model: str, task: StudyTask, section: str, extra: dict[str, Any]
    ) -> str:
        """Plan a `finetune` run of `task` from `model`; `extra` adds pruning / distill."""
        settings = self.after if section == "after_finetune" else self.cfg.finetune
        base = {k: v for k, v in settings.items() if k != "pruning"}
        fixed = {"model": model, "output_dir": str(self.cfg.output_dir / key), "seed": self.cfg.seed}
        config = _validated(FinetuneConfig, {**base, **task.spec(), **fixed, **extra}, section)
        return self.plan.add(key, label, config)

    def pretrain(self, key: str, label: str, model: str, extra: dict[str, Any]) -> str:
        """Plan a `pretrain` (MLM) run from `model`."""
        base = {k: v for k, v in self.cfg.pretrain.items() if k != "pruning"}
        fixed = {
            "model": model,
            "text": self.cfg.text,
            "output_dir": str(self.cfg.output_dir / key),
            "seed": self.cfg.seed,
        }
        return self.plan.add(key, label, _validated(PretrainConfig, {**base, **fixed, **extra}, "pretrain"))

    def dense_finetuned(self, task: StudyTask) -> str:
        """The dense fine-tuned model of `task`: finetune baseline, after-finetune start, KD teacher."""
        key = f"finetune/{task.label}/dense"
        return self.finetune(key, f"finetune {task.label} dense", self.cfg.model, task, "finetune", {})

    def teacher(self, arm: StudyMethod, task: StudyTask) -> dict[str, Any]:
        """The `distill` section of an arm's run: its settings, with the dense fine-tuned teacher."""
        if arm.distill is None:
            return {}
        teacher = str(self.cfg.output_dir / self.dense_finetuned(task))
        return {"distill": {**arm.distill.model_dump(mode="json"), "teacher": teacher}}


def _plan_pretrain(p: _Planner) -> None:
    cfg = p.cfg
    start = cfg.model
    warmup = cfg.pretrain.get("head_warmup_steps", PretrainConfig.model_fields["head_warmup_steps"].default)
    if warmup:  # a new MLM head (if the model lacks one) is warmed up once, shared by every MLM run
        head = {"train": {**cfg.pretrain.get("train", {}), "max_steps": 0}}
        start = str(
            cfg.output_dir / p.pretrain("pretrain/mlm/head", "pretrain MLM head warm-up", start, head)
        )
    mlm_runs: list[tuple[StudyMethod | None, float, str]] = []
    steps = {"head_warmup_steps": 0} if start != cfg.model else {}
    if 0.0 in cfg.sparsities:
        mlm_runs.append((None, 0.0, p.pretrain("pretrain/mlm/dense", "pretrain MLM dense", start, steps)))
    for sparsity in [s for s in cfg.sparsities if s > 0]:
        for arm in p.cfg.arms("pretrain"):
            name = f"{arm.name}-{_pct(sparsity)}"
            extra = {**steps, "pruning": p.pruning(cfg.pretrain, arm, sparsity)}
            key = p.pretrain(
                f"pretrain/mlm/{name}", f"pretrain MLM {arm.name} {_pct(sparsity)}%", start, extra
            )
            mlm_runs.append((arm, sparsity, key))
    for mlm_arm, sparsity, mlm in mlm_runs:
        for task in cfg.tasks:
            name = mlm_arm.name if mlm_arm else "dense"
            tag = f"{name}-{_pct(sparsity)}" if mlm_arm else "dense"
            label = f"pretrain -> {task.label} " + (
                f"{name} {_pct(sparsity)}% (mask fixed)" if mlm_arm else "dense"
            )
            model = str(cfg.output_dir / mlm)
            extra = p.teacher(mlm_arm, task) if mlm_arm else {}
            key = p.finetune(f"pretrain/{task.label}/{tag}", label, model, task, "finetune", extra)
            p.plan.cells.append(Cell("pretrain", task.label, name, sparsity, key, mlm=mlm))


def _plan_task_stage(p: _Planner, stage: Stage) -> None:
    """`finetune` (from the model) or `after-finetune` (from the dense fine-tuned model, then recover)."""
    cfg = p.cfg
    section = "finetune" if stage == "finetune" else "after_finetune"
    settings = cfg.finetune if stage == "finetune" else p.after
    for task in cfg.tasks:
        dense = p.dense_finetuned(task)
        start = None if stage == "finetune" else dense
        model = cfg.model if start is None else str(cfg.output_dir / start)
        if 0.0 in cfg.sparsities:
            key = dense
            if start is not None:  # the baseline gets the same recovery budget, without pruning
                label = f"after-finetune {task.label} dense (recovery only)"
                key = p.finetune(f"{stage}/{task.label}/dense", label, model, task, section, {})
            p.plan.cells.append(Cell(stage, task.label, "dense", 0.0, key, start=start))
        for sparsity in [s for s in cfg.sparsities if s > 0]:
            for arm in cfg.arms(stage):
                extra = {"pruning": p.pruning(settings, arm, sparsity), **p.teacher(arm, task)}
                key = f"{stage}/{task.label}/{arm.name}-{_pct(sparsity)}"
                label = f"{stage} {task.label} {arm.name} {_pct(sparsity)}%"
                p.finetune(key, label, model, task, section, extra)
                p.plan.cells.append(Cell(stage, task.label, arm.name, sparsity, key, start=start))


def study_plan(cfg: StudyConfig) -> StudyPlan:
    """Every stage run of the study in dependency order (validated: a bad section fails here, not later)."""
    planner = _Planner(cfg)
    if "pretrain" in cfg.stages:
        _plan_pretrain(planner)
    for stage in ("finetune", "after-finetune"):
        if stage in cfg.stages:
            _plan_task_stage(planner, stage)
    return planner.plan


def load_study(path: Path, output_dir: Path | None = None) -> StudyConfig:
    """Read and validate a study recipe (and every run it plans); `output_dir` overrides the recipe's."""
    recipe = load_recipe(path)
    if output_dir is not None:
        recipe["output_dir"] = str(output_dir)
    cfg = validate_recipe(StudyConfig, recipe)
    study_plan(cfg)
    return cfg


def run_study(cfg: StudyConfig) -> dict[str, Any]:
    """Run (or reuse) every run of the grid, printing progress; returns the aggregate table."""
    plan = study_plan(cfg)
    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / STUDY_FILE) as tmp:
        tmp.write_text(dump_recipe(cfg))
    results: dict[str, dict[str, Any]] = {}
    executed, started = 0, time.time()
    table: dict[str, Any] = {}
    for i, run in enumerate(plan.runs, 1):
        done = finished_run(run.config)
        note = " (finished: reused)" if done is not None else ""
        print(f"[study {i}/{len(plan.runs)}] {run.label} -> {run.config.output_dir}{note}", flush=True)
        results[run.key] = run_stage(run.config) if done is None else done
        executed += done is None
        table = aggregate(cfg.model_dump(mode="json"), plan.cells, results, out)
        table.update(runs_total=len(plan.runs), runs_executed=executed, elapsed_s=time.time() - started)
        write_tables(out, table)
    return table
