"""Recipes are strict: load -> dump -> load is identical, unknown keys and bad values are one-line errors."""

from pathlib import Path

import pytest

from prunebert.cli.main import _build_parser, main
from prunebert.errors import PrunebertError
from prunebert.recipes import config_from_args, dump_recipe, load_recipe, validate_recipe
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.pretrain import PretrainConfig


def _parse(*argv: str):
    return _build_parser().parse_args(list(argv))


def test_round_trip(tmp_path: Path) -> None:
    cfg = validate_recipe(
        PretrainConfig, {"pruning": {"sparsity": 0.7, "method": "random"}, "train": {"max_steps": 9}}
    )
    (tmp_path / "r.yaml").write_text(dump_recipe(cfg))
    again = validate_recipe(PretrainConfig, load_recipe(tmp_path / "r.yaml"))
    assert again == cfg and again.pruning is not None and again.pruning.sparsity == 0.7


def test_options_override_recipe_and_enable_pruning(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text("model: minilm-l6\ntrain: {max_steps: 5, batch_size: 4}\n")
    args = _parse(
        "pretrain",
        "--recipe",
        str(tmp_path / "r.yaml"),
        "--train.max_steps",
        "7",
        "--pruning.sparsity",
        "0.3",
        "--model",
        "123",
    )
    cfg = config_from_args(PretrainConfig, args)
    assert cfg.train.max_steps == 7 and cfg.train.batch_size == 4
    assert cfg.pruning is not None and cfg.pruning.sparsity == 0.3
    assert cfg.model == "123"  # text fields are taken verbatim, not parsed as YAML numbers


def test_dense_by_default() -> None:
    assert config_from_args(FinetuneConfig, _parse("finetune")).pruning is None


@pytest.mark.parametrize(
    "recipe,match",
    [
        ({"pruning": {"sparsity": 1.0}}, r"bad value for 'pruning.sparsity'"),
        ({"pruning": {"sparsity": -0.1}}, r"bad value for 'pruning.sparsity'"),
        (
            {"pruning": {"schedul": "cubic"}},
            r"unknown recipe key 'pruning.schedul'; known keys here: .*schedule",
        ),
        ({"lr": 1e-3}, r"unknown recipe key 'lr'"),
        ({"train": {"batch_size": "big"}}, r"bad value for 'train.batch_size'"),
        ({"pruning": {"schedule": "linear"}}, r"bad value for 'pruning.schedule'"),
        ({"pruning": {"start_fraction": 0.8, "end_fraction": 0.2}}, r"swap them"),
    ],
)
def test_bad_recipes_are_one_line_errors(recipe: dict, match: str) -> None:
    with pytest.raises(PrunebertError, match=match) as info:
        validate_recipe(PretrainConfig, recipe)
    assert "\n" not in str(info.value)


def test_malformed_yaml_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    with pytest.raises(PrunebertError, match="not valid YAML at line"):
        load_recipe(tmp_path / "bad.yaml")
    with pytest.raises(PrunebertError, match="cannot read recipe"):
        load_recipe(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(PrunebertError, match="must be a mapping"):
        load_recipe(tmp_path / "list.yaml")


def test_cli_prints_one_line_and_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = main(["finetune", "--pruning.sparsity", "1.5", "--output_dir", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "pruning.sparsity" in err
    assert not (tmp_path / "x").exists()  # nothing written for a rejected recipe


def test_cli_unknown_method_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from prunebert.methods import create_method

    with pytest.raises(PrunebertError, match=r"unknown pruning method 'magnitud'; choose one of .*magnitude"):
        create_method("magnitud")
    assert main(["pretrain", "--pruning.method", "magnitud", "--output_dir", str(tmp_path / "y")]) == 2
    assert "unknown pruning method 'magnitud'" in capsys.readouterr().err
    with pytest.raises(PrunebertError, match="unknown option"):
        validate_recipe(PretrainConfig, {"pruning": {"options": {"temperature": 2}}})
    assert main(["methods"]) == 0
    assert "magnitude" in capsys.readouterr().out.split()


@pytest.mark.parametrize(
    "name,cls", [("pretrain-magnitude40", PretrainConfig), ("finetune-transfer", FinetuneConfig)]
)
def test_committed_recipes_are_valid(name: str, cls: type) -> None:
    path = Path(__file__).parents[1] / "recipes" / f"{name}.yaml"
    cfg = validate_recipe(cls, load_recipe(path))
    assert validate_recipe(cls, load_recipe(path)) == cfg


def test_oneshot_ignores_the_cubic_window() -> None:
    cfg = validate_recipe(PretrainConfig, {"pruning": {"method": "rpp", "start_fraction": 0.8}})
    assert cfg.pruning is not None and cfg.pruning.schedule == "oneshot" and cfg.pruning.start_fraction == 0.8
