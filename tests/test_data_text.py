"""MLM text: wiki-markup stripping (golden snippets), text loading, BERT masking, and block building."""

from __future__ import annotations

import bz2
from pathlib import Path
from typing import Any

import pytest
import torch

from prunebert.data import build_mlm_datasets, load_text, mask_tokens, strip_wiki_markup
from prunebert.data.text import split_documents
from prunebert.data.wikitext import iter_wiki_pages
from prunebert.errors import PrunebertError

# --- strip_wiki_markup ------------------------------------------------------------------------------------

MARKUP_CASES = [
    ("comment", "a <!-- hidden\nnote --> b", "a b"),
    ("ref paired", 'Claim.<ref name="x">{{cite web|url=http://x}}</ref> Next', "Claim. Next"),
    ("ref self-closing", 'Claim.<ref name="x" /> Next<ref name=y/>.', "Claim. Next."),
    ("ref self-closing then paired", "A<ref name=a/> b<ref>c</ref> d", "A b d"),
    ("template nested", "{{Infobox|a={{nested|{{deeper}}}}|b=c}}Text {{lang|fr|x}}here", "Text here"),
    (
        "table",
        'Before\n{| class="wikitable"\n|-\n| a || {{x}}\n|-\n{|\n| nested\n|}\n|}\nAfter',
        "Before\n\nAfter",
    ),
    ("file link with nested links", "[[File:A.jpg|thumb|A [[cat]] on a [[mat|rug]]]]Text", "Text"),
    ("image and category", "[[Image:B.png|left]]Text [[Category:Cats]][[category:Dogs|x]]", "Text"),
    ("interwiki", "Text [[de:Katze]]", "Text"),
    ("links", "A [[cat]] sat on the [[Mat (object)|mat]]s.", "A cat sat on the mats."),
    (
        "external links",
        "See [http://x.org/a?b=1 the site] or [https://y.org] or [//z.org proto].",
        "See the site or or proto.",
    ),
    ("bold italic", "'''Bold''' and ''italic'' and '''''both'''''", "Bold and italic and both"),
    (
        "headings",
        "Intro\n== History ==\nBody\n=== Early ===\nMore",
        "Intro\n\nBody\n\nMore",
    ),  # a heading ends a paragraph
    ("list markers", "* one\n** two\n# three\n: indented\n; term", "one two three indented term"),
    ("html tags kept text", "a<br/>b <small>small</small> <span style='x'>c</span>", "a b small c"),
    ("entities", "1&nbsp;km &ndash; &amp; &lt;b&gt;", "1 km – & <b>"),
    ("empty parens", "Achilles ({{IPA|x}}; {{lang|grc|y}}, Akhilleus, ) was", "Achilles (Akhilleus) was"),
    ("magic words", "__NOTOC__Text", "Text"),
]


@pytest.mark.parametrize(
    ("markup", "expected"), [c[1:] for c in MARKUP_CASES], ids=[c[0] for c in MARKUP_CASES]
)
def test_strip_wiki_markup(markup: str, expected: str) -> None:
    assert strip_wiki_markup(markup) == expected


def test_strip_wiki_markup_keeps_paragraphs_and_collapses_whitespace() -> None:
    text = "First   line\nsame paragraph.\n\n\n  == Head ==\n\nSecond\t paragraph.\n  \n[[Category:X]]"
    assert strip_wiki_markup(text) == "First line same paragraph.\n\nSecond paragraph."


def test_unclosed_markup_is_dropped_to_the_end() -> None:
    assert strip_wiki_markup("Keep {{broken template") == "Keep"
    assert strip_wiki_markup("Keep <!-- open comment") == "Keep"


# --- wiki dumps and local text ----------------------------------------------------------------------------

DUMP = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
  <page><title>Cat</title><ns>0</ns><id>1</id><revision><id>9</id>
    <text xml:space="preserve">'''Cats''' are [[mammal]]s.&lt;ref&gt;x&lt;/ref&gt;

== Diet ==
They eat.</text></revision></page>
  <page><title>Kitty</title><ns>0</ns><id>2</id><redirect title="Cat" />
    <revision><id>10</id><text xml:space="preserve">#REDIRECT [[Cat]]</text></revision></page>
  <page><title>Wikipedia:About</title><ns>4</ns><id>3</id>
    <revision><id>11</id><text xml:space="preserve">Project page.</text></revision></page>
  <page><title>Empty</title><ns>0</ns><id>4</id>
    <revision><id>12</id><text xml:space="preserve">{{only a template}}</text></revision></page>
