"""The report as a paper needs it: the summary first, SVG beside every PNG, error bars over seeds, colour
scales fitted to the data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import PreTrainedTokenizerBase

from prunebert.report import PAGE, build_report
from prunebert.report.curves import series
from prunebert.report.data import ReportOptions, StudyResults, load_results
from prunebert.report.overlap import fitted_range
from prunebert.report.regimes import regime_rows, regime_table
from prunebert.report.summary import best_per_sparsity
from tinystudy import tiny_study

OPTIONS = {"words": ["good", "cat"], "neighbours": 3}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    return tiny_study(tmp_path_factory.getbasetemp(), tiny_tokenizer) / "study"


@pytest.fixture(scope="module")
def one_seed(study: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report-one-seed")
    build_report(study, out, ReportOptions(**OPTIONS))  # type: ignore[arg-type]
    return out


def _second_seed(study: Path, root: Path) -> Path:
    """The tiny study's results as if run again with seed 1: every metric 0.1 higher."""
    table = json.loads((study / "results.json").read_text())
    table["study"]["seed"] = 1
    for row in table["cells"] + table["pretrain_runs"]:
        for key in ("test_metric", "dev_metric", "final_train_loss", "mlm_loss", "mlm_accuracy"):
            if row.get(key) is not None:
                row[key] += 0.1
    root.mkdir()
    (root / "results.json").write_text(json.dumps(table))
    return root


def test_svg_beside_every_png(one_seed: Path) -> None:
    pngs = sorted(one_seed.glob("*.png"))
    assert len(pngs) == 7
    page = (one_seed / PAGE).read_text()
    for png in pngs:
        svg = png.with_suffix(".svg").read_text()
        assert svg.startswith("<?xml") and "<svg" in svg, png.name
        assert f'href="{png.stem}.svg"' in page


def test_the_summary_comes_first(one_seed: Path, study: Path) -> None:
    page = (one_seed / PAGE).read_text()
    summary = page.index("id=summary")
    assert summary < page.index("<img") < page.index("id=comparison") < page.index("id=cells")
    rows = best_per_sparsity(load_results(study))
    assert [r[:2] for r in rows[1:]] == [[t, s] for t in ("task-a", "task-b") for s in ("0%", "50%")]
    assert page.count("<tr>", summary, page.index("<img")) == len(rows)  # the table, before any figure
    assert "Not measured: pass <code>--bench" in page[summary : page.index("<img")]  # no speed table yet


def test_several_seeds_draw_error_bars_and_average_the_summary(
    study: Path, one_seed: Path, tmp_path: Path
) -> None:
    other = _second_seed(study, tmp_path / "seed1")
    out = tmp_path / "report"
    sections = build_report(study, out, ReportOptions(seed_dirs=[other], **OPTIONS))  # type: ignore[arg-type]
    curves = {s.name: s for s in sections}
    for name in ("metric_vs_sparsity", "train_loss_vs_sparsity", "mlm_vs_sparsity"):
        assert "mean over 2 seeds" in curves[name].caption
        assert "LineCollection" in (out / f"{name}.svg").read_text()  # error bars are drawn ...
        assert "LineCollection" not in (one_seed / f"{name}.svg").read_text()  # ... only with seeds
    page = (out / PAGE).read_text()
    assert "2 seeds (0, 1)" in page and "± 0.0707 (2 seeds)" in page  # sd of x and x + 0.1


def test_series_averages_seeds_with_sample_sd() -> None:
    rows = [{"sparsity": 0.5, "m": 0.8}, {"sparsity": 0.5, "m": 0.6}, {"sparsity": 0.0, "m": 0.9}]
    x, mean, sd = series(rows, "m")
    assert (
        x == [0.0, 50.0]
        and mean == pytest.approx([0.9, 0.7])
        and sd == pytest.approx([0.0, 0.1414], abs=1e-4)
    )


def test_overlap_colours_span_the_data_not_zero_to_one() -> None:
    matrix = np.array([[1.0, 0.96, 0.98], [0.96, 1.0, 0.97], [0.98, 0.97, 1.0]])
    low, high = fitted_range(matrix)
    assert high == 1.0 and low == pytest.approx(0.956)
    assert fitted_range(np.ones((2, 2))) == (0.99, 1.0)  # identical masks: still a visible range
    assert fitted_range(np.array([[1.0, 0.1], [0.1, 1.0]]))[0] == pytest.approx(0.01)


def _cell(stage: str, method: str, sparsity: float, metric: float) -> dict[str, object]:
    return {"task": "t", "stage": stage, "method": method, "sparsity": sparsity, "test_metric": metric}


def test_regimes_compare_every_stage_with_the_fine_tuned_dense_model(tmp_path: Path) -> None:
    cells = [
        _cell("pretrain", "dense", 0.0, 0.82),
        _cell("finetune", "dense", 0.0, 0.80),
        _cell("after-finetune", "dense", 0.0, 0.80),
        _cell("pretrain", "magnitude", 0.5, 0.79),
        _cell("finetune", "magnitude", 0.5, 0.77),
        _cell("after-finetune", "magnitude", 0.5, 0.70),
        _cell("finetune", "magnitude", 0.9, 0.60),  # its pretrain cell has not finished
    ]
    first = StudyResults(tmp_path, {"study": {"seed": 0}, "cells": cells})
    second = [{**c, "test_metric": c["test_metric"] + 0.02} for c in cells if c["stage"] == "pretrain"]  # type: ignore[operator]
    first.others = [StudyResults(tmp_path, {"study": {"seed": 1}, "cells": second})]
    rows = regime_rows(first)
    assert rows[0][-1] == "pretrain - finetune (pt)" and rows[0][3:5] == [
        "pretrain",
        "pretrain vs dense (pt)",
    ]
    dense, half, ninety = rows[1:]
    assert dense[3:9] == ["83.0 ± 1.4", "+3.0", "80.0", "+0.0", "80.0", "+0.0"]
    assert half[:3] == ["t", "magnitude", "50%"]
    assert half[3:] == ["80.0 ± 1.4", "+0.0", "77.0", "-3.0", "70.0", "-10.0", "+3.0"]
    assert ninety[3:] == ["", "", "60.0", "-20.0", "", "", ""]
    csv_out = tmp_path / "report" / "regimes.png"
    csv_out.parent.mkdir()
    section = regime_table(first, csv_out)
    assert "fine-tuned on the task" in section.caption
    assert (
        (tmp_path / "report" / "regimes.csv")
        .read_text()
        .splitlines()[2]
        .startswith("t,magnitude,50%,80.0 ± 1.4")
    )


def test_regimes_without_a_finetune_stage_use_each_stages_own_dense_model(tmp_path: Path) -> None:
    cells = [_cell("pretrain", "dense", 0.0, 0.82), _cell("pretrain", "magnitude", 0.5, 0.79)]
    rows = regime_rows(StudyResults(tmp_path, {"cells": cells}))
    assert rows[0] == ["task", "method", "sparsity", "pretrain", "pretrain vs dense (pt)"]
    assert rows[2] == ["t", "magnitude", "50%", "79.0", "-3.0"]
