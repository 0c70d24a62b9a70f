"""Shipped named recipes: each a valid recipe of its stage, found by name, listed by `prunebert recipes`."""

from pathlib import Path

import pytest
import yaml

from prunebert.cli import main
from prunebert.errors import PrunebertError
from prunebert.recipe_library import named_recipes, resolve_recipe
from prunebert.recipes import dump_recipe, load_recipe, validate_recipe
from prunebert.stages.finetune import FinetuneConfig
from prunebert.stages.pretrain import PretrainConfig

STAGES = {"finetune": FinetuneConfig, "pretrain": PretrainConfig}
RECIPES = named_recipes()


def test_the_unstructured_targets_are_shipped() -> None:
    assert {"gmp-80", "gmp-90", "gmp-95"} <= set(RECIPES)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_each_recipe_is_valid_documented_and_round_trips(name: str) -> None:
    recipe = RECIPES[name]
    assert recipe.stage in STAGES and recipe.what and recipe.reached
    config = validate_recipe(STAGES[recipe.stage], load_recipe(recipe.path))
    again = validate_recipe(STAGES[recipe.stage], yaml.safe_load(dump_recipe(config)))
    assert again == config


def test_gmp_recipes_prune_the_fine_tuned_model_with_rewinding_and_distillation() -> None:
    for sparsity in (80, 90, 95):
        cfg = validate_recipe(FinetuneConfig, load_recipe(RECIPES[f"gmp-{sparsity}"].path))
        assert cfg.pruning is not None and cfg.pruning.sparsity == sparsity / 100
        assert cfg.start_from == "teacher" and cfg.distill is not None and cfg.distill.teacher == "auto"
        assert cfg.train.lr_schedule == "rewind" and cfg.pruning.end_fraction < 1.0


def test_a_name_resolves_to_the_shipped_file_and_a_path_stays_a_path(tmp_path: Path) -> None:
    assert resolve_recipe("gmp-90") == RECIPES["gmp-90"].path
    own = tmp_path / "gmp-90"  # a file of the same name wins
    own.write_text("seed: 1\n")
    assert resolve_recipe(str(own)) == own
    assert resolve_recipe("missing.yaml") == Path("missing.yaml")  # load_recipe then says it is missing
    with pytest.raises(PrunebertError, match="no recipe file or named recipe 'gmp-99'; name a YAML file"):
        resolve_recipe("gmp-99")


def test_recipes_command_lists_every_name(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert all(f"{name}  (" in out for name in RECIPES) and "reached:" in out
