"""`pretrain`: continued masked-LM pre-training that prunes toward a target sparsity (Gordon et al. 2020).

A checkpoint without an MLM head (all-MiniLM-L6-v2 is a sentence encoder) first gets its new head
warmed up with the encoder frozen, so the pruning run starts from a sensible MLM loss instead of
spending its first steps fitting a random head.

A checkpoint with a next-sentence-prediction head (original BERT, `BertForPreTraining`) trains MLM + NSP
on sentence pairs, as Gordon et al. 2020 and Guo et al. 2019 pre-trained (`nsp: auto`, the default; `on`
requires the head, `off` trains MLM alone on blocks), and reports NSP accuracy.

With `distill` the dense model teaches the student it is pruned into (Prune OFA, Zafrir et al. 2021;
`stages.pretrain_distill`). Every run reports how close its sentence representations stay to the
starting model's (or the teacher's): the cosine similarity of mean-pooled embeddings on the held-out text.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, field_validator
from transformers import (
    EvalPrediction,
    PreTrainedModel,
    Trainer,
    default_data_collator,
)

from prunebert.config import PruningConfig
from prunebert.data import SeededMLMCollator, build_mlm_datasets, load_text
from prunebert.data.nsp import build_nsp_datasets
from prunebert.errors import PrunebertError
from prunebert.models import has_nsp_head, load_model, transfer_pruner
from prunebert.recipes import StrictModel
from prunebert.stages.checkpoints import resume_callbacks, train_resumed
from prunebert.stages.common import (
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
from prunebert.stages.mlm import MaskedPositionsTrainer
from prunebert.stages.pretrain_distill import (
    DistillingMLMTrainer,
    PretrainDistillConfig,
    PretrainDistiller,
    closeness,
    load_pretrain_distiller,
)

__all__ = ["PretrainConfig", "masked_token_accuracy", "resolve_nsp", "run_pretrain", "warm_up_head"]


class PretrainConfig(StrictModel):
    """Recipe of the `pretrain` stage."""

    model: str = Field("minilm-l6", description="built-in name, hub name or local directory")
    text: str = Field("wiki-sample", description="built-in text, a .txt file, a directory of .txt files")
    output_dir: Path = Field(Path("runs/pretrain"), description="where checkpoints, model and results go")
    seed: int = Field(0, description="seed of data order, masking and initialisation")
    block_size: int = Field(128, ge=8, le=512, description="tokens per MLM training sequence")
    max_train_blocks: int | None = Field(None, ge=1, description="use at most N training sequences")
    eval_fraction: float = Field(0.05, gt=0, lt=0.5, description="held-out fraction for MLM metrics")
    max_eval_blocks: int | None = Field(
        512, ge=1, description="score MLM metrics on at most N held-out sequences"
    )
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="fraction of tokens masked")
    head_warmup_steps: int = Field(100, ge=0, description="steps training a new MLM head, encoder frozen")
    head_warmup_lr: float = Field(1e-3, gt=0, description="learning rate of the head warm-up")
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=200))
    pruning: PruningConfig | None = Field(None, description="omit for a dense run")
    nsp: Literal["auto", "on", "off"] = Field(
        "auto", description="next-sentence prediction beside MLM; auto: iff the checkpoint has an NSP head"
    )

    distill: PretrainDistillConfig | None = Field(
        None, description="omit to pre-train without a teacher (MLM, + NSP, alone)"
    )

    recorded_if_set: ClassVar[tuple[str, ...]] = ("nsp", "distill")

    @field_validator("nsp", mode="before")
    @classmethod
    def _yaml_switch(cls, value: Any) -> Any:
        """YAML reads an unquoted `on` / `off` as true / false."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


def resolve_nsp(setting: str, spec: str) -> tuple[bool, str]:
    """Whether to train NSP, and a note saying why (or why not)."""
    if setting == "off":
        return False, "off: MLM only"
    if has_nsp_head(spec):
        return True, "MLM + NSP on sentence pairs (the checkpoint has a next-sentence-prediction head)"
    if setting == "on":
        raise PrunebertError(
            f"model {spec!r} has no next-sentence-prediction head (only original BERT checkpoints, "
            "BertForPreTraining, have one); pass --nsp auto or --nsp off"
        )
    return False, "skipped: the checkpoint has no next-sentence-prediction head (MLM only)"


