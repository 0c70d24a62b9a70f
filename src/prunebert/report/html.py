"""One self-contained HTML page: a one-screen summary first (the best model at each sparsity, the speed of
the timed models), then every figure (embedded as base64, linked to its PNG and SVG beside the page) or the
note saying why it was left out, then the comparison table, the settings and every cell."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from prunebert.report.data import Section, StudyResults
from prunebert.report.summary import best_per_sparsity, headline, speed_rows

__all__ = ["render_html", "results_table"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th { background: #f0f0f0; } td.l, th.l { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; }
.note { background: #fff4e0; border-left: 4px solid #e0a000; padding: 0.5em 1em; }
.caption { color: #444; max-width: 75em; }
.lead { font-size: 1.1em; } nav a { margin-right: 1em; } .files { font-size: 0.85em; }
"""

_COLUMNS = (
    ("task", "task", "s"),
    ("stage", "stage", "s"),
    ("method", "method", "s"),
    ("sparsity", "target", "%"),
    ("achieved_sparsity", "achieved", "%"),
    ("metric", "metric", "s"),
    ("dev_metric", "dev", "f"),
    ("test_metric", "test", "f"),
    ("final_train_loss", "final train loss", "f"),
    ("mlm_loss", "MLM loss", "f"),
    ("mlm_accuracy", "MLM acc", "%"),
    ("representation_cosine", "embedding cos", "f"),
)


def _fmt(value: Any, kind: str) -> str:
    if value is None or value == "":
        return ""
    if kind == "%":
        return f"{100 * float(value):.1f}%"
    if kind == "f":
        return f"{float(value):.4f}"
    return html.escape(str(value))


def _table(rows: list[list[str]], left: int = 0) -> str:
    """An HTML table of already-escaped strings; the first `left` columns left-aligned."""

    def cell(tag: str, i: int, text: str) -> str:
        return f"<{tag}{' class=l' if i < left else ''}>{text}</{tag}>"

    head = "".join(cell("th", i, t) for i, t in enumerate(rows[0]))
    body = "".join("<tr>" + "".join(cell("td", i, t) for i, t in enumerate(r)) + "</tr>" for r in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"


def results_table(res: StudyResults) -> str:
    """Every finished cell: what it is, its sparsity, dev/test metric, training loss, MLM metrics."""
    rows = [[label for _, label, _ in _COLUMNS]]
    rows += [[_fmt(row.get(key), kind) for key, _, kind in _COLUMNS] for row in res.cells]
    return _table(rows, left=3)


def _settings(res: StudyResults) -> str:
    study = res.table.get("study", {})
    tasks = ", ".join(res.tasks() or [t.get("name") or t.get("task", "?") for t in study.get("tasks", [])])
    methods = ", ".join(m.get("name", "?") for m in study.get("methods", []))
    facts = [
        ("model", study.get("model")),
        ("MLM text", study.get("text")),
        ("tasks", tasks),
        ("methods", methods),
        ("sparsities", ", ".join(f"{100 * s:g}%" for s in study.get("sparsities", []))),
        ("stages", ", ".join(study.get("stages", []))),
        (
            "cells finished",
            f"{len(res.cells)}" + ("" if res.table.get("complete") else " (study incomplete)"),
        ),
    ]
    items = "".join(f"<li><b>{k}</b>: {html.escape(str(v))}</li>" for k, v in facts)
    return f"<ul>{items}</ul>"


def _section(section: Section, page_dir: Path) -> str:
    title = f"<h2 id={section.name}>{html.escape(section.title)}</h2>"
    if section.png is None and section.table:  # a table without a figure
        rows = [[html.escape(c) for c in r] for r in section.table]
        return f"{title}<p class=caption>{html.escape(section.caption)}</p>{_table(rows, left=3)}"
    if section.png is None:
        return f"{title}<p class=note>Not drawn: {html.escape(section.note)}</p>"
    data = base64.b64encode(section.png.read_bytes()).decode("ascii")
    link = html.escape(section.png.relative_to(page_dir).as_posix())
    image = (
        f'<a href="{link}"><img src="data:image/png;base64,{data}" alt="{html.escape(section.title)}"></a>'
    )
    svg = section.png.with_suffix(".svg")
    if svg.is_file():
        vector = html.escape(svg.relative_to(page_dir).as_posix())
        image += f'<div class=files>files: <a href="{link}">PNG</a> · <a href="{vector}">SVG</a></div>'
    table = _table([[html.escape(c) for c in r] for r in section.table], left=3) if section.table else ""
    return f"{title}{image}<p class=caption>{html.escape(section.caption)}</p>{table}"


def summary(res: StudyResults, sections: list[Section]) -> str:
    """The first screen: what the study is, the best model per sparsity, the timed models' speed."""
    best = [[html.escape(c) for c in r] for r in best_per_sparsity(res)]
    speed = [[html.escape(c) for c in r] for r in speed_rows(sections)]
    timed = (
        _table(speed, left=3)
        if speed
        else "<p class=caption>Not measured: pass <code>--bench BENCH.json</code> (a <code>prunebert bench "
        "--json-out</code> file that timed the study's models).</p>"
    )
    return (
        f"<p class=lead>{html.escape(headline(res))}</p><h2 id=summary>Summary: the best model at each "
        f"sparsity</h2><p class=caption>Per task and target sparsity, the pruning method and stage with the "
        "best test metric, and its share of the dense model of the same stage.</p>"
        f"{_table(best, left=3)}<h3>Inference speed</h3>{timed}"
    )


def render_html(res: StudyResults, sections: list[Section], page: Path) -> Path:
    """Write the report page to `page` (PNGs and SVGs referenced relative to it): summary, figures, tables."""
    figures = [s for s in sections if s.png is not None or not s.table]
    tables = [s for s in sections if s.png is None and s.table]
    nav = " ".join(f'<a href="#{s.name}">{html.escape(s.name.replace("_", " "))}</a>' for s in figures)
    body = "".join(_section(s, page.parent) for s in [*figures, *tables])
    document = (
        "<!doctype html><html><head><meta charset=utf-8><title>prunebert study report</title>"
        f"<style>{_STYLE}</style></head><body><h1>prunebert study report</h1>{summary(res, sections)}"
        f"<nav><b>Figures</b>: {nav}</nav>{body}<h2 id=settings>Settings</h2>{_settings(res)}"
        f"<h2 id=cells>All cells</h2>{results_table(res)}</body></html>\n"
    )
    page.write_text(document, encoding="utf-8")
    return page
