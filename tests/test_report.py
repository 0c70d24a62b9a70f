"""`prunebert report`: every figure from the tiny study, skipped figures as notes, and the pure helpers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.report import build_report
from prunebert.report.data import ReportOptions, Skip, choose, load_results
from prunebert.report.embeddings import knn_overlap, neighbour_words, pca_2d, project_2d
from prunebert.report.overlap import jaccard, overlap_matrix
from prunebert.report.sparsity import qk_patterns
from tinystudy import chdir, tiny_study

FIGURES = (
    "metric_vs_sparsity",
    "mlm_vs_sparsity",
    "train_loss_vs_sparsity",
    "module_sparsity",
    "qk_patterns",
    "embeddings",
    "mask_overlap",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    return tiny_study(tmp_path_factory.getbasetemp(), tiny_tokenizer)


def test_report_draws_every_figure_into_one_page(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    with chdir(workspace):
        assert main(["report", "study", "--words", "good", "cat", "--neighbours", "4"]) == 0
    assert "skipped" not in capsys.readouterr().out
    out = workspace / "study" / "report"
    page = (out / "report.html").read_text()
    for name in FIGURES:
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 10_000, name
        assert f'href="{name}.png"' in page  # linked beside the page ...
    assert page.count('src="data:image/png;base64,') == len(FIGURES)  # ... and embedded in it
    assert "Not drawn" not in page
    assert page.count("<tr>") > 16  # the table of every cell (16) and the overlap table


def test_per_model_figures_follow_the_options(workspace: Path) -> None:
    res = load_results(workspace / "study")
    default = choose(res, ReportOptions())
    assert default.label == "pretrain (MLM) magnitude 50%" and default.dense_model is not None
    assert (
        default.masks == workspace / "study" / "pretrain/mlm/magnitude-50/model/prunebert_masks.safetensors"
    )
    picked = choose(res, ReportOptions(stage="finetune", task="task-b", method="random", sparsity=0.5))
    assert picked.label == "finetune task-b random 50%"
    assert picked.dense_model == workspace / "study" / "finetune/task-b/dense/model"


def test_missing_inputs_become_notes_not_errors(workspace: Path, tmp_path: Path) -> None:
    table = json.loads((workspace / "study" / "results.json").read_text())
    table["cells"] = [r for r in table["cells"] if r["stage"] != "pretrain"]
    table["pretrain_runs"] = []
    (tmp_path / "results.json").write_text(json.dumps(table))  # no models or masks beside it
    stale = tmp_path / "report" / "module_sparsity.png"  # drawn by an earlier report
    stale.parent.mkdir()
    stale.write_bytes(PNG_MAGIC)
    sections = {s.name: s for s in build_report(tmp_path, options=ReportOptions(words=["good"]))}
    drawn = {name for name, s in sections.items() if s.png is not None}
    assert drawn == {"metric_vs_sparsity", "train_loss_vs_sparsity"}
    assert "no finished pretrain (MLM) runs" in sections["mlm_vs_sparsity"].note
    assert "mask file" in sections["module_sparsity"].note
    page = (tmp_path / "report" / "report.html").read_text()
    assert page.count("Not drawn:") == len(FIGURES) - 2
    assert not stale.exists()  # a skipped figure leaves no PNG of an older study behind


def test_qk_patterns_of_a_layer_without_masks_is_skipped(workspace: Path, tmp_path: Path) -> None:
    chosen = choose(load_results(workspace / "study"), ReportOptions())
    with pytest.raises(Skip, match=r"layer 7 has no query/key mask \(pruned layers: \[0, 1\]\)"):
        qk_patterns(chosen, [7], tmp_path / "qk.png")
    assert qk_patterns(chosen, [1], tmp_path / "qk.png").png == tmp_path / "qk.png"


def test_report_of_a_directory_without_results_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert re.search(
        r"no results.json in .*; pass the output_dir of a `prunebert study` run", capsys.readouterr().err
    )


def test_jaccard_of_hand_written_masks() -> None:
    a = {"w": torch.tensor([[True, False], [False, True]])}  # pruned: (0,1), (1,0)
    b = {"w": torch.tensor([[True, False], [True, False]])}  # pruned: (0,1), (1,1)
    assert jaccard(a, b) == pytest.approx(1 / 3)
    assert jaccard(a, a) == 1.0
    assert np.isnan(
        jaccard({"w": torch.ones(2, 2, dtype=torch.bool)}, {"w": torch.ones(2, 2, dtype=torch.bool)})
    )
    matrix = overlap_matrix({"a": a, "b": b, "c": a})
    np.testing.assert_allclose(matrix, [[1, 1 / 3, 1], [1 / 3, 1, 1 / 3], [1, 1 / 3, 1]])


def test_projection_and_neighbourhood_helpers(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    x = np.array([[0.0, 0.0, 0.0], [2.0, 0.0, 0.1], [4.0, 0.0, -0.1], [6.0, 0.0, 0.0]])
    xy = pca_2d(x)
    assert xy.shape == (4, 2) and np.ptp(xy[:, 0]) == pytest.approx(6.0, abs=0.01)  # 1st component: x
    assert project_2d(x)[1] == "PCA"  # too few points for t-SNE
    many = np.random.default_rng(0).normal(size=(12, 5))
    xy, method = project_2d(many)
    assert xy.shape == (12, 2) and method.startswith("t-SNE")
    assert knn_overlap(many, many, k=3) == 1.0 and knn_overlap(many, many[::-1], k=3) < 1.0
    vocab = tiny_tokenizer.get_vocab()
    table = torch.zeros(len(vocab), 2)
    table[vocab["good"]] = torch.tensor([1.0, 0.0])
    table[vocab["great"]] = torch.tensor([0.9, 0.1])
    table[vocab["bad"]] = torch.tensor([-1.0, 0.0])
    groups = neighbour_words(table, tiny_tokenizer, ["good", "zebra"], k=1)
    assert groups == {"good": ["good", "great"]}  # unknown words are left out
