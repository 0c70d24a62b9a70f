"""Knowledge distillation as a loss term: a dense fine-tuned teacher guides a student pruned as it fine-tunes.

Knowledge-aware sparse pruning (Xu, Yen, Zhao & Xiao 2021, "Rethinking Network Pruning -- under the
Pre-train and Fine-tune Paradigm", NAACL): prune the pre-trained encoder during task fine-tuning while
distilling from the dense fine-tuned model. Pruning stays in `PruningCallback`; this module only adds terms
to the stock `Trainer.compute_loss`, so every pruning method combines with it:

    loss = alpha_hard * task + alpha_soft * soft + alpha_hidden * hidden + alpha_attention * attention
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from transformers import (
    PreTrainedModel,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from prunebert.errors import PrunebertError
from prunebert.recipes import StrictModel

__all__ = [
    "DistillConfig",
    "DistillationTrainer",
    "Distiller",
    "LossParts",
    "attach_teacher",
    "attention_loss",
    "hidden_state_loss",
    "layer_map",
    "soft_label_loss",
    "span_soft_loss",
]

_TEACHER_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


class DistillConfig(StrictModel):
    """Where the teacher comes from and what each term weighs.

    Defaults are those of Sanh et al. 2020's movement-pruning code (prune while fine-tuning, distil from the
    fine-tuned model): T = 2, soft and hard weighed 0.5 each, so the loss keeps plain fine-tuning's scale.
    Layer-wise terms (TinyBERT, Jiao et al. 2020) are off: they need a same-width teacher and cost memory.
    """

    teacher: str = Field(
        "auto", description="fine-tuned model or run dir; auto: first fine-tune one in OUTPUT_DIR/teacher"
    )
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the soft-label loss")
    alpha_soft: float = Field(0.5, ge=0, description="weight of the soft-label loss (teacher logits)")
    alpha_hard: float = Field(0.5, ge=0, description="weight of the task loss on the gold labels")
    alpha_hidden: float = Field(0.0, ge=0, description="weight of the layer-wise hidden-state MSE")
    alpha_attention: float = Field(
        0.0, ge=0, description="weight of the layer-wise attention-map MSE (switches to eager attention)"
    )
    match_embeddings: bool = Field(False, description="hidden-state loss also matches the embedding output")

    @model_validator(mode="after")
    def _some_weight(self) -> DistillConfig:
        if not any((self.alpha_soft, self.alpha_hard, self.alpha_hidden, self.alpha_attention)):
            raise ValueError("every loss weight is 0; set alpha_soft (or another alpha) above 0")
        return self


def layer_map(student_layers: int, teacher_layers: int) -> list[tuple[int, int]]:
    """Student layer i -> teacher layer round((i+1)*T/S) - 1, halves up (TinyBERT; identity if S == T)."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(f"layer counts must be >= 1, got {student_layers} and {teacher_layers}")
    s, t = student_layers, teacher_layers
    return [(i, max(0, (2 * (i + 1) * t + s) // (2 * s) - 1)) for i in range(s)]


def soft_label_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2, mean over the batch; MSE(s, t) for a 1-logit regression."""
    if student_logits.shape != teacher_logits.shape:
        raise PrunebertError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ; distil from a teacher fine-tuned on the same task"
        )
    student, teacher = student_logits.float(), teacher_logits.float()
    if student.shape[-1] == 1:
        return F.mse_loss(student, teacher)
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


def span_soft_loss(
    student: tuple[torch.Tensor, torch.Tensor],
    teacher: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Extractive QA: the soft-label loss over token positions of the start logits and of the end logits
    (each (B, T)), averaged (Sanh, Wolf & Rush 2020's SQuAD distillation); padding positions take no part."""
    padding = attention_mask == 0  # (B, T)
    losses = [
        soft_label_loss(
            s.float().masked_fill(padding, -1e4), t.float().masked_fill(padding, -1e4), temperature
        )
        for s, t in zip(student, teacher, strict=True)
    ]
    return (losses[0] + losses[1]) / 2


def _soft(student_outputs: Any, teacher_outputs: Any, mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """The soft-label term of a model's outputs: over classes (logits) or over positions (QA spans)."""
    if getattr(student_outputs, "start_logits", None) is None:
        return soft_label_loss(student_outputs.logits, teacher_outputs.logits, temperature)
    spans = [(o.start_logits, o.end_logits) for o in (student_outputs, teacher_outputs)]
    return span_soft_loss(spans[0], spans[1], mask, temperature)


def _masked_mse(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of (a - b)^2 over the entries where the (broadcast) 0/1 `weight` is 1."""
    squared = (a.float() - b.float()).pow(2) * weight
    return squared.sum() / weight.expand_as(squared).sum().clamp_min(1.0)


def hidden_state_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    layer_map: Sequence[tuple[int, int]],
    embeddings: bool = False,
) -> torch.Tensor:
    """Mean over layer pairs (s, t) of MSE(h_s, h_t) over non-padding tokens: sum_mask ||h_s-h_t||^2 / (N*H).

    The tuples are HF `hidden_states` (B, T, H): index 0 is the embedding output, index l+1 layer l's output.
    `layer_map` pairs transformer layers; `embeddings=True` also matches the embedding outputs (TinyBERT).
    """
    pairs = [(s + 1, t + 1) for s, t in layer_map] + ([(0, 0)] if embeddings else [])
    weight = attention_mask[:, :, None].float()  # (B, T, 1)
    losses = []
    for s, t in pairs:
        if student_hidden[s].shape[-1] != teacher_hidden[t].shape[-1]:
            raise PrunebertError(
                f"student hidden size {student_hidden[s].shape[-1]} differs from the teacher's "
                f"{teacher_hidden[t].shape[-1]} and a learned projection is not supported; "
                "set --distill.alpha_hidden 0 or use a teacher of the student's width"
            )
        losses.append(_masked_mse(student_hidden[s], teacher_hidden[t], weight))
    return torch.stack(losses).mean()


def attention_loss(
    student_attn: Sequence[torch.Tensor],
    teacher_attn: Sequence[torch.Tensor],
    attention_mask: torch.Tensor,
    layer_map: Sequence[tuple[int, int]],
) -> torch.Tensor:
    """Mean over layer pairs (s, t) of MSE(A_s, A_t), attention probabilities (B, heads, Tq, Tk), real q/k."""
    mask = attention_mask.float()
    weight = mask[:, None, :, None] * mask[:, None, None, :]  # (B, 1, Tq, Tk)
    losses = []
    for s, t in layer_map:
        if student_attn[s].shape[1] != teacher_attn[t].shape[1]:
            raise PrunebertError("student and teacher head counts differ; set --distill.alpha_attention 0")
        losses.append(_masked_mse(student_attn[s], teacher_attn[t], weight))
    return torch.stack(losses).mean()


class Distiller:
    """The distillation term of a step: runs the frozen teacher (eval mode, no grad) beside the student."""

    def __init__(self, teacher: PreTrainedModel, config: DistillConfig) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.config = config
        accepted = inspect.signature(teacher.forward).parameters
        self._inputs = [k for k in _TEACHER_INPUTS if k in accepted]
        if config.alpha_attention > 0:
            teacher.set_attn_implementation("eager")  # sdpa returns no attention probabilities

    def prepare(self, student: PreTrainedModel) -> None:
        """Check the student reads the teacher's vocabulary; give it eager attention if maps are matched."""
        vocab_s, vocab_t = student.config.vocab_size, self.teacher.config.vocab_size
        if vocab_s != vocab_t:
            raise PrunebertError(
                f"student vocabulary ({vocab_s}) differs from the teacher's ({vocab_t}); "
                "distil from a teacher that uses the student's tokenizer"
            )
        if self.config.alpha_attention > 0:
            student.set_attn_implementation("eager")

    def output_flags(self) -> dict[str, bool]:
        """Forward kwargs that make a model return what the layer-wise terms compare."""
        flags = {}
        if self.config.alpha_hidden > 0:
            flags["output_hidden_states"] = True
        if self.config.alpha_attention > 0:
            flags["output_attentions"] = True
        return flags

    def loss(
        self, inputs: Mapping[str, Any], student_outputs: Any
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of the distillation terms, and each unweighted term (detached) for logging."""
        cfg = self.config
        with torch.no_grad():
            teacher_outputs = self.teacher(
                **{k: inputs[k] for k in self._inputs if k in inputs}, **self.output_flags()
            )
        ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones(ids.shape, device=ids.device)
        parts: dict[str, torch.Tensor] = {}
        if cfg.alpha_soft > 0:  # logits (B, num_labels), or QA start/end logits (B, T)
            parts["soft"] = _soft(student_outputs, teacher_outputs, mask, cfg.temperature)
        if cfg.alpha_hidden > 0:
            hidden_s, hidden_t = student_outputs.hidden_states, teacher_outputs.hidden_states
            pairs = layer_map(len(hidden_s) - 1, len(hidden_t) - 1)
            parts["hidden"] = hidden_state_loss(hidden_s, hidden_t, mask, pairs, cfg.match_embeddings)
        if cfg.alpha_attention > 0:
            attn_s, attn_t = student_outputs.attentions, teacher_outputs.attentions
            if not attn_s or not attn_t:
                raise PrunebertError(
                    "a model returned no attention maps; load it with attn_implementation='eager' "
                    "(sdpa and flash attention return none) or set --distill.alpha_attention 0"
                )
            parts["attention"] = attention_loss(attn_s, attn_t, mask, layer_map(len(attn_s), len(attn_t)))
        weights = {"soft": cfg.alpha_soft, "hidden": cfg.alpha_hidden, "attention": cfg.alpha_attention}
        total = sum((weights[k] * v for k, v in parts.items()), torch.zeros((), device=ids.device))
        return total, {k: v.detach() for k, v in parts.items()}


class LossParts(TrainerCallback):
    """Averages the loss parts since the last log and writes them next to `loss` (screen and log_history)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, parts: Mapping[str, torch.Tensor]) -> None:
        """Accumulate one micro-batch's parts (tensors: no host sync per step)."""
        for key, value in parts.items():
            self.sums[key] = self.sums[key] + value if key in self.sums else value
        self.count += 1

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict | None = None,
        **kw: Any,
    ) -> None:
        """Add `loss_<part>` means to a training log entry, then start a new window."""
        if logs is None or "loss" not in logs or self.count == 0:
            return
        means = {f"loss_{k}": float(v) / self.count for k, v in self.sums.items()}
        logs.update(means)
        if state.log_history and "loss" in state.log_history[-1]:
            state.log_history[-1].update(means)
        self.sums, self.count = {}, 0


def attach_teacher(trainer: Trainer, teacher: torch.nn.Module) -> LossParts:
    """Move the teacher to the trainer's device, once; the LossParts that logs each term beside its loss."""
    teacher.to(trainer.args.device)
    loss_parts = LossParts()
    trainer.add_callback(loss_parts)
    return loss_parts


class DistillationTrainer(Trainer):
    """A stock Trainer whose training loss is alpha_hard * task loss + the Distiller's term.

    Only `compute_loss` differs. Evaluation and prediction report the plain task loss, so they compare
    with runs trained without distillation. The terms are per-batch means like a classifier's own loss,
    so gradient accumulation treats them alike. The teacher moves to the Trainer's device once, here.
    """

    def __init__(self, model: PreTrainedModel, *args: Any, distiller: Distiller, **kwargs: Any) -> None:
        distiller.prepare(model)
        super().__init__(model, *args, **kwargs)
        self.distiller = distiller
        self.loss_parts = attach_teacher(self, distiller.teacher)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        """The stock task loss (same `num_items_in_batch` handling), weighted, + distillation if training."""
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        flagged = {**inputs, **self.distiller.output_flags()}
        task, outputs = super().compute_loss(model, flagged, True, num_items_in_batch)
        with self.accelerator.autocast():  # the teacher runs in the student's mixed precision
            extra, parts = self.distiller.loss(inputs, outputs)
        loss = self.distiller.config.alpha_hard * task + extra
        self.loss_parts.add({"task": task.detach(), **parts})
        return (loss, outputs) if return_outputs else loss
