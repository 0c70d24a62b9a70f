"""Every registered method described from its own class: paper, what it does, its options' types,
defaults and help strings (what `prunebert methods` prints)."""

from __future__ import annotations

import inspect
import textwrap
import types
import typing
from typing import Any

import annotated_types
from pydantic.fields import FieldInfo

from prunebert.methods.base import PruningMethod
from prunebert.methods.registry import available_methods, method_class

__all__ = ["describe_method", "describe_methods", "format_methods"]

#: (metadata class, its attribute, the sign shown)
_BOUNDS: tuple[tuple[type, str, str], ...] = (
    (annotated_types.Gt, "gt", ">"),
    (annotated_types.Ge, "ge", ">="),
    (annotated_types.Lt, "lt", "<"),
    (annotated_types.Le, "le", "<="),
)


def _type_text(annotation: Any) -> str:
    """`float`, `float | None`, `adam | sgd`, `list[int] | None`: an annotation as a reader writes it."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_text(args[0])
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(str(a) for a in args)
    if origin is list:
        return f"list[{_type_text(args[0])}]"
    return "None" if annotation is type(None) else getattr(annotation, "__name__", str(annotation))


def _bounds(field: FieldInfo) -> list[str]:
    """The field's numeric bounds, e.g. `['> 0.0']` or `['>= 0.0', '< 1.0']`."""
    found = []
    for meta in field.metadata:
        for cls, attr, sign in _BOUNDS:
            if isinstance(meta, cls):
                found.append(f"{sign} {getattr(meta, attr)}")
    return found


def _what(cls: type[PruningMethod]) -> str:
    """The first paragraph of the class docstring, on one line."""
    doc = inspect.getdoc(cls) or ""
    return " ".join(doc.split("\n\n")[0].split())


def describe_method(name: str) -> dict[str, Any]:
    """Method `name` as data: paper, what, the recipe defaults it sets, and every option."""
    cls = method_class(name)
    options = [
        {
            "name": option,
            "type": _type_text(field.annotation),
            "bounds": _bounds(field),
            "default": field.get_default(call_default_factory=True),
            "description": field.description or "",
        }
        for option, field in cls.options_cls.model_fields.items()
    ]
    return {
        "name": name,
        "paper": cls.paper,
        "what": _what(cls),
        "recipe_defaults": dict(cls.defaults),
        "options": options,
    }


def describe_methods(names: list[str] | None = None) -> list[dict[str, Any]]:
    """`describe_method` of each name (default: every registered method, sorted)."""
    return [describe_method(name) for name in (names or available_methods())]


def _wrapped(text: str, indent: int) -> list[str]:
    return textwrap.wrap(text, width=100, initial_indent=" " * indent, subsequent_indent=" " * indent)


def format_methods(cards: list[dict[str, Any]]) -> str:
    """`describe_methods`' cards as text: a header line per method, then its options with help."""
    lines: list[str] = []
    for card in cards:
        lines.append(f"{card['name']}  ({card['paper'] or 'no paper'})")
        lines += _wrapped(card["what"], 4)
        if card["recipe_defaults"]:
            sets = ", ".join(f"{k}={v!r}" for k, v in card["recipe_defaults"].items())
            lines += _wrapped(f"recipe defaults: {sets}", 4)
        if not card["options"]:
            lines.append("    options: none")
        for option in card["options"]:
            bounds = f" ({', '.join(option['bounds'])})" if option["bounds"] else ""
            lines.append(f"    {option['name']}: {option['type']}{bounds} = {option['default']!r}")
            lines += _wrapped(option["description"], 8)
        lines.append("")
    lines.append("Set them in a recipe's `pruning.options` or with --pruning.options '{name: value, ...}'.")
    return "\n".join(lines)
