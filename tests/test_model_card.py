"""A finished run's model directory is shareable on its own (issue 16, item 2): card, recipe, results."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from transformers import PreTrainedTokenizerBase

from prunebert.model_card import CARD_FILE, model_card
from prunebert.models import save_pruned
from prunebert.sentence_modules import write_sentence_modules
from prunebert.stages.common import RESULTS_FILE, RunDir
from prunebert.transforms.slim import slim_model
from test_slim import _structured
from tiny import tiny_classifier

RECIPE = {
    "model": "minilm-l6",
    "task": "rotten-tomatoes",
    "pruning": {"method": "structured", "sparsity": 0.5},
}
RESULTS = {
    "stage": "finetune",
    "recipe": RECIPE,
    "task": {"name": "rotten-tomatoes", "kind": "classification", "metric": "accuracy", "num_labels": 2},
    "metrics": {"dev": {"accuracy": 0.8123, "loss": 0.41}, "test": {"accuracy": 0.8011}},
    "sparsity": {"overall": 0.5, "target": 0.5, "method": "structured"},
}


def _front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_a_finished_run_puts_card_recipe_and_results_in_its_model_dir(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    run = RunDir(tmp_path / "run")
    run.prepare(RECIPE)
    run.create()
    model = tiny_classifier()
    _structured(model).bake()
    save_pruned(slim_model(model), tiny_tokenizer, None, run.model)
    write_sentence_modules(run.model, 32)
    run.write_results(RESULTS)

    assert yaml.safe_load((run.model / "recipe.yaml").read_text()) == RECIPE
    saved = json.loads((run.model / RESULTS_FILE).read_text())
    assert saved == json.loads(run.results.read_text()) and saved["metrics"] == RESULTS["metrics"]
    card = (run.model / CARD_FILE).read_text()
    meta = _front_matter(card)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"prunebert", "pruned", "structured", "custom_code", "sentence-transformers"} <= set(meta["tags"])
    assert meta["datasets"] == ["rotten-tomatoes"] and meta["metrics"] == ["accuracy"]
    assert meta["pipeline_tag"] == "text-classification"
    assert "**Sparsity**: 50.0%" in card and "**Structure**: slimmed: 2 of 8 attention heads" in card
    assert "| dev | accuracy | 0.8123 |" in card and "| test | accuracy | 0.8011 |" in card
    assert 'SentenceTransformer("PATH", trust_remote_code=True)' in card
    assert "method: structured" in card  # the recipe


def test_a_plain_checkpoint_card_loads_without_remote_code() -> None:
    config = {"model_type": "bert", "architectures": ["BertForMaskedLM"]}
    results = {"stage": "pretrain", "recipe": {"model": "/private/dir"}, "metrics": {"mlm_loss": 2.5}}
    card = model_card(results, config)
    meta = _front_matter(card)
    assert "base_model" not in meta and meta["tags"] == ["prunebert", "pruned", "dense"]
    assert meta["pipeline_tag"] == "fill-mask"
    assert "trust_remote_code" not in card and "|  | mlm_loss | 2.5 |" in card
    assert "unchanged: same shapes as the base model" in card
