"""The real embedded default (all-MiniLM-L6-v2, wiki-sample, rotten-tomatoes), a few steps of each stage."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel

from prunebert.cli import main

pytestmark = pytest.mark.slow


def test_minilm_pretrain_prune_then_transfer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(2)  # a real model: use both cores (conftest sets 1 for tiny models)
    pre, ft = tmp_path / "pre", tmp_path / "ft"
    small = ["--train.batch_size", "8", "--train.save_steps", "100"]
    assert (
        main(
            [
                "pretrain",
                "--model",
                "minilm-l6",
                "--output_dir",
                str(pre),
                "--block_size",
                "64",
                "--max_train_blocks",
                "64",
                "--max_eval_blocks",
                "32",
                "--head_warmup_steps",
                "2",
                "--train.max_steps",
                "4",
                "--pruning.sparsity",
                "0.4",
                "--pruning.frequency",
                "1",
                *small,
            ]
        )
        == 0
    )
    results = json.loads((pre / "results.json").read_text())
    assert results["head_warmup"]["steps"] == 2 and 0 < results["metrics"]["mlm_accuracy"] < 1

    assert (
        main(
            [
                "finetune",
                "--model",
                str(pre),
                "--output_dir",
                str(ft),
                "--max_train_examples",
                "64",
                "--max_seq_length",
                "48",
                "--train.max_steps",
                "4",
                *small,
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["info", str(ft), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["modules"]) == 36
    assert all(m["sparsity"] == pytest.approx(0.4, abs=0.005) for m in info["modules"].values())
    encoder = AutoModel.from_pretrained(ft / "model").state_dict()
    for key, module in info["modules"].items():
        assert (encoder[key.removeprefix("bert.")] == 0).float().mean().item() == pytest.approx(
            module["sparsity"]
        )
