"""LayerDrop: structured dropout of whole encoder layers, then a shallower model (Fan, Grave & Joulin 2019).

Fan, Grave & Joulin, "Reducing Transformer Depth on Demand with Structured Dropout" (ICLR 2020,
arXiv:1909.11556). While training, every encoder layer is skipped with probability `p` in each forward
(one decision per layer for the whole batch; the layer passes its input on unchanged and gets no
gradient); in evaluation every layer runs. At inference a sub-network of the wanted depth is kept
without fine-tuning. The paper's "every other" strategy prunes at rate q by dropping the layers at depth
d = 0 (mod floor(1/q)) (1-based); `every_other` spreads `n` dropped layers the same way for any n.

Decisions are a pure function of (seed, optimizer step, forward within the step), never of the global
RNG: every process of a multi-process run skips the same layers, and a resumed run (the step counter is
method state, saved in checkpoints) skips what the uninterrupted run would have.

The sparsity knob is the fraction of layers dropped: `round(sparsity * layers)` go. The final selection
zeroes every target weight of those layers (the ordinary masks, so the run reports the sparsity) and
from then on skips them for good: `prunebert.transforms.layer_skip` records them in the config,
`load_model` skips them again, and `prunebert slim` removes them (the same outputs). Default: train the
whole run with LayerDrop and select at the last step (`oneshot` at `start_fraction` 1.0), as in the
paper; an earlier `start_fraction` fine-tunes the shallower model for the rest of the run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, ClassVar

import torch
from pydantic import Field, field_validator
from torch import nn

from prunebert.errors import PrunebertError
from prunebert.methods.base import Count, MethodOptions, Number, PruneSettings, PruningMethod
from prunebert.methods.registry import register_method
from prunebert.structure import encoder_layers
from prunebert.targets import Target
from prunebert.transforms.layer_skip import set_forward, skip_layers, skipped_layers

__all__ = ["LayerDrop", "LayerDropOptions", "drop_decisions", "every_other"]


def every_other(num_layers: int, n_drop: int) -> list[int]:
    """The `n_drop` layers (0-based) to remove, evenly spread and ending with the last one.

    Layer (k + 1) * L / n - 1 for k < n: when n divides L this is the paper's d = 0 (mod L / n) in
    1-based depth (6 of 12: layers 1, 3, ..., 11; 4 of 12: 2, 5, 8, 11).
    """
    return [(k + 1) * num_layers // n_drop - 1 for k in range(n_drop)]


def drop_decisions(num_layers: int, p: float, seed: int, step: int, forward: int) -> torch.Tensor:
    """(L,) bool, True = skip that layer in this forward; depends only on its arguments."""
    digest = hashlib.sha256(f"layerdrop:{seed}:{step}:{forward}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.rand(num_layers, generator=generator) < p


class LayerDropOptions(MethodOptions):
    """The chance of skipping a layer in training, and which layers go at the end."""

    p: Number = Field(0.2, ge=0.0, lt=1.0, description="chance a layer is skipped in a training forward")
    drop: list[Annotated[Count, Field(ge=0)]] | None = Field(
        None, description="the layers to remove, 0-based (None: `every_other` at the target sparsity)"
    )

    @field_validator("drop")
    @classmethod
    def _distinct(cls, drop: list[int] | None) -> list[int] | None:
        if drop is not None and len(set(drop)) != len(drop):
            raise ValueError("must be a list of distinct layer numbers (0-based)")
        return drop


@dataclass
class _Draw:
    """This forward's decisions, shared by the encoder's pre-hook (writes) and its layers (read)."""

    skip: list[bool] | None = None


def _layer_forward(
    layer: nn.Module, index: int, draw: _Draw, hidden_states: Any, *args: Any, **kw: Any
) -> Any:
    """The forward of a layer under LayerDrop: its input unchanged when drawn, else the class's forward."""
    if draw.skip is not None and draw.skip[index]:
        return hidden_states
    return type(layer).forward(layer, hidden_states, *args, **kw)