</mediawiki>
"""


def test_wiki_dump_keeps_articles_skips_redirects_and_other_namespaces(tmp_path: Path) -> None:
    path = tmp_path / "dump.xml.bz2"
    path.write_bytes(bz2.compress(DUMP.encode()))
    assert [title for title, _ in iter_wiki_pages(path)] == ["Cat", "Empty"]
    assert load_text(str(path)) == ["Cats are mammals.\n\nThey eat."]  # "Empty" is empty once stripped


def test_split_documents_on_blank_lines() -> None:
    assert split_documents("a b\nc\n\n \n\nd\r\n\r\ne\n\n") == ["a b\nc", "d", "e"]


def test_load_text_file_directory_and_glob(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_text("two\n\nthree\n", encoding="utf-8")
    (tmp_path / "a.txt").write_text("one\n", encoding="utf-8")
    (tmp_path / "skip.md").write_text("not text\n", encoding="utf-8")
    assert load_text(str(tmp_path / "b.txt")) == ["two", "three"]
    assert load_text(str(tmp_path)) == ["one", "two", "three"]
    assert load_text(str(tmp_path / "*.txt")) == ["one", "two", "three"]


def test_load_text_errors(tmp_path: Path) -> None:
    with pytest.raises(PrunebertError, match=r"text 'nope' is not built-in \(built-ins: wiki-sample\)"):
        load_text("nope")
    (tmp_path / "blank.txt").write_text("\n\n  \n", encoding="utf-8")
    with pytest.raises(PrunebertError, match="holds no non-empty documents"):
        load_text(str(tmp_path / "blank.txt"))


# --- masking ----------------------------------------------------------------------------------------------


def _ids(tok: Any, rows: int = 200, cols: int = 64, seed: int = 0) -> torch.Tensor:
    """Random ordinary-word ids wrapped as [CLS] ... [SEP], with some trailing [PAD]s."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, len(tok), (rows, cols), generator=g)
    ids[:, 0], ids[:, -1], ids[:, -4:-1] = tok.cls_token_id, tok.sep_token_id, tok.pad_token_id
    return ids


def test_mask_tokens_bert_rule(tiny_tokenizer: Any) -> None:
    ids = _ids(tiny_tokenizer)
    masked, labels = mask_tokens(ids, tiny_tokenizer, 0.15, torch.Generator().manual_seed(0))
    picked = labels != -100
    special = torch.isin(ids, torch.tensor(tiny_tokenizer.all_special_ids))
    assert not (picked & special).any()  # specials are never picked
    assert 0.13 < picked.sum() / (~special).sum() < 0.17
    assert torch.equal(labels[picked], ids[picked])  # labels: original ids where picked, -100 elsewhere
    assert torch.equal(masked[~picked], ids[~picked])  # untouched elsewhere
    as_mask = (masked[picked] == tiny_tokenizer.mask_token_id).float().mean()
    assert 0.75 < as_mask < 0.85
    assert ids.max() < len(tiny_tokenizer)


def test_mask_tokens_is_deterministic_per_seed(tiny_tokenizer: Any) -> None:
    ids = _ids(tiny_tokenizer, rows=20)
    a = mask_tokens(ids, tiny_tokenizer, generator=torch.Generator().manual_seed(1))
    b = mask_tokens(ids, tiny_tokenizer, generator=torch.Generator().manual_seed(1))
    c = mask_tokens(ids, tiny_tokenizer, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    assert torch.equal(ids, _ids(tiny_tokenizer, rows=20))  # input not modified


# --- block datasets ---------------------------------------------------------------------------------------

DOCS = [" ".join(["the cat sat on the mat"] * (i % 4 + 1)) for i in range(40)]


def _stream(tok: Any, docs: list[str]) -> list[int]:
    out: list[int] = []
    for i, d in enumerate(docs):
        out += ([tok.sep_token_id] if i else []) + tok(d, add_special_tokens=False)["input_ids"]
    return out


def test_build_mlm_blocks(tiny_tokenizer: Any) -> None:
    train, evals = build_mlm_datasets(DOCS, tiny_tokenizer, block_size=10, eval_fraction=0.1, seed=0)
    stream = _stream(tiny_tokenizer, DOCS)
    n_blocks = len(stream) // 8
    assert len(train) + len(evals) == n_blocks and len(evals) == round(n_blocks * 0.1)
    assert set(train.column_names) == {"input_ids", "attention_mask", "token_type_ids"}
    assert set(evals.column_names) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    chunks = {tuple(stream[i * 8 : (i + 1) * 8]) for i in range(n_blocks)}
    for row in train:
        ids = row["input_ids"]
        assert (
            len(ids) == 10
            and ids[0] == tiny_tokenizer.cls_token_id
            and ids[-1] == tiny_tokenizer.sep_token_id
        )
        assert (
            tuple(ids[1:-1]) in chunks
            and set(row["attention_mask"]) == {1}
            and set(row["token_type_ids"]) == {0}
        )
    labels = torch.tensor(evals["labels"])
    assert (labels != -100).any() and (labels[:, 0] == -100).all() and (labels[:, -1] == -100).all()


def test_build_mlm_is_deterministic_and_subsamples_train(tiny_tokenizer: Any) -> None:
    a_train, a_eval = build_mlm_datasets(DOCS, tiny_tokenizer, 10, 0.1, seed=0)
    b_train, b_eval = build_mlm_datasets(DOCS, tiny_tokenizer, 10, 0.1, seed=0, max_train_blocks=5)
    assert a_eval["input_ids"] == b_eval["input_ids"] and a_eval["labels"] == b_eval["labels"]
    assert len(b_train) == 5 and set(map(tuple, b_train["input_ids"])) <= set(
        map(tuple, a_train["input_ids"])
    )
    _, c_eval = build_mlm_datasets(DOCS, tiny_tokenizer, 10, 0.1, seed=1)
    assert c_eval["labels"] != a_eval["labels"]


def test_build_mlm_errors(tiny_tokenizer: Any) -> None:
    with pytest.raises(PrunebertError, match="too few for 2 blocks of 64"):
        build_mlm_datasets(["the cat"], tiny_tokenizer, block_size=64)
    with pytest.raises(PrunebertError, match="block size must be >= 3"):
        build_mlm_datasets(DOCS, tiny_tokenizer, block_size=2)
    with pytest.raises(PrunebertError, match=r"eval fraction must be in \(0, 1\)"):
        build_mlm_datasets(DOCS, tiny_tokenizer, block_size=10, eval_fraction=1.0)
