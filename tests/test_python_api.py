"""The Python API in one line (`prunebert.prune`, `prunebert.prune_while_training`), the Pruner's refusals of
misuse, and every ```python snippet of README.md and docs/usage.md run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import prunebert
from prunebert import PrunebertError, Pruner, PruningConfig
from prunebert.masks import MASKS_FILE
from tiny import tiny_classifier
from tinystudy import chdir

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
PAGES = ("README.md", "docs/usage.md")
SNIPPETS = [
    pytest.param(code, id=f"{page}:{i}")
    for page in PAGES
    for i, code in enumerate(SNIPPET.findall((ROOT / page).read_text()))
]


def test_the_readme_has_snippets() -> None:
    assert sum(1 for p in SNIPPETS if p.id and p.id.startswith("README.md")) >= 2


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs_as_written(code: str, tmp_path: Path) -> None:
    with chdir(tmp_path):
        exec(compile(code, "<snippet>", "exec"), {"__name__": "__snippet__"})


def _zeros(model: torch.nn.Module) -> float:
    weights = [
        p for n, p in model.named_parameters() if "encoder" in n and n.endswith("weight") and p.ndim == 2
    ]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


def test_prune_is_one_shot_and_baked(tmp_path: Path) -> None:
    model = tiny_classifier()
    pruner = prunebert.prune(model, sparsity=0.75, scope="global")
    assert pruner.overall_sparsity() == pytest.approx(0.75, abs=1e-3)
    assert _zeros(model) == pytest.approx(0.75, abs=1e-3)
    assert not pruner._hooks and pruner.config.schedule == "fixed"  # baked; ready for PruningCallback
    pruner.save(str(tmp_path))  # a str path is fine
    assert (tmp_path / MASKS_FILE).is_file()
    other = Pruner(tiny_classifier(seed=1), PruningConfig(sparsity=0.75, schedule="fixed"))
    other.load(str(tmp_path))
    assert other.overall_sparsity() == pytest.approx(0.75, abs=1e-3)


def test_prune_takes_method_options_and_calibration() -> None:
    model = tiny_classifier()
    batches = [
        {"input_ids": torch.randint(5, 100, (4, 8)), "labels": torch.tensor([0, 1, 0, 1])} for _ in range(2)
    ]
    pruner = prunebert.prune(model, "obs", 0.5, calibration=batches, num_grads=4, grad_batch_size=2)
    assert pruner.config.options["num_grads"] == 4 and _zeros(model) == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "nope"}, "nope"),
        ({"sparsity": 1.5}, "bad value for 'sparsity'"),
        ({"scope": "everywhere"}, "bad value for 'scope'"),
        ({"no_such_option": 1}, "no_such_option"),
    ],
)
def test_prune_refuses_bad_arguments_in_one_line(kwargs: dict, message: str) -> None:
    with pytest.raises(PrunebertError, match=message) as err:
        prunebert.prune(tiny_classifier(), **kwargs)
    assert "\n" not in str(err.value)


def test_pruner_refuses_misuse_in_one_line() -> None:
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(sparsity=0.5, schedule="oneshot"))
    cases = [
        (lambda: pruner.update(0), "update\\(\\) before pruner.start"),
        (lambda: pruner.start(0), "positive number of steps"),
        (lambda: Pruner(model, {"sparsity": 0.5}), "takes a torch module and a PruningConfig"),  # type: ignore[arg-type]
        (lambda: Pruner("bert-base-uncased", PruningConfig()), "not str"),  # type: ignore[arg-type]
    ]
    for call, message in cases:
        with pytest.raises(PrunebertError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    pruner.start(1)
    assert pruner.update(0) and _zeros(model) == pytest.approx(0.5, abs=1e-3)
