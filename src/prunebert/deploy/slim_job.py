"""`prunebert slim`: load a pruned model, remove zeroed heads / neurons, skipped and chosen layers and pruned
rank components, check, save."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from prunebert.errors import PrunebertError
from prunebert.io import check_output_dir, staged_dir, write_json
from prunebert.masks import MASKS_FILE, save_masks
from prunebert.model_card import write_slim_card
from prunebert.models import Head, load_config, load_model, save_pruned, transfer_pruner
from prunebert.transforms.layer_skip import skipped_layers
from prunebert.transforms.lowrank import LOWRANK_KEY, factorized_names, slim_lowrank
from prunebert.transforms.slim import SLIM_KEY, layer_count, plan_slim, slice_masks, slim_with_changes

__all__ = ["format_summary", "run_slim"]


def _head(config: PretrainedConfig) -> Head:
    """The head the saved model carries, so slimming keeps it."""
    name = " ".join(config.architectures or [])
    heads: list[tuple[str, Head]] = [
        ("SequenceClassification", "classification"),
        ("QuestionAnswering", "qa"),
        ("ForPreTraining", "pretraining"),
        ("MaskedLM", "mlm"),
    ]
    return next((head for marker, head in heads if marker in name), "base")


@torch.no_grad()
def _outputs(model: PreTrainedModel) -> torch.Tensor:
    """The first output (logits or hidden states) on a fixed random batch with some padding."""
    ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    attention_mask = torch.ones_like(ids)
    attention_mask[1, 11:] = 0
    device = next(model.parameters()).device
    output: torch.Tensor = model(input_ids=ids.to(device), attention_mask=attention_mask.to(device))[0]
    return output.float()


def run_slim(
    source: str, output: Path, overwrite: bool = False, drop_layers: Sequence[int] = ()
) -> dict[str, Any]:
    """Slim `source` into `output` (model, tokenizer, cut masks, model card, slim.json); returns the summary.

    Layers a LayerDrop run skips are dropped with those in `drop_layers`; factorised modules (lowrank)
    become two smaller Linears or one dense Linear (`prunebert.transforms.lowrank.slim_lowrank`).
    """
    check_output_dir(output, Path(source), overwrite, holds="config.json")
    loaded = load_model(source, head=_head(load_config(source)))
    check_output_dir(output, Path(loaded.path), overwrite, holds="config.json")
    model = loaded.model.eval()
    pruner = transfer_pruner(model, loaded.path, None)
    skipped = skipped_layers(model.config)  # removing a skipped layer changes nothing
    plan = plan_slim(model, sorted({*drop_layers, *skipped}))
    factorized = [name + ".weight" for name in factorized_names(model)]  # their masks go with them
    if plan.removed() == 0 and not drop_layers and not skipped and not factorized:
        raise PrunebertError(
            f"{source} has no attention head or FFN neuron whose output weights are all zero, so nothing can "
            "be removed; prune it with --pruning.method heads, neurons or structured first (or layerdrop, "
            "lowrank)"
        )
    before, reference = sum(p.numel() for p in model.parameters()), _outputs(model)
    nothing: tuple[Any, list[str], dict[str, str]] = ({}, [], {})  # only factorised modules to slim
    removes = plan.removed() or plan.layers is not None
    cuts, dropped, renamed = slim_with_changes(model, plan) if removes else nothing
    lowrank = slim_lowrank(model) if factorized else None
    diff = (_outputs(model) - reference).abs().max().item()
    masks = {} if pruner is None else slice_masks(dict(pruner.masks), cuts, dropped + factorized, renamed)
    targets = [] if pruner is None else pruner.targets
    roles = {renamed.get(t.param_name, t.param_name): t.role for t in targets}
    summary = {
        "source": source,
        "output": str(output),
        "parameters_before": before,
        "parameters_after": sum(p.numel() for p in model.parameters()),
        "heads_kept": list(plan.count("heads")),
        "neurons_kept": list(plan.count("neurons")),
        "layers_kept": [layer_count(model), model.config.num_hidden_layers],
        "layers_skipped_before": skipped,
        "lowrank": lowrank,
        "max_abs_diff": diff,
        SLIM_KEY: getattr(model.config, SLIM_KEY, None),
        LOWRANK_KEY: getattr(model.config, LOWRANK_KEY, None),
    }
    with staged_dir(output) as stage:  # OUTPUT appears whole (model, masks, card, slim.json...) or not
        save_pruned(model, loaded.tokenizer, None, stage)  # + its modeling code, sentence modules
        if masks:  # the remaining (unstructured) zeros stay fixed in further training
            _save_cut_masks(masks, roles, source, stage)
        write_slim_card(stage, summary, Path(loaded.path))  # + the source's recipe.yaml, results.json
        write_json(stage / "slim.json", summary)
    return summary


def _save_cut_masks(masks: dict[str, torch.Tensor], roles: dict[str, str], source: str, out: Path) -> None:
    """The masks cut like the weights, with their roles, beside the slimmed model."""
    kept = sum(int(m.sum()) for m in masks.values())
    sparsity = 1.0 - kept / max(1, sum(m.numel() for m in masks.values()))
    roles = {name: role for name, role in roles.items() if name in masks}
    save_masks(masks, out / MASKS_FILE, {"sparsity": sparsity, "roles": roles, "slimmed_from": source})


def format_summary(summary: dict[str, Any]) -> str:
    """A few readable lines for the terminal."""
    before, after = summary["parameters_before"], summary["parameters_after"]
    heads, neurons, layers = summary["heads_kept"], summary["neurons_kept"], summary["layers_kept"]
    changed = ""
    if layers[0] < layers[1] and summary["max_abs_diff"] > 1e-4:
        changed = " (layers dropped: outputs change by design; evaluate it)"
    lines = [f"parameters: {before:,} -> {after:,} ({after / before:.1%} of the original)"]
    if heads[1] or neurons[1]:  # none when every projection is factorised
        lines.append(
            f"attention heads kept: {heads[0]} of {heads[1]}; FFN neurons kept: {neurons[0]} of {neurons[1]}"
        )
    lines.append(f"encoder layers kept: {layers[0]} of {layers[1]}")
    if summary.get("lowrank"):
        low = summary["lowrank"]
        lines.append(
            f"rank components kept: {low['ranks_kept'][0]} of {low['ranks_kept'][1]}; "
            f"{len(low['split'])} matrices split in two, {len(low['merged'])} multiplied back"
        )
    return "\n".join(
        [
            *lines,
            f"max |slimmed - original| output on a random batch: {summary['max_abs_diff']:.2e}{changed}",
            f"written: {summary['output']} (details: {summary['output']}/slim.json)",
        ]
    )
