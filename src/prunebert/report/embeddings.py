"""Word representations of the dense and the pruned model around chosen words (Guo et al. 2019, Fig. 4).

The word-embedding matrix is usually not pruned (only the encoder's matrices are), so comparing it would
show training drift, not pruning. Instead each word is encoded on its own (`[CLS] word [SEP]`) and its
representation is the encoder's output (last hidden state) averaged over the word's pieces: the
embedding after all pruned layers. The words are the chosen seed words plus, for each, its nearest
neighbours by cosine similarity in the dense model's word-embedding matrix.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import cast

import numpy as np
import torch
import transformers
from matplotlib.figure import Figure
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from prunebert.report.data import Chosen, Section, Skip
from prunebert.report.plotting import figure_legend, method_colors, save_figure, style_axes

__all__ = ["embedding_map", "knn_overlap", "neighbour_words", "pca_2d", "project_2d"]

MIN_TSNE_POINTS = 8  # fewer points than this: t-SNE's perplexity is meaningless, PCA is used


def neighbour_words(
    embeddings: torch.Tensor, tokenizer: PreTrainedTokenizerBase, seeds: list[str], k: int
) -> dict[str, list[str]]:
    """Seed word -> [seed, its k nearest whole-word vocabulary entries] (cosine, input embeddings)."""
    vocab = tokenizer.get_vocab()
    words = [w for w in vocab if w.isalpha() and not w.startswith("##")]
    ids = torch.tensor([vocab[w] for w in words])
    table = torch.nn.functional.normalize(embeddings[ids].float(), dim=-1)  # (W, hidden)
    groups = {}
    for seed in seeds:
        if seed not in vocab:
            continue
        sims = table @ torch.nn.functional.normalize(embeddings[vocab[seed]].float(), dim=0)  # (W,)
        order = [words[i] for i in sims.argsort(descending=True).tolist() if words[i] != seed]
        groups[seed] = [seed, *order[:k]]
    return groups


@torch.no_grad()
def encode_words(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, words: list[str]) -> np.ndarray:
    """(len(words), hidden): last hidden state of each word encoded alone, mean over its pieces."""
    batch = tokenizer(words, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    special = batch.pop("special_tokens_mask")
    hidden = model(**batch).last_hidden_state  # (W, T, hidden)
    keep = (batch["attention_mask"].bool() & ~special.bool()).unsqueeze(-1).float()  # (W, T, 1)
    return np.asarray((hidden * keep).sum(1) / keep.sum(1).clamp(min=1.0), dtype=np.float64)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """The first two principal components of the rows of `x`."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return np.asarray(centred @ vt[:2].T)


def project_2d(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, str]:
    """t-SNE (sklearn, PCA-initialised, seeded) of the rows of `x`; PCA for very few points."""
    if len(x) < MIN_TSNE_POINTS:
        return pca_2d(x), "PCA"
    from sklearn.manifold import TSNE

    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
        return np.asarray(tsne.fit_transform(x)), f"t-SNE (perplexity {perplexity:g}, PCA init, seed {seed})"


def knn_overlap(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Mean fraction of each point's k nearest neighbours (cosine) in `a` that are also so in `b`."""
    k = min(k, len(a) - 1)

    def knn(x: np.ndarray) -> np.ndarray:
        unit = x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)
        sims = unit @ unit.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :k]

    na, nb = knn(a), knn(b)
    return float(np.mean([len(set(na[i]) & set(nb[i])) / k for i in range(len(a))]))


def _load(path: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The encoder (any head dropped) and tokenizer saved at `path`, without transformers' load report."""
    previous, bar = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        model = AutoModel.from_pretrained(str(path)).eval()
        return model, AutoTokenizer.from_pretrained(str(path))
    finally:
        transformers.logging.set_verbosity(previous)
        if bar:
            transformers.logging.enable_progress_bar()


def embedding_map(chosen: Chosen, seeds: list[str], k: int, out: Path) -> Section:
    """Two panels, dense and pruned, of the chosen words' encoder outputs projected to 2-D."""
    if chosen.dense_model is None:
        raise Skip(f"no dense model of the same stage and task as {chosen.label} to compare with")
    dense, tokenizer = _load(chosen.dense_model)
    table = cast(torch.Tensor, dense.get_input_embeddings().weight).detach()  # (vocab, hidden)
    groups = neighbour_words(table, tokenizer, seeds, k)
    if not groups:
        raise Skip(f"none of the words {seeds} is a whole word of the model's vocabulary; pass --words")
    colour_of: dict[str, str] = {}
    for seed, group in groups.items():
        for word in group:
            colour_of.setdefault(word, seed)  # a word in two neighbourhoods keeps its first colour
    words = list(colour_of)
    pruned, _ = _load(chosen.model)
    vectors = {
        "dense": encode_words(dense, tokenizer, words),
        chosen.label: encode_words(pruned, tokenizer, words),
    }
    near = min(5, len(words) - 1)
    overlap = knn_overlap(vectors["dense"], vectors[chosen.label], k=near)
    colors = method_colors(list(groups))
    fig = Figure(figsize=(12.0, 5.6), layout="constrained")
    method = ""
    for ax, (name, x) in zip(fig.subplots(1, 2), vectors.items(), strict=True):
        xy, method = project_2d(x)
        for seed in groups:
            here = [i for i, w in enumerate(words) if colour_of[w] == seed]
            ax.scatter(xy[here, 0], xy[here, 1], color=colors[seed], s=28, label=f"near '{seed}'")
        for (px, py), word in zip(xy, words, strict=True):
            ax.annotate(word, (px, py), fontsize=8, xytext=(3, 2), textcoords="offset points")
        axis = method.split(" ")[0]
        style_axes(ax, f"{axis} dimension 1", f"{axis} dimension 2", name)
    fig.suptitle("encoder output of each word alone, coloured by the seed word it is near")
    figure_legend(fig, fig.axes[:1])
    save_figure(fig, out)
    return Section(
        "embeddings",
        "Word representations, dense vs pruned (Guo et al. 2019, Fig. 4)",
        out,
        f"{method} of the last hidden state of each word encoded alone ([CLS] word [SEP], mean over its "
        f"pieces) - the representation after every pruned encoder layer, not the (unpruned) embedding "
        f"matrix - for the seed words {', '.join(groups)} and their {k} nearest neighbours in the dense "
        f"model's word embeddings. Each panel is projected on its own. Neighbourhood agreement: on average "
        f"{overlap:.0%} of a word's {near} nearest neighbours (cosine, full dimension) in the dense model "
        f"are also among its {near} nearest in the pruned one.",
    )
