"""Physical slimming: drop whole heads and FFN neurons so the model really is smaller and faster.

A head or neuron whose columns of the output projection (attention_output / ffn_out) are all zero
contributes nothing (see `prunebert.structure`), so removing its rows of query/key/value (ffn_in) and
its columns of the output projection gives exactly the same outputs. Layers may end up with different
numbers of heads and intermediate sizes; a layer with no head left keeps only the output projection's
bias (and the residual), a layer with no neuron left works with zero-width FFN matrices.

transformers v5 dropped `prune_heads` / `config.pruned_heads`, so a slimmed model is saved as a normal
`save_pretrained` directory whose config.json carries one extra entry,

    "prunebert_slim": {"version": 1, "heads": [[kept head indices] per layer],
                       "intermediate_sizes": [kept neurons per layer], "layers": [kept layers]}

("layers" only when whole layers were dropped, which unlike heads and neurons changes the outputs; all
numbers are the original model's; the config's own sizes stay those of the full model).
`load_slim` (and `prunebert.models.load_model`) builds the full architecture from the config, shrinks
each layer to that layout, rebuilds the factorised modules of a `prunebert_lowrank` entry
(`prunebert.transforms.lowrank`), then loads the smaller safetensors strictly. Saved by prunebert, the
directory also carries that rebuild as modeling code for plain transformers (`trust_remote_code=True`,
`prunebert.transforms.custom_code`). Heads and neurons whose projections are factorised are never cut.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from prunebert.errors import PrunebertError
from prunebert.model_files import align_keys, weight_files
from prunebert.structure import INPUT_ROLES, OUTPUT_ROLES, GroupSet, encoder_layers, group_sets, kept_groups
from prunebert.targets import ENCODER_ROLES, find_targets, role_modules
from prunebert.transforms.layer_skip import renumber_skipped
from prunebert.transforms.lowrank import has_lowrank, rebuild_lowrank, renumber_lowrank
from prunebert.transforms.saved_config import read_config

__all__ = [
    "SLIM_KEY",
    "NoHeads",
    "SlimPlan",
    "is_slim",
    "layer_count",
    "load_slim",
    "plan_slim",
    "slice_masks",
    "slim_model",
    "slim_with_changes",
]

SLIM_KEY = "prunebert_slim"
_KIND = {role: kind for kind, out in OUTPUT_ROLES.items() for role in (out, *INPUT_ROLES[kind])}


class NoHeads(nn.Module):
    """Stands in for a self-attention module whose heads were all removed.

    Its output is zero-width (B, T, 0), so the attention output projection that follows yields its bias;
    where that projection lives inside the attention module (DistilBERT's `out_lin`) it is kept here
    under its own name and applied, giving the same bias.
    """

    def __init__(self, out_name: str | None = None, out: nn.Module | None = None) -> None:
        super().__init__()
        self.out_name = out_name
        if out_name is not None and out is not None:
            self.add_module(out_name, out)

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
        """(B, T, 0) context (or the inner projection's bias), and no attention weights."""
        context = hidden_states.new_zeros((*hidden_states.shape[:-1], 0))  # (B, T, 0): no heads
        if self.out_name is not None:
            context = getattr(self, self.out_name)(context)  # (B, T, hidden): the bias
        return context, None


@dataclass(frozen=True)
class SlimPlan:
    """Per group set (key `heads.3`, `neurons.3`): indices of the groups kept, in the model's numbering;
    `layers`: the encoder layers kept (None = all)."""

    keep: dict[str, list[int]]
    totals: dict[str, int]
    layers: list[int] | None = None

    def _kept_layer(self, key: str) -> bool:
        return self.layers is None or int(key.split(".")[1]) in self.layers

    def removed(self) -> int:
        """How many heads and neurons of the kept layers the plan drops."""
        return sum(self.totals[k] - len(v) for k, v in self.keep.items() if self._kept_layer(k))

    def count(self, kind: str) -> tuple[int, int]:
        """(kept, total) groups of `kind` (`heads` or `neurons`): kept in kept layers, total in all."""
        keys = [k for k in self.keep if k.startswith(kind + ".")]
        kept = sum(len(self.keep[k]) for k in keys if self._kept_layer(k))
        return kept, sum(self.totals[k] for k in keys)


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    weight = model.get_submodule(name).weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _sets(model: PreTrainedModel) -> list[GroupSet]:
    """The head / neuron sets that can be cut: those whose projections are all plain Linears."""
    modules = role_modules(model, tuple(_KIND))
    blocked = {(t.layer, _KIND[t.role]) for t, m in modules if not isinstance(m, nn.Linear)}  # lowrank
    try:
        targets = find_targets(model, ENCODER_ROLES)
    except PrunebertError:  # every projection is a split factorisation: nothing to cut
        return []
    return group_sets([t for t in targets if (t.layer, _KIND[t.role]) not in blocked], model.config)


def plan_slim(model: PreTrainedModel, drop_layers: Sequence[int] = ()) -> SlimPlan:
    """Keep every head / neuron whose output columns have a nonzero weight; the rest can go.

    `drop_layers` (current layer numbers) also removes whole encoder layers: unlike heads and neurons
    this changes the outputs (LayerDrop-trained models are made for it; evaluate the result).
    """
    keep, totals = {}, {}
    for s in _sets(model):
        kept = kept_groups(_weight(model, s.output.name), s.group_size)
        keep[s.key] = kept.nonzero().flatten().tolist()
        totals[s.key] = kept.numel()
    if not drop_layers:
        return SlimPlan(keep, totals)
    count = len(encoder_layers(model)[1])
    bad = sorted(i for i in drop_layers if not 0 <= i < count)
    if bad or len(set(drop_layers)) >= count:
        raise PrunebertError(
            f"cannot drop layers {sorted(drop_layers)} of a {count}-layer model; give distinct numbers "
            f"from 0 to {count - 1} and keep at least one layer"
        )
    return SlimPlan(keep, totals, [i for i in range(count) if i not in set(drop_layers)])


def layer_count(model: nn.Module) -> int:
    """Number of encoder layers the model has now."""
    return len(encoder_layers(model)[1])


def _take_linear(module: nn.Module, index: torch.Tensor, axis: int) -> nn.Linear:
    """A new Linear with only the rows (axis 0) or columns (axis 1) in `index`."""
    if not isinstance(module, nn.Linear):
        raise PrunebertError(f"cannot slim a {type(module).__name__}; only nn.Linear projections can be cut")
    weight = module.weight.detach().index_select(axis, index.to(module.weight.device))
    bias = None if module.bias is None else module.bias.detach()
    if bias is not None and axis == 0:
        bias = bias.index_select(0, index.to(bias.device))
    out_features, in_features = weight.shape
    kind = {"device": weight.device, "dtype": weight.dtype}
    with warnings.catch_warnings():  # a layer with nothing left has zero-size weights: nothing to init
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        new: nn.Linear = torch.nn.utils.skip_init(
            nn.Linear, in_features, out_features, bias is not None, **kind
        )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None and new.bias is not None:
            new.bias.copy_(bias)
    return new.train(module.training)


def _shrink_heads(model: nn.Module, s: GroupSet, kept: int) -> list[str]:
    """Tell the attention module its new head count, or replace it by `NoHeads`; returns dropped targets."""
    if not s.inputs:
        return []
    parent = s.inputs[0].name.rsplit(".", 1)[0]  # the module holding query/key/value
    attention = model.get_submodule(parent)
    if kept == 0:
        inside = s.output.name.startswith(parent + ".")
        out_name = s.output.name[len(parent) + 1 :] if inside else None
        model.set_submodule(parent, NoHeads(out_name, model.get_submodule(s.output.name) if inside else None))
        return [t.name for t in s.inputs]
    for attr in ("num_attention_heads", "n_heads"):
        if hasattr(attention, attr):
            setattr(attention, attr, kept)
    if hasattr(attention, "all_head_size"):
        setattr(attention, "all_head_size", kept * s.group_size)  # noqa: B010  (typed as a tensor)
    return []


Cuts = dict[str, tuple[int, torch.Tensor]]  # weight key -> (axis, kept indices)


def _apply(model: PreTrainedModel, plan: SlimPlan) -> tuple[Cuts, list[str], dict[str, str]]:
    """Cut the model to `plan` in place; returns the cuts, the dropped keys and renamed keys (old -> new)."""
    cuts: Cuts = {}
    dropped: list[str] = []
    for s in _sets(model):
        if plan.layers is not None and s.layer not in plan.layers:
            continue  # the whole layer goes
        keep = plan.keep.get(s.key)
        groups = _weight(model, s.output.name).shape[1] // s.group_size
        if keep is None or keep == list(range(groups)):
            continue
        groups_kept = torch.tensor(keep, dtype=torch.long)
        index = (groups_kept[:, None] * s.group_size + torch.arange(s.group_size)).flatten()
        for target, axis in s.members():
            model.set_submodule(target.name, _take_linear(model.get_submodule(target.name), index, axis))
            cuts[target.param_name] = (axis, index)
        if s.kind == "heads":
            dropped += [name + ".weight" for name in _shrink_heads(model, s, len(keep))]
    renamed = _drop_layers(model, plan.layers, dropped) if plan.layers is not None else {}
    return cuts, dropped, renamed


def _drop_layers(model: nn.Module, kept: list[int], dropped: list[str]) -> dict[str, str]:
    """Keep only the layers `kept`; adds their keys to `dropped`, returns the renumbered keys (old -> new)."""
    name, layers = encoder_layers(model)
    new_number = {old: new for new, old in enumerate(kept)}
    renamed = {}
    for key in model.state_dict():
        if not key.startswith(name + "."):
            continue
        number, _, rest = key[len(name) + 1 :].partition(".")
        if int(number) in new_number:
            renamed[key] = f"{name}.{new_number[int(number)]}.{rest}"
        else:
            dropped.append(key)
    model.set_submodule(name, nn.ModuleList([layers[i] for i in kept]))
    return renamed


# -- the layout in config.json -------------------------------------------------------------------------
def is_slim(config: PretrainedConfig) -> bool:
    """Whether `config` describes a slimmed model (it carries the `prunebert_slim` entry)."""
    return isinstance(getattr(config, SLIM_KEY, None), dict)


def _layout_after(model: PreTrainedModel, plan: SlimPlan) -> dict[str, Any]:
    """The `prunebert_slim` entry once `plan` is applied; layers and heads in the original numbering."""
    config = model.config
    old = getattr(config, SLIM_KEY, None) or {}
    sets = _sets(model)
    current = old.get("layers") or list(range(layer_count(model)))  # original number of each layer
    ffn = getattr(config, "intermediate_size", None) or config.hidden_dim  # DistilBERT: hidden_dim
    # never slimmed: every layer is full (sets whose projections are factorised are never cut)
    heads = [
        list(h) for h in old.get("heads", [range(config.num_attention_heads)] * config.num_hidden_layers)
    ]
    sizes = list(old.get("intermediate_sizes", [ffn] * config.num_hidden_layers))
    for s in sets:
        groups = _weight(model, s.output.name).shape[1] // s.group_size
        kept, original = plan.keep.get(s.key, list(range(groups))), current[s.layer]
        if s.kind == "heads":
            heads[original] = [heads[original][i] for i in kept]
        else:
            sizes[original] = len(kept)
    layout: dict[str, Any] = {"version": 1, "heads": heads, "intermediate_sizes": sizes}
    if plan.layers is not None or "layers" in old:
        layout["layers"] = [current[i] for i in plan.layers] if plan.layers is not None else current
    return layout


def _plan_from_layout(model: PreTrainedModel, layout: dict[str, Any], source: str) -> SlimPlan:
    """The plan that cuts a freshly built full-size model down to a saved layout (validated)."""
    heads, sizes = layout.get("heads"), layout.get("intermediate_sizes")
    layers = model.config.num_hidden_layers
    if layout.get("version") != 1 or not isinstance(heads, list) or not isinstance(sizes, list):
        raise PrunebertError(f"{source}: unreadable {SLIM_KEY} entry in config.json; re-run prunebert slim")
    if len(heads) != layers or len(sizes) != layers:
        raise PrunebertError(f"{source}: {SLIM_KEY} does not list all {layers} layers; re-run prunebert slim")
    keep, totals = {}, {}
    for s in _sets(model):
        total = _weight(model, s.output.name).shape[1] // s.group_size
        kept = heads[s.layer] if s.kind == "heads" else list(range(sizes[s.layer]))
        if not all(isinstance(i, int) for i in kept) or sorted(set(kept)) != kept or kept[-1:] >= [total]:
            raise PrunebertError(f"{source}: bad {s.kind} list of layer {s.layer} in {SLIM_KEY}; re-run slim")
        keep[s.key], totals[s.key] = kept, total
    kept_layers = layout.get("layers")
    if kept_layers is not None and (
        not isinstance(kept_layers, list)
        or not kept_layers
        or not all(isinstance(i, int) for i in kept_layers)
        or sorted(set(kept_layers)) != kept_layers
        or not 0 <= kept_layers[0] <= kept_layers[-1] < layers
    ):
        raise PrunebertError(f"{source}: bad layers list in {SLIM_KEY}; re-run prunebert slim")
    return SlimPlan(keep, totals, kept_layers)


def slim_model(model: PreTrainedModel, plan: SlimPlan | None = None) -> PreTrainedModel:
    """Remove the heads and neurons `plan` drops (default: all whose output columns are zero), in place."""
    slim_with_changes(model, plan or plan_slim(model))
    return model


def slim_with_changes(model: PreTrainedModel, plan: SlimPlan) -> tuple[Cuts, list[str], dict[str, str]]:
    """`slim_model` that also returns what changed, for `slice_masks`: cuts, dropped keys, renamed keys."""
    layout, layers_name = _layout_after(model, plan), encoder_layers(model)[0]
    changes = _apply(model, plan)
    setattr(model.config, SLIM_KEY, layout)
    if plan.layers is not None:  # entries numbered by current layer follow the renumbering
        renumber_lowrank(model, layers_name, plan.layers)
        renumber_skipped(model.config, plan.layers)
    return changes


def slice_masks(
    masks: dict[str, torch.Tensor], cuts: Cuts, dropped: list[str], renamed: dict[str, str] | None = None
) -> dict[str, torch.Tensor]:
    """Masks of the full model cut (and renamed) like its weights, so further training keeps their zeros."""
    out = {}
    for name, mask in masks.items():
        if name in dropped:
            continue
        axis, index = cuts.get(name, (0, None))
        out[(renamed or {}).get(name, name)] = mask if index is None else mask.index_select(axis, index)
    return out


# -- loading ---------------------------------------------------------------------------------------------
def _load_weights(model: PreTrainedModel, directory: Path) -> list[str]:
    """Load the saved tensors into the slimmed skeleton; returns the keys of a newly initialised head."""
    own = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(directory, "pass a directory written by prunebert slim"):
        state.update(align_keys(load_file(str(file)), own, model.base_model_prefix))
    for key, value in state.items():
        if key in own and value.shape != own[key].shape:
            raise PrunebertError(
                f"{directory}: {key} has shape {tuple(value.shape)} but the layout in config.json gives "
                f"{tuple(own[key].shape)}; the weights and config.json come from different models"
            )
    loadable = {k: v for k, v in state.items() if k in own}  # other keys: a head this class lacks
    model.load_state_dict(loadable, strict=False)
    loaded = {own[k].data_ptr() for k in loadable if own[k].numel()}
    missing = [k for k in own if k not in loadable and not (own[k].numel() and own[k].data_ptr() in loaded)]
    base = model.base_model is model
    encoder_missing = [k for k in missing if base or k.startswith(model.base_model_prefix + ".")]
    if encoder_missing:
        raise PrunebertError(
            f"{directory} has no weight for {encoder_missing[0]} (and {len(encoder_missing) - 1} more); "
            "the directory is incomplete: re-run `prunebert slim`"
        )
    return missing


def _saved_class(config: PretrainedConfig) -> Any:
    """The transformers class named in config.json's `architectures`, else AutoModel."""
    name = (config.architectures or [""])[0]
    return getattr(transformers, name, None) or AutoModel


def load_slim_with_info(
    path: str | Path, model_class: Any = None, **config_kwargs: Any
) -> tuple[PreTrainedModel, list[str]]:
    """`load_slim`, also returning the keys that were newly initialised (a new task head)."""
    directory = Path(path)
    config = read_config(directory, **config_kwargs)
    if not is_slim(config) and not has_lowrank(config):
        raise PrunebertError(
            f"{path} is not a slimmed model (no {SLIM_KEY} in config.json); load it with from_pretrained"
        )
    cls = model_class or _saved_class(config)
    model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    if is_slim(config):
        _apply(model, _plan_from_layout(model, getattr(config, SLIM_KEY), str(path)))
    if has_lowrank(config):  # after the cuts: module names carry the current layer numbers
        rebuild_lowrank(model, str(path))
    missing = _load_weights(model, directory)
    return model.eval(), missing


def load_slim(path: str | Path, model_class: Any = None, **config_kwargs: Any) -> PreTrainedModel:
    """Load a slimmed model: the full architecture from its config, cut to the saved layout, weights loaded.

    Also loads a model with factorised modules only (a `prunebert_lowrank` entry, no `prunebert_slim`).
    `model_class` defaults to the saved class (e.g. BertForSequenceClassification); pass `AutoModel`
    for the bare encoder. `config_kwargs` go to the config (e.g. `num_labels`).
    """
    return load_slim_with_info(path, model_class, **config_kwargs)[0]
