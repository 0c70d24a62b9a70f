"""`finetune`: task training with a transferred mask kept fixed, or with pruning during fine-tuning.

Classification, regression and extractive QA alike. With `distill`, a fine-tuned teacher adds a
distillation loss term; with `pruning` as well this is knowledge-aware sparse pruning (Xu et al. 2021).
`teacher: auto` first fine-tunes a dense teacher. With `fixed_attention`, chosen heads attend by fixed
position-based patterns (Raganato et al. 2020) while the rest of the model fine-tunes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, field_validator, model_validator
from transformers import DataCollatorWithPadding, PreTrainedModel, Trainer, TrainerCallback, set_seed

from prunebert.config import PruningConfig
from prunebert.data import TaskData
from prunebert.data.spec import TaskSpec
from prunebert.distributed import is_main_process
from prunebert.errors import PrunebertError
from prunebert.io import expect_mapping, read_json, read_yaml
from prunebert.model_files import is_local_path
from prunebert.models import load_model, transfer_pruner
from prunebert.quantization.qat import QAT_FILE, QATCallback, QuantizationAware, QuantizationConfig
from prunebert.stages.checkpoints import resume_callbacks, train_resumed
from prunebert.stages.common import (
    RECIPE_FILE,
    RunDir,
    TrainConfig,
    check_schedule,
    mean_loss_per_batch,
    pruning_callbacks,
    resolve_precision,
    sparsity_report,
    tracked,
    training_arguments,
)
from prunebert.stages.distill import DistillationTrainer, DistillConfig, Distiller
from prunebert.stages.evaluate import evaluate_splits, head_for
from prunebert.transforms.fixed_attention import FixedAttentionConfig, assignment_of, fix_heads

__all__ = ["FinetuneConfig", "auto_teacher", "check_teacher", "load_teacher", "run_finetune"]

_FIX = "pass a fine-tuned model dir or prunebert run dir, or --distill.teacher auto"
_TRAINED_HEADS = ("ForSequenceClassification", "ForQuestionAnswering")


class FinetuneConfig(TaskSpec):
    """Recipe of the `finetune` stage."""

    model: str = Field("minilm-l6", description="built-in, hub or local model, or a prunebert run directory")
    output_dir: Path = Field(Path("runs/finetune"), description="where checkpoints, model and results go")
    seed: int = Field(0, description="seed of data order and head initialisation")
    max_train_examples: int | None = Field(None, ge=1, description="seeded subsample of the training split")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(epochs=2, learning_rate=5e-5))
    pruning: PruningConfig | None = Field(
        None, description="omit to keep the checkpoint's masks fixed (transfer) or to train dense"
    )
    distill: DistillConfig | None = Field(None, description="omit to train on the task loss alone")
    fixed_attention: FixedAttentionConfig | None = Field(
        None, description="give chosen heads fixed position-based attention patterns (Raganato et al. 2020)"
    )
    quantization: QuantizationConfig = Field(
        default_factory=QuantizationConfig,
        description="quantization-aware training (--quantization.qat int8); its ranges are saved beside "
        "the fp32 weights and used by `prunebert export --int8`",
    )
    start_from: Literal["model", "teacher"] = Field(
        "model",
        description="model: train `model`; teacher: start from the distillation teacher's weights (with "
        "teacher auto: `model` fine-tuned dense first), i.e. prune the fine-tuned model (GMP*, oBERT)",
    )

    recorded_if_set: ClassVar[tuple[str, ...]] = (
        *TaskSpec.recorded_if_set,
        "fixed_attention",
        "start_from",
        "quantization",
    )

    @field_validator("train")
    @classmethod
    def _trains(cls, train: TrainConfig) -> TrainConfig:
        """0 steps would still train one (the Trainer's floor): refused, not silently changed."""
        if train.max_steps == 0:
            raise PrunebertError(
                "--train.max_steps 0 fine-tunes nothing; pass -1 to train `train.epochs` epochs, or 1 or more"
            )
        return train

    @model_validator(mode="after")
    def _teacher_to_start_from(self) -> FinetuneConfig:
        if self.start_from == "teacher" and self.distill is None:
            raise ValueError("start_from teacher needs a distill section (e.g. --distill.teacher auto)")
        return self


def check_teacher(spec: str) -> None:
    """Fail fast, before any training, on a local teacher path that holds no fine-tuned classifier."""
    path = Path(spec).expanduser()
    if not path.exists():
        if is_local_path(spec):
            raise PrunebertError(f"teacher {spec} does not exist; {_FIX}")
        return
    config = next((p / "config.json" for p in (path / "model", path) if (p / "config.json").is_file()), None)
    if config is None:
        raise PrunebertError(f"teacher {spec} has no model; {_FIX}")
    data = read_json(config, "teacher config", _FIX)
    architectures = (data.get("architectures") if isinstance(data, dict) else None) or []
    if not any(a.endswith(_TRAINED_HEADS) for a in architectures):
        raise PrunebertError(
            f"teacher {spec} has no trained classification head (nor a question-answering one); {_FIX}"
        )


def load_teacher(spec: str, task: TaskData) -> tuple[PreTrainedModel, str]:
    """A model fine-tuned for the task's kind (and labels), and the model directory it was read from."""
    check_teacher(spec)
    head = head_for(task)
    what = "question-answering" if head == "qa" else "classification"
    try:
        loaded = load_model(spec, head=head)
    except PrunebertError as exc:  # keep its first clause (what is wrong), give the teacher's fix
        raise PrunebertError(f"teacher: {str(exc).split(';')[0]}; {_FIX}") from None
    if loaded.new_head:
        raise PrunebertError(f"teacher {spec} has no trained {what} head; {_FIX}")
    labels = loaded.model.config.num_labels
    if head == "classification" and labels != task.num_labels:
        raise PrunebertError(f"teacher {spec} has {labels} labels but the task has {task.num_labels}; {_FIX}")
    return loaded.model, loaded.path


def auto_teacher(cfg: FinetuneConfig, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune `cfg` without pruning or distillation into OUTPUT_DIR/teacher (reused once finished).

    A checkpoint's transferred masks stay fixed in the teacher too, as in any `finetune` without `pruning`;
    the teacher gets no `fixed_attention` of its own.
    """
    teacher_cfg = cfg.model_copy(
        update={
            "output_dir": cfg.output_dir / "teacher",
            "pruning": None,
            "distill": None,
            "fixed_attention": None,
            "start_from": "model",
            "quantization": QuantizationConfig(),
        }
    )
    run = RunDir(teacher_cfg.output_dir)
    saved = run.root / RECIPE_FILE
    fix = "pass --overwrite to fine-tune the teacher again"
    same = saved.is_file() and read_yaml(saved, "teacher recipe", fix) == teacher_cfg.model_dump(mode="json")
    if run.results.is_file() and same:
        return expect_mapping(read_json(run.results, "teacher results", fix), run.results, "results", fix)
    with torch.random.fork_rng():  # the student's new head starts as it would without a teacher run
        return run_finetune(teacher_cfg, overwrite)


def _distiller(
    cfg: FinetuneConfig, distill: DistillConfig, task: TaskData, overwrite: bool
) -> tuple[Distiller, dict[str, Any]]:
    """The run's Distiller (fine-tuning an `auto` teacher first) and what results.json records of it."""
    record: dict[str, Any] = distill.model_dump(mode="json")
    spec = distill.teacher
    if spec == "auto":
        teacher_results = auto_teacher(cfg, overwrite)
        spec = teacher_results["model_dir"]
        record["teacher_metrics"] = teacher_results["metrics"]
    teacher, path = load_teacher(spec, task)
    return Distiller(teacher, distill), {**record, "teacher": path}


def run_finetune(cfg: FinetuneConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run the stage; returns (and writes) the results JSON."""
    if cfg.distill is not None and cfg.distill.teacher != "auto":
        check_teacher(cfg.distill.teacher)  # before the run directory records this recipe
    run = RunDir(cfg.output_dir)
    resume = run.prepare(cfg.model_dump(mode="json"), overwrite)
    task = cfg.load(cfg.seed, cfg.max_train_examples)
    teacher = None
    if cfg.start_from == "teacher" and cfg.distill is not None:  # the student starts as the teacher
        teacher = _distiller(cfg, cfg.distill, task, overwrite)
    set_seed(cfg.seed)  # the new task head's initialisation
    head = head_for(task)
    loaded = load_model(
        teacher[1]["teacher"] if teacher else cfg.model,
        head=head,
        num_labels=task.num_labels if head == "classification" else None,
    )
    model, tokenizer = loaded.model, loaded.tokenizer
    if task.label_names is not None:
        model.config.id2label = dict(enumerate(task.label_names))
        model.config.label2id = {name: i for i, name in enumerate(task.label_names)}
    if cfg.fixed_attention is not None:
        fix_heads(model, cfg.fixed_attention)
    splits = cfg.features(task, tokenizer)
    pruner = transfer_pruner(model, loaded.path, cfg.pruning)
    check_schedule(cfg.pruning, cfg.train, len(splits["train"]))
    run.create()  # the inputs are good: from here on the run directory is written
    if teacher is None and cfg.distill is not None:
        teacher = _distiller(cfg, cfg.distill, task, overwrite)
    distiller, distill = teacher if teacher is not None else (None, None)
    callbacks: list[TrainerCallback] = pruning_callbacks(pruner, cfg.train)
    qat = QuantizationAware(model, cfg.quantization) if cfg.quantization.qat != "none" else None
    callbacks += [QATCallback(qat)] if qat is not None else []
    callbacks += resume_callbacks(cfg.train.save_total_limit)  # last: after masks are written
    trainer_kwargs: dict[str, Any] = {
        "model": model,
        "args": training_arguments(cfg.train, run.checkpoints, cfg.seed),
        "train_dataset": splits["train"],
        "data_collator": DataCollatorWithPadding(tokenizer),
        "callbacks": callbacks,
    }
    trainer = (
        Trainer(**trainer_kwargs)
        if distiller is None
        else DistillationTrainer(**trainer_kwargs, distiller=distiller)
    )
    tracked(mean_loss_per_batch(trainer))
    start = time.time()
    output = train_resumed(trainer, resume)
    runtime = time.time() - start
    metrics = evaluate_splits(trainer, splits, task, ("dev", "test"), cfg.qa)
    run.save_model(model, tokenizer, pruner)
    if qat is not None and is_main_process():
        qat.save(run.model)  # the trained input ranges travel with the (plain fp32) weights
    results = {
        "stage": "finetune",
        "recipe": cfg.model_dump(mode="json"),
        "task": {
            "name": task.name,
            "kind": task.kind,
            "metric": task.metric,
            "num_labels": task.num_labels,
            "sizes": {k: len(v) for k, v in splits.items()},
        },
        "metrics": metrics,
        "sparsity": sparsity_report(pruner),
        "transferred_mask": pruner is not None and cfg.pruning is None,
        "distill": distill,
        "fixed_attention": assignment_of(model),
        "quantization": _qat_record(qat, cfg.quantization, trainer.state.max_steps),
        "train": {
            "steps": trainer.state.global_step,
            "runtime_s": runtime,
            "precision": resolve_precision(cfg.train.precision),
            "train_loss": output.training_loss,
            "log_history": trainer.state.log_history,
        },
        "model_dir": str(run.model),
    }
    run.write_results(results)
    return results


def _qat_record(
    qat: QuantizationAware | None, config: QuantizationConfig, steps: int
) -> dict[str, Any] | None:
    """What results.json records of quantization-aware training (None without it)."""
    if qat is None:
        return None
    linears = qat.state_dict()["linears"]
    record = {
        "file": f"model/{QAT_FILE}",
        "start_step": config.start_step(steps),
        "linears": len(linears),
        "fp32_kept": list(qat.fp32),
    }
    return {**config.model_dump(mode="json"), **record, "metrics": "simulated int8 (fake-quantised)"}
