"""Low-rank factorised weights whose rank-1 components can be pruned (Wang, Wohlwend & Lei 2019).

Wang, Wohlwend & Lei, "Structured Pruning of Large Language Models" (EMNLP 2020, arXiv:1910.04732):
a weight W (out x in) is trained as

    W = P diag(g) Q = sum_k g_k p_k q_k^T,      started from the SVD W = U S V^T: P = U, g = S, Q = V^T,

with rank r = min(out, in), so the factorised model computes what the dense one did. Pruning component k
sets g_k to 0. A module keeps its r' surviving components as two smaller Linears, in -> r' -> out, when
that is smaller, r' (out + in) < out x in (for a square matrix: under half its rank); otherwise they are
multiplied back into one dense W of the original shape.

Two module forms:
- `LowRankLinear` (training): parameters `left` (P, out x r), `weight` (g, (r,)), `right` (Q, r x in) and
  `bias`; y = P (g * (Q x)) + b. The diagonal is the module's `weight`, so prunebert's masks, schedules
  and per-weight methods prune it entry by entry: a masked entry is a removed rank-1 component.
- `SplitLinear` (deployed): `first` (diag(g') Q', in -> r', no bias) then `second` (P', r' -> out, bias),
  plain `nn.Linear`s, so int8 dynamic quantization and exporters treat them like any other.

The model's config records both, with module names relative to the base model (so a model saved with a
task head loads headless and back) and current layer numbers:

    "prunebert_lowrank": {"version": 1, "factorized": {"encoder.layer.0.attention.self.query": 32},
                          "split": {"encoder.layer.0.output.dense": 13}}

`prunebert.transforms.slim.load_slim` (and `prunebert.models.load_model`) rebuild those modules before
loading the weights; plain transformers does it with the modeling code saved beside them
(`prunebert.transforms.custom_code`, `trust_remote_code=True`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init
from transformers import PretrainedConfig

from prunebert.errors import PrunebertError

__all__ = [
    "LOWRANK_KEY",
    "LowRankLinear",
    "SplitLinear",
    "component_norms",
    "factorize",
    "factorized_names",
    "has_lowrank",
    "kept_weights_fraction",
    "matmul_size",
    "rebuild_lowrank",
    "renumber_lowrank",
    "slim_lowrank",
    "split_pays",
    "svd_factors",
]

LOWRANK_KEY = "prunebert_lowrank"
_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
_PRE_HOOKS = ("_forward_pre_hooks", "_forward_pre_hooks_with_kwargs")


def svd_factors(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, g, Q) with P diag(g) Q = W: the thin SVD in float32. (out, r), (r,), (r, in)."""
    u, s, vh = torch.linalg.svd(weight.detach().float(), full_matrices=False)
    return u, s, vh


def component_norms(left: torch.Tensor, diagonal: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """Frobenius norm of each rank-1 component g_k p_k q_k^T: |g_k| ||p_k|| ||q_k||, in float32. (r,)"""
    p, g, q = (t.detach().float() for t in (left, diagonal, right))
    norms: torch.Tensor = g.abs() * p.norm(dim=0) * q.norm(dim=1)
    return norms


def split_pays(rank: int, out_features: int, in_features: int) -> bool:
    """Whether two Linears in -> rank -> out hold fewer weights than one out x in Linear."""
    return rank * (out_features + in_features) < out_features * in_features


def _empty(*shape: int, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, device=like.device, dtype=like.dtype))


class LowRankLinear(nn.Module):
    """y = P (g * (Q x)) + b: a Linear trained as `left` diag(`weight`) `right` (Wang et al. 2019)."""

    #: `prunebert.targets.find_targets` accepts this module although its `weight` is 1-D
    factorized: ClassVar[bool] = True

    def __init__(self, linear: nn.Linear, rank: int) -> None:
        """An uninitialised factorisation of `linear`'s shape (fill it, or use `from_linear`)."""
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight
        self.left = _empty(self.out_features, rank, like=w)  # P: (out, r)
        self.weight = _empty(rank, like=w)  # g: (r,)
        self.right = _empty(rank, self.in_features, like=w)  # Q: (r, in)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        #: optional gates on the components, called at every forward with the module: (r,) z, and then
        #: y = P ((g * z) * (Q x)) + b (lowrank_l0's Hard Concrete gates). Not a parameter or buffer, so
        #: never saved: the method folds z into g before the model is saved or slimmed. None: plain g.
        self.gate: Callable[[LowRankLinear], torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Linear) -> LowRankLinear:
        """The full-rank factorisation of `linear` by SVD: the same outputs up to float rounding."""
        p, g, q = svd_factors(linear.weight)
        module = cls(linear, g.numel())
        with torch.no_grad():
            for param, value in ((module.left, p), (module.weight, g), (module.right, q)):
                param.copy_(value)
        return module.train(linear.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., out) through the r components (each g_k times its gate z_k, if gated)."""
        diagonal = self.weight if self.gate is None else self.weight * self.gate(self)
        return F.linear(F.linear(x, self.right) * diagonal, self.left, self.bias)  # (..., r) inside

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.weight.numel()}"


class SplitLinear(nn.Module):
    """Two Linears in -> rank -> out: the deployed form of a pruned factorisation."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        kind = {"device": device, "dtype": dtype}
        self.first = nn.Linear(in_features, rank, bias=False, **kind)  # diag(g') Q'
        self.second = nn.Linear(rank, out_features, bias=bias, **kind)  # P', + b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., rank) -> (..., out)."""
        out: torch.Tensor = self.second(self.first(x))
        return out


