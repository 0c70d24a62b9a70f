"""The package's shape holds: no import cycle, no upward import, no file over 400 lines.

Every import of every module under `src/prunebert` is read with `ast` (function-local and
`TYPE_CHECKING` imports included: a cycle that only typing hides is still a cycle to a reader).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "src"

#: lowest first; a module may import its own layer and the layers below, never one above. Entries are
#: module names relative to `prunebert` (a package name covers everything in it).
LAYERS: tuple[tuple[str, ...], ...] = (
    # the engine's base: errors, files, the target table, schedules, recipes and their StrictModel
    (
        "errors",
        "io",
        "distributed",
        "schedules",
        "targets",
        "assets",
        "metrics",
        "recipe_library",
        "recipes",
        "model_files",
    ),
    ("sampling", "hardware"),  # gradient samples, machine facts
    ("structure", "masks"),
    ("transforms",),  # model transforms recorded in config.json (methods build them)
    ("quantization",),  # fake-quantised int8 training (QAT); its ranges travel beside the weights
    ("methods",),  # one file per method, found by name
    ("config",),  # the pruning section; reads the method registry for defaults and options
    # the engine's assembly; "" = `prunebert/__init__`
    ("pruner", "callback", "models", "info", "sentence_modules", "model_card", "api", ""),
    ("data",),
    ("stages",),
    ("deploy",),
    ("shrink",),  # retraining-free structured pruning: uses transforms, data, stages and deploy's bench
    ("study",),
    ("report",),
    ("cli",),
)
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """`prunebert.x.y` -> file, packages by their `__init__.py`."""
    out = {}
    for path in sorted((ROOT / "prunebert").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _resolve(name: str) -> str:
    """The module a dotted import name lands in (`prunebert.cli.main.main` -> `prunebert.cli.main`)."""
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _imports(module: str) -> set[str]:
    """The prunebert modules `module` imports, wherever the import statement is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {_resolve(a.name) for a in node.names if a.name.split(".")[0] == "prunebert"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "prunebert":
                continue
            for alias in node.names:  # `from prunebert.x import y`: y may be a module or a name
                full = f"{base}.{alias.name}"
                found.add(full if full in MODULES else _resolve(base))
    found.discard(module)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> int:
    """Index in LAYERS of the longest entry that `module` is, or is inside of."""
    rel = module.removeprefix("prunebert").removeprefix(".")
    best, depth = -1, -1
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            inside = rel == entry or (entry and rel.startswith(entry + "."))
            if inside and len(entry) > depth:
                best, depth = i, len(entry)
    return best


def test_every_module_belongs_to_a_declared_layer() -> None:
    unplaced = [m for m in MODULES if _layer(m) < 0]
    assert not unplaced, f"add these modules to a layer of LAYERS: {unplaced}"


def test_no_upward_import() -> None:
    upward = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in GRAPH.items()
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert not upward, "imports go down only:\n" + "\n".join(upward)


def _cycle() -> list[str] | None:
    """One import cycle of GRAPH, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[module] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycle() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_file_is_under_the_line_limit(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module]} has {lines} lines; split it by concern"


def test_the_checker_sees_function_local_imports() -> None:
    assert "prunebert.cli.train" in GRAPH["prunebert.cli.main"]  # imported inside `_commands()`
    assert _layer("prunebert.methods.gates") < _layer("prunebert.config") < _layer("prunebert.cli.main")
