"""Unlabelled text for masked-language-model training: loading documents, blocking, and BERT masking.

Blocks follow Hugging Face ``run_mlm``'s ``group_texts``: documents are tokenized without special tokens,
concatenated with ``[SEP]`` between documents, cut into ``block_size - 2`` token pieces (the remainder is
dropped) and each piece is wrapped as ``[CLS] ... [SEP]``. The eval blocks are masked once, with a
generator seeded by ``seed``, so eval losses are comparable between runs.
"""

from __future__ import annotations

import glob
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from prunebert.assets import BUILTIN_TEXTS, fetch
from prunebert.data.splits import carve, subsample
from prunebert.data.wikitext import iter_wiki_pages, strip_wiki_markup
from prunebert.errors import PrunebertError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "SeededMLMCollator",
    "build_mlm_datasets",
    "load_text",
    "load_wiki_dump",
    "mask_tokens",
    "split_documents",
]

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
_WIKI_SUFFIXES = (".xml", ".bz2")


def split_documents(text: str) -> list[str]:
    """Documents of a text file: blocks separated by blank lines, stripped, empty ones dropped."""
    return [d.strip() for d in _BLANK_LINE.split(text.replace("\r\n", "\n")) if d.strip()]


def load_wiki_dump(path: Path) -> list[str]:
    """One plain-text document per article of a MediaWiki XML dump (.xml or .xml.bz2)."""
    docs = (strip_wiki_markup(text) for _, text in iter_wiki_pages(path))
    return [d for d in docs if d]


def _text_files(spec: str) -> list[Path]:
    """The files a local text spec names: a file, a directory of .txt files, or a glob."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.txt") if p.is_file())
    if glob.has_magic(spec):
        matches = glob.glob(str(path), recursive=True)  # noqa: PTH207 (Path.glob takes no absolute patterns)
        return sorted(p for p in map(Path, matches) if p.is_file())
    return []


def _read_documents(path: Path) -> list[str]:
    """Documents of one local file (a wiki dump if it ends in .xml/.bz2, else plain text)."""
    if path.suffix.lower() in _WIKI_SUFFIXES:
        return load_wiki_dump(path)
    try:
        return split_documents(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise PrunebertError(f"cannot read text file {path} ({e}); pass a readable UTF-8 .txt file") from e


def load_text(spec: str) -> list[str]:
    """Non-empty documents from a built-in text (``wiki-sample``), a .txt file, a directory, or a glob."""
    if spec in BUILTIN_TEXTS:
        return load_wiki_dump(fetch(spec))
    files = _text_files(spec)
    if not files:
        raise PrunebertError(
            f"text {spec!r} is not built-in (built-ins: {', '.join(sorted(BUILTIN_TEXTS))}), a .txt file, "
            f"a directory of .txt files, or a glob matching files; pass one of these"
        )
    docs = [doc for f in files for doc in _read_documents(f)]
    if not docs:
        raise PrunebertError(f"text {spec!r} holds no non-empty documents; pass files with text in them")
    return docs


def mask_tokens(
    input_ids: torch.Tensor,
    tokenizer: PreTrainedTokenizerBase,
    mlm_probability: float = 0.15,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking (Devlin et al., 2019): pick ``mlm_probability`` of non-special tokens; 80% -> [MASK],
    10% -> a random token, 10% unchanged. Returns (masked input_ids, labels with -100 where not picked)."""
    labels = input_ids.clone()
    special = torch.isin(input_ids, torch.tensor(tokenizer.all_special_ids, dtype=input_ids.dtype))
    probs = torch.full(input_ids.shape, mlm_probability).masked_fill(special, 0.0)
    picked = torch.bernoulli(probs, generator=generator).bool()
    labels[~picked] = -100
    to_mask = torch.bernoulli(torch.full(input_ids.shape, 0.8), generator=generator).bool() & picked
    half = torch.bernoulli(torch.full(input_ids.shape, 0.5), generator=generator).bool()
    to_random = half & picked & ~to_mask
    random_ids = torch.randint(len(tokenizer), input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = input_ids.clone()
    masked[to_mask] = tokenizer.mask_token_id
    masked[to_random] = random_ids[to_random]
    return masked, labels


class SeededMLMCollator(TrainerCallback):
    """Dynamic BERT masking that a resumed run, or a multi-process one, reproduces exactly.

    Each example is masked with its own generator, seeded by (seed, epoch, its token ids): independent of
    the global RNG, of batch composition and of how far the Trainer's data loader read ahead. (The stock
    collator draws from the global RNG, which a resumed Trainer restores only after it has already
    collated the first resumed batch, so resumed runs masked differently.) Also pass it as a callback:
    `on_epoch_begin` gives every epoch new masks.
    """

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, mlm_probability: float = 0.15, seed: int = 0
    ) -> None:
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.seed = seed
        self.epoch = 0

    def on_epoch_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Masks change from epoch to epoch (a resumed run sees the epoch it stopped in)."""
        self.epoch = int(state.epoch + 1e-6) if state.epoch else 0

    def _generator(self, ids: Sequence[int]) -> torch.Generator:
        key = np.asarray([self.seed, self.epoch, *ids], dtype=np.int64).tobytes()
        seed = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1
        return torch.Generator().manual_seed(seed)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Mask each example, then pad: input_ids (B, T) masked, labels (B, T) with -100 elsewhere."""
        masked, labels = [], []
        for feature in features:
            ids = torch.as_tensor(feature["input_ids"], dtype=torch.long)[None]  # (1, L), unpadded
            m, y = mask_tokens(ids, self.tokenizer, self.mlm_probability, self._generator(ids[0].tolist()))
            masked.append({**feature, "input_ids": m[0].tolist()})
            labels.append(y[0])
        batch = dict(self.tokenizer.pad(masked, return_tensors="pt"))
        width = batch["input_ids"].shape[1]
        batch["labels"] = torch.full((len(labels), width), -100, dtype=torch.long)
        for i, y in enumerate(labels):
            start = width - len(y) if self.tokenizer.padding_side == "left" else 0
            batch["labels"][i, start : start + len(y)] = y
        return batch


