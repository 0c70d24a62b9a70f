"""Distillation while pre-training: the dense model teaches the student it is pruned into (Prune OFA).

Prune Once for All (Zafrir et al. 2021) prunes during pre-training while distilling from the dense model.
Here the layer-wise term is MiniLMv2's self-attention relation KL (Wang et al. 2021; `stages.relation`),
optionally TinyBERT's hidden-state MSE (Jiao et al. 2020), and the MLM term is split in two:

    loss = alpha_mlm * MLM + alpha_relation * relation + alpha_hidden * hidden + alpha_soft * soft

`soft` is KL(teacher || student) of the MLM logits at the masked positions, at temperature T (x T^2).
It needs a teacher whose MLM head was trained: a headless encoder (all-MiniLM-L6-v2) gets a new, random
head, so by default `soft` is on only when the teacher's head was trained (0.5, with MLM 0.5), and with
a new student head the hard MLM loss keeps a small weight (0.1): AdamW's per-parameter scaling still
trains the head, which only that term reaches, at full speed, while the encoder follows the teacher.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prunebert.errors import PrunebertError
from prunebert.models import load_model
from prunebert.recipes import StrictModel
from prunebert.stages.distill import attach_teacher, hidden_state_loss, layer_map, soft_label_loss
from prunebert.stages.mlm import MaskedPositionsTrainer, masked_head, masked_logits
from prunebert.stages.relation import (
    Captured,
    capture_projections,
    encoder_depth,
    mean_pooled,
    relation_loss,
)

__all__ = [
    "DistillingMLMTrainer",
    "PretrainDistillConfig",
    "PretrainDistiller",
    "closeness",
    "load_pretrain_distiller",
    "resolve_weights",
]

_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
Role = Literal["query", "key", "value"]
_ALL_ROLES: list[Role] = ["query", "key", "value"]
#: a forward's outputs, its masked-position MLM logits (N, vocab) if asked, its captured Q/K/V
Encoded = tuple[Any, torch.Tensor | None, Captured]


class PretrainDistillConfig(StrictModel):
    """The teacher of the pre-training stage and what each term weighs (MiniLMv2 relations by default)."""

    teacher: str = Field(
        "self",
        description="self: the starting model, loaded once more and frozen; or a model directory, run "
        "directory or hub name with the student's tokenizer",
    )
    alpha_relation: float = Field(
        1.0, ge=0, description="weight of the MiniLMv2 Q-Q / K-K / V-V self-attention relation KL"
    )
    relations: list[Role] = Field(
        default_factory=lambda: _ALL_ROLES.copy(), min_length=1, description="relations matched"
    )
    relation_heads: int | None = Field(
        None, ge=1, description="relation heads per matrix; omit: the student's attention heads"
    )
    layers: list[int] | None = Field(
        None,
        description="student layers matched (0-based, -1 the last), each with its mapped teacher layer; "
        "omit: every layer",
    )
    alpha_hidden: float = Field(0.0, ge=0, description="weight of the hidden-state MSE (same width only)")
    alpha_soft: float | None = Field(
        None,
        ge=0,
        description="weight of the soft MLM-logit KL; omit: 0.5 if the teacher's MLM head is trained, else 0",
    )
    alpha_mlm: float | None = Field(
        None,
        ge=0,
        description="weight of the hard MLM (+ NSP) loss; omit: 0.5 if the MLM head is trained, 0.1 if new",
    )
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the soft MLM-logit KL")

    @model_validator(mode="after")
    def _some_term(self) -> PretrainDistillConfig:
        if not (self.alpha_relation or self.alpha_hidden or self.alpha_soft is None or self.alpha_soft):
            raise ValueError("every distillation weight is 0; set alpha_relation (or another alpha) above 0")
        return self


def resolve_weights(
    cfg: PretrainDistillConfig, student_new_head: bool, teacher_new_head: bool
) -> dict[str, float]:
    """Each term's weight, `alpha_soft` / `alpha_mlm` filled in from whether the MLM heads were trained."""
    if cfg.alpha_soft and teacher_new_head:
        raise PrunebertError(
            f"teacher {cfg.teacher!r} has no trained MLM head, so its MLM logits teach nothing; "
            "set --distill.alpha_soft 0 or pass a teacher with an MLM head"
        )
    soft = cfg.alpha_soft if cfg.alpha_soft is not None else (0.0 if teacher_new_head else 0.5)
    mlm = cfg.alpha_mlm if cfg.alpha_mlm is not None else (0.1 if student_new_head else 0.5)
    if not (cfg.alpha_relation or cfg.alpha_hidden or soft):
        raise PrunebertError(
            "no distillation term is on (the teacher has no trained MLM head for the soft term); "
            "set --distill.alpha_relation or --distill.alpha_hidden above 0"
        )
    return {"relation": cfg.alpha_relation, "hidden": cfg.alpha_hidden, "soft": soft, "mlm": mlm}


