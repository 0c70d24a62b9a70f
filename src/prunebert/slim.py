"""Physical slimming: drop whole heads and FFN neurons so the model really is smaller and faster.

A head or neuron whose columns of the output projection (attention_output / ffn_out) are all zero
contributes nothing (see `prunebert.structure`), so removing its rows of query/key/value (ffn_in) and
its columns of the output projection gives exactly the same outputs. Layers may end up with different
numbers of heads and intermediate sizes; a layer with no head left keeps only the output projection's
bias (and the residual), a layer with no neuron left works with zero-width FFN matrices.

transformers v5 dropped `prune_heads` / `config.pruned_heads`, so a slimmed model is saved as a normal
`save_pretrained` directory whose config.json carries one extra entry,

    "prunebert_slim": {"version": 1, "heads": [[kept head indices] per layer],
                       "intermediate_sizes": [kept neurons per layer]}

(the config's own sizes stay those of the full model: the head size is hidden_size / num_attention_heads).
`load_slim` (and `prunebert.models.load_model`) builds the full architecture from the config, shrinks
each layer to that layout, then loads the smaller safetensors strictly. Plain `from_pretrained` cannot
load it: the shapes do not match the config.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import transformers
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel

from prunebert.errors import PrunebertError
from prunebert.io import write_json
from prunebert.masks import MASKS_FILE, save_masks
from prunebert.structure import GroupSet, group_sets, kept_groups
from prunebert.targets import ENCODER_ROLES, find_targets

__all__ = [
    "SLIM_KEY",
    "NoHeads",
    "SlimPlan",
    "format_summary",
    "is_slim",
    "load_slim",
    "plan_slim",
    "run_slim",
    "slice_masks",
    "slim_model",
]

SLIM_KEY = "prunebert_slim"


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
    """Per group set (key `heads.3`, `neurons.3`): indices of the groups kept, in the model's numbering."""

    keep: dict[str, list[int]]
    totals: dict[str, int]

    def removed(self) -> int:
        """How many heads and neurons the plan drops."""
        return sum(self.totals[k] - len(v) for k, v in self.keep.items())

    def count(self, kind: str) -> tuple[int, int]:
        """(kept, total) groups of `kind` (`heads` or `neurons`) over all layers."""
        keys = [k for k in self.keep if k.startswith(kind + ".")]
        return sum(len(self.keep[k]) for k in keys), sum(self.totals[k] for k in keys)


def _weight(model: nn.Module, name: str) -> torch.Tensor:
    weight = model.get_submodule(name).weight
    assert isinstance(weight, torch.Tensor)
    return weight


def _sets(model: PreTrainedModel) -> list[GroupSet]:
    return group_sets(find_targets(model, ENCODER_ROLES), model.config)


def plan_slim(model: PreTrainedModel) -> SlimPlan:
    """Keep every head / neuron whose output columns have a nonzero weight; the rest can go."""
    keep, totals = {}, {}
    for s in _sets(model):
        kept = kept_groups(_weight(model, s.output.name), s.group_size)
        keep[s.key] = kept.nonzero().flatten().tolist()
        totals[s.key] = kept.numel()
    return SlimPlan(keep, totals)


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


def _apply(model: PreTrainedModel, plan: SlimPlan) -> tuple[dict[str, tuple[int, torch.Tensor]], list[str]]:
    """Cut the model to `plan` in place; returns {weight key: (axis, kept index)} and dropped weight keys."""
    cuts: dict[str, tuple[int, torch.Tensor]] = {}
    dropped: list[str] = []
    for s in _sets(model):
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
    return cuts, dropped


# -- the layout in config.json -------------------------------------------------------------------------
def is_slim(config: PretrainedConfig) -> bool:
    """Whether `config` describes a slimmed model (it carries the `prunebert_slim` entry)."""
    return isinstance(getattr(config, SLIM_KEY, None), dict)


def _layout_after(config: PretrainedConfig, plan: SlimPlan) -> dict[str, Any]:
    """The `prunebert_slim` entry once `plan` is applied, head indices in the original model's numbering."""
    old = getattr(config, SLIM_KEY, None) or {}
    heads, sizes = [], []
    for layer in range(config.num_hidden_layers):
        total = plan.totals.get(f"heads.{layer}", config.num_attention_heads)
        original = old["heads"][layer] if old else list(range(total))
        kept = plan.keep.get(f"heads.{layer}", list(range(total)))
        heads.append([original[i] for i in kept])
        sizes.append(len(plan.keep.get(f"neurons.{layer}", range(plan.totals.get(f"neurons.{layer}", 0)))))
    return {"version": 1, "heads": heads, "intermediate_sizes": sizes}


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
    return SlimPlan(keep, totals)


def slim_model(model: PreTrainedModel, plan: SlimPlan | None = None) -> PreTrainedModel:
    """Remove the heads and neurons `plan` drops (default: all whose output columns are zero), in place."""
    _slim(model, plan or plan_slim(model))
    return model


def _slim(model: PreTrainedModel, plan: SlimPlan) -> tuple[dict[str, tuple[int, torch.Tensor]], list[str]]:
    layout = _layout_after(model.config, plan)
    cuts, dropped = _apply(model, plan)
    setattr(model.config, SLIM_KEY, layout)
    return cuts, dropped


