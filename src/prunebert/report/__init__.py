"""`prunebert report`: the figures of the seed papers, as PNGs, SVGs and one HTML page, from a study's
results; a one-screen summary (`summary`) comes first on the page.

Reads only the study's `results.json` and the mask files and models its rows point to. Each figure
family is one module (`curves`, `sparsity`, `embeddings`, `overlap`); a figure whose inputs are missing
is left out with a note on the page, never an error. The three regimes side by side (`regimes`) and the
comparison table (`table`) are sections without a figure, also written as `regimes.csv` and
`comparison.csv`. Studies of the same grid run with other seeds (`ReportOptions.seed_dirs`) join the
curves, the regimes and the summary as mean ± standard deviation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prunebert.errors import PrunebertError
from prunebert.report.curves import metric_vs_sparsity, mlm_vs_sparsity, train_loss_vs_sparsity
from prunebert.report.data import ReportOptions, Section, Skip, StudyResults, choose, load_seeds
from prunebert.report.embeddings import embedding_map
from prunebert.report.html import render_html
from prunebert.report.overlap import mask_overlap
from prunebert.report.regimes import regime_table
from prunebert.report.sparsity import module_sparsity, qk_patterns
from prunebert.report.table import comparison_table

__all__ = ["PAGE", "ReportOptions", "build_report"]

PAGE = "report.html"

Figure = Callable[[StudyResults, ReportOptions, Path], Section]

#: (file stem, title, figure) of every figure of the report, in page order
FIGURES: list[tuple[str, str, Figure]] = [
    ("regimes", "Prune once vs per task", lambda r, o, p: regime_table(r, p)),
    ("comparison", "Comparison with the dense model", lambda r, o, p: comparison_table(r, o.bench, p)),
    ("metric_vs_sparsity", "Downstream metric vs sparsity", lambda r, o, p: metric_vs_sparsity(r, p)),
    ("mlm_vs_sparsity", "MLM loss and accuracy vs sparsity", lambda r, o, p: mlm_vs_sparsity(r, p)),
    ("train_loss_vs_sparsity", "Training loss vs sparsity", lambda r, o, p: train_loss_vs_sparsity(r, p)),
    (
        "module_sparsity",
        "Per-layer and per-module sparsity",
        lambda r, o, p: module_sparsity(choose(r, o), p),
    ),
    ("qk_patterns", "Query/key sparsity patterns", lambda r, o, p: qk_patterns(choose(r, o), o.layers, p)),
    (
        "embeddings",
        "Word representations, dense vs pruned",
        lambda r, o, p: embedding_map(choose(r, o), o.words, o.neighbours, p),
    ),
    (
        "mask_overlap",
        "Mask overlap between tasks and pre-training",
        lambda r, o, p: mask_overlap(r, o.method or choose(r, o).method, p),
    ),
]


def build_report(
    results_dir: Path, out: Path | None = None, options: ReportOptions | None = None
) -> list[Section]:
    """Write one PNG and SVG per figure and `report.html` into `out` (default RESULTS_DIR/report)."""
    opts = options or ReportOptions()
    res = load_seeds([results_dir, *opts.seed_dirs])
    out = out or results_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for stem, title, figure in FIGURES:
        png = out / f"{stem}.png"
        png.unlink(missing_ok=True)  # a figure skipped now must not leave an old PNG behind
        png.with_suffix(".svg").unlink(missing_ok=True)
        try:
            sections.append(figure(res, opts, png))
        except (Skip, PrunebertError, OSError) as exc:
            sections.append(Section(stem, title, note=str(exc)))
    render_html(res, sections, out / PAGE)
    return sections
