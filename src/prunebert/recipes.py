"""Recipes: strict YAML files and command-line options, both validated by the same pydantic models.

Every field of a stage's config is also an option: `--model`, `--train.learning_rate 3e-5`,
`--pruning.sparsity 0.9`. Options override the recipe file; unknown keys or wrong types are errors.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, ValidationError, model_serializer
from pydantic.fields import FieldInfo

from prunebert.errors import PrunebertError
from prunebert.recipe_library import resolve_recipe

__all__ = [
    "StrictModel",
    "add_config_options",
    "add_field_option",
    "config_from_args",
    "dump_recipe",
    "load_recipe",
    "validate_recipe",
]

C = TypeVar("C", bound=BaseModel)
_PREFIX = "cfg:"


class StrictModel(BaseModel):
    """A recipe section: unknown keys and wrong types are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    #: fields added after runs were recorded: left out of a dump while they hold their default, so a
    #: recipe saved before they existed still equals today's dump of it (resume and reuse compare dumps)
    recorded_if_set: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_new_defaults(self, handler: SerializerFunctionWrapHandler) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for name in self.recorded_if_set:
                if name in data and getattr(self, name) == type(self).model_fields[name].get_default(
                    call_default_factory=True
                ):
                    del data[name]
        return data


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The BaseModel inside `X`, `X | None` or `Optional[X]`, if any."""
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    return models[0] if models else None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _is_text(annotation: Any) -> bool:
    """Fields whose option value is taken verbatim (no YAML parsing: '123' stays a string)."""
    candidates = typing.get_args(annotation) if _is_union(annotation) else (annotation,)
    return any(c in (str, Path) for c in candidates)


def add_config_options(parser: argparse.ArgumentParser, cls: type[BaseModel], prefix: str = "") -> None:
    """Add one `--dotted.name` option per (nested) field of `cls`."""
    for name, field in cls.model_fields.items():
        sub = _submodel(field.annotation)
        if sub is not None:
            add_config_options(parser, sub, f"{prefix}{name}.")
            continue
        _add_option(parser, field, f"{prefix}{name}", (f"--{prefix}{name}",), {})


def add_field_option(
    parser: argparse.ArgumentParser, cls: type[BaseModel], dotted: str, *flags: str, **extra: Any
) -> None:
    """Add one option, named `flags`, for the field `dotted` of `cls` (e.g. `csr.threshold`); its help is the
    field's description and default. `extra` goes to argparse (`type`, `metavar`, or an `action` such as
    `store_const` for a flag that takes no value). `config_from_args` reads it back."""
    *parents, name = dotted.split(".")
    model: type[BaseModel] | None = cls
    for part in parents:
        model = _submodel(model.model_fields[part].annotation) if model is not None else None
    if model is None or name not in model.model_fields:
        raise KeyError(f"{cls.__name__} has no field {dotted!r}")
    _add_option(parser, model.model_fields[name], dotted, flags, extra)


def _add_option(
    parser: argparse.ArgumentParser,
    field: FieldInfo,
    dotted: str,
    flags: tuple[str, ...],
    extra: dict[str, Any],
) -> None:
    """The option `flags` setting `dotted`: help from the field, the field's default while it is absent."""
    choices = _choices(field.annotation)
    kwargs: dict[str, Any] = {
        "dest": f"{_PREFIX}{dotted}",
        "default": argparse.SUPPRESS,
        "help": f"{field.description or ''} ({_default_text(field)})".replace("%", "%%"),
    }
    if "action" not in extra:  # a flag that takes no value (`store_const`) has neither
        kwargs["metavar"] = "{" + ",".join(choices) + "}" if choices else "VALUE"
        kwargs["choices"] = _Suggested(choices) if choices else None
    parser.add_argument(*flags, **kwargs | extra)


class _Suggested(tuple[str, ...]):
    """Choices shown by `--help` and offered by shell completion; the recipe's model, not argparse, checks
    the value (so `[tensorboard, wandb]` passes here and a bad value gets the usual one-line error)."""

    def __contains__(self, item: object) -> bool:
        return True


def _choices(annotation: Any) -> list[str]:
    """The values a `Literal[...]` field takes (also inside `X | None` and `list[...]`), as typed."""
    if typing.get_origin(annotation) is typing.Literal:
        return [_readable(v) for v in typing.get_args(annotation)]
    if _is_union(annotation) or typing.get_origin(annotation) is list:
        return [c for arg in typing.get_args(annotation) for c in _choices(arg)]
    return []


