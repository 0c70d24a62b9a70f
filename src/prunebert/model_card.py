"""A model directory that can be shared on its own: a model card and the run record beside the weights.

At the end of a run, `OUT/model/` gets a copy of the run's `recipe.yaml` and `results.json` and a
`README.md` in the Hugging Face hub's model-card format: YAML metadata (base_model, tags with `prunebert`
and `pruned`, datasets, metrics, pipeline_tag) and a text stating the method, the sparsity reached, the
structure (what slimming, low-rank, LayerDrop or fixed attention changed), the measured results, the
recipe and how to load the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import yaml

from prunebert.io import atomic_path, write_json
from prunebert.model_files import is_local_path

__all__ = ["CARD_FILE", "model_card", "write_model_record"]

CARD_FILE = "README.md"
#: built-in model -> its hub name, the card's base_model
_HUB_NAMES = {"minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}
_PIPELINES = {"classification": "text-classification", "qa": "question-answering"}


def write_model_record(model_dir: Path, results: dict[str, Any], recipe_file: Path) -> None:
    """Copy the recipe and results into `model_dir` and write its model card."""
    if recipe_file.is_file():
        shutil.copyfile(recipe_file, model_dir / recipe_file.name)
    write_json(model_dir / "results.json", results)
    config = json.loads((model_dir / "config.json").read_text())
    card = model_card(results, config, sentence=(model_dir / "modules.json").is_file())
    with atomic_path(model_dir / CARD_FILE) as tmp:
        tmp.write_text(card)


def _method(results: dict[str, Any]) -> str:
    pruning = (results.get("recipe") or {}).get("pruning") or {}
    return str(pruning.get("method") or (results.get("sparsity") or {}).get("method") or "dense")


def _metadata(results: dict[str, Any], config: dict[str, Any], sentence: bool) -> dict[str, Any]:
    recipe, task = results.get("recipe") or {}, results.get("task") or {}
    tags = ["prunebert", "pruned", _method(results)] + (["custom_code"] if "auto_map" in config else [])
    meta: dict[str, Any] = {"library_name": "sentence-transformers" if sentence else "transformers"}
    base = str(recipe.get("model") or "")
    if base and not is_local_path(base):  # a hub or built-in name; a local path is private
        meta["base_model"] = _HUB_NAMES.get(base, base)
    meta["tags"] = [*tags, "sentence-transformers"] if sentence else tags
    if task.get("name"):
        meta["datasets"] = [task["name"]]
    if task.get("metric"):
        meta["metrics"] = [task["metric"]]
    pipeline = "fill-mask" if results.get("stage") == "pretrain" else _PIPELINES.get(str(task.get("kind")))
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


def model_card(results: dict[str, Any], config: dict[str, Any], sentence: bool = False) -> str:
    """The README.md of a pruned model: hub metadata, then method, structure, results, recipe, usage."""
    meta = _metadata(results, config, sentence)
    sparsity = results.get("sparsity") or {}
    method = _method(results)
    recipe = results.get("recipe") or {}
    rows = _metric_rows(results.get("metrics") or {})
    parts = [
        "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n",
        f"# {meta.get('base_model', 'model')} pruned with prunebert ({method})\n",
        f"- **Method**: {method}, {results.get('stage', 'a')} stage"
        + (f" on {meta['datasets'][0]}" if "datasets" in meta else ""),
        f"- **Sparsity**: {float(sparsity.get('overall', 0.0)):.1%} of the pruned matrices' weights are zero"
        + (f" (target {sparsity['target']:.0%})" if sparsity.get("target") is not None else ""),
        *[f"- **Structure**: {line}" for line in _structure(config)],
        "\n## Results\n",
        *(["| split | metric | value |", "|---|---|---:|", *rows] if rows else ["(none measured)"]),
        "\n## How to use\n",
        _usage(config, sentence, meta.get("pipeline_tag")),
        "## Recipe\n",
        "```yaml\n" + yaml.safe_dump(recipe, sort_keys=False) + "```\n",
        "The full record is in `recipe.yaml` and `results.json` beside this card.\n",
    ]
    return "\n".join(parts)
