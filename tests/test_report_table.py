"""The comparison table of `prunebert report` (memory dense / sparse, speed from a bench JSON, pruned
component, pruned in pre-training, performance vs dense) on the tiny study, and its pure pieces."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.deploy.bench import BenchSettings, run_bench
from prunebert.deploy.storage import encode_tensor
from prunebert.masks import MASKS_FILE, save_masks
from prunebert.report import table as table_module
from prunebert.report.curves import train_loss_vs_sparsity
from prunebert.report.data import load_results
from prunebert.report.table import COLUMNS, comparison_rows, model_bytes, pruned_component
from tinystudy import chdir, tiny_study


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    return tiny_study(tmp_path_factory.getbasetemp(), tiny_tokenizer)


def _key(row: dict) -> tuple:
    return (row["task"], row["stage"], row["method"])


def test_model_bytes_count_dense_fp32_and_sparse_storage_and_are_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    weight = torch.randn(64, 32)
    weight[weight.abs() < 1.0] = 0.0  # about 68% zeros
    tensors = {"w": weight, "b": torch.zeros(32, dtype=torch.float16)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    save_masks({"w": weight != 0}, tmp_path / MASKS_FILE, {})  # masks are not weights: not counted
    cache: dict = {}
    sizes = model_bytes(tmp_path, cache)
    stored = sum(p.nbytes for t in tensors.values() for p in encode_tensor(t).parts.values())
    assert sizes == {"dense_fp32": 4 * (64 * 32 + 32), "sparse": stored}
    assert stored < 0.5 * 4 * 64 * 32
    monkeypatch.setattr(table_module, "encode_tensor", lambda *a, **k: pytest.fail("not cached"))
    assert model_bytes(tmp_path, cache) == sizes


def test_pruned_component_from_mask_roles(tmp_path: Path) -> None:
    keep = torch.ones(4, 4, dtype=torch.bool)
    some = keep.clone()
    some[0] = False
    names = {
        "bert.encoder.layer.0.attention.self.query.weight": ("query", some),
        "bert.encoder.layer.0.intermediate.dense.weight": ("ffn_in", keep),
        "bert.embeddings.word_embeddings.weight": ("embeddings", some.clone()),
    }
    masks = tmp_path / MASKS_FILE
    save_masks({k: m for k, (_, m) in names.items()}, masks, {"roles": {k: r for k, (r, _) in names.items()}})
    assert pruned_component(masks, structured=False) == "weights in attention, word embeddings"
    assert pruned_component(masks, structured=True, fixed_heads=3) == (
        "attention heads, word embeddings, 3 heads' attention fixed"
    )
    assert pruned_component(None, structured=False) == "none (dense)"


def test_rows_compare_every_model_with_its_dense_model(workspace: Path) -> None:
    res = load_results(workspace / "study")
    rows = {_key(r): r for r in comparison_rows(res)}
    assert len(rows) == len(res.cells) and all(set(r) == {k for k, _ in COLUMNS} for r in rows.values())
    cells = {_key(c): c for c in res.cells}
    for key, row in rows.items():
        dense = cells[(key[0], key[1], "dense")]
        assert row["relative_performance"] == pytest.approx(
            100 * cells[key]["test_metric"] / dense["test_metric"]
        )
        assert row["memory_dense_pct"] == pytest.approx(100.0)  # masks leave the shapes alone
        assert row["speed_ratio"] is None
        if key[2] == "dense":
            assert row["component"] == "none (dense)" and not row["pruned_in_pretraining"]
        else:
            assert row["component"] == "weights in attention + FFN"
            assert row["pruned_in_pretraining"] == (key[1] == "pretrain")
            # zeros cost little once stored sparsely: half the encoder is pruned
            assert row["memory_sparse_pct"] < rows[(key[0], key[1], "dense")]["memory_sparse_pct"] - 5


def test_speed_comes_from_a_real_bench_json(workspace: Path, tmp_path: Path) -> None:
    study = workspace / "study"
    models = [str(study / "finetune/task-a/dense"), str(study / "finetune/task-a/magnitude-50")]
    settings = BenchSettings(variants=("torch",), batch_sizes=(2,), seq_len=8, rounds=2, iters=1, warmup=0)
    bench = run_bench(models, settings)
    (tmp_path / "bench.json").write_text(json.dumps(bench))
    rows = {_key(r): r for r in comparison_rows(load_results(study), bench)}
    speed = {
        r["model"]: r["speedup"]["median"] for r in bench["results"][0]["runners"] if r["role"] == "runner"
    }
    expected = speed[models[1]] / speed[models[0]]
    assert rows[("task-a", "finetune", "magnitude")]["speed_ratio"] == pytest.approx(expected)
    assert rows[("task-a", "finetune", "dense")]["speed_ratio"] == pytest.approx(1.0)
    assert rows[("task-b", "finetune", "magnitude")]["speed_ratio"] is None  # not in the bench

    out = tmp_path / "report"
    with chdir(workspace):
        assert main(["report", "study", "--output", str(out), "--bench", str(tmp_path / "bench.json")]) == 0
    page = (out / "report.html").read_text()
    assert "pruned component" in page and "inference speed (x dense)" in page and "from bench.json" in page
    with (out / "comparison.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows) and list(table[0]) == [k for k, _ in COLUMNS]
    assert {r["speed_ratio"] for r in table if r["task"] == "task-a" and r["stage"] == "finetune"} != {""}
    assert (out / "comparison_sizes.json").is_file()


def test_the_cannot_fit_figure_sits_next_to_dev_and_test(workspace: Path, tmp_path: Path) -> None:
    section = train_loss_vs_sparsity(load_results(workspace / "study"), tmp_path / "fit.png")
    assert section.png is not None and section.png.stat().st_size > 10_000
    assert "next to dev and test" in section.title and "cannot fit" in section.title
