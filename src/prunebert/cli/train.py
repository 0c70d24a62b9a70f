"""The training commands: pretrain | finetune | evaluate | info | methods | recipes | demo | slim."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from prunebert.distributed import is_main_process
from prunebert.info import checkpoint_info, format_info
from prunebert.recipes import add_config_options, config_from_args
from prunebert.stages.evaluate import EvaluateConfig, run_evaluate
from prunebert.stages.finetune import FinetuneConfig, run_finetune
from prunebert.stages.pretrain import PretrainConfig, run_pretrain

__all__ = ["COMMANDS"]

Command = tuple[Callable[[Any], None], Callable[[argparse.Namespace], None]]


def _stage_parser(
    name: str, cls: type[BaseModel], help_text: str, overwrite: bool = True
) -> Callable[[Any], None]:
    def add(sub: Any) -> None:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--recipe", help="YAML recipe; options given here override its values")
        if overwrite:
            parser.add_argument(
                "--overwrite", action="store_true", help="replace a finished run in output_dir"
            )
        add_config_options(parser, cls)

    return add


def _run_stage(args: argparse.Namespace) -> None:
    # stdout carries the JSON summary alone: what the Trainer prints (its log lines, written with tqdm.write
    # or print) goes to stderr with the progress bars and warnings
    with contextlib.redirect_stdout(sys.stderr):
        if args.command == "evaluate":
            results = run_evaluate(config_from_args(EvaluateConfig, args))
        else:
            table: dict[str, tuple[type[Any], Callable[..., dict[str, Any]]]] = {
                "pretrain": (PretrainConfig, run_pretrain),
                "finetune": (FinetuneConfig, run_finetune),
            }
            cls, runner = table[args.command]
            results = runner(config_from_args(cls, args), overwrite=args.overwrite)
    if is_main_process():  # one summary, not one per process
        print(json.dumps({"stage": results["stage"], "metrics": results["metrics"]}, indent=2))


def _add_info(sub: Any) -> None:
    info = sub.add_parser("info", help="sparsity of a saved model, overall and per module")
    info.add_argument("path", help="model directory or prunebert run directory")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _info(args: argparse.Namespace) -> None:
    info = checkpoint_info(Path(args.path))
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def _add_methods(sub: Any) -> None:
    methods = sub.add_parser(
        "methods", help="the pruning methods: paper, what, and every option with its default and help"
    )
    methods.add_argument("names", nargs="*", metavar="NAME", help="only these methods (default: all)")
    methods.add_argument("--json", action="store_true", help="print JSON instead of text")


def _methods(args: argparse.Namespace) -> None:
    from prunebert.methods.catalog import describe_methods, format_methods

    cards = describe_methods(args.names)
    print(json.dumps(cards, indent=2) if args.json else format_methods(cards))


def _add_recipes(sub: Any) -> None:
    sub.add_parser("recipes", help="list the shipped named recipes (use one with --recipe NAME)")


def _recipes(args: argparse.Namespace) -> None:
    from prunebert.recipe_library import named_recipes

    for recipe in named_recipes().values():
        print(f"{recipe.name}  ({recipe.stage}: prunebert {recipe.stage} --recipe {recipe.name} ...)")
        print(f"    {recipe.what}")
        print(f"    reached: {recipe.reached}")


def _add_slim(sub: Any) -> None:
    slim = sub.add_parser("slim", help="remove zeroed heads / FFN neurons: a physically smaller model")
    slim.add_argument("source", help="model directory or prunebert run directory (structured-pruned)")
    slim.add_argument("output", help="directory for the slimmed model and slim.json")
    slim.add_argument("--overwrite", action="store_true", help="replace a model already in OUTPUT")
    slim.add_argument("--drop_layers", type=int, nargs="+", default=[], help="also remove these layers")


def _slim(args: argparse.Namespace) -> None:
    from prunebert.deploy.slim_job import format_summary, run_slim

    summary = run_slim(args.source, Path(args.output), args.overwrite, args.drop_layers)
    print(format_summary(summary))


def _add_demo(sub: Any) -> None:
    demo = sub.add_parser("demo", help="the embedded-default demo: 40%% MLM-stage pruning vs dense")
    demo.add_argument("--output_dir", default="runs/demo", help="where the demo's runs go")
    demo.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    demo.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="fine-tuning seeds per arm (default: 0 1 2)"
    )


def _demo(args: argparse.Namespace) -> None:
    from prunebert.study.demo import SEEDS, format_table, run_demo

    seeds = tuple(args.seeds) if args.seeds else SEEDS
    with contextlib.redirect_stdout(sys.stderr):  # the stages' Trainer log lines, like the progress
        summary = run_demo(Path(args.output_dir), quick=args.quick, seeds=seeds)
    results = Path(args.output_dir) / "comparison.json"
    print(format_table(summary["rows"]) + f"\n\nresults: {results}", file=sys.stderr)
    print(json.dumps({"results": str(results), **summary}, indent=2))  # stdout: the result alone


#: command -> (add its parser to the subcommands, run it)
COMMANDS: dict[str, Command] = {
    "pretrain": (
        _stage_parser("pretrain", PretrainConfig, "continued MLM pre-training, optionally pruning"),
        _run_stage,
    ),
    "finetune": (
        _stage_parser("finetune", FinetuneConfig, "task fine-tuning with a fixed mask or pruning"),
        _run_stage,
    ),
    "evaluate": (
        _stage_parser("evaluate", EvaluateConfig, "score a fine-tuned model on a task", overwrite=False),
        _run_stage,
    ),
    "info": (_add_info, _info),
    "methods": (_add_methods, _methods),
    "recipes": (_add_recipes, _recipes),
    "slim": (_add_slim, _slim),
    "demo": (_add_demo, _demo),
}
