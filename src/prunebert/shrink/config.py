"""The options of `prunebert shrink` (a strict model the CLI is generated from) and its calibration data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from prunebert.data import TaskData
from prunebert.data.spec import TaskSpec
from prunebert.shrink.latency import RUNTIMES

__all__ = ["ShrinkConfig", "calibration_batches"]

Runtime = Literal["torch", "torch-bf16", "onnxruntime-int8", "openvino-int8"]
assert set(RUNTIMES) == set(Runtime.__args__)  # type: ignore[attr-defined]


class ShrinkConfig(TaskSpec):
    """Options of `prunebert shrink MODEL`: the target, the runtime it is measured in, the calibration."""

    output_dir: Path = Field(Path("runs/shrink"), description="OUT: model/ (load it as OUT), shrink.json")
    speedup: float | None = Field(
        None, gt=1, description="requested speed-up over the dense model in torch fp32 (batch x seq-len)"
    )
    flops: float | None = Field(
        None, gt=0, lt=1, description="instead of speedup: fraction of the dense encoder FLOPs to keep"
    )
    runtime: Runtime = Field("torch", description="runtime whose measured latency is the constraint")
    batch_size: int = Field(1, ge=1, description="batch size the latency is measured at")
    seq_len: int = Field(128, ge=8, le=512, description="tokens per sequence for latency and FLOPs")
    threads: int | None = Field(None, ge=1, description="threads to measure with (default: torch's)")
    calibration: int = Field(2048, ge=8, description="training examples for the Fisher scores and tuning")
    calibration_batch_size: int = Field(32, ge=1, description="examples per calibration forward pass")
    damp: float = Field(
        1e-2, ge=0, description="least-squares ridge toward the trained weights / scale 1 (x mean diag A^T A)"
    )
    scores: Literal["block", "diagonal"] = Field(
        "block",
        description="mask search on each layer's Fisher block, greedily (counts how groups' gradients add "
        "up), or on its diagonal (Kwon et al.)",
    )
    rearrange: bool = Field(True, description="rearrange masks within layers (Kwon et al. sec. 4.2)")
    tune: Literal["weights", "scales", "none"] = Field(
        "weights",
        description="layer-wise least squares after the search: refit the kept output-projection columns "
        "(K-prune), one scale per head / neuron (Kwon et al. sec. 4.3), or none",
    )
    grid_points: int | None = Field(
        None, ge=3, le=64, description="latency grid points per axis (default: 7 in torch, 5 exported)"
    )
    refresh_table: bool = Field(False, description="measure the latency table again even if cached")
    bench: bool = Field(True, description="bench the result against dense in the same run")
    bench_rounds: int = Field(5, ge=1, description="interleaved bench rounds")
    speed_tolerance: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="re-search with a corrected budget while measured/requested is off by more",
    )
    speed_retries: int = Field(2, ge=0, description="corrected searches at most (the Fisher pass is reused)")
    evaluate: bool = Field(
        False,
        description="score dense and shrunk models on dev and test (and the result on test in the runtime)",
    )
    distill_steps: int = Field(0, ge=0, description="optimizer steps of distillation from MODEL (0: none)")
    distill_learning_rate: float = Field(1e-4, gt=0, description="peak learning rate of the distillation")
    seed: int = Field(0, description="seed of the calibration sample and the task split")

    @model_validator(mode="after")
    def _one_target(self) -> ShrinkConfig:
        if (self.speedup is None) == (self.flops is None):
            raise ValueError("give exactly one of speedup (e.g. 2) or flops (e.g. 0.5)")
        return self

    @property
    def exported(self) -> bool:
        """Whether the runtime runs an export (ONNX Runtime, OpenVINO) rather than torch."""
        return not self.runtime.startswith("torch")


def calibration_batches(task: TaskData, tokenizer: Any, cfg: ShrinkConfig) -> list[dict[str, torch.Tensor]]:
    """`cfg.calibration` seeded training examples, tokenised, in batches of similar length (less padding)."""
    train = task.train.shuffle(seed=cfg.seed).select(range(min(cfg.calibration, len(task.train))))
    pairs = list(train["text_pair"]) if "text_pair" in train.column_names else None
    enc = tokenizer(list(train["text"]), pairs, truncation=True, max_length=cfg.max_seq_length)
    labels = list(train["label"])
    order = sorted(range(len(labels)), key=lambda i: len(enc["input_ids"][i]))
    dtype = torch.float32 if task.kind == "regression" else torch.long
    batches = []
    for start in range(0, len(order), cfg.calibration_batch_size):
        rows = order[start : start + cfg.calibration_batch_size]
        features = [{k: enc[k][i] for k in enc} for i in rows]
        batch = dict(tokenizer.pad(features, return_tensors="pt"))
        batch["labels"] = torch.tensor([labels[i] for i in rows], dtype=dtype)
        batches.append(batch)
    return batches
