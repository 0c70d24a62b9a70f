"""The `prunebert shrink` command: retraining-free structured pruning to a requested speed-up."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Any

from prunebert.cli.train import Command
from prunebert.recipes import add_config_options, config_from_args
from prunebert.shrink.config import ShrinkConfig

__all__ = ["COMMANDS"]


def _add_shrink(sub: Any) -> None:
    text = (
        "prune heads and FFN neurons of a fine-tuned model to a requested speed-up (measured on this "
        "machine) or FLOPs, without training (Kwon et al. 2022)"
    )
    shrink = sub.add_parser("shrink", help=text, description=text)
    shrink.add_argument(
        "model", metavar="MODEL", help="fine-tuned model directory or prunebert run directory"
    )
    shrink.add_argument("--recipe", help="YAML file of these options; options given here override it")
    shrink.add_argument("--overwrite", action="store_true", help="replace a shrunk model in OUT")
    shrink.add_argument("--json", action="store_true", help="print the report as JSON")
    add_config_options(shrink, ShrinkConfig)


def _shrink(args: argparse.Namespace) -> None:
    from prunebert.shrink.job import format_report, run_shrink

    with contextlib.redirect_stdout(sys.stderr):  # progress and Trainer log lines; stdout: the report alone
        report = run_shrink(args.model, config_from_args(ShrinkConfig, args), overwrite=args.overwrite)
    print(json.dumps(report, indent=2) if args.json else format_report(report))


#: command -> (add its parser to the subcommands, run it)
COMMANDS: dict[str, Command] = {"shrink": (_add_shrink, _shrink)}
