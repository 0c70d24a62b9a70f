"""Which modules of an encoder can be pruned: per-architecture tables of roles and name patterns.

Algorithms never hard-code `model.bert.encoder.layer`; they ask this table which Linear weights play
which role (query, key, value, attention output, FFN in, FFN out). Patterns are regular expressions
matched with `re.search` against module names, so they work whatever head the model carries
(`bert.encoder...` in BertForMaskedLM, `roberta.encoder...` in RobertaForSequenceClassification).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import nn

from prunebert.errors import PrunebertError

__all__ = [
    "ARCHITECTURES",
    "ENCODER_ROLES",
    "Architecture",
    "Target",
    "architecture_for",
    "find_targets",
    "role_modules",
]

ENCODER_ROLES = ("query", "key", "value", "attention_output", "ffn_in", "ffn_out")

_BERT_LIKE = {
    "query": r"encoder\.layer\.(\d+)\.attention\.self\.query$",
    "key": r"encoder\.layer\.(\d+)\.attention\.self\.key$",
    "value": r"encoder\.layer\.(\d+)\.attention\.self\.value$",
    "attention_output": r"encoder\.layer\.(\d+)\.attention\.output\.dense$",
    "ffn_in": r"encoder\.layer\.(\d+)\.intermediate\.dense$",
    "ffn_out": r"encoder\.layer\.(\d+)\.output\.dense$",
    "embeddings": r"embeddings\.word_embeddings$",
}

_DISTILBERT = {
    "query": r"transformer\.layer\.(\d+)\.attention\.q_lin$",
    "key": r"transformer\.layer\.(\d+)\.attention\.k_lin$",
    "value": r"transformer\.layer\.(\d+)\.attention\.v_lin$",
    "attention_output": r"transformer\.layer\.(\d+)\.attention\.out_lin$",
    "ffn_in": r"transformer\.layer\.(\d+)\.ffn\.lin1$",
    "ffn_out": r"transformer\.layer\.(\d+)\.ffn\.lin2$",
    "embeddings": r"embeddings\.word_embeddings$",
}


@dataclass(frozen=True)
class Architecture:
    """Role -> module-name pattern for one `config.model_type`; the layer index is group 1."""

    model_type: str
    roles: dict[str, str]


ARCHITECTURES: dict[str, Architecture] = {
    name: Architecture(name, table)
    for name, table in [
        ("bert", _BERT_LIKE),
        ("roberta", _BERT_LIKE),
        ("xlm-roberta", _BERT_LIKE),
        ("camembert", _BERT_LIKE),
        ("electra", _BERT_LIKE),
        ("distilbert", _DISTILBERT),
    ]
}


@dataclass(frozen=True)
class Target:
    """One prunable weight: the module's name, its role and its layer index (-1 outside the encoder)."""

    name: str
    role: str
    layer: int

    @property
    def param_name(self) -> str:
        """State-dict key of the weight this target prunes."""
        return f"{self.name}.weight"


def architecture_for(model: nn.Module) -> Architecture:
    """The table for `model`, or a one-line error naming the supported families."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        raise PrunebertError(
            f"model type {model_type!r} is not a supported encoder; use a BERT-family encoder "
            f"({supported}) or pass --pruning.targets with your own module-name patterns"
        )
    return ARCHITECTURES[model_type]


def _role_patterns(arch: Architecture, roles: Iterable[str]) -> list[tuple[str, re.Pattern[str]]]:
    unknown = sorted(set(roles) - set(arch.roles))
    if unknown:
        raise PrunebertError(f"unknown target role(s) {unknown}; choose from {sorted(arch.roles)}")
    return [(role, re.compile(arch.roles[role])) for role in roles]


def find_targets(
    model: nn.Module,
    roles: Sequence[str] = ENCODER_ROLES,
    patterns: Sequence[str] = (),
    include_embeddings: bool = False,
) -> list[Target]:
    """The prunable weights of `model`: the given roles of its architecture, or explicit patterns.

    Explicit `patterns` (regexes over module names) replace the role table; matched modules get the
    role "custom" unless the table also names them. Only modules with a 2-D `weight` qualify, and
    factorised Linears (`prunebert.transforms.lowrank.LowRankLinear`), whose `weight` is their diagonal.
    """
    arch = ARCHITECTURES.get(getattr(getattr(model, "config", None), "model_type", ""))
    role_list = list(roles) + (["embeddings"] if include_embeddings else [])
    if not patterns and arch is None:
        architecture_for(model)  # raises the supported-families error
    known = _role_patterns(arch, arch.roles) if arch is not None else []
    table = [] if patterns else _role_patterns(arch, role_list) if arch is not None else []
    custom = [re.compile(p) for p in patterns]
    targets = []
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        factorized = getattr(module, "factorized", False)  # transforms.lowrank: a 1-D diagonal `weight`
        if not isinstance(weight, nn.Parameter) or (weight.dim() != 2 and not factorized):
            continue
        target = _match(name, table)
        if target is None and any(p.search(name) for p in custom):
            target = _match(name, known) or Target(name, "custom", -1)
        if target is not None:
            targets.append(target)
    if not targets:
        raise PrunebertError(
            f"no prunable 2-D weights matched {list(patterns) or role_list}; "
            "check --pruning.targets against the names printed by `prunebert info MODEL`"
        )
    return targets


def role_modules(model: nn.Module, roles: Sequence[str] = ENCODER_ROLES) -> list[tuple[Target, nn.Module]]:
    """Every module playing one of `roles`, whatever its type (a factorised projection has no 2-D weight)."""
    table = _role_patterns(architecture_for(model), roles)
    found = [(_match(name, table), module) for name, module in model.named_modules()]
    return [(target, module) for target, module in found if target is not None]


def _match(name: str, table: list[tuple[str, re.Pattern[str]]]) -> Target | None:
    """The first role whose pattern matches `name`, with the layer index from group 1."""
    for role, pattern in table:
        match = pattern.search(name)
        if match:
            return Target(name, role, int(match.group(1)) if match.groups() else -1)
    return None