def _readable(value: Any) -> str:
    """A value as it is typed on the command line or in a recipe: `runs/x`, `0.5`, `[query, key]`, `null`."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    return f"default: {_readable(field.get_default(call_default_factory=True))}"


def load_recipe(path: Path) -> dict[str, Any]:
    """Read a YAML recipe into a dict; a missing or malformed file is a one-line error."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise PrunebertError(f"cannot read recipe {path} ({exc.strerror}); check the path") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise PrunebertError(f"recipe {path} is not valid YAML{line}; fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PrunebertError(f"recipe {path} must be a mapping of keys to values, not {type(data).__name__}")
    return data


def _field_annotation(cls: type[BaseModel], dotted: str) -> Any:
    annotation: Any = cls
    for part in dotted.split("."):
        model = _submodel(annotation)
        if model is None or part not in model.model_fields:
            return None
        annotation = model.model_fields[part].annotation
    return annotation


def config_from_args(
    cls: type[C], args: argparse.Namespace, flags: Mapping[str, str] | None = None, **given: Any
) -> C:
    """Recipe (`args.recipe`: a file or a shipped recipe's name) and `given` values (e.g. positional
    arguments) overridden by explicit options, validated as `cls`; `flags` as in `validate_recipe`."""
    recipe = load_recipe(resolve_recipe(args.recipe)) if getattr(args, "recipe", None) else {}
    recipe.update(given)
    for key, raw in vars(args).items():
        if not key.startswith(_PREFIX):
            continue
        dotted = key[len(_PREFIX) :]
        # text as typed, argparse's own values (`type=`, `store_const`) as they are, the rest read as YAML
        verbatim = not isinstance(raw, str) or _is_text(_field_annotation(cls, dotted))
        value = raw if verbatim else _option_value(dotted, raw)
        node = recipe
        *parents, leaf = dotted.split(".")
        for part in parents:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return validate_recipe(cls, recipe, flags)


def _option_value(dotted: str, raw: str) -> Any:
    """An option's value read as YAML (`0.5`, `true`, `[query, key]`, `{lam: 0.1}`); malformed is an error."""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise PrunebertError(
            f"bad value for --{dotted}: {raw!r} is not valid YAML ({problem}); write it as YAML, e.g. "
            f"--{dotted} '[a, b]' or '{{key: value}}', quoted for the shell"
        ) from None


def validate_recipe(cls: type[C], recipe: dict[str, Any], flags: Mapping[str, str] | None = None) -> C:
    """Validate a recipe dict; the first problem becomes a one-line error naming key and fix.

    `flags` maps a dotted key to the command-line option that sets it where the command has no recipe
    (`{"csr.threshold": "--csr-threshold"}`); the fix then names that option. A rule between the fields of
    `cls` itself (a model validator) is reported in its own words.
    """
    try:
        return cls.model_validate(recipe)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if not key:  # a rule between fields of `cls`: its message names them (and mostly the fix)
            message = first["msg"].removeprefix("Value error, ")
            fix = "" if "; " in message else "; fix the recipe or the options"
            raise PrunebertError(message + fix) from None
        if first["type"] == "extra_forbidden":
            known = ", ".join(_known_keys(cls, first["loc"][:-1]))
            raise PrunebertError(f"unknown recipe key {key!r}; known keys here: {known}") from None
        fix = f"fix it in the recipe or pass --{key} VALUE"
        if flags is not None and _field_key(key) in flags:
            fix = f"fix {flags[_field_key(key)]}"
        raise PrunebertError(
            f"bad value for {key!r}: {first['msg']} (got {first.get('input')!r}); {fix}"
        ) from None


def _field_key(key: str) -> str:
    """`batch_sizes.1` (an item of a list field) -> `batch_sizes`."""
    return ".".join(part for part in key.split(".") if not part.isdigit())


def _known_keys(cls: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] | None = cls
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        model = _submodel(model.model_fields[part].annotation)
    return sorted(model.model_fields) if model is not None else []


def dump_recipe(config: BaseModel) -> str:
    """The config as a YAML recipe that `load_recipe` + `validate_recipe` read back identically."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