# -- the entry in config.json ---------------------------------------------------------------------------
def has_lowrank(config: PretrainedConfig) -> bool:
    """Whether `config` records factorised or split modules."""
    return isinstance(getattr(config, LOWRANK_KEY, None), dict)


def _entry(config: PretrainedConfig) -> dict[str, Any]:
    entry = getattr(config, LOWRANK_KEY, None) or {}
    return {
        "version": 1,
        "factorized": dict(entry.get("factorized", {})),
        "split": dict(entry.get("split", {})),
    }


def _store(config: PretrainedConfig, entry: dict[str, Any]) -> None:
    if entry["factorized"] or entry["split"]:
        setattr(config, LOWRANK_KEY, entry)
    elif hasattr(config, LOWRANK_KEY):
        delattr(config, LOWRANK_KEY)


def _prefix(model: nn.Module) -> str:
    """What module names of `model` start with before the base model's own names ('' if it is one)."""
    base = getattr(model, "base_model", model)
    return "" if base is model else str(getattr(model, "base_model_prefix")) + "."  # noqa: B009


def factorized_names(model: nn.Module) -> list[str]:
    """Full module names of the model's `LowRankLinear`s, as the config records them."""
    prefix = _prefix(model)
    return [prefix + name for name in _entry(getattr(model, "config"))["factorized"]]  # noqa: B009


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` in place of module `name`; forward hooks on the old one (fixed attention's) move along."""
    old = model.get_submodule(name)
    for attr in (*_HOOKS, *_PRE_HOOKS):
        setattr(new, attr, getattr(old, attr))  # the same dicts: existing handles still remove them
    model.set_submodule(name, new)


def factorize(model: nn.Module, names: list[str]) -> None:
    """Replace each Linear `names` (full module names, inside the base model) by its SVD factorisation."""
    prefix, entry = _prefix(model), _entry(getattr(model, "config"))  # noqa: B009
    for name in names:
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear) or not name.startswith(prefix):
            where = "" if name.startswith(prefix) else " outside the encoder"
            raise PrunebertError(
                f"{name} is a {type(linear).__name__}{where}; low-rank factorisation takes the encoder's "
                "nn.Linear weights: choose encoder roles"
            )
        module = LowRankLinear.from_linear(linear)
        _replace(model, name, module)
        entry["factorized"][name[len(prefix) :]] = module.weight.numel()
    _store(getattr(model, "config"), entry)  # noqa: B009


def rebuild_lowrank(model: nn.Module, source: str) -> None:
    """Give a freshly built model the (uninitialised) factorised and split modules its config records."""
    config = getattr(model, "config")  # noqa: B009
    raw = getattr(config, LOWRANK_KEY, None)
    if not isinstance(raw, dict) or raw.get("version") != 1:
        raise PrunebertError(f"{source}: unreadable {LOWRANK_KEY} entry in config.json; save the model again")
    prefix, entry = _prefix(model), _entry(config)
    for kind in ("factorized", "split"):
        for name, rank in entry[kind].items():
            linear = _module(model, prefix + name, source)
            if not isinstance(rank, int) or not 0 <= rank <= min(linear.in_features, linear.out_features):
                raise PrunebertError(
                    f"{source}: bad rank {rank!r} for {name} in {LOWRANK_KEY}; save it again"
                )
            shape = (linear.in_features, linear.out_features, rank, linear.bias is not None)
            w = linear.weight
            new = (
                LowRankLinear(linear, rank)
                if kind == "factorized"
                else skip_init(SplitLinear, *shape, device=w.device, dtype=w.dtype)
            )
            _replace(model, prefix + name, new)


def _module(model: nn.Module, name: str, source: str) -> nn.Linear:
    try:
        module = model.get_submodule(name)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        raise PrunebertError(f"{source}: {LOWRANK_KEY} names {name}, which is not a Linear of this model")
    return module


def renumber_lowrank(model: nn.Module, layers_name: str, kept: list[int]) -> None:
    """After only the encoder layers `kept` (old numbers) remain in `layers_name`: rename the entries."""
    config = getattr(model, "config")  # noqa: B009
    if not has_lowrank(config):
        return
    start = layers_name[len(_prefix(model)) :] + "."  # e.g. `encoder.layer.`
    new_number = {old: new for new, old in enumerate(kept)}
    entry = _entry(config)
    for kind in ("factorized", "split"):
        renamed = {}
        for name, rank in entry[kind].items():
            if not name.startswith(start):
                renamed[name] = rank
                continue
            number, _, rest = name[len(start) :].partition(".")
            if int(number) in new_number:
                renamed[f"{start}{new_number[int(number)]}.{rest}"] = rank
        entry[kind] = renamed
    _store(config, entry)


# -- slimming ----------------------------------------------------------------------------------------------
@torch.no_grad()
def _deployed(module: LowRankLinear) -> tuple[nn.Module, int]:
    """The kept components as a SplitLinear when that is smaller, else one dense Linear; and their number."""
    if module.gate is not None:
        raise PrunebertError("gated low-rank module: bake the pruner (it folds the gates) before slimming")
    kept = module.weight.detach().ne(0).nonzero().flatten()
    left, diagonal, right = module.left[:, kept], module.weight[kept], module.right[kept]
    out_features, in_features, rank = module.out_features, module.in_features, kept.numel()
    kind = {"device": left.device, "dtype": left.dtype}
    bias = module.bias is not None
    if split_pays(rank, out_features, in_features):
        split = skip_init(SplitLinear, in_features, out_features, rank, bias, **kind)
        split.first.weight.copy_(diagonal[:, None] * right)  # (r', in)
        split.second.weight.copy_(left)  # (out, r')
        new: nn.Module = split
    else:
        dense = skip_init(nn.Linear, in_features, out_features, bias, **kind)
        dense.weight.copy_((left * diagonal) @ right)  # (out, in)
        new = dense
    if module.bias is not None:
        new_bias = new.second.bias if isinstance(new, SplitLinear) else new.bias
        assert isinstance(new_bias, torch.Tensor)
        new_bias.copy_(module.bias)
    return new.train(module.training), rank


def slim_lowrank(model: nn.Module) -> dict[str, Any]:
    """Turn every factorised module into its deployed form, in place; returns what changed.

    {"split": {name: kept rank}, "merged": [names], "ranks_kept": [kept, total]}; names relative to the
    base model. Outputs change only by float rounding (merging sums in another order).
    """
    config = getattr(model, "config")  # noqa: B009
    prefix, entry = _prefix(model), _entry(config)
    split: dict[str, int] = {}
    merged, kept_total, total = [], 0, 0
    for name, rank in list(entry["factorized"].items()):
        module = model.get_submodule(prefix + name)
        assert isinstance(module, LowRankLinear)
        new, kept = _deployed(module)
        _replace(model, prefix + name, new)
        del entry["factorized"][name]
        if isinstance(new, SplitLinear):
            entry["split"][name] = split[name] = kept
        else:
            merged.append(name)
        kept_total, total = kept_total + kept, total + rank
    _store(config, entry)
    return {"split": split, "merged": merged, "ranks_kept": [kept_total, total]}


def kept_weights_fraction(modules: Mapping[str, LowRankLinear]) -> float:
    """Weights the deployed forms of `modules` will hold, as a fraction of their dense weights."""
    dense = kept = 0
    for module in modules.values():
        rank = int(module.weight.detach().count_nonzero())
        size = module.out_features * module.in_features
        dense += size
        kept += min(size, rank * (module.out_features + module.in_features))
    return kept / max(1, dense)


def matmul_size(module: nn.Module) -> tuple[int, int, int] | None:
    """(weights, nonzero weights, output width) of a Linear in any of its forms: the multiply-adds per token.

    A factorised module counts r (out + in), and as nonzero only its components whose g_k is not 0; a
    split one counts both of its Linears. None for a module without a 2-D weight (nothing to count).
    """
    if isinstance(module, LowRankLinear):
        width = module.out_features + module.in_features
        return module.weight.numel() * width, int(module.weight.count_nonzero()) * width, module.out_features
    if isinstance(module, SplitLinear):
        parts = (module.first.weight, module.second.weight)
        return sum(w.numel() for w in parts), sum(int(w.count_nonzero()) for w in parts), module.out_features
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        return None
    return weight.numel(), int(weight.count_nonzero()), weight.shape[0]