def slice_masks(
    masks: dict[str, torch.Tensor], cuts: dict[str, tuple[int, torch.Tensor]], dropped: list[str]
) -> dict[str, torch.Tensor]:
    """Masks of the full model cut like its weights, so further training keeps the remaining zeros."""
    out = {}
    for name, mask in masks.items():
        if name in dropped:
            continue
        axis, index = cuts.get(name, (0, None))
        out[name] = mask if index is None else mask.index_select(axis, index.to(mask.device))
    return out


# -- loading ---------------------------------------------------------------------------------------------
def _weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return [directory / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    if not (directory / "model.safetensors").is_file():
        raise PrunebertError(
            f"no model.safetensors in {directory}; pass a directory written by prunebert slim"
        )
    return [directory / "model.safetensors"]


def _load_weights(model: PreTrainedModel, directory: Path) -> list[str]:
    """Load the saved tensors into the slimmed skeleton; returns the keys of a newly initialised head."""
    own = model.state_dict()
    prefix = model.base_model_prefix + "."
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(directory):
        for key, value in load_file(str(file)).items():
            if key not in own and prefix + key in own:  # saved headless, loaded with a head
                key = prefix + key
            elif key not in own and key.removeprefix(prefix) in own:  # saved with a head, loaded headless
                key = key.removeprefix(prefix)
            state[key] = value
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
    encoder_missing = [k for k in missing if base or k.startswith(prefix)]
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
    config = AutoConfig.from_pretrained(directory, **config_kwargs)
    if not is_slim(config):
        raise PrunebertError(
            f"{path} is not a slimmed model (no {SLIM_KEY} in config.json); load it with from_pretrained"
        )
    cls = model_class or _saved_class(config)
    model = cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
    _apply(model, _plan_from_layout(model, getattr(config, SLIM_KEY), str(path)))
    missing = _load_weights(model, directory)
    return model.eval(), missing


def load_slim(path: str | Path, model_class: Any = None, **config_kwargs: Any) -> PreTrainedModel:
    """Load a slimmed model: the full architecture from its config, cut to the saved layout, weights loaded.

    `model_class` defaults to the saved class (e.g. BertForSequenceClassification); pass `AutoModel`
    for the bare encoder. `config_kwargs` go to `AutoConfig.from_pretrained` (e.g. `num_labels`).
    """
    return load_slim_with_info(path, model_class, **config_kwargs)[0]


# -- the `prunebert slim` command ------------------------------------------------------------------------
def _head(config: PretrainedConfig) -> Literal["mlm", "classification", "base"]:
    name = " ".join(config.architectures or [])
    return "classification" if "SequenceClassification" in name else "mlm" if "MaskedLM" in name else "base"


@torch.no_grad()
def _outputs(model: PreTrainedModel) -> torch.Tensor:
    """The first output (logits or hidden states) on a fixed random batch with some padding."""
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 11:] = 0
    device = next(model.parameters()).device
    output: torch.Tensor = model(input_ids=ids.to(device), attention_mask=attention_mask.to(device))[0]
    return output.float()


def run_slim(source: str, output: Path, overwrite: bool = False) -> dict[str, Any]:
    """Slim `source` into `output` (model, tokenizer, cut masks, slim.json); returns the summary."""
    from prunebert.models import load_config, load_model, transfer_pruner  # models imports this module

    if (output / "config.json").exists() and not overwrite:
        raise PrunebertError(f"{output} already holds a model; pass --overwrite or choose another OUT")
    loaded = load_model(source, head=_head(load_config(source)))
    model = loaded.model.eval()
    pruner = transfer_pruner(model, loaded.path, None)
    plan = plan_slim(model)
    if plan.removed() == 0:
        raise PrunebertError(
            f"{source} has no attention head or FFN neuron whose output weights are all zero, so nothing can "
            "be removed; prune it with --pruning.method heads, neurons or structured first"
        )
    before, reference = sum(p.numel() for p in model.parameters()), _outputs(model)
    cuts, dropped = _slim(model, plan)
    diff = (_outputs(model) - reference).abs().max().item()
    model.save_pretrained(output, safe_serialization=True)
    loaded.tokenizer.save_pretrained(output)
    if pruner is not None:  # the remaining (unstructured) zeros stay fixed if the model is trained further
        masks = slice_masks(pruner.masks, cuts, dropped)
        kept = sum(int(m.sum()) for m in masks.values())
        roles = {t.param_name: t.role for t in pruner.targets if t.param_name in masks}
        sparsity = 1.0 - kept / max(1, sum(m.numel() for m in masks.values()))
        save_masks(masks, output / MASKS_FILE, {"sparsity": sparsity, "roles": roles, "slimmed_from": source})
    summary = {
        "source": source,
        "output": str(output),
        "parameters_before": before,
        "parameters_after": sum(p.numel() for p in model.parameters()),
        "heads_kept": list(plan.count("heads")),
        "neurons_kept": list(plan.count("neurons")),
        "max_abs_diff": diff,
        SLIM_KEY: getattr(model.config, SLIM_KEY),
    }
    write_json(output / "slim.json", summary)
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A few readable lines for the terminal."""
    before, after = summary["parameters_before"], summary["parameters_after"]
    heads, neurons = summary["heads_kept"], summary["neurons_kept"]
    return "\n".join(
        [
            f"parameters: {before:,} -> {after:,} ({after / before:.1%} of the original)",
            f"attention heads kept: {heads[0]} of {heads[1]}; FFN neurons kept: {neurons[0]} of {neurons[1]}",
            f"max |slimmed - original| output on a random batch: {summary['max_abs_diff']:.2e}",
            f"written: {summary['output']} (details: {summary['output']}/slim.json)",
        ]
    )
