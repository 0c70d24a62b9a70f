"""MLM training that scores only the masked positions.

An MLM head maps every position to vocabulary logits, but the loss reads only the ~15% masked ones. For a
small encoder the vocabulary projection costs more than the encoder itself (all-MiniLM-L6-v2: 384 x 30522
head weights vs ~10.6M encoder matmul weights per token), so computing it everywhere roughly doubles a
CPU training step. A forward pre-hook on the head's first module hands it the masked positions only,
`[N, H]` instead of `[B, T, H]`; the loss is the same mean cross-entropy over masked tokens as the model's
own (golden-tested against it). Evaluation keeps the full forward: its metrics read logits per position.
Architectures missing from `HEAD_ENTRY` simply use the full forward.

With next-sentence prediction (`BertForPreTraining`, batches carrying `next_sentence_label`) the same
head entry also receives the pooled output, untouched, and the training loss is the model's own
`MLM + NSP` sum. Its evaluation loss is the MLM term alone, so it compares with MLM-only runs; NSP is
scored from the returned `seq_relationship_logits`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Trainer

__all__ = ["HEAD_ENTRY", "MaskedPositionsTrainer", "head_entry", "masked_head", "masked_logits"]

#: model_type -> the first module of the MLM head; everything after it acts on the last dimension only
HEAD_ENTRY = {
    "bert": "cls",
    "roberta": "lm_head",
    "xlm-roberta": "lm_head",
    "camembert": "lm_head",
    "electra": "generator_predictions",
    "distilbert": "vocab_transform",
}


def head_entry(model: nn.Module) -> nn.Module | None:
    """The module where the MLM head starts, or None if this architecture is not in `HEAD_ENTRY`."""
    name = HEAD_ENTRY.get(str(getattr(getattr(model, "config", None), "model_type", "")))
    return model.get_submodule(name) if name is not None and hasattr(model, name) else None


@contextlib.contextmanager
def masked_head(model: nn.Module, keep: torch.Tensor) -> Iterator[None]:
    """While open, the MLM head of `model` sees only the positions where `keep` (B, T) is True: its
    logits come out (N, vocab). Architectures missing from `HEAD_ENTRY` keep the full forward."""
    head = head_entry(model)

    def only_masked(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0][keep], *args[1:])

    handle = head.register_forward_pre_hook(only_masked) if head is not None else None
    try:
        yield
    finally:
        if handle is not None:
            handle.remove()


def masked_logits(outputs: Any, keep: torch.Tensor) -> torch.Tensor:
    """The (N, vocab) MLM logits of the masked positions, from a forward run under `masked_head` or not."""
    logits: torch.Tensor = outputs[0]  # `logits`, or `prediction_logits` with NSP
    return logits if logits.dim() == 2 else logits[keep]


class MaskedPositionsTrainer(Trainer):
    """A Trainer whose training loss runs the MLM head on masked positions only."""

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, Any]:
        nsp = "next_sentence_label" in inputs and "labels" in inputs
        if nsp and (return_outputs or not model.training):  # evaluation: the MLM term alone
            return _mlm_loss_only(model, inputs, return_outputs)
        head = head_entry(self.accelerator.unwrap_model(model))
        if head is None or return_outputs or not model.training or "labels" not in inputs:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return self.masked_forward(model, inputs)[0]

    def masked_forward(
        self, model: nn.Module, inputs: dict[str, Any], **flags: bool
    ) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """The training loss (MLM, + NSP with its labels), the model's outputs, and the masked positions'
        logits (N, vocab); `flags` (e.g. output_hidden_states) go to the forward."""
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        nsp_labels = inputs.pop("next_sentence_label", None)
        keep = labels != -100
        with masked_head(self.accelerator.unwrap_model(model), keep):
            outputs = model(**inputs, **flags)
        logits = masked_logits(outputs, keep)  # (N, vocab)
        # no masked token in this batch: a zero loss that keeps the graph
        empty = logits.shape[0] == 0
        loss = logits.sum() * 0.0 if empty else F.cross_entropy(logits.float(), labels[keep])
        if nsp_labels is not None:
            loss = loss + F.cross_entropy(outputs.seq_relationship_logits.float(), nsp_labels.view(-1))
        return loss, outputs, logits


def _mlm_loss_only(
    model: nn.Module, inputs: dict[str, Any], return_outputs: bool
) -> torch.Tensor | tuple[torch.Tensor, Any]:
    """Full forward of an MLM + NSP model; the loss is the MLM term (mean over masked tokens) alone."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    inputs.pop("next_sentence_label")
    outputs = model(**inputs)  # prediction_logits [B, T, vocab], seq_relationship_logits [B, 2]
    logits = outputs.prediction_logits
    loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), labels.view(-1))
    return (loss, outputs) if return_outputs else loss
