"""A finished run's model directory is shareable on its own (issue 16, item 2): card, recipe, results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.deploy.slim_job import run_slim
from prunebert.model_card import CARD_FILE, model_card
from prunebert.models import save_pruned
from prunebert.pruner import Pruner
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


def _finished_run(
    root: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, pruner: Pruner | None
) -> RunDir:
    """A run of RECIPE as it finishes: `model` saved (with `pruner`'s masks) as a sentence model, RESULTS."""
    run = RunDir(root)
    run.prepare(RECIPE)
    run.create()
    save_pruned(model, tokenizer, pruner, run.model)
    write_sentence_modules(run.model, 32)
    run.write_results(RESULTS)
    return run


def test_a_finished_run_puts_card_recipe_and_results_in_its_model_dir(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    model = tiny_classifier()
    _structured(model).bake()
    run = _finished_run(tmp_path / "run", slim_model(model), tiny_tokenizer, None)

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


def test_a_slimmed_run_keeps_the_record_and_says_what_slimming_removed(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase
) -> None:
    model = tiny_classifier()
    run = _finished_run(tmp_path / "run", model, tiny_tokenizer, _structured(model))  # pruned, not slimmed
    summary = run_slim(str(run.root), tmp_path / "slim")

    out = tmp_path / "slim"
    assert (out / "recipe.yaml").read_bytes() == (run.model / "recipe.yaml").read_bytes()
    assert json.loads((out / RESULTS_FILE).read_text()) == json.loads((run.model / RESULTS_FILE).read_text())
    card = (out / CARD_FILE).read_text()
    meta = _front_matter(card)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"prunebert", "structured", "slimmed", "custom_code", "sentence-transformers"} <= set(meta["tags"])
    assert meta["pipeline_tag"] == "text-classification" and meta["datasets"] == ["rotten-tomatoes"]
    before, after = summary["parameters_before"], summary["parameters_after"]
    assert after < before and f"{before:,} -> {after:,} parameters" in card
    assert "pruned with prunebert (structured), slimmed" in card
    assert "from a local model (`run`)" in card and str(tmp_path) not in card  # no private path
    assert "**Kept**: 2 of 8 attention heads" in card and "**Structure**: slimmed: 2 of 8" in card
    assert "Measured on the source before slimming; the slimmed model computes the same outputs" in card
    assert "| test | accuracy | 0.8011 |" in card and "method: structured" in card
    assert 'SentenceTransformer("PATH", trust_remote_code=True)' in card


def test_slimming_a_model_without_a_record_writes_a_card_of_what_is_known(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny_classifier()
    save_pruned(model, tiny_tokenizer, _structured(model), tmp_path / "src")
    assert main(["slim", str(tmp_path / "src"), str(tmp_path / "slim"), "--drop_layers", "0"]) == 0
    capsys.readouterr()
    out = tmp_path / "slim"
    assert not (out / "recipe.yaml").exists() and not (out / RESULTS_FILE).exists()
    card = (out / CARD_FILE).read_text()
    meta = _front_matter(card)
    assert "base_model" not in meta and meta["tags"] == ["prunebert", "pruned", "slimmed", "custom_code"]
    assert meta["pipeline_tag"] == "text-classification" and meta["library_name"] == "transformers"
    assert "# model pruned with prunebert, slimmed" in card and "**Method**" not in card
    assert "**Kept**: 0 of 8 attention heads, 32 of 128 FFN neurons, 1 of 2 encoder layers" in card
    assert "(layers dropped: outputs change by design)" in card and "(none measured)" in card
    assert "## Recipe" not in card and "`slim.json` records the slimming" in card
