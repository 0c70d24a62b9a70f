"""A model directory that can be shared on its own: a model card and the run record beside the weights.

At the end of a run, `OUT/model/` gets a copy of the run's `recipe.yaml` and `results.json` and a
`README.md` in the Hugging Face hub's model-card format: YAML metadata (base_model, tags with `prunebert`
and `pruned`, datasets, metrics, pipeline_tag) and a text stating the method, the sparsity reached, the
structure (what slimming, low-rank, LayerDrop or fixed attention changed), the measured results, the
recipe and how to load the model. `prunebert slim` writes the card of the model it makes the same way
(`write_slim_card`): the source's record, if any, and what slimming removed.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from prunebert.io import atomic_path, expect_mapping, read_json, write_json
from prunebert.model_files import is_local_path

__all__ = ["CARD_FILE", "model_card", "write_model_record", "write_slim_card"]

CARD_FILE = "README.md"
#: built-in model -> its hub name, the card's base_model
_HUB_NAMES = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}
_PIPELINES = {"classification": "text-classification", "qa": "question-answering"}
#: architecture suffix -> pipeline, for a model without a run record
_ARCH_PIPELINES = {
    "ForSequenceClassification": "text-classification",
    "ForQuestionAnswering": "question-answering",
    "ForMaskedLM": "fill-mask",
}
_RECORD = ("recipe.yaml", "results.json")


def write_model_record(model_dir: Path, results: dict[str, Any], recipe_file: Path) -> None:
    """Copy the recipe and results into `model_dir` and write its model card."""
    if recipe_file.is_file():
        shutil.copyfile(recipe_file, model_dir / recipe_file.name)
    write_json(model_dir / "results.json", results)
    _write_card(model_dir, results)


def write_slim_card(model_dir: Path, summary: dict[str, Any], source_dir: Path) -> None:
    """The card of a slimmed model: the source's run record (copied beside it) and what slimming removed."""
    results: dict[str, Any] = {}
    if (source_dir / "results.json").is_file():
        path, fix = source_dir / "results.json", "re-run the source's stage, or slim a copy without it"
        results = expect_mapping(read_json(path, "run record", fix), path, "run record", fix)
        for name in _RECORD:
            if (source_dir / name).is_file():
                shutil.copyfile(source_dir / name, model_dir / name)
    _write_card(model_dir, results, summary)


def _write_card(model_dir: Path, results: dict[str, Any], slim: dict[str, Any] | None = None) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    card = model_card(results, config, sentence=(model_dir / "modules.json").is_file(), slim=slim)
    with atomic_path(model_dir / CARD_FILE) as tmp:
        tmp.write_text(card)


def _method(results: dict[str, Any]) -> str:
    pruning = (results.get("recipe") or {}).get("pruning") or {}
    return str(pruning.get("method") or (results.get("sparsity") or {}).get("method") or "dense")


def _metadata(
    results: dict[str, Any], config: dict[str, Any], sentence: bool, slim: dict[str, Any] | None, known: bool
) -> dict[str, Any]:
    recipe, task = results.get("recipe") or {}, results.get("task") or {}
    tags = ["prunebert", "pruned"] + ([_method(results)] if known else []) + (["slimmed"] if slim else [])
    tags += ["custom_code"] if "auto_map" in config else []
    meta: dict[str, Any] = {"library_name": "sentence-transformers" if sentence else "transformers"}
    base = str(recipe.get("model") or (slim or {}).get("source") or "")
    if base and not is_local_path(base):  # a hub or built-in name; a local path is private
        meta["base_model"] = _HUB_NAMES.get(base, base)
    meta["tags"] = [*tags, "sentence-transformers"] if sentence else tags
    if task.get("name"):
        meta["datasets"] = [task["name"]]
    if task.get("metric"):
        meta["metrics"] = [task["metric"]]
    pipeline = "fill-mask" if results.get("stage") == "pretrain" else _PIPELINES.get(str(task.get("kind")))
    if not results:  # no run record: the head says what the model does
        names = " ".join(config.get("architectures") or [])
        pipeline = next((p for suffix, p in _ARCH_PIPELINES.items() if suffix in names), None)
    if pipeline:
        meta["pipeline_tag"] = pipeline
    return meta


def _structure(config: dict[str, Any]) -> list[str]:
    """One line per transform the config records."""
    lines = []
    slim = config.get("prunebert_slim")
    if isinstance(slim, dict):
        heads = sum(len(h) for h in slim["heads"])
        total = config.get("num_attention_heads", 0) * len(slim["heads"])
        lines.append(
            f"slimmed: {heads} of {total} attention heads, FFN widths {slim['intermediate_sizes']}"
            + (f", layers kept {slim['layers']}" if slim.get("layers") is not None else "")
        )
    lowrank = config.get("prunebert_lowrank")
    if isinstance(lowrank, dict):
        ranks = {**lowrank.get("factorized", {}), **lowrank.get("split", {})}
        lines.append(f"low-rank: {len(ranks)} matrices factorised, ranks {sorted(set(ranks.values()))}")
    skipped = config.get("prunebert_skipped_layers")
    if isinstance(skipped, dict):
        lines.append(f"LayerDrop: layers {skipped['layers']} skipped")
    fixed = config.get("prunebert_fixed_attention")
    if isinstance(fixed, dict):
        count = sum(len(h) for h in fixed["heads"].values())
        lines.append(f"fixed attention patterns in {count} heads")
    return lines or ["unchanged: same shapes as the base model (zeros inside the weights)"]