def _argmax(logits: Any, labels: Any) -> Any:
    """Keep only predicted ids: full MLM logits over the vocabulary would not fit in memory.

    With NSP the logits are (prediction_logits, seq_relationship_logits); the NSP ones are kept whole.
    """
    if isinstance(logits, tuple):
        return logits[0].argmax(dim=-1), logits[1]
    return logits.argmax(dim=-1)


def masked_token_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy over the masked positions (labels != -100); with NSP also its accuracy and loss."""
    preds: Any = prediction.predictions
    labels: Any = prediction.label_ids
    nsp = isinstance(preds, tuple)
    mlm_preds, mlm_labels = (preds[0], labels[0]) if nsp else (preds, labels)
    mlm_preds, mlm_labels = np.asarray(mlm_preds), np.asarray(mlm_labels)
    masked = mlm_labels != -100
    hits = mlm_preds[masked] == mlm_labels[masked]
    out = {"mlm_accuracy": float(hits.mean()) if masked.any() else 0.0}
    if nsp:
        logits, gold = torch.from_numpy(np.asarray(preds[1])).float(), torch.from_numpy(np.asarray(labels[1]))
        out["nsp_accuracy"] = float((logits.argmax(-1) == gold).float().mean())
        out["nsp_loss"] = float(torch.nn.functional.cross_entropy(logits, gold.long()))
    return out


def evaluate_mlm(trainer: Trainer, eval_set: Any) -> dict[str, float]:
    """MLM loss, perplexity and masked-token accuracy on the fixed, pre-masked held-out set (+ NSP)."""
    train_collator, trainer.data_collator = trainer.data_collator, default_data_collator  # pre-masked
    try:
        metrics = trainer.evaluate(eval_set, metric_key_prefix="eval")
    finally:
        trainer.data_collator = train_collator
    loss = float(metrics["eval_loss"])
    nsp = {k: float(metrics[f"eval_{k}"]) for k in ("nsp_accuracy", "nsp_loss") if f"eval_{k}" in metrics}
    return {
        "mlm_loss": loss,
        "mlm_perplexity": float(np.exp(min(loss, 50.0))),
        "mlm_accuracy": float(metrics["eval_mlm_accuracy"]),
        **nsp,
    }


def _trainer(
    model: PreTrainedModel,
    args: Any,
    train_set: Any,
    collator: Any,
    callbacks: list,
    distiller: PretrainDistiller | None = None,
) -> Trainer:
    kwargs: dict[str, Any] = {
        "model": model,
        "args": args,
        "train_dataset": train_set,
        "data_collator": collator,
        "callbacks": callbacks,
        "compute_metrics": masked_token_accuracy,
        "preprocess_logits_for_metrics": _argmax,
    }
    trainer = (
        MaskedPositionsTrainer(**kwargs)
        if distiller is None
        else DistillingMLMTrainer(**kwargs, distiller=distiller)
    )
    return tracked(mean_loss_per_batch(trainer))


def _closeness(
    model: PreTrainedModel, cfg: PretrainConfig, eval_set: Any, distiller: PretrainDistiller | None
) -> dict[str, float]:
    """Held-out closeness to the teacher (with its distillation terms), or to the starting model."""
    batch = max(cfg.train.batch_size, 64)
    if distiller is not None:
        return closeness(model, distiller.teacher, eval_set, batch, distiller)
    with torch.random.fork_rng():  # a new pooler draws nothing from the run's RNG
        reference = load_model(cfg.model, head="base").model
    return closeness(model, reference, eval_set, batch)


def warm_up_head(
    model: PreTrainedModel, cfg: PretrainConfig, train_set: Any, collator: Any, out: Path
) -> dict[str, float]:
    """Train only the new MLM head (tied decoder excluded) with the encoder frozen."""
    prefix = model.base_model_prefix
    trainable = [p for n, p in model.named_parameters() if not n.startswith(prefix + ".")]
    frozen = [p for n, p in model.named_parameters() if n.startswith(prefix + ".")]
    for p in frozen:
        p.requires_grad_(False)
    train = cfg.train.model_copy(
        update={
            "max_steps": cfg.head_warmup_steps,
            "learning_rate": cfg.head_warmup_lr,
            "save_steps": 10**9,
            "weight_decay": 0.0,
        }
    )
    trainer = _trainer(model, training_arguments(train, out, cfg.seed), train_set, collator, [])
    start = time.time()
    trainer.train()
    for p in frozen:
        p.requires_grad_(True)
    return {
        "steps": cfg.head_warmup_steps,
        "trainable_params": sum(p.numel() for p in trainable),
        "runtime_s": time.time() - start,
    }


def run_pretrain(cfg: PretrainConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run the stage; returns (and writes) the results JSON."""
    run = RunDir(cfg.output_dir)
    resume = run.prepare(cfg.model_dump(mode="json"), overwrite)
    nsp, nsp_note = resolve_nsp(cfg.nsp, cfg.model)
    loaded = load_model(cfg.model, head="pretraining" if nsp else "mlm")
    model, tokenizer = loaded.model, loaded.tokenizer
    build = build_nsp_datasets if nsp else build_mlm_datasets
    train_set, eval_set = build(
        load_text(cfg.text), tokenizer, cfg.block_size, cfg.eval_fraction, cfg.seed, cfg.max_train_blocks
    )
    if cfg.max_eval_blocks is not None and len(eval_set) > cfg.max_eval_blocks:
        eval_set = eval_set.select(range(cfg.max_eval_blocks))
    collator = SeededMLMCollator(tokenizer, cfg.mlm_probability, cfg.seed)  # resumes bit-identically
    pruner = transfer_pruner(model, loaded.path, cfg.pruning)
    check_schedule(cfg.pruning, cfg.train, len(train_set))
    distiller, distill = None, None
    if cfg.distill is not None:  # the teacher is never checkpointed: a resumed run loads it again
        distiller, distill = load_pretrain_distiller(
            cfg.distill, cfg.model, model, tokenizer, loaded.new_head
        )
    run.create()  # the inputs are good: from here on the run directory is written
    warmup: dict[str, float] = {}
    if loaded.new_head and cfg.head_warmup_steps > 0 and resume is None:
        warmup = warm_up_head(model, cfg, train_set, collator, run.root / "head-warmup")
    callbacks = [collator, *pruning_callbacks(pruner, cfg.train)]
    callbacks += resume_callbacks(cfg.train.save_total_limit)  # last: after masks are written
    args = training_arguments(cfg.train, run.checkpoints, cfg.seed)
    trainer = _trainer(model, args, train_set, collator, callbacks, distiller)
    before: dict[str, float] = {}
    if resume is None:
        before = evaluate_mlm(trainer, eval_set)
        if distiller is not None:
            before.update(_closeness(model, cfg, eval_set, distiller))
    first = run.first_attempt(resume, {"metrics_before": before, "head_warmup": warmup})
    start = time.time()
    if cfg.train.max_steps != 0:  # 0: only warm up the head (a shared starting point for several runs)
        train_resumed(trainer, resume)
    runtime = time.time() - start
    after = {**evaluate_mlm(trainer, eval_set), **_closeness(model, cfg, eval_set, distiller)}
    run.save_model(model, tokenizer, pruner)
    results = {
        "stage": "pretrain",
        "recipe": cfg.model_dump(mode="json"),
        "metrics": after,
        "metrics_before": first["metrics_before"],
        "head_warmup": first["head_warmup"],
        "sparsity": sparsity_report(pruner),
        "nsp": {"setting": cfg.nsp, "used": nsp, "note": nsp_note},
        "distill": distill,
        "train": {
            "steps": trainer.state.global_step,
            "runtime_s": runtime,
            "precision": resolve_precision(cfg.train.precision),
            "examples": len(train_set),
            "log_history": trainer.state.log_history,
        },
        "model_dir": str(run.model),
    }
    run.write_results(results)
    return results
