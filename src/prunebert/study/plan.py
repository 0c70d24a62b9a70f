"""A study's grid as stage runs in dependency order, and the cells (grid points) they answer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunebert.errors import PrunebertError
from prunebert.recipes import load_recipe, validate_recipe
from prunebert.shrink.stage import ShrinkRunConfig
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.pretrain import PretrainConfig
from prunebert.stages.runner import StageConfig
from prunebert.study.config import SHRINK, Stage, StudyConfig, StudyMethod, StudyTask

__all__ = ["Cell", "PlannedRun", "RunConfig", "StudyPlan", "load_study", "study_plan"]

#: what a study runs: a stage run, or a retraining-free shrink run (a `shrink` arm)
RunConfig = StageConfig | ShrinkRunConfig


@dataclass(frozen=True)
class PlannedRun:
    """One stage run of the study; `key` is its directory relative to the study's output_dir."""

    key: str
    label: str
    config: RunConfig


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
    shrunk: str | None = None  # a shrink arm: the retraining-free shrink run the recovery started from


@dataclass
class StudyPlan:
    """Every run in dependency order, and the grid cells they answer."""

    runs: list[PlannedRun]
    cells: list[Cell]

    def add(self, key: str, label: str, config: RunConfig) -> str:
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


def _validated(cls: type[RunConfig], recipe: dict[str, Any], where: str) -> RunConfig:
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

    def shrink(
        self, key: str, label: str, model: str, task: StudyTask, arm: StudyMethod, sparsity: float
    ) -> str:
        """Plan a retraining-free `shrink` of `model` removing `sparsity` of the encoder's FLOPs."""
        fixed = {"model": model, "output_dir": str(self.cfg.output_dir / key), "seed": self.cfg.seed}
        recipe = {"bench": False, **arm.pruning, **task.spec(), **fixed, "flops": 1.0 - sparsity}
        return self.plan.add(key, label, _validated(ShrinkRunConfig, recipe, f"methods: {arm.name}"))

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
                key = f"{stage}/{task.label}/{arm.name}-{_pct(sparsity)}"
                label = f"{stage} {task.label} {arm.name} {_pct(sparsity)}%"
                shrunk = None
                if arm.registered == SHRINK:  # retraining-free structured pruning, then the same recovery
                    shrunk = p.shrink(f"{key}-zero-step", f"{label} (shrink)", model, task, arm, sparsity)
                    extra = p.teacher(arm, task)
                    p.finetune(key, label, str(cfg.output_dir / shrunk), task, section, extra)
                else:
                    extra = {"pruning": p.pruning(settings, arm, sparsity), **p.teacher(arm, task)}
                    p.finetune(key, label, model, task, section, extra)
                p.plan.cells.append(
                    Cell(stage, task.label, arm.name, sparsity, key, start=start, shrunk=shrunk)
                )


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
