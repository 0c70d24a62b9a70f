"""Modeling code of a prunebert model whose structure changed, shipped beside its weights.

prunebert copies this file verbatim into every such model directory as `modeling_prunebert.py` and points
the `auto_map` of its `config.json` here, with a `model_type` of its own (`prunebert-bert`, ...): plain
transformers refuses the directory, `from_pretrained(path, trust_remote_code=True)` (AutoModel*,
`pipeline`, sentence-transformers) builds the encoder transformers would, then changes it to the
structure the config records, then loads the weights. It imports torch and transformers only, so it works
without prunebert installed. The config entries it reads (written by `prunebert.transforms`):

    prunebert_slim             {"heads": [[kept heads] per layer], "intermediate_sizes": [...],
                                "layers": [kept layers]}: heads, FFN neurons and layers removed
    prunebert_lowrank          {"factorized": {module: rank}, "split": {module: rank}}: low-rank modules
    prunebert_skipped_layers   {"layers": [...]}: layers that hand their input on unchanged (LayerDrop)
    prunebert_fixed_attention  {"heads": {layer: {head: pattern}}}: heads with fixed attention patterns

Each class here subclasses the transformers class of the same head (no modeling code is forked).
"""

from __future__ import annotations

import functools
import inspect
import warnings
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn

#: base model_type -> where its modules are: the layer list in the base model, and inside a layer the
#: self-attention module, its query / key / value, the attention output and the FFN's two Linears
_BERT_LIKE = {
    "layers": "encoder.layer",
    "attention": "attention.self",
    "qkv": ("query", "key", "value"),
    "attention_output": "attention.output.dense",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
}
_DISTILBERT = {
    "layers": "transformer.layer",
    "attention": "attention",
    "qkv": ("q_lin", "k_lin", "v_lin"),
    "attention_output": "attention.out_lin",
    "ffn_in": "ffn.lin1",
    "ffn_out": "ffn.lin2",
}
#: base model_type -> (its transformers class-name stem, its module table)
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "bert": ("Bert", _BERT_LIKE),
    "roberta": ("Roberta", _BERT_LIKE),
    "xlm-roberta": ("XLMRoberta", _BERT_LIKE),
    "camembert": ("Camembert", _BERT_LIKE),
    "electra": ("Electra", _BERT_LIKE),
    "distilbert": ("DistilBert", _DISTILBERT),
}
#: class-name suffix -> the Auto class that loads it
HEADS = {
    "Model": "AutoModel",
    "ForSequenceClassification": "AutoModelForSequenceClassification",
    "ForQuestionAnswering": "AutoModelForQuestionAnswering",
    "ForMaskedLM": "AutoModelForMaskedLM",
    "ForPreTraining": "AutoModelForPreTraining",
}
MODEL_TYPE_PREFIX = "prunebert-"
CLASS_PREFIX = "Prunebert"


class LowRankLinear(nn.Module):
    """y = P (g * (Q x)) + b, a factorised Linear: `left` P (out, r), `weight` g (r,), `right` Q (r, in)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool, **kind: Any) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.left = nn.Parameter(torch.empty(out_features, rank, **kind))
        self.weight = nn.Parameter(torch.empty(rank, **kind))
        self.right = nn.Parameter(torch.empty(rank, in_features, **kind))
        self.bias = nn.Parameter(torch.empty(out_features, **kind)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., r) -> (..., out)."""
        return F.linear(F.linear(x, self.right) * self.weight, self.left, self.bias)


class SplitLinear(nn.Module):
    """Two Linears in -> rank -> out: `first` (no bias) then `second`."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool, **kind: Any) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.first = nn.Linear(in_features, rank, bias=False, **kind)
        self.second = nn.Linear(rank, out_features, bias=bias, **kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) -> (..., rank) -> (..., out)."""
        out: torch.Tensor = self.second(self.first(x))
        return out


class NoHeads(nn.Module):
    """A self-attention module with every head removed: a (B, T, 0) context (or an inner output's bias)."""

    def __init__(self, out_name: str | None = None, out: nn.Module | None = None) -> None:
        super().__init__()
        self.out_name = out_name
        if out_name is not None and out is not None:
            self.add_module(out_name, out)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        """(B, T, 0) context, or (B, T, hidden) bias where the output projection lives inside."""
        context = hidden_states.new_zeros((*hidden_states.shape[:-1], 0))
        if self.out_name is not None:
            context = getattr(self, self.out_name)(context)
        return context, None


