"""Quantization-aware training (Q8BERT, Zafrir et al. 2019): every Linear sees int8 weights and uint8 inputs.

`QuantizationAware(model, config)` turns each `nn.Linear` of the model into a `FakeQuantLinear` in place (a
class swap: same module, same parameters, same state-dict keys, so pruning masks, gradient hooks, the
optimizer and `save_pretrained` see nothing new) and back with `detach()`. Its input range is an EMA of
each training batch's min / max (Q8BERT), not a learned (LSQ) scale: a range that is a function of the
tensor alone gives the Linears that read one tensor (query, key and value) the same scale, which the
deployed graph needs (one QuantizeLinear per tensor), and it is what post-training calibration measures.
The ranges travel with the model as `prunebert_qat.json`; the saved weights stay plain fp32.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from prunebert.errors import PrunebertError
from prunebert.io import atomic_path
from prunebert.model_files import align_keys
from prunebert.quantization.maths import (
    ACTIVATION_RANGE,
    activation_qparams,
    ema,
    fake_quantize,
    fake_quantize_weight,
)
from prunebert.recipes import StrictModel

__all__ = [
    "QAT_FILE",
    "SCHEME",
    "FakeQuantLinear",
    "QATCallback",
    "QuantizationAware",
    "QuantizationConfig",
    "read_qat",
]

QAT_FILE = "prunebert_qat.json"
SCHEME = "int8 U8S8: symmetric int8 weights per output row, asymmetric uint8 Linear inputs per tensor"


class QuantizationConfig(StrictModel):
    """The `quantization` section of a recipe: fake-quantised int8 training."""

    qat: Literal["none", "int8"] = Field(
        "none", description="int8: train with fake-quantised int8 Linears (Q8BERT) from start_fraction on"
    )
    start_fraction: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="fraction of the steps trained before fake quantization starts (with pruning: at or "
        "after the schedule's end_fraction, once the masks are final)",
    )
    ema_decay: float = Field(
        0.99, ge=0, lt=1, description="input range <- decay * range + (1 - decay) * the batch's min / max"
    )
    fp32_linears: str | None = Field(
        None,
        description="regex (re.search) of Linear names kept in fp32, in training and in the int8 export, "
        r"e.g. 'layer\.\d+\.output\.dense$' for BERT's FFN down-projections (mixed precision)",
    )

    @field_validator("fp32_linears")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"fp32_linears is not a regular expression ({exc})") from None
        return value

    def start_step(self, total_steps: int) -> int:
        """The first optimizer step trained with fake quantization."""
        return math.ceil(self.start_fraction * total_steps)


class FakeQuantLinear(nn.Linear):
    """An `nn.Linear` computing x W^T + b as int8 would: fake-quantised input and weight, STE gradients.

    Made by class swap (`QuantizationAware`), never constructed: `low`, `high` (the EMA input range),
    `decay` and `active` are set then. Off (`active` False) or before its first batch it is a plain Linear.
    """

    low: torch.Tensor
    high: torch.Tensor
    decay: float
    active: bool

    def observed(self) -> bool:
        """Whether an input range has been measured."""
        return bool(torch.isfinite(self.low).item())

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Fold this batch's min / max into the EMA range (the first batch sets it)."""
        low, high = x.detach().amin().float(), x.detach().amax().float()
        first = not self.observed()
        self.low.copy_(low if first else ema(self.low, low, self.decay))
        self.high.copy_(high if first else ema(self.high, high, self.decay))

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The input's (scale, zero point) from the current range."""
        return activation_qparams(self.low, self.high)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active:
            return F.linear(x, self.weight, self.bias)
        if self.training:
            self.observe(x)
        elif not self.observed():
            return F.linear(x, self.weight, self.bias)
        scale, zero_point = (t.to(x.device) for t in self.qparams())
        # in float32 even under bf16 / fp16 autocast: the int8 grid values (and their products, summed as
        # int32 by the deployed kernels) are exact there, and would be rounded in half precision
        with torch.autocast(x.device.type, enabled=False):
            x = fake_quantize(x.float(), scale, zero_point, *ACTIVATION_RANGE)
            weight = fake_quantize_weight(self.weight.float())
            return F.linear(x, weight, None if self.bias is None else self.bias.float())


