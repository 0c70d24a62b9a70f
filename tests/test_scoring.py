"""`score_in_runtime`: a model's task metrics as the deployed runtime predicts them."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

from prunebert.data import load_task
from prunebert.deploy.scoring import score_in_runtime
from prunebert.errors import PrunebertError
from prunebert.stages.evaluate import EvaluateConfig, run_evaluate
from tiny import tiny_classifier, write_workspace


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    root = write_workspace(tmp_path_factory.mktemp("scoring"), tiny_tokenizer)
    tiny_classifier().save_pretrained(root / "classifier")
    tiny_tokenizer.save_pretrained(root / "classifier")
    return root


def _score(space: Path, runtime: str, **kwargs: object) -> dict:
    data = load_task(str(space / "task.csv"), seed=0)
    return score_in_runtime(
        str(space / "classifier"), runtime, data, calibration=None, max_length=16, **kwargs
    )


def test_torch_fp32_scores_what_evaluate_scores(space: Path) -> None:
    # the same rows of the same split, the same predictions: a runtime's score is comparable to evaluate's
    scored = _score(space, "torch", batch_size=7)
    evaluated = run_evaluate(
        EvaluateConfig(model=str(space / "classifier"), task=str(space / "task.csv"), max_seq_length=16)
    )
    assert scored["split"] == "test"
    assert scored["examples"] == len(load_task(str(space / "task.csv"), seed=0).test)
    assert scored["metrics"]["accuracy"] == pytest.approx(evaluated["metrics"]["test"]["accuracy"])
    assert scored["metrics"]["macro_f1"] == pytest.approx(evaluated["metrics"]["test"]["macro_f1"])


def test_bf16_and_int8_runners_are_scored_and_described(space: Path) -> None:
    bf16 = _score(space, "torch-bf16", split="dev")
    assert bf16["runtime"] == "torch-bf16" and bf16["runner"]["precision"] == "bf16"
    assert bf16["split"] == "dev" and 0 <= bf16["metrics"]["accuracy"] <= 1
    int8 = _score(space, "onnxruntime-int8", limit=10)
    assert int8["examples"] == 10 and "int8" in int8["runner"]
    assert int8["runner"]["calibration"] == "none (data-free)"


def test_an_unknown_runtime_or_a_headless_model_is_a_one_line_error(space: Path) -> None:
    with pytest.raises(PrunebertError, match="unknown runtime 'tensorrt'; pass one of"):
        _score(space, "tensorrt")
    data = load_task(str(space / "task.csv"), seed=0)
    with pytest.raises(PrunebertError, match="no trained task head"):
        score_in_runtime(str(space / "tiny-encoder"), "torch", data, calibration=None)
