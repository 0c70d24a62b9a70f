"""Named recipes shipped with prunebert: `--recipe gmp-90` reads `gmp-90.yaml` from this folder.

A named recipe is an ordinary strict YAML recipe of one stage. Its leading comment block says what it is
for: `# stage: NAME`, `# what: ...`, `# reached: ...` (what it measured, and the command behind the
number); `prunebert recipes` lists them. Options given beside `--recipe` override its values.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from prunebert.errors import PrunebertError

__all__ = ["NamedRecipe", "named_recipes", "resolve_recipe"]


@dataclass(frozen=True)
class NamedRecipe:
    """A recipe file of this folder and what its header says."""

    name: str
    path: Path
    stage: str
    what: str
    reached: str


def _header(path: Path) -> dict[str, str]:
    """`# key: value` lines of the leading comment block."""
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, sep, value = line.lstrip("# ").partition(":")
        if sep:
            fields[key.strip()] = (
                f"{fields[key.strip()]} {value.strip()}" if key.strip() in fields else value.strip()
            )
    return fields


def named_recipes() -> dict[str, NamedRecipe]:
    """Every shipped recipe by name."""
    folder = Path(str(resources.files(__package__)))
    recipes = {}
    for path in sorted(folder.glob("*.yaml")):
        head = _header(path)
        recipes[path.stem] = NamedRecipe(
            path.stem, path, head.get("stage", "finetune"), head.get("what", ""), head.get("reached", "")
        )
    return recipes


def resolve_recipe(spec: str) -> Path:
    """A recipe file: `spec` itself when it is a path that exists, else the shipped recipe of that name."""
    path = Path(spec).expanduser()
    if path.exists() or path.suffix in (".yaml", ".yml") or "/" in spec:
        return path
    recipes = named_recipes()
    if spec not in recipes:
        raise PrunebertError(
            f"no recipe file or named recipe {spec!r}; name a YAML file or one of {', '.join(recipes)} "
            "(`prunebert recipes` lists them)"
        )
    return recipes[spec].path