@register_method("layerdrop")
class LayerDrop(PruningMethod):
    """Whole encoder layers: skipped at random while training, the `every_other` ones removed at the end."""

    paper: ClassVar[str] = "Fan, Grave & Joulin 2019, arXiv:1909.11556"
    options_cls: ClassVar[type[MethodOptions]] = LayerDropOptions
    defaults: ClassVar[dict[str, Any]] = {"schedule": "oneshot", "start_fraction": 1.0}
    structured = True

    def __init__(self, options: MethodOptions, seed: int = 0) -> None:
        super().__init__(options, seed)
        assert isinstance(options, LayerDropOptions)
        self.opts = options
        self.targets: list[Target] = []
        self.model: nn.Module = nn.Module()
        self.layers = nn.ModuleList()
        self.num_layers = 0
        self.step = 0  # optimizer steps taken
        self.forwards = 0  # training forwards within this step (gradient accumulation)
        self.dropped: list[int] = []  # layers removed by the final selection
        self._draw = _Draw()
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._skipped = [0, 0]  # layers skipped, layers seen since the last log

    def bind(self, model: nn.Module, targets: Sequence[Target], config: PruneSettings) -> None:
        """Check the setup, then make every encoder layer skippable for training forwards."""
        name, self.layers = encoder_layers(model)
        self.num_layers, self.targets, self.model = len(self.layers), list(targets), model
        self._validate(config)
        for i, layer in enumerate(self.layers):
            set_forward(layer, partial(_layer_forward, layer, i, self._draw))
        encoder = model.get_submodule(name.rsplit(".", 1)[0])
        self._hooks.append(encoder.register_forward_pre_hook(self._decide))

    def _validate(self, config: PruneSettings) -> None:
        outside = [t for t in self.targets if t.layer < 0]
        fail = None
        if outside:
            fail = f"{outside[0].name} is not in an encoder layer; drop include_embeddings / targets outside"
        elif skipped_layers(getattr(self.model, "config")):  # noqa: B009
            fail = "this model already skips layers chosen by an earlier LayerDrop run; slim it first"
        elif config.schedule not in ("oneshot", "fixed"):
            fail = f"layers are chosen once, so use --pruning.schedule oneshot (got {config.schedule})"
        n = round(config.sparsity * self.num_layers)
        if fail is None and n >= self.num_layers:
            fail = f"sparsity {config.sparsity} drops all {self.num_layers} layers; keep at least one"
        drop = self.opts.drop
        if fail is None and drop is not None and (len(drop) != n or max(drop, default=0) >= self.num_layers):
            fail = (
                f"drop {drop} must name {n} of the layers 0..{self.num_layers - 1} (round(sparsity x "
                f"{self.num_layers})); set --pruning.sparsity {len(drop)}/{self.num_layers}"
            )
        if fail:
            raise PrunebertError(f"method 'layerdrop': {fail}")

    def _decide(self, encoder: nn.Module, args: tuple[Any, ...]) -> None:
        """Before each encoder forward: draw which layers this training forward skips (none in eval)."""
        if not encoder.training:
            self._draw.skip = None
            return
        skip = drop_decisions(self.num_layers, self.opts.p, self.seed, self.step, self.forwards)
        self._draw.skip = skip.tolist()
        self.forwards += 1
        self._skipped = [self._skipped[0] + int(skip.sum()), self._skipped[1] + self.num_layers]

    def after_optimizer_step(self, weights: Mapping[str, torch.Tensor], lr: float) -> None:
        """A new optimizer step: its forwards draw from a new (seed, step) stream."""
        self.step += 1
        self.forwards = 0

    def scores(self, weights: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """LayerDrop ranks no weights: every score is 0 and `select` picks whole layers by depth."""
        return {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}

    def chosen(self, sparsity: float) -> list[int]:
        """The layers removed at `sparsity`: the `drop` option, else `every_other`."""
        if self.opts.drop is not None:
            return sorted(self.opts.drop)
        return every_other(self.num_layers, round(sparsity * self.num_layers))

    def select(self, scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
        """Every target weight of a chosen layer pruned, every other one kept."""
        drop = set(self.chosen(sparsity))
        return {
            t.param_name: torch.full_like(scores[t.param_name], t.layer not in drop, dtype=torch.bool)
            for t in self.targets
        }

    def on_masks_updated(self, sparsity: float, final: bool) -> None:
        """At the final selection: stop dropping at random, skip the chosen layers for good."""
        if final:
            self._fix(self.chosen(sparsity))

    def _fix(self, dropped: list[int]) -> None:
        self.finalize()
        self.dropped = dropped
        skip_layers(self.model, dropped)

    def finalize(self) -> None:
        """Stop skipping at random (idempotent); layers removed by the selection stay skipped."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._draw.skip = None
        for layer in self.layers:
            if isinstance(layer.__dict__.get("forward"), partial):  # ours, not a recorded skip
                set_forward(layer, None)

    def log_metrics(self) -> dict[str, float]:
        """`layers_skipped`: fraction skipped in training forwards since the last log; `layers_dropped`."""
        metrics = {"layers_dropped": round(len(self.dropped) / max(1, self.num_layers), 4)}
        if self._skipped[1]:
            metrics["layers_skipped"] = round(self._skipped[0] / self._skipped[1], 4)
        self._skipped = [0, 0]
        return metrics

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The step and forward counters (the decisions' stream) and the layers already removed."""
        return {
            "step": torch.tensor(self.step),
            "forwards": torch.tensor(self.forwards),
            "dropped": torch.tensor(self.dropped, dtype=torch.long),
        }

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned; a checkpoint taken after the selection skips its layers."""
        self.step, self.forwards = int(state["step"].item()), int(state["forwards"].item())
        dropped = [int(i) for i in state["dropped"].tolist()]
        if dropped:
            self._fix(dropped)
