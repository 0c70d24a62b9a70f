"""Crash safety: a run killed with SIGKILL, or left with a half-written checkpoint, resumes with the same
command and ends exactly where an uninterrupted run ends (same masks, weights and metrics)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerBase, Trainer

from prunebert import PruningCallback, PruningConfig
from prunebert.cli import main
from prunebert.data import SeededMLMCollator
from prunebert.errors import PrunebertError
from prunebert.masks import MASKS_FILE
from prunebert.pruner import Pruner
from prunebert.stages.checkpoints import COMPLETE_FILE, is_complete, last_complete
from tiny import StopAt, stage_data_args, tiny_classifier, tiny_dataset, tiny_training_args, write_workspace

FAST = ["--train.batch_size", "4", "--train.logging_steps", "5", "--pruning.sparsity", "0.5"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    return write_workspace(tmp_path_factory.mktemp("crash"), tiny_tokenizer)


def _argv(
    stage: str, ws: Path, run: Path, steps: int, save_steps: int, method: str, precision: str = "fp32"
) -> list[str]:
    data = stage_data_args(stage, ws)
    return [
        stage,
        "--model",
        str(ws / "tiny-mlm"),
        *data,
        "--output_dir",
        str(run),
        "--train.max_steps",
        str(steps),
        "--train.save_steps",
        str(save_steps),
        "--pruning.method",
        method,
        "--pruning.frequency",
        "5",
        "--train.precision",
        precision,
        *FAST,
    ]


def _assert_same_run(ref: Path, other: Path) -> None:
    """Bit-identical masks and weights, identical metrics and sparsity history."""
    masks_a, masks_b = (load_file(str(r / "model" / MASKS_FILE)) for r in (ref, other))
    assert masks_a.keys() == masks_b.keys()
    assert all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a)
    weights_a = load_file(str(ref / "model" / "model.safetensors"))
    weights_b = load_file(str(other / "model" / "model.safetensors"))
    for key, value in weights_a.items():
        assert torch.equal(value, weights_b[key]), key
    res_a, res_b = (json.loads((r / "results.json").read_text()) for r in (ref, other))
    assert res_a["metrics"] == res_b["metrics"]
    assert res_a.get("metrics_before") == res_b.get("metrics_before")
    assert res_a["sparsity"]["history"] == res_b["sparsity"]["history"]
    assert res_a["sparsity"]["mask_sha256"] == res_b["sparsity"]["mask_sha256"]
    assert res_a["train"]["steps"] == res_b["train"]["steps"]


def _kill_after_first_checkpoint(argv: list[str], checkpoints: Path) -> None:
    """Run the CLI in a subprocess and SIGKILL it as soon as one complete checkpoint exists."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "prunebert.cli", *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if checkpoints.is_dir() and last_complete(checkpoints) is not None:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"run ended before it could be killed: {err.decode()[-2000:]}"


@pytest.mark.parametrize(
    ("stage", "method", "precision"),
    [("pretrain", "movement", "fp32"), ("finetune", "rpp", "fp32"), ("finetune", "obs", "bf16")],
)
def test_sigkill_then_same_command_ends_bit_identical(
    workspace: Path, tmp_path: Path, stage: str, method: str, precision: str
) -> None:
    """bf16 autocast (fp32 master weights, what `auto` picks on CPUs with native bf16) resumes as exactly."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert main(_argv(stage, workspace, ref, 60, 10, method, precision)) == 0

    argv = _argv(stage, workspace, cut, 60, 10, method, precision)
    _kill_after_first_checkpoint(argv, cut / "checkpoints")
    assert not (cut / "results.json").exists()
    assert last_complete(cut / "checkpoints") is not None

    assert main(argv) == 0  # the same command resumes
    _assert_same_run(ref, cut)
    assert json.loads((cut / "results.json").read_text())["train"]["precision"] == precision
    assert len(list((cut / "checkpoints").glob("checkpoint-*"))) == 2  # save_total_limit, all complete
    assert all(is_complete(p) for p in (cut / "checkpoints").glob("checkpoint-*"))


def test_half_written_checkpoints_are_skipped_and_the_last_good_one_resumes(
    workspace: Path, tmp_path: Path
) -> None:
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    extra = ["--train.save_total_limit", "3"]
    assert main([*_argv("finetune", workspace, ref, 12, 4, "movement"), *extra]) == 0
    checkpoints = sorted((ref / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert [p.name for p in checkpoints] == ["checkpoint-4", "checkpoint-8", "checkpoint-12"]

    # the state a crash can leave: the newest checkpoint killed before its masks were written, the one
    # before it damaged mid-file, and no final model or results
    shutil.copytree(ref, cut, ignore=shutil.ignore_patterns("results.json", "model"))
    newest, middle = cut / "checkpoints" / "checkpoint-12", cut / "checkpoints" / "checkpoint-8"
    (newest / MASKS_FILE).unlink()
    (newest / COMPLETE_FILE).unlink()
    weights = middle / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    recipe = (cut / "recipe.yaml").read_text().replace(str(ref), str(cut))
    (cut / "recipe.yaml").write_text(recipe)
    assert last_complete(cut / "checkpoints") == cut / "checkpoints" / "checkpoint-4"

    assert main([*_argv("finetune", workspace, cut, 12, 4, "movement"), *extra]) == 0
    _assert_same_run(ref, cut)
    assert all(is_complete(p) for p in (cut / "checkpoints").glob("checkpoint-*"))


def test_resuming_without_masks_is_an_error_not_a_silent_mask_loss(tmp_path: Path) -> None:
    def trainer(resume: bool) -> Trainer:
        model = tiny_classifier()
        pruner = Pruner(model, PruningConfig(sparsity=0.5, frequency=2))
        callbacks = [PruningCallback(pruner)] + ([] if resume else [StopAt(4)])
        args = tiny_training_args(tmp_path, 12)
        return Trainer(model=model, args=args, train_dataset=tiny_dataset(), callbacks=callbacks)

    trainer(resume=False).train()
    (tmp_path / "checkpoint-4" / MASKS_FILE).unlink()
    with pytest.raises(PrunebertError, match=r"has no prunebert_masks\.safetensors"):
        trainer(resume=True).train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))


def test_mlm_masks_depend_on_example_seed_and_epoch_only(tiny_tokenizer: PreTrainedTokenizerBase) -> None:
    collator = SeededMLMCollator(tiny_tokenizer, mlm_probability=0.5, seed=0)
    rows = [{"input_ids": [2, *range(5, 25), 3]}, {"input_ids": [2, *range(9, 14), 3]}]
    alone = collator([rows[0]])
    together = collator([rows[1], rows[0]])  # other company, other padding, other position
    assert torch.equal(alone["input_ids"][0], together["input_ids"][1])
    assert torch.equal(alone["labels"][0], together["labels"][1])
    assert (together["labels"][0, 7:] == -100).all()  # padding is never a target
    collator.epoch = 1
    assert not torch.equal(collator([rows[0]])["labels"], alone["labels"])
    other_seed = SeededMLMCollator(tiny_tokenizer, 0.5, seed=1)
    assert not torch.equal(other_seed([rows[0]])["labels"], alone["labels"])