def passthrough(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A skipped encoder layer: (B, T, H) in, the same tensor out."""
    return hidden_states


def _resized(old: nn.Module, out_features: int | None = None, in_features: int | None = None) -> nn.Linear:
    """An uninitialised Linear like `old` with other sizes (the weights are loaded afterwards)."""
    assert isinstance(old, nn.Linear)
    sizes = (
        in_features if in_features is not None else old.in_features,
        out_features if out_features is not None else old.out_features,
    )
    with warnings.catch_warnings():  # a layer with no head or neuron left has zero-size weights
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        return nn.Linear(*sizes, bias=old.bias is not None, device=old.weight.device, dtype=old.weight.dtype)


def _cut_heads(layer: nn.Module, table: dict[str, Any], heads: int, head_size: int) -> None:
    """Give one layer's attention `heads` heads (none: `NoHeads`)."""
    attention = layer.get_submodule(table["attention"])
    width = heads * head_size
    inside = table["attention_output"].startswith(table["attention"] + ".")
    output = layer.get_submodule(table["attention_output"])
    layer.set_submodule(table["attention_output"], _resized(output, in_features=width))
    if heads == 0:
        out_name = table["attention_output"][len(table["attention"]) + 1 :] if inside else None
        out = layer.get_submodule(table["attention_output"]) if inside else None
        layer.set_submodule(table["attention"], NoHeads(out_name, out))
        return
    for name in table["qkv"]:
        attention.set_submodule(name, _resized(attention.get_submodule(name), out_features=width))
    for attr in ("num_attention_heads", "n_heads"):
        if hasattr(attention, attr):
            setattr(attention, attr, heads)
    if hasattr(attention, "all_head_size"):
        setattr(attention, "all_head_size", width)  # noqa: B010  (typed as a tensor)


def _layers(base: nn.Module, table: dict[str, Any]) -> nn.ModuleList:
    layers = base.get_submodule(table["layers"])
    assert isinstance(layers, nn.ModuleList)
    return layers


def _cut_ffn(layer: nn.Module, table: dict[str, Any], size: int) -> None:
    """Give one layer's FFN `size` neurons."""
    layer.set_submodule(table["ffn_in"], _resized(layer.get_submodule(table["ffn_in"]), out_features=size))
    layer.set_submodule(table["ffn_out"], _resized(layer.get_submodule(table["ffn_out"]), in_features=size))


def _slim(base: nn.Module, config: Any, table: dict[str, Any]) -> None:
    """Cut heads, FFN neurons and layers to the `prunebert_slim` layout (numbers of the full model)."""
    layout = getattr(config, "prunebert_slim", None)
    if not isinstance(layout, dict):
        return
    layers = _layers(base, table)
    head_size = config.hidden_size // config.num_attention_heads
    for number, layer in enumerate(layers):
        heads = len(layout["heads"][number])
        if heads != config.num_attention_heads:
            _cut_heads(layer, table, heads, head_size)
        size = layout["intermediate_sizes"][number]
        if size != layer.get_submodule(table["ffn_in"]).out_features:
            _cut_ffn(layer, table, size)
    if layout.get("layers") is not None:
        base.set_submodule(table["layers"], nn.ModuleList([layers[i] for i in layout["layers"]]))


def _lowrank(base: nn.Module, config: Any) -> None:
    """Replace the Linears `prunebert_lowrank` names (relative to the base model) by factorised ones."""
    entry = getattr(config, "prunebert_lowrank", None) or {}
    for kind, cls in (("factorized", LowRankLinear), ("split", SplitLinear)):
        for name, rank in entry.get(kind, {}).items():
            old = base.get_submodule(name)
            assert isinstance(old, nn.Linear)
            kind_of = {"device": old.weight.device, "dtype": old.weight.dtype}
            new = cls(old.in_features, old.out_features, rank, old.bias is not None, **kind_of)
            base.set_submodule(name, new)


def _skip(base: nn.Module, config: Any, table: dict[str, Any]) -> None:
    """Make the layers `prunebert_skipped_layers` lists hand their input on unchanged."""
    entry = getattr(config, "prunebert_skipped_layers", None) or {}
    layers = _layers(base, table)
    for number in entry.get("layers", []):
        layers[number].forward = passthrough


def pattern_matrix(pattern: str, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, T) row-stochastic attention of a fixed `pattern` for a (B, T) mask (1 = real token)."""
    t = mask.shape[1]
    pos = torch.arange(t, device=mask.device)
    rel = pos[None, :] - pos[:, None]  # (T, T): j - i
    chosen = {"current": rel == 0, "previous": rel == -1, "next": rel == 1, "left": rel < 0, "right": rel > 0}
    weights = chosen[pattern][None].float() * mask[:, None, :].float()  # (B, T, T), padding columns 0
    empty = weights.sum(-1, keepdim=True) == 0
    weights = torch.where(empty, torch.eye(t, device=mask.device).expand_as(weights), weights)
    return weights / weights.sum(-1, keepdim=True)


class FixedHeads:
    """Hooks giving the heads `prunebert_fixed_attention` names their fixed patterns (context = P @ V_h)."""

    def __init__(self, model: nn.Module, config: Any, table: dict[str, Any]) -> None:
        record = config.prunebert_fixed_attention["heads"]
        self.heads = {int(layer): {int(h): p for h, p in hs.items()} for layer, hs in record.items()}
        self.head_size = config.hidden_size // config.num_attention_heads
        self.mask: torch.Tensor | None = None
        self.values: dict[int, torch.Tensor] = {}
        self.signature = inspect.signature(model.forward)  # the transformers class's (see `Rebuilt`)
        layers = _layers(getattr(model, "base_model", model), table)
        for number in self.heads:
            attention = layers[number].get_submodule(table["attention"])
            attention.get_submodule(table["qkv"][2]).register_forward_hook(self.keep_value(number))
            output = layers[number].get_submodule(table["attention_output"])
            output.register_forward_pre_hook(self.replace_heads(number))

    def keep_mask(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Called with the model's forward arguments: keep the (B, T) attention_mask of this batch."""
        mask = self.signature.bind_partial(*args, **kwargs).arguments.get("attention_mask")
        if mask is not None and mask.dim() != 2:
            raise ValueError("fixed attention patterns need a (batch, tokens) attention_mask")
        self.mask, self.values = mask, {}

    def keep_value(self, number: int) -> Any:
        def hook(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
            self.values[number] = output  # (B, T, H): every head's V

        return hook

    def replace_heads(self, number: int) -> Any:
        d = self.head_size

        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            context, values = args[0], self.values.pop(number)  # (B, T, H) each
            batch, tokens = context.shape[:2]
            mask = self.mask if self.mask is not None else torch.ones(batch, tokens, device=context.device)
            pieces = list(context.split(d, dim=-1))
            for head, name in self.heads[number].items():
                pattern = pattern_matrix(name, mask.to(context.device)).to(values.dtype)
                pieces[head] = pattern @ values[..., head * d : (head + 1) * d]
            return (torch.cat(pieces, dim=-1), *args[1:])

        return hook


def rebuild(model: nn.Module, config: Any) -> None:
    """Change a freshly built model to the structure its config records, before its weights are loaded."""
    base_type = config.model_type.removeprefix(MODEL_TYPE_PREFIX)
    table = FAMILIES[base_type][1]
    base = getattr(model, "base_model", model)
    _slim(base, config, table)
    _lowrank(base, config)
    _skip(base, config, table)
    if isinstance(getattr(config, "prunebert_fixed_attention", None), dict):
        model.__dict__[_FIXED] = FixedHeads(model, config, table)  # not a submodule


_FIXED = "_prunebert_fixed_heads"


class Rebuilt:
    """Mixin: the transformers model of the same head, rebuilt to the recorded structure once constructed."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)  # type: ignore[call-arg]
        rebuild(self, config)  # type: ignore[arg-type]


def _forward(base: Any) -> Any:
    """`base.forward` (same signature) that first hands its arguments to the fixed heads, if any.

    A forward override rather than a forward pre-hook: sentence-transformers calls `model.forward`
    directly, which runs no hooks of the model itself.
    """
    original = base.forward

    @functools.wraps(original)
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        fixed = self.__dict__.get(_FIXED)
        if fixed is not None:
            fixed.keep_mask(args, kwargs)
        return original(self, *args, **kwargs)

    return forward


@functools.cache
def _classes() -> dict[str, type]:
    """`Prunebert<Stem>Config` and `Prunebert<Stem><Head>` for every family, as `auto_map` names them."""
    classes: dict[str, type] = {}
    for model_type, (stem, _) in FAMILIES.items():
        base_config = getattr(transformers, f"{stem}Config")
        config_body: dict[str, Any] = {"model_type": MODEL_TYPE_PREFIX + model_type}
        config = type(f"{CLASS_PREFIX}{stem}Config", (base_config,), config_body)
        classes[config.__name__] = config
        for head in HEADS:
            base_model = getattr(transformers, stem + head, None)
            if base_model is not None:
                name = f"{CLASS_PREFIX}{stem}{head}"
                body: dict[str, Any] = {"config_class": config, "forward": _forward(base_model)}
                classes[name] = type(name, (Rebuilt, base_model), body)
    return classes


def __getattr__(name: str) -> type:
    """The classes `auto_map` names, built on first use (importing this file loads no model family)."""
    classes = _classes()
    if name not in classes:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return classes[name]
