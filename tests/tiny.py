"""Tiny randomly initialised encoders built from configs: the models of the unit tests (never downloaded).

Also the pieces of a tiny Trainer run: a synthetic dataset, short CPU training arguments, a stop callback,
and a workspace of local files (saved tiny models, a text file, a labelled csv) for whole CLI runs.
"""

from __future__ import annotations

import random
from pathlib import Path

import datasets
import torch
from transformers import (
    AutoConfig,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    BertModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainingArguments,
)

from conftest import TINY_WORDS

SIZES = {"hidden_size": 32, "num_attention_heads": 4, "intermediate_size": 64, "num_hidden_layers": 2}
DISTIL_SIZES = {"dim": 32, "n_heads": 4, "hidden_dim": 64, "n_layers": 2}
#: attention mask of a 3 x 11 batch whose last two sequences are padded (7 and 3 real tokens): what a
#: model must treat the same before and after slimming, skipping or factorising
PADDED_MASK = torch.tensor([[1] * 11, [1] * 7 + [0] * 4, [1] * 3 + [0] * 8])


def padded_ids(low: int = 5) -> torch.Tensor:
    """Seeded token ids in [low, 128) for the batch of `PADDED_MASK`."""
    return torch.randint(low, 128, tuple(PADDED_MASK.shape), generator=torch.Generator().manual_seed(3))


def tiny_config(model_type: str = "bert", vocab_size: int = 128, **extra: object) -> PretrainedConfig:
    """A 2-layer, 32-wide config of `model_type`."""
    sizes = DISTIL_SIZES if model_type == "distilbert" else SIZES
    kwargs = {"vocab_size": vocab_size, "max_position_embeddings": 64, **sizes, **extra}
    if model_type == "electra":
        kwargs["embedding_size"] = 32
    return AutoConfig.for_model(model_type, **kwargs)


def tiny_classifier(model_type: str = "bert", num_labels: int = 2, seed: int = 0) -> PreTrainedModel:
    """A tiny sequence classifier with seeded random weights."""
    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_config(tiny_config(model_type, num_labels=num_labels))


def tiny_mlm(model_type: str = "bert", seed: int = 0) -> PreTrainedModel:
    """A tiny masked-LM with seeded random weights."""
    torch.manual_seed(seed)
    return AutoModelForMaskedLM.from_config(tiny_config(model_type))


def tiny_dataset(n: int = 64, seed: int = 0) -> datasets.Dataset:
    """`n` rows of 10 seeded random token ids; the label is the parity of the first id."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 128, (n, 10), generator=g)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": (ids[:, 0] % 2).tolist()})


def tiny_training_args(out: Path, steps: int, **overrides: object) -> TrainingArguments:
    """Quiet, seeded CPU arguments for `steps` steps of batch 8; `overrides` replace any default."""
    kwargs: dict[str, object] = {
        "output_dir": str(out),
        "max_steps": steps,
        "per_device_train_batch_size": 8,
        "learning_rate": 5e-3,
        "weight_decay": 0.1,
        "report_to": [],
        "use_cpu": True,
        "seed": 0,
        "logging_steps": 2,
        "save_strategy": "steps",
        "save_steps": 4,
        "disable_tqdm": True,
        **overrides,
    }
    return TrainingArguments(**kwargs)


class StopAt(TrainerCallback):
    """Stops training once `global_step` reaches `step` (to cut a run at a checkpoint)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def sentences(rng: random.Random, n: int) -> list[tuple[str, int]]:
    """`n` short sentences over the tiny vocabulary; label 1 iff the cue word is positive."""
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        cue = rng.choice(["good", "great"] if label else ["bad", "awful"])
        words = [rng.choice(TINY_WORDS[:13]) for _ in range(rng.randint(3, 8))]
        words.insert(rng.randint(0, len(words)), cue)
        rows.append((" ".join(words), label))
    return rows


def write_workspace(root: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """`tiny-mlm/`, `tiny-encoder/` (saved with `tokenizer`), `text.txt` and `task.csv` under `root`."""
    for name, model in (("tiny-mlm", tiny_mlm()), ("tiny-encoder", BertModel(tiny_config()))):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    rng = random.Random(0)
    (root / "text.txt").write_text("\n\n".join(s for s, _ in sentences(rng, 300)))
    (root / "task.csv").write_text("text,label\n" + "".join(f"{s},{y}\n" for s, y in sentences(rng, 200)))
    return root


def stage_data_args(stage: str, workspace: Path) -> list[str]:
    """CLI options naming the workspace's data for `stage`: its text for pretrain, its task otherwise."""
    if stage == "pretrain":
        return ["--text", str(workspace / "text.txt"), "--block_size", "16"]
    return ["--task", str(workspace / "task.csv"), "--max_seq_length", "16"]
