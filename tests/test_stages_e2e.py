"""End-to-end on a tiny model and local files: pretrain (pruning) -> info -> finetune -> evaluate."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.info import checkpoint_info
from tiny import write_workspace

FAST = ["--train.batch_size", "4", "--train.logging_steps", "2", "--train.save_steps", "4"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    return write_workspace(tmp_path_factory.mktemp("e2e"), tiny_tokenizer)


def _results(run: Path) -> dict:
    return json.loads((run / "results.json").read_text())


def test_pretrain_prune_transfer_evaluate(workspace: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pre, ft = workspace / "pre", workspace / "ft"
    assert (
        main(
            [
                "pretrain",
                "--model",
                str(workspace / "tiny-mlm"),
                "--text",
                str(workspace / "text.txt"),
                "--output_dir",
                str(pre),
                "--block_size",
                "16",
                "--train.max_steps",
                "8",
                "--pruning.sparsity",
                "0.5",
                "--pruning.frequency",
                "2",
                *FAST,
            ]
        )
        == 0
    )
    result = _results(pre)
    closeness = {"representation_cosine", "representation_cosine_min"}  # to the starting model
    assert set(result["metrics"]) == {"mlm_loss", "mlm_perplexity", "mlm_accuracy", *closeness}
    assert result["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
    assert (result["sparsity"]["target"], result["sparsity"]["target_exact"]) == (0.5, True)

    capsys.readouterr()
    assert main(["info", str(pre), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert len(info["modules"]) == 12 and info["has_masks"]
    assert all(m["sparsity"] == pytest.approx(0.5, abs=0.005) for m in info["modules"].values())

    assert (
        main(
            [
                "finetune",
                "--model",
                str(pre),
                "--task",
                str(workspace / "task.csv"),
                "--output_dir",
                str(ft),
                "--train.max_steps",
                "6",
                "--max_seq_length",
                "16",
                *FAST,
            ]
        )
        == 0
    )
    tuned = _results(ft)
    assert tuned["transferred_mask"] and tuned["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3)
    assert checkpoint_info(ft)["target_sparsity"] == pytest.approx(0.5, abs=1e-3)
    encoder = AutoModel.from_pretrained(ft / "model")  # plain transformers sees the same zeros
    masks = dict(info["modules"].items())
    for key in masks:
        weight = encoder.state_dict()[key.removeprefix("bert.")]
        assert (weight == 0).float().mean().item() == pytest.approx(0.5, abs=0.005)

    out = workspace / "eval.json"
    assert (
        main(
            [
                "evaluate",
                "--model",
                str(ft),
                "--task",
                str(workspace / "task.csv"),
                "--max_seq_length",
                "16",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["metrics"]["test"]["accuracy"] == pytest.approx(
        tuned["metrics"]["test"]["accuracy"]
    )


def test_new_head_is_warmed_up_and_finished_runs_are_protected(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = workspace / "warm"
    argv = [
        "pretrain",
        "--model",
        str(workspace / "tiny-encoder"),
        "--text",
        str(workspace / "text.txt"),
        "--output_dir",
        str(run),
        "--block_size",
        "16",
        "--train.max_steps",
        "2",
        "--head_warmup_steps",
        "3",
        *FAST,
    ]
    assert main(argv) == 0
    assert _results(run)["head_warmup"]["steps"] == 3
    before = (run / "results.json").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    assert (run / "results.json").read_bytes() == before


def test_random_pruning_differs_from_magnitude(workspace: Path) -> None:
    runs = {}
    for method in ("magnitude", "random"):
        run = workspace / f"oneshot-{method}"
        assert (
            main(
                [
                    "finetune",
                    "--model",
                    str(workspace / "tiny-mlm"),
                    "--task",
                    str(workspace / "task.csv"),
                    "--output_dir",
                    str(run),
                    "--train.max_steps",
                    "2",
                    "--max_seq_length",
                    "16",
                    "--pruning.method",
                    method,
                    "--pruning.schedule",
                    "oneshot",
                    "--pruning.sparsity",
                    "0.3",
                    *FAST,
                ]
            )
            == 0
        )
        runs[method] = AutoModel.from_pretrained(run / "model").state_dict()[
            "encoder.layer.0.output.dense.weight"
        ]
    assert not torch.equal(runs["magnitude"] == 0, runs["random"] == 0)


def test_evaluate_refuses_a_model_without_trained_head(
    workspace: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["evaluate", "--model", str(workspace / "tiny-encoder"), "--task", str(workspace / "task.csv")])
        == 2
    )
    assert "no trained classification head" in capsys.readouterr().err
