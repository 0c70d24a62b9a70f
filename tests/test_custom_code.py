"""Saved models load everywhere, or are refused loudly (issue 16, item 1; issue 15, item 11).

Every kind of pruned model is saved as prunebert saves it, with the sentence-transformers modules of the
built-in model, then loaded in a child process where `import prunebert` fails, by
AutoModelForSequenceClassification, the text-classification pipeline and SentenceTransformer, with and
without `trust_remote_code`. With it, outputs equal prunebert's own loader within 1e-5; without it, a
model whose structure changed raises (never wrong outputs), and a plain checkpoint loads as before.
Every kind runs on BERT; the main ones also on RoBERTa, DistilBERT and ELECTRA (AutoModel only).
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
from prunebert.transforms.hf_modeling import FAMILIES
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


#: architectures besides BERT, and the kinds checked on each of them
ARCHS = ("roberta", "distilbert", "electra")
ARCH_KINDS = ("magnitude", "structured+slim", "layerdrop")
#: model directory name -> (architecture, kind, loaders run on it)
CASES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    **{kind: ("bert", kind, LOADERS) for kind in KINDS},
    **{f"{arch}-{kind}": (arch, kind, ("auto",)) for arch in ARCHS for kind in ARCH_KINDS},
}
PAIRS = [(name, loader) for name, (_, _, loaders) in CASES.items() for loader in loaders]


def _tokenizer(arch: str, tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tiny tokenizer; DistilBERT's, like the real one, gives no token_type_ids (its forward has none)."""
    if arch != "distilbert":
        return tokenizer
    names = ["input_ids", "attention_mask"]
    return type(tokenizer).from_pretrained(tokenizer.name_or_path, model_input_names=names)


def _save(name: str, root: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """The case's model saved as a run saves it (with sentence-transformers modules), slimmed if it says."""
    arch, kind, _ = CASES[name]
    change, slim = KINDS[kind]
    model = tiny_classifier(arch, seed=1).eval()
    pruner = change(model)
    directory = root / (name.removesuffix("+slim") + "-run" if slim else name)
    save_pruned(model, _tokenizer(arch, tokenizer), pruner if isinstance(pruner, Pruner) else None, directory)
    write_sentence_modules(directory, model.config.hidden_size, max_seq_length=64)
    if slim:  # the slimmed model keeps the source's sentence-transformers modules
        run_slim(str(directory), root / name)
    return root / name


@torch.no_grad()
def _reference(path: Path, loader: str) -> torch.Tensor:
    """prunebert's own output: logits, class probabilities or mean-pooled normalised embeddings."""
    head = "base" if loader == "sentence-transformers" else "classification"
    loaded = load_model(str(path), head=head)
    batch = loaded.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    output = loaded.model.eval()(**batch)
    if loader != "sentence-transformers":
        logits: torch.Tensor = output.logits
        return logits.softmax(-1) if loader == "pipeline" else logits
    mask = batch["attention_mask"][..., None].float()
    pooled = (output.last_hidden_state * mask).sum(1) / mask.sum(1)  # (N, T, H) -> (N, H)
    return torch.nn.functional.normalize(pooled, dim=-1)


@pytest.fixture(scope="module")
def loaded(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Every kind saved, then loaded by the worker with prunebert hidden: (kind -> dir, results)."""
    root = tmp_path_factory.mktemp("custom_code")
    paths = {name: _save(name, root, tiny_tokenizer) for name in CASES}
    (root / "sentences.json").write_text(json.dumps(SENTENCES))
    plan = {str(paths[name]): list(loaders) for name, (_, _, loaders) in CASES.items()}
    (root / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "HF_MODULES_CACHE": str(root / "modules"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(WORKER), str(root / "results.pt"), str(root / "sentences.json")]
    done = subprocess.run(
        [*command, str(root / "plan.json")],
        env=env,
        stdin=subprocess.DEVNULL,  # transformers asks on a terminal; without one it refuses
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return paths, torch.load(root / "results.pt")


@pytest.mark.parametrize(("name", "loader"), PAIRS)
def test_loads_with_trust_remote_code_as_prunebert_does(
    name: str, loader: str, loaded: tuple[dict[str, Path], dict[str, Any]]
) -> None:
    paths, results = loaded
    got = results[f"{paths[name]}|{loader}|True"]
    assert isinstance(got, torch.Tensor), got
    expected = _reference(paths[name], loader)
    assert got.shape == expected.shape
    assert (got.float() - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("name", "loader"), PAIRS)
def test_without_trust_remote_code_a_changed_structure_is_refused(
    name: str, loader: str, loaded: tuple[dict[str, Path], dict[str, Any]]
) -> None:
    paths, results = loaded
    got = results[f"{paths[name]}|{loader}|False"]
    if CASES[name][1] == "magnitude":  # shapes unchanged: a plain checkpoint, loaded as before
        assert isinstance(got, torch.Tensor), got
        assert (got.float() - _reference(paths[name], loader)).abs().max().item() <= 1e-5
    else:
        assert isinstance(got, str) and got.startswith("ValueError"), got
        assert "contains custom code" in got and "trust_remote_code=True" in got, got


@pytest.mark.parametrize("name", list(CASES))
def test_saved_layout(name: str, loaded: tuple[dict[str, Path], dict[str, Any]]) -> None:
    path, (arch, kind, _) = loaded[0][name], CASES[name]
    config = json.loads((path / "config.json").read_text())
    assert (path / "modules.json").is_file() and (path / "1_Pooling" / "config.json").is_file()
    if kind == "magnitude":
        assert config["model_type"] == arch and "auto_map" not in config
        assert not (path / MODELING_FILE).exists()
        return
    stem = FAMILIES[arch][0]
    assert filecmp.cmp(path / MODELING_FILE, SOURCE, shallow=False)  # the package's file, verbatim
    assert config["model_type"] == f"prunebert-{arch}"
    assert config["architectures"] == [f"Prunebert{stem}ForSequenceClassification"]
    assert config["auto_map"]["AutoModel"] == f"modeling_prunebert.Prunebert{stem}Model"
    plain = read_config(path)
    assert plain.model_type == arch and plain.architectures == [f"{stem}ForSequenceClassification"]


def test_shipped_file_imports_only_torch_and_transformers() -> None:
    lines = [
        line.split() for line in SOURCE.read_text().splitlines() if line.startswith(("import ", "from "))
    ]
    roots = {words[1].split(".")[0] for words in lines}
    assert roots <= {"__future__", "functools", "inspect", "warnings", "typing", "torch", "transformers"}
