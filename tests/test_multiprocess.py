"""Multi-process (DDP, gloo on CPU) training: masks decided once and identical on every rank, only rank 0
writes, and the result matches a single-process run with the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.config import PruningConfig
from prunebert.distributed import mask_digest
from prunebert.masks import MASKS_FILE, load_masks
from prunebert.pruner import Pruner
from prunebert.stages.checkpoints import CompleteCheckpoints
from prunebert.stages.common import RunDir
from tiny import stage_data_args, tiny_classifier, tiny_config, tiny_training_args, write_workspace

TESTS = Path(__file__).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(TESTS)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    ws = write_workspace(tmp_path_factory.mktemp("ddp"), tiny_tokenizer)
    torch.manual_seed(0)  # no dropout: two processes then see exactly the global batch one process sees
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    AutoModelForMaskedLM.from_config(config).save_pretrained(ws / "no-dropout")
    tiny_tokenizer.save_pretrained(ws / "no-dropout")
    return ws


def _argv(stage: str, ws: Path, out: Path, batch_size: int) -> list[str]:
    data = stage_data_args(stage, ws)
    return [
        stage,
        "--model",
        str(ws / "no-dropout"),
        *data,
        "--output_dir",
        str(out),
        "--train.max_steps",
        "20",
        "--train.batch_size",
        str(batch_size),
        "--train.save_steps",
        "10",
        "--train.learning_rate",
        "1e-3",
        "--pruning.sparsity",
        "0.5",
        "--pruning.frequency",
        "5",
    ]


def _launch_two(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """`accelerate launch --multi_gpu --num_processes 2 -m prunebert.cli ARGV` (DDP over gloo on a CPU)."""
    launch = ["--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(_free_port())]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "prunebert.cli", *argv]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("stage", "method"),
    # movement reads the all-reduced gradients of pruned entries too, then masks them
    [("finetune", "magnitude"), ("pretrain", "magnitude"), ("finetune", "movement")],
)
def test_two_processes_decide_masks_once_and_match_one_process(
    workspace: Path, tmp_path: Path, stage: str, method: str
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    method_args = ["--pruning.method", method]
    assert main([*_argv(stage, workspace, one, 8), *method_args]) == 0  # the same global batch, one process
    done = _launch_two([*_argv(stage, workspace, two, 4), *method_args])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"stage"') == 1  # one summary, from rank 0

    ddp, single = (json.loads((r / "results.json").read_text()) for r in (two, one))
    digests = ddp["sparsity"]["mask_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]  # identical masks on both ranks
    saved, _ = load_masks(two / "model" / MASKS_FILE)
    assert mask_digest(saved) == digests[0]  # ... and they are the ones rank 0 saved
    assert ddp["sparsity"]["overall"] == pytest.approx(0.5, abs=1e-3) == single["sparsity"]["overall"]
    rng_files = sorted(p.name for p in (two / "checkpoints" / "checkpoint-20").glob("rng_state*"))
    assert rng_files == ["rng_state_0.pth", "rng_state_1.pth"]  # really two processes

    if stage == "finetune":  # per-example losses: DDP's averaged gradient is exactly the global one
        assert ddp["metrics"]["test"]["accuracy"] == single["metrics"]["test"]["accuracy"]
        assert ddp["metrics"]["dev"]["loss"] == pytest.approx(single["metrics"]["dev"]["loss"], rel=1e-4)
        assert digests[0] == single["sparsity"]["mask_sha256"][0]
        a, b = (load_file(str(r / "model" / "model.safetensors")) for r in (one, two))
        assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    else:  # MLM loss is a mean per process over its own masked tokens: close, not equal
        assert ddp["metrics"]["mlm_loss"] == pytest.approx(single["metrics"]["mlm_loss"], rel=0.03)


@pytest.mark.slow
def test_masks_are_broadcast_from_rank_zero(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), str(TESTS / "ddp_masks_worker.py"), str(tmp_path)]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["local"] != ranks[1]["local"]  # left alone, the ranks would disagree
    assert ranks[0]["adopted"] == ranks[1]["adopted"] == ranks[0]["local"]
    assert all(r["zeros_follow_masks"] for r in ranks)


def test_only_the_main_process_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")  # what the launcher sets on the second process
    run = RunDir(tmp_path / "run")
    assert run.prepare({"model": "m"}) is None
    run.create()
    run.first_attempt(None, {"metrics_before": {}})
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(sparsity=0.5, schedule="oneshot"))
    run.save_model(model, tokenizer=None, pruner=pruner)  # type: ignore[arg-type]
    run.write_results({"stage": "finetune"})
    assert not run.root.exists()

    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    args = tiny_training_args(tmp_path, 3)
    monkeypatch.setattr(type(args), "should_save", property(lambda self: False))
    state = type("State", (), {"global_step": 3})()
    CompleteCheckpoints(keep=1).on_save(args, state, None)  # type: ignore[arg-type]
    assert list(checkpoint.iterdir()) == []
