"""Gradient samples for second-order pruning (oBERT's Fisher), drawn without disturbing a training run.

A `GradientSampler` runs forward and backward on mini-batches of its own and yields after each backward,
while the caller reads `.grad`. The training run cannot tell: every parameter's `.grad` is put back,
the torch (CPU and CUDA), Python and NumPy random states are forked and restored, the model runs in eval
mode (dropout off) and gets its modules' train/eval modes back, and batches come from a loader of the
sampler's own (seeded per draw), never from the Trainer's iterator. An exactly resumed run therefore
stays bit-identical.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from prunebert.errors import PrunebertError

__all__ = ["Batch", "GradientSampler", "isolated", "task_loss"]

Batch = Mapping[str, Any]
#: the mini-batches of one draw: (seed, batch size or None for the source's own) -> batches
Draw = Callable[[int, int | None], Iterable[Batch]]
Collate = Callable[[list[Any]], Batch]


def task_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's own loss, `model(**batch).loss` (the batch must hold labels)."""
    loss = model(**batch).loss
    if loss is None:
        raise PrunebertError("the model returned no loss: gradient samples need batches with labels")
    return loss  # type: ignore[no-any-return]


@contextmanager
def isolated(model: nn.Module) -> Iterator[None]:
    """Eval mode and forked random states inside; gradients, modes and random states restored after."""
    params = list(model.parameters())
    saved = [p.grad for p in params]
    modes = [(m, m.training) for m in model.modules()]
    cuda = sorted({p.device.index or 0 for p in params if p.device.type == "cuda"})
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=cuda):
        try:
            model.eval()
            yield
        finally:
            for p, grad in zip(params, saved, strict=True):
                p.grad = grad
            for module, training in modes:
                module.training = training
            random.setstate(py_state)
            np.random.set_state(np_state)


def _on(batch: Batch, device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _epochs(loader: DataLoader) -> Iterator[Batch]:
    """`loader`'s batches, epoch after epoch; ends at once if it has none."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            return


class GradientSampler:
    """Mini-batch gradients of a loss on data kept apart from training (see the module docstring)."""

    def __init__(self, draw: Draw, loss: Callable[[nn.Module, Batch], torch.Tensor] = task_loss) -> None:
        self._draw = draw
        self.loss = loss

    @classmethod
    def from_dataset(cls, dataset: Dataset, collate_fn: Collate | None) -> GradientSampler:
        """Shuffled mini-batches of `dataset` (an iterable one in order), epochs repeated as needed."""

        def draw(seed: int, batch_size: int | None) -> Iterable[Batch]:
            shuffle = not isinstance(dataset, IterableDataset)
            generator = torch.Generator().manual_seed(seed) if shuffle else None
            loader = DataLoader(
                dataset, batch_size or 8, shuffle=shuffle, collate_fn=collate_fn, generator=generator
            )
            return _epochs(loader)

        return cls(draw)

    @classmethod
    def from_dataloader(cls, loader: DataLoader) -> GradientSampler:
        """Batches like `loader`'s (its dataset and collator, e.g. the Trainer's), from our own loader."""
        return cls.from_dataset(loader.dataset, loader.collate_fn)

    @classmethod
    def from_batches(cls, batches: Sequence[Batch]) -> GradientSampler:
        """Calibration batches as given, in order, cycled when more gradients are asked for than batches."""
        if not batches:
            raise PrunebertError("no calibration batches: pass at least one batch with labels")
        return cls(lambda seed, batch_size: itertools.cycle(batches))

    def backwards(
        self, model: nn.Module, count: int, batch_size: int | None, seed: int
    ) -> Generator[int, None, None]:
        """Run `count` forward/backward passes, yielding the pass index after each backward (each
        parameter's `.grad` then holds that one mini-batch's gradient); the model is left as it was."""
        device = next(model.parameters()).device
        with isolated(model), torch.enable_grad():
            batches = iter(self._draw(seed, batch_size))
            for index in range(count):
                batch = next(batches, None)
                if batch is None:
                    raise PrunebertError("the gradient sampler's data is empty; give it at least one batch")
                model.zero_grad(set_to_none=True)
                self.loss(model, _on(batch, device)).backward()
                yield index