def _layer_pairs(layers: list[int] | None, student: int, teacher: int) -> list[tuple[int, int]]:
    """`layer_map` pairs, only those of the chosen student layers."""
    pairs = layer_map(student, teacher)
    if layers is None:
        return pairs
    bad = [i for i in layers if not -student <= i < student]
    if bad:
        raise PrunebertError(
            f"--distill.layers {bad} are outside the student's {student} layers; pass indices in "
            f"[-{student}, {student - 1}]"
        )
    chosen = {i % student for i in layers}
    return [pair for pair in pairs if pair[0] in chosen]


def _inputs(module: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The model inputs of `batch` that `module.forward` accepts (DistilBERT takes no token types)."""
    accepted = inspect.signature(module.forward).parameters
    return {k: batch[k] for k in _INPUTS if k in batch and k in accepted}


class PretrainDistiller:
    """The distillation terms of a pre-training step: a frozen teacher run beside the student."""

    def __init__(
        self,
        teacher: PreTrainedModel,
        student: PreTrainedModel,
        config: PretrainDistillConfig,
        weights: dict[str, float],
    ) -> None:
        self.teacher = teacher.eval().requires_grad_(False)
        self.config, self.weights = config, weights
        if student.config.vocab_size != teacher.config.vocab_size:
            raise PrunebertError(
                f"student vocabulary ({student.config.vocab_size}) differs from the teacher's "
                f"({teacher.config.vocab_size}); distil from a teacher that uses the student's tokenizer"
            )
        self.pairs = _layer_pairs(config.layers, encoder_depth(student), encoder_depth(teacher))
        self.heads = config.relation_heads or int(student.config.num_attention_heads)
        widths = (student.config.hidden_size, teacher.config.hidden_size)
        if weights["hidden"] and widths[0] != widths[1]:
            raise PrunebertError(
                f"student hidden size {widths[0]} differs from the teacher's {widths[1]}, so hidden states "
                "cannot be compared; set --distill.alpha_hidden 0 (relations compare across widths)"
            )
        for model in (student, teacher):
            if weights["relation"] and model.config.hidden_size % self.heads:
                raise PrunebertError(
                    f"{self.heads} relation heads do not divide the hidden size {model.config.hidden_size}; "
                    "pass --distill.relation_heads dividing both the student's and the teacher's"
                )

    def output_flags(self) -> dict[str, bool]:
        """Forward kwargs that make a model return what the hidden-state term compares."""
        return {"output_hidden_states": True} if self.weights["hidden"] else {}

    def capture(self, model: torch.nn.Module) -> contextlib.AbstractContextManager[Captured]:
        """Q/K/V capture while the relation term is on, else an empty record."""
        if self.weights["relation"]:
            return capture_projections(model, self.config.relations)
        return contextlib.nullcontext({})

    def encode(self, model: PreTrainedModel, batch: Mapping[str, Any], keep: torch.Tensor | None) -> Encoded:
        """A forward with Q/K/V captured; with `keep` (B, T) the MLM head runs on those positions only,
        without it the encoder alone runs (no vocabulary projection)."""
        with self.capture(model) as qkv:
            if keep is None:
                base = model.base_model
                return base(**_inputs(base, batch), **self.output_flags()), None, qkv
            with masked_head(model, keep):
                outputs = model(**_inputs(model, batch), **self.output_flags())
        return outputs, masked_logits(outputs, keep), qkv

    def terms(self, student: Encoded, teacher: Encoded, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each distillation term (unweighted) of two encoded batches; `mask` (B, T) marks real tokens."""
        parts: dict[str, torch.Tensor] = {}
        if self.weights["relation"]:
            rel = relation_loss(student[2], teacher[2], mask, self.pairs, self.heads, self.config.relations)
            parts["relation"] = rel
        if self.weights["hidden"]:
            hidden_s, hidden_t = student[0].hidden_states, teacher[0].hidden_states
            parts["hidden"] = hidden_state_loss(hidden_s, hidden_t, mask, self.pairs)
        logits_s, logits_t = student[1], teacher[1]
        if self.weights["soft"] and logits_s is not None and logits_t is not None:
            empty = logits_s.shape[0] == 0  # no masked token: a zero that keeps the graph
            soft = (
                logits_s.sum() * 0.0
                if empty
                else soft_label_loss(logits_s, logits_t, self.config.temperature)
            )
            parts["soft"] = soft
        return parts

    def loss(
        self, batch: Mapping[str, Any], student: Encoded
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted sum of the terms for a training batch, and each term (detached) for logging."""
        mask = _mask(batch)
        keep = batch["labels"] != -100 if self.weights["soft"] else None
        with torch.no_grad():
            teacher = self.encode(self.teacher, batch, keep)
        parts = self.terms(student, teacher, mask)
        total = sum((self.weights[k] * v for k, v in parts.items()), torch.zeros((), device=mask.device))
        return total, {k: v.detach() for k, v in parts.items()}


def _mask(batch: Mapping[str, Any]) -> torch.Tensor:
    """The batch's attention mask (B, T), all ones if it has none."""
    mask = batch.get("attention_mask")
    return torch.ones_like(batch["input_ids"]) if mask is None else mask


class DistillingMLMTrainer(MaskedPositionsTrainer):
    """MLM pre-training whose training loss is alpha_mlm * MLM (+ NSP) + the distillation terms.

    Only `compute_loss` differs; evaluation reports the plain MLM loss, comparable with runs that do not
    distil. The teacher moves to the Trainer's device once, here, and runs in the student's precision.
    """

    def __init__(
        self, model: PreTrainedModel, *args: Any, distiller: PretrainDistiller, **kwargs: Any
    ) -> None:
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
        """The masked-positions MLM loss, weighted, + the distillation terms while training."""
        if return_outputs or not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        distiller = self.distiller
        with distiller.capture(self.accelerator.unwrap_model(model)) as qkv:
            hard, outputs, logits = self.masked_forward(model, inputs, **distiller.output_flags())
        with self.accelerator.autocast():
            extra, parts = distiller.loss(inputs, (outputs, logits, qkv))
        self.loss_parts.add({"mlm": hard.detach(), **parts})
        return distiller.weights["mlm"] * hard + extra


def load_pretrain_distiller(
    cfg: PretrainDistillConfig,
    model_spec: str,
    student: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    student_new_head: bool,
) -> tuple[PretrainDistiller, dict[str, Any]]:
    """The run's distiller and what results.json records of it; `self` reloads `model_spec`."""
    spec = model_spec if cfg.teacher == "self" else cfg.teacher
    with torch.random.fork_rng():  # the teacher's new head draws nothing from the run's RNG
        loaded = load_model(spec, head="mlm")
    if cfg.teacher != "self" and loaded.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise PrunebertError(
            f"teacher {cfg.teacher!r} uses another tokenizer than the student; distil from a teacher "
            "with the student's tokenizer (e.g. --distill.teacher self)"
        )
    weights = resolve_weights(cfg, student_new_head, loaded.new_head)
    distiller = PretrainDistiller(loaded.model, student, cfg, weights)
    record = {
        **cfg.model_dump(mode="json"),
        "teacher_path": loaded.path,
        "weights": weights,
        "mlm_head": "new" if student_new_head else "trained",
        "teacher_mlm_head": "new" if loaded.new_head else "trained",
        "layer_pairs": distiller.pairs,
        "relation_heads": distiller.heads,
    }
    return distiller, record


@torch.no_grad()
def closeness(
    student: PreTrainedModel,
    reference: PreTrainedModel,
    eval_set: Any,
    batch_size: int,
    distiller: PretrainDistiller | None = None,
) -> dict[str, float]:
    """How close the student stays to `reference` on held-out blocks: the cosine similarity of their
    mean-pooled sentence embeddings of the unmasked text (mean and min over sequences) and, with a
    distiller, its terms on the pre-masked blocks (`distill_loss`, their weighted sum, and each)."""
    was_training = student.training
    student.eval()
    device = next(student.parameters()).device
    reference.to(device)  # type: ignore[arg-type]  # transformers types `to` too narrowly
    cosines: list[torch.Tensor] = []
    sums: dict[str, float] = {}
    batches = 0
    data = eval_set.with_format("torch")
    for start in range(0, len(data), batch_size):
        batch = {k: v.to(device) for k, v in data[start : start + batch_size].items()}
        mask = _mask(batch)
        plain = {
            **batch,
            "input_ids": torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"]),
        }
        pooled = [
            mean_pooled(m.base_model(**_inputs(m.base_model, plain))[0], mask) for m in (student, reference)
        ]
        cosines.append(F.cosine_similarity(pooled[0].float(), pooled[1].float(), dim=-1))
        if distiller is not None:
            keep = batch["labels"] != -100 if distiller.weights["soft"] else None
            encoded = [distiller.encode(m, batch, keep) for m in (student, reference)]
            for key, value in distiller.terms(encoded[0], encoded[1], mask).items():
                sums[key] = sums.get(key, 0.0) + float(value)
        batches += 1
    student.train(was_training)
    cos = torch.cat(cosines)
    out = {"representation_cosine": float(cos.mean()), "representation_cosine_min": float(cos.min())}
    if distiller is not None:
        parts = {f"distill_{k}": v / batches for k, v in sums.items()}
        total = sum(distiller.weights[k.removeprefix("distill_")] * v for k, v in parts.items())
        out = {**out, "distill_loss": total, **parts}
    return out
