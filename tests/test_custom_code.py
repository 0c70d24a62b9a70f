"""Saved models load everywhere, or are refused loudly (issue 16, item 1; issue 15, item 11).

Every kind of pruned model is saved as prunebert saves it, with the sentence-transformers modules of the
built-in model, then loaded in a child process where `import prunebert` fails, by
AutoModelForSequenceClassification, the text-classification pipeline and SentenceTransformer, with and
without `trust_remote_code`. With it, outputs equal prunebert's own loader within 1e-5; without it, a
model whose structure changed raises (never wrong outputs), and a plain checkpoint loads as before.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from prunebert.config import PruningConfig
from prunebert.deploy.slim_job import run_slim
from prunebert.models import load_model, save_pruned
from prunebert.pruner import Pruner
from prunebert.sentence_modules import write_sentence_modules
from prunebert.transforms.custom_code import MODELING_FILE, SOURCE
from prunebert.transforms.fixed_attention import apply_fixed_attention
from prunebert.transforms.layer_skip import skip_layers
from prunebert.transforms.saved_config import read_config
from test_slim import _structured
from tiny import tiny_classifier

pytest.importorskip("sentence_transformers", reason="pip install 'prunebert[dev]' (sentence-transformers)")

SENTENCES = ["a good film", "the movie was bad and awful , not good", "great", "it ran home ."]
WORKER = Path(__file__).with_name("custom_code_worker.py")
LOADERS = ("auto", "pipeline", "sentence-transformers")


def _pruned(method: str, sparsity: float = 0.5) -> Callable[[PreTrainedModel], Pruner]:
    def prune(model: PreTrainedModel) -> Pruner:
        pruner = Pruner(model, PruningConfig(method=method, sparsity=sparsity, schedule="oneshot"))
        pruner.start(1)
        pruner.update(0)
        return pruner

    return prune


def _skip(model: PreTrainedModel) -> None:
    skip_layers(model, [1])


def _fix(model: PreTrainedModel) -> None:
    apply_fixed_attention(model, {0: {0: "previous", 1: "left"}, 1: {2: "next", 3: "right"}})


#: kind -> (how the model is changed before it is saved, whether `prunebert slim` runs on it)
KINDS: dict[str, tuple[Callable[[PreTrainedModel], Any], bool]] = {
    "magnitude": (_pruned("magnitude"), False),
    "structured+slim": (_structured, True),
    "lowrank": (_pruned("lowrank"), False),
    "lowrank+slim": (_pruned("lowrank", 0.7), True),
    "layerdrop": (_skip, False),
    "layerdrop+slim": (_skip, True),
    "fixed-attention": (_fix, False),
}


def _save(kind: str, root: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """The kind's model saved as a run saves it (with sentence-transformers modules), slimmed if it says."""
    change, slim = KINDS[kind]
    model = tiny_classifier(seed=1).eval()
    pruner = change(model)
    directory = root / (kind.removesuffix("+slim") + "-run" if slim else kind)
    save_pruned(model, tokenizer, pruner if isinstance(pruner, Pruner) else None, directory)
    write_sentence_modules(directory, model.config.hidden_size, max_seq_length=64)
    if slim:  # the slimmed model keeps the source's sentence-transformers modules
        run_slim(str(directory), root / kind)
    return root / kind


@torch.no_grad()
def _reference(path: Path) -> dict[str, torch.Tensor]:
    """prunebert's own outputs: logits, class probabilities, mean-pooled normalised embeddings."""
    classifier = load_model(str(path), head="classification")
    batch = classifier.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    logits = classifier.model.eval()(**batch).logits
    hidden = load_model(str(path), head="base").model.eval()(**batch).last_hidden_state  # (N, T, H)
    mask = batch["attention_mask"][..., None].float()
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return {
        "auto": logits,
        "pipeline": logits.softmax(-1),
        "sentence-transformers": torch.nn.functional.normalize(pooled, dim=-1),
    }


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Every kind saved, then loaded by the worker with prunebert hidden: (kind -> dir, results)."""
    root = tmp_path_factory.mktemp("custom_code")
    paths = {kind: _save(kind, root, tiny_tokenizer) for kind in KINDS}
    (root / "sentences.json").write_text(json.dumps(SENTENCES))
    env = {**os.environ, "HF_MODULES_CACHE": str(root / "modules"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(WORKER), str(root / "results.pt"), str(root / "sentences.json")]
    done = subprocess.run(
        [*command, *map(str, paths.values())],
        env=env,
        stdin=subprocess.DEVNULL,  # transformers asks on a terminal; without one it refuses
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return paths, torch.load(root / "results.pt")


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_loads_with_trust_remote_code_as_prunebert_does(
    kind: str, loader: str, loaded: tuple[dict[str, Path], dict[str, Any]]
) -> None:
    paths, results = loaded
    got = results[f"{paths[kind]}|{loader}|True"]
    assert isinstance(got, torch.Tensor), got
    expected = _reference(paths[kind])[loader]
    assert got.shape == expected.shape
    assert (got.float() - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("kind", list(KINDS))
def test_without_trust_remote_code_a_changed_structure_is_refused(
    kind: str, loader: str, loaded: tuple[dict[str, Path], dict[str, Any]]
) -> None:
    paths, results = loaded
    got = results[f"{paths[kind]}|{loader}|False"]
    if kind == "magnitude":  # shapes unchanged: a plain checkpoint, loaded as before
        assert isinstance(got, torch.Tensor), got
        assert (got.float() - _reference(paths[kind])[loader]).abs().max().item() <= 1e-5
    else:
        assert isinstance(got, str) and got.startswith("ValueError"), got
        assert "contains custom code" in got and "trust_remote_code=True" in got, got


@pytest.mark.parametrize("kind", list(KINDS))
def test_saved_layout(kind: str, loaded: tuple[dict[str, Path], dict[str, Any]]) -> None:
    path = loaded[0][kind]
    config = json.loads((path / "config.json").read_text())
    assert (path / "modules.json").is_file() and (path / "1_Pooling" / "config.json").is_file()
    if kind == "magnitude":
        assert config["model_type"] == "bert" and "auto_map" not in config
        assert not (path / MODELING_FILE).exists()
        return
    assert filecmp.cmp(path / MODELING_FILE, SOURCE, shallow=False)  # the package's file, verbatim
    assert config["model_type"] == "prunebert-bert"
    assert config["architectures"] == ["PrunebertBertForSequenceClassification"]
    assert config["auto_map"]["AutoModel"] == "modeling_prunebert.PrunebertBertModel"
    plain = read_config(path)
    assert plain.model_type == "bert" and plain.architectures == ["BertForSequenceClassification"]


def test_shipped_file_imports_only_torch_and_transformers() -> None:
    lines = [
        line.split() for line in SOURCE.read_text().splitlines() if line.startswith(("import ", "from "))
    ]
    roots = {words[1].split(".")[0] for words in lines}
    assert roots <= {"__future__", "functools", "inspect", "warnings", "typing", "torch", "transformers"}
