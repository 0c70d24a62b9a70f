"""Method options are strict pydantic models with a help string per field; `prunebert methods` prints them."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from prunebert.cli.main import main
from prunebert.config import PruningConfig
from prunebert.errors import PrunebertError
from prunebert.methods import MethodOptions, available_methods
from prunebert.methods.movement import MovementOptions
from prunebert.methods.registry import method_class
from prunebert.recipes import StrictModel


@pytest.mark.parametrize("name", available_methods())
def test_every_method_names_its_paper_and_documents_every_option(name: str) -> None:
    cls = method_class(name)
    assert cls.paper and "20" in cls.paper  # authors and year
    assert issubclass(cls.options_cls, MethodOptions) and issubclass(cls.options_cls, StrictModel)
    for option, field in cls.options_cls.model_fields.items():
        assert field.description, f"{name}: option {option!r} has no help string"
        assert not field.is_required(), f"{name}: option {option!r} needs a default"


def test_options_are_frozen_and_strict() -> None:
    options = MovementOptions()
    with pytest.raises(ValidationError):
        options.lr_scores = 1.0  # type: ignore[misc]
    with pytest.raises(ValidationError):
        MovementOptions(tau=0.1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "method,options,message",
    [
        ("movement", {"lr_scores": 0}, "lr_scores must be greater than 0, got 0"),
        ("movement", {"lr_scores": True}, "lr_scores must be a number, not true or false, got True"),
        ("movement", {"score_optimizer": "rmsprop"}, "score_optimizer must be one of 'adam' or 'sgd'"),
        ("soft_movement", {"threshold": 1.0}, "threshold must be less than 1"),
        ("obs", {"block_size": 2.5}, "block_size must be a whole number, got 2.5"),
        ("gates", {"init": float("nan")}, "init must be a finite number, got nan"),
        ("heads", {"normalize": "yes"}, "normalize must be true or false, got 'yes'"),
        ("layerdrop", {"drop": [0, -1]}, r"drop\[1\] must be greater than or equal to 0, got -1"),
        ("layerdrop", {"drop": [1, 1]}, r"drop must be a list of distinct layer numbers \(0-based\), got"),
    ],
)
def test_bad_values_name_method_option_and_value(method: str, options: dict, message: str) -> None:
    with pytest.raises(PrunebertError, match=f"^bad option for method '{method}': {message}") as info:
        PruningConfig(method=method, options=options)
    assert "\n" not in str(info.value)


def test_methods_command_prints_paper_what_and_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods", "soft_movement", "rpp"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("soft_movement  (Sanh, Wolf & Rush 2020, arXiv:2005.07683)\n    Soft movement")
    assert "    threshold: float (> 0.0, < 1.0) = 0.1\n        final tau of the masks sigmoid(S) > tau" in out
    assert "    lam: float (>= 0.0) = 100.0\n" in out and "    score_optimizer: adam | sgd = 'adam'\n" in out
    assert "rpp  (Guo et al. 2019, arXiv:1909.12486)" in out
    assert "    lam: float | None (> 0.0) = None\n" in out and "recipe defaults: schedule='oneshot'" in out
    assert main(["methods"]) == 0
    headers = [line.split()[0] for line in capsys.readouterr().out.splitlines() if line[:1].isalpha()]
    assert headers[: len(available_methods())] == available_methods()


def test_methods_json_defaults_rebuild_the_default_options(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert [card["name"] for card in cards] == available_methods()
    for card in cards:
        cls = method_class(card["name"]).options_cls
        assert set(card) == {"name", "paper", "what", "recipe_defaults", "options"}
        assert [o["name"] for o in card["options"]] == list(cls.model_fields)
        assert cls(**{o["name"]: o["default"] for o in card["options"]}) == cls()
        assert all(o["description"] and o["type"] for o in card["options"])


def test_methods_command_refuses_an_unknown_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods", "magnitud"]) == 2
    assert "unknown pruning method 'magnitud'" in capsys.readouterr().err
