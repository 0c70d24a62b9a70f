"""The `prunebert` command: pretrain | finetune | evaluate | info | methods | slim | demo, the
deployment commands compress | decompress | export | bench (`prunebert.deploy_cli`), and the study
commands study | report (`prunebert.study_cli`)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from pydantic import BaseModel

from prunebert.errors import PrunebertError

__all__ = ["main"]


def _stage_parser(sub: Any, name: str, cls: type[BaseModel], help_text: str, overwrite: bool = True) -> None:
    from prunebert.recipes import add_config_options

    parser = sub.add_parser(name, help=help_text, description=help_text)
    parser.add_argument("--recipe", help="YAML recipe; options given here override its values")
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help="replace a finished run in output_dir")
    add_config_options(parser, cls)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the fix, like every other prunebert error."""

    def error(self, message: str) -> NoReturn:
        """Print `prunebert: error: ...; see ... --help` and exit with status 2."""
        self.exit(2, f"prunebert: error: {message}; see `{self.prog} --help`\n")


def _build_parser() -> argparse.ArgumentParser:
    from prunebert.deploy_cli import add_deploy_parsers
    from prunebert.stages.evaluate import EvaluateConfig
    from prunebert.stages.finetune import FinetuneConfig
    from prunebert.stages.pretrain import PretrainConfig
    from prunebert.study_cli import add_study_parsers

    parser = _Parser(prog="prunebert", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _stage_parser(sub, "pretrain", PretrainConfig, "continued MLM pre-training, optionally pruning")
    _stage_parser(sub, "finetune", FinetuneConfig, "task fine-tuning with a fixed mask or pruning")
    _stage_parser(sub, "evaluate", EvaluateConfig, "score a fine-tuned model on a task", overwrite=False)
    info = sub.add_parser("info", help="sparsity of a saved model, overall and per module")
    info.add_argument("path", help="model directory or prunebert run directory")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub.add_parser("methods", help="list the registered pruning methods")
    slim = sub.add_parser("slim", help="remove zeroed heads / FFN neurons: a physically smaller model")
    slim.add_argument("source", help="model directory or prunebert run directory (structured-pruned)")
    slim.add_argument("output", help="directory for the slimmed model and slim.json")
    slim.add_argument("--overwrite", action="store_true", help="replace a model already in OUTPUT")
    slim.add_argument("--drop_layers", type=int, nargs="+", default=[], help="also remove these layers")
    demo = sub.add_parser("demo", help="the embedded-default demo: 40%% MLM-stage pruning vs dense")
    demo.add_argument("--output_dir", default="runs/demo", help="where the demo's runs go")
    demo.add_argument("--quick", action="store_true", help="a few steps only (smoke test)")
    demo.add_argument(
        "--seeds", type=int, nargs="+", default=None, help="fine-tuning seeds per arm (default: 0 1 2)"
    )
    add_deploy_parsers(sub)
    add_study_parsers(sub)
    return parser


def _run_stage(args: argparse.Namespace) -> dict[str, Any]:
    from prunebert.recipes import config_from_args
    from prunebert.stages.evaluate import EvaluateConfig, run_evaluate
    from prunebert.stages.finetune import FinetuneConfig, run_finetune
    from prunebert.stages.pretrain import PretrainConfig, run_pretrain

    if args.command == "evaluate":
        return run_evaluate(config_from_args(EvaluateConfig, args))
    table: dict[str, tuple[type[Any], Callable[..., dict[str, Any]]]] = {
        "pretrain": (PretrainConfig, run_pretrain),
        "finetune": (FinetuneConfig, run_finetune),
    }
    cls, runner = table[args.command]
    return runner(config_from_args(cls, args), overwrite=args.overwrite)


def _dispatch(args: argparse.Namespace) -> None:
    from prunebert.deploy_cli import DEPLOY_COMMANDS, run_deploy
    from prunebert.study_cli import STUDY_COMMANDS, run_study_command

    if args.command in DEPLOY_COMMANDS:
        run_deploy(args)
    elif args.command in STUDY_COMMANDS:
        run_study_command(args)
    elif args.command == "info":
        from prunebert.info import checkpoint_info, format_info

        info = checkpoint_info(Path(args.path))
        print(json.dumps(info, indent=2) if args.json else format_info(info))
    elif args.command == "methods":
        from prunebert.methods import available_methods

        print("\n".join(available_methods()))
    elif args.command == "slim":
        from prunebert.slim_command import format_summary, run_slim

        summary = run_slim(args.source, Path(args.output), args.overwrite, args.drop_layers)
        print(format_summary(summary))
    elif args.command == "demo":
        from prunebert.demo import SEEDS, format_table, run_demo

        seeds = tuple(args.seeds) if args.seeds else SEEDS
        summary = run_demo(Path(args.output_dir), quick=args.quick, seeds=seeds)
        print(format_table(summary["rows"]))
        print(f"\nresults: {args.output_dir}/comparison.json")
    else:
        from prunebert.distributed import is_main_process

        results = _run_stage(args)
        if is_main_process():  # one summary, not one per process
            print(json.dumps({"stage": results["stage"], "metrics": results["metrics"]}, indent=2))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line on stderr and exit with status 2."""
    parser = _build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # reported here, where the subcommand whose --help lists the options is known
        fix = f"see `prunebert {args.command} --help`"
        parser.exit(2, f"prunebert: error: unrecognized arguments: {' '.join(unknown)}; {fix}\n")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        _dispatch(args)
    except PrunebertError as exc:
        print(f"prunebert: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `prunebert info ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("prunebert: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