def _blocks(documents: list[str], tokenizer: PreTrainedTokenizerBase, block_size: int) -> np.ndarray:
    """Token blocks (n_blocks, block_size): documents joined by [SEP], cut, wrapped as [CLS] ... [SEP]."""
    encoded = tokenizer(documents, add_special_tokens=False, return_attention_mask=False, verbose=False)
    stream: list[int] = []
    for i, ids in enumerate(encoded["input_ids"]):
        if i:
            stream.append(tokenizer.sep_token_id)
        stream.extend(ids)
    body = block_size - 2
    n_blocks = len(stream) // body
    if n_blocks < 2:
        raise PrunebertError(
            f"the text has {len(stream)} tokens, too few for 2 blocks of {block_size}; "
            f"pass more text or a smaller --block_size"
        )
    cut = np.asarray(stream[: n_blocks * body], dtype=np.int64).reshape(n_blocks, body)
    cls = np.full((n_blocks, 1), tokenizer.cls_token_id, dtype=np.int64)
    sep = np.full((n_blocks, 1), tokenizer.sep_token_id, dtype=np.int64)
    return np.concatenate([cls, cut, sep], axis=1)


def _inputs(ids: np.ndarray, tokenizer: PreTrainedTokenizerBase) -> dict[str, list[list[int]]]:
    """Model inputs for unpadded, full blocks: input_ids, attention_mask and (if used) token_type_ids."""
    cols = {"input_ids": ids.tolist(), "attention_mask": np.ones_like(ids).tolist()}
    if "token_type_ids" in tokenizer.model_input_names:
        cols["token_type_ids"] = np.zeros_like(ids).tolist()
    return cols


def build_mlm_datasets(
    documents: list[str],
    tokenizer: PreTrainedTokenizerBase,
    block_size: int,
    eval_fraction: float = 0.05,
    seed: int = 0,
    max_train_blocks: int | None = None,
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train, eval) MLM block datasets; eval is pre-masked with a ``seed``-ed generator, train is not."""
    if block_size < 3:
        raise PrunebertError(f"block size must be >= 3 (got {block_size}); pass a larger block size")
    if not 0 < eval_fraction < 1:
        raise PrunebertError(f"eval fraction must be in (0, 1), got {eval_fraction}; pass e.g. 0.05")
    blocks = _blocks(documents, tokenizer, block_size)
    train_idx, eval_idx = carve(len(blocks), eval_fraction, seed)
    train_idx = [train_idx[i] for i in subsample(len(train_idx), max_train_blocks, seed)]
    gen = torch.Generator().manual_seed(seed)
    masked, labels = mask_tokens(torch.from_numpy(blocks[eval_idx]), tokenizer, 0.15, gen)
    eval_cols = {**_inputs(masked.numpy(), tokenizer), "labels": labels.tolist()}
    train = datasets.Dataset.from_dict(_inputs(blocks[train_idx], tokenizer))
    return train, datasets.Dataset.from_dict(eval_cols)