class QuantizationAware:
    """Owns a model's fake-quantised Linears: attach, switch on, state, save / load, detach."""

    def __init__(self, model: nn.Module, config: QuantizationConfig) -> None:
        if config.qat != "int8":
            raise PrunebertError(f"QuantizationAware needs qat int8, got {config.qat!r}")
        self.model, self.config = model, config
        self.modules: dict[str, FakeQuantLinear] = {}
        self.fp32: list[str] = []
        keep = re.compile(config.fp32_linears) if config.fp32_linears else None
        for name, module in model.named_modules():
            if type(module) is not nn.Linear:  # subclasses (e.g. a lowrank factor's own class) keep theirs
                continue
            if keep is not None and keep.search(name):
                self.fp32.append(name)
            else:
                self.modules[name] = _swap_in(module, config.ema_decay)
        if keep is not None and not self.fp32:
            example = next(iter(self.modules), "none")
            raise PrunebertError(
                f"quantization.fp32_linears {config.fp32_linears!r} matches no Linear of this model "
                f"(names look like {example!r})"
            )

    def set_active(self, active: bool) -> None:
        """Switch fake quantization on or off in every Linear."""
        for module in self.modules.values():
            module.active = active

    @property
    def active(self) -> bool:
        return any(m.active for m in self.modules.values())

    def detach(self) -> nn.Module:
        """Plain `nn.Linear`s again (the ranges are dropped); returns the model."""
        for module in self.modules.values():
            for name in ("low", "high"):
                delattr(module, name)
            del module.decay, module.active
            module.__class__ = nn.Linear  # type: ignore[assignment]
        self.modules.clear()
        return self.model

    def state_dict(self) -> dict[str, Any]:
        """Per Linear: the EMA range and the (scale, zero point) it gives; JSON-serialisable."""
        linears = {}
        for name, module in self.modules.items():
            if module.observed():
                scale, zero_point = module.qparams()
                linears[name] = {
                    "min": module.low.item(),
                    "max": module.high.item(),
                    "scale": scale.item(),
                    "zero_point": int(zero_point.item()),
                }
        return {"active": self.active, "linears": linears, "fp32_linears": list(self.fp32)}

    def load_state_dict(self, state: dict[str, Any], source: str = "the QAT state") -> None:
        """Restore ranges saved by `state_dict` (names with or without the base-model prefix)."""
        linears = align_keys(state["linears"], set(self.modules), _base_prefix(self.model))
        unknown = sorted(set(linears) - set(self.modules))
        if unknown:
            raise PrunebertError(f"{source} has ranges for {unknown[0]}, which this model does not have")
        for name, entry in linears.items():
            self.modules[name].low.fill_(float(entry["min"]))
            self.modules[name].high.fill_(float(entry["max"]))
        self.set_active(bool(state["active"]))

    def save(self, directory: str | Path) -> None:
        """Write `prunebert_qat.json` (scheme, recipe section, ranges) into `directory`."""
        record = {
            "format": "prunebert-qat",
            "version": 1,
            "scheme": SCHEME,
            "config": self.config.model_dump(),
        }
        with atomic_path(Path(directory) / QAT_FILE) as tmp:
            tmp.write_text(json.dumps({**record, **self.state_dict()}, indent=1) + "\n")

    def load(self, directory: str | Path) -> None:
        """Restore what `save` wrote into `directory`."""
        self.load_state_dict(read_qat(directory), str(Path(directory) / QAT_FILE))


def read_qat(directory: str | Path) -> dict[str, Any]:
    """The content of `directory/prunebert_qat.json`; a damaged file is a one-line error."""
    path = Path(directory) / QAT_FILE
    try:
        data = json.loads(path.read_text())
        if data.get("format") != "prunebert-qat" or not isinstance(data.get("linears"), dict):
            raise ValueError("not a prunebert QAT record")
    except (OSError, ValueError, AttributeError) as exc:
        raise PrunebertError(f"{path} cannot be read ({exc}); re-run the QAT fine-tune") from None
    return dict(data)


def _swap_in(module: nn.Linear, decay: float) -> FakeQuantLinear:
    """Turn `module` into a FakeQuantLinear in place, switched off, with an unmeasured range."""
    module.__class__ = FakeQuantLinear
    assert isinstance(module, FakeQuantLinear)
    device = module.weight.device
    module.register_buffer("low", torch.tensor(math.inf, device=device), persistent=False)
    module.register_buffer("high", torch.tensor(-math.inf, device=device), persistent=False)
    module.decay, module.active = decay, False
    return module


def _base_prefix(model: nn.Module) -> str:
    return str(getattr(model, "base_model_prefix", "") or "")


class QATCallback(TrainerCallback):
    """Switches fake quantization on at `config.start_step`; checkpoints and restores the ranges."""

    def __init__(self, qat: QuantizationAware) -> None:
        self.qat = qat
        self.start = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Fix the start step for this run's length; a resumed run gets its checkpoint's ranges back."""
        self.start = self.qat.config.start_step(state.max_steps)
        checkpoint = Path(args.output_dir or ".") / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if state.global_step > self.start and not (checkpoint / QAT_FILE).is_file():
            raise PrunebertError(
                f"resuming at step {state.global_step}, after QAT started, but {checkpoint} has no "
                f"{QAT_FILE}; resume from an earlier checkpoint"
            )
        if state.global_step > 0 and (checkpoint / QAT_FILE).is_file():
            self.qat.load(checkpoint)
        self.qat.set_active(state.global_step >= self.start)

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.global_step >= self.start and not self.qat.active:
            self.qat.set_active(True)

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Store the ranges inside the checkpoint the Trainer just wrote."""
        checkpoint = Path(args.output_dir or ".") / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if checkpoint.is_dir() and args.process_index == 0:
            self.qat.save(checkpoint)