def _metric_rows(metrics: dict[str, Any]) -> list[str]:
    """`| split | name | value |` rows of every number in `metrics` (one level of splits at most)."""
    rows = []
    for key, value in metrics.items():
        inner = value if isinstance(value, dict) else {"": value}
        for name, number in inner.items():
            if isinstance(number, (int, float)) and not isinstance(number, bool):
                rows.append(f"| {key if name else ''} | {name or key} | {number:.4g} |")
    return rows


def _usage(config: dict[str, Any], sentence: bool, pipeline: str | None) -> str:
    trust = ", trust_remote_code=True" if "auto_map" in config else ""
    lines = ["from transformers import AutoModel", f'model = AutoModel.from_pretrained("PATH"{trust})']
    if pipeline:
        lines += ["from transformers import pipeline", f'run = pipeline("{pipeline}", model="PATH"{trust})']
    if sentence:
        lines += [
            "from sentence_transformers import SentenceTransformer",
            f'embed = SentenceTransformer("PATH"{trust})',
        ]
    note = (
        "It carries its own modeling code (`modeling_prunebert.py`, torch + transformers only): pass "
        "`trust_remote_code=True`; without it transformers refuses the model.\n\n"
        if trust
        else ""
    )
    return note + "```python\n" + "\n".join(lines) + "\n```\n"


def _slimmed(slim: dict[str, Any]) -> list[str]:
    """What `prunebert slim` removed, and how far its outputs moved."""
    source = str(slim["source"])
    shown = f"a local model (`{Path(source).name}`)" if is_local_path(source) else f"`{source}`"
    before, after = slim["parameters_before"], slim["parameters_after"]
    heads, neurons, layers = slim["heads_kept"], slim["neurons_kept"], slim["layers_kept"]
    lines = [
        f"- **Slimmed** by `prunebert slim` from {shown}: {before:,} -> {after:,} parameters "
        f"({after / max(before, 1):.1%} of the source)",
        f"- **Kept**: {heads[0]} of {heads[1]} attention heads, {neurons[0]} of {neurons[1]} FFN neurons, "
        f"{layers[0]} of {layers[1]} encoder layers",
    ]
    if slim.get("lowrank"):
        ranks = slim["lowrank"]["ranks_kept"]
        lines.append(f"- **Rank components kept**: {ranks[0]} of {ranks[1]}")
    lines.append(
        f"- **Largest output change** on a random batch: {slim['max_abs_diff']:.2e}"
        + (" (layers dropped: outputs change by design)" if _dropped(slim) else "")
    )
    return lines


def _dropped(slim: dict[str, Any]) -> bool:
    """Whether slimming removed layers that computed something (outputs then change)."""
    layers = slim["layers_kept"]
    return bool(layers[0] + len(slim.get("layers_skipped_before") or []) < layers[1])


def _results(rows: list[str], slim: dict[str, Any] | None) -> list[str]:
    if not rows:
        return ["(none measured)"]
    table = ["| split | metric | value |", "|---|---|---:|", *rows]
    if slim is None:
        return table
    if _dropped(slim):
        note = (
            "layers were dropped since, so evaluate this model (`prunebert evaluate`) before relying on them"
        )
    else:
        note = "the slimmed model computes the same outputs"
    return [f"Measured on the source before slimming; {note}.\n", *table]


def _about(results: dict[str, Any], meta: dict[str, Any], slim: dict[str, Any] | None) -> list[str]:
    """The method and sparsity lines (of the source's run, for a slimmed model)."""
    sparsity = results.get("sparsity") or {}
    where = " (of the source, before slimming)" if slim else ""
    return [
        f"- **Method**: {_method(results)}, {results.get('stage', 'a')} stage"
        + (f" on {meta['datasets'][0]}" if "datasets" in meta else ""),
        f"- **Sparsity**{where}: {float(sparsity.get('overall', 0.0)):.1%} of the pruned matrices' weights "
        "are zero" + (f" (target {sparsity['target']:.0%})" if sparsity.get("target") is not None else ""),
    ]


def model_card(
    results: dict[str, Any],
    config: dict[str, Any],
    sentence: bool = False,
    slim: dict[str, Any] | None = None,
) -> str:
    """The README.md of a pruned model: hub metadata, then method, structure, results, recipe, usage.

    `slim`: the summary of `prunebert slim` when this model is its output; `results` is then the record of
    the source's run ({} if it had none).
    """
    known = bool(results) or slim is None  # a slimmed model without a record: its method is unknown
    meta = _metadata(results, config, sentence, slim, known)
    recipe = results.get("recipe") or {}
    title = f"# {meta.get('base_model', 'model')} pruned with prunebert"
    title += (f" ({_method(results)})" if known else "") + (", slimmed" if slim else "")
    parts = [
        "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n",
        title + "\n",
        *(_about(results, meta, slim) if known else []),
        *(_slimmed(slim) if slim else []),
        *[f"- **Structure**: {line}" for line in _structure(config)],
        "\n## Results\n",
        *_results(_metric_rows(results.get("metrics") or {}), slim),
        "\n## How to use\n",
        _usage(config, sentence, meta.get("pipeline_tag")),
    ]
    if known:
        parts += ["## Recipe\n", "```yaml\n" + yaml.safe_dump(recipe, sort_keys=False) + "```\n"]
    record = "The full record is in `recipe.yaml` and `results.json` beside this card"
    if slim is None:
        parts.append(record + ".\n")
    else:
        parts.append(
            (record + " (the source's run); " if results else "") + "`slim.json` records the slimming.\n"
        )
    return "\n".join(parts)
