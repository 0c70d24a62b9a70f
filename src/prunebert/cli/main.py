"""The `prunebert` command: pretrain | finetune | evaluate | info | methods | slim | demo
(`prunebert.cli.train`), the deployment commands compress | decompress | export | bench
(`prunebert.cli.deploy`), shrink (`prunebert.cli.shrink`), and the study commands study | report
(`prunebert.cli.study`)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from prunebert.errors import PrunebertError
from prunebert.io import unlock_all

if TYPE_CHECKING:
    from prunebert.cli.train import Command

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the fix, like every other prunebert error."""

    def error(self, message: str) -> NoReturn:
        """Print `prunebert: error: ...; see ... --help` and exit with status 2."""
        self.exit(2, f"prunebert: error: {message}; see `{self.prog} --help`\n")

    def add_argument(self, *names: Any, **kwargs: Any) -> argparse.Action:
        """`add_argument`, every long option accepted with dashes and with underscores."""
        return super().add_argument(*_both_spellings(names), **kwargs)


def _both_spellings(names: Sequence[str]) -> list[str]:
    """`--output_dir` also as `--output-dir` and the other way round: either spelling works."""
    out = list(names)
    for name in names:
        if name.startswith("--"):
            other = "--" + (name[2:].replace("_", "-") if "_" in name else name[2:].replace("-", "_"))
            if other not in out:
                out.append(other)
    return out


def _commands() -> dict[str, Command]:
    from prunebert.cli import deploy, shrink, study, train

    return {**train.COMMANDS, **deploy.COMMANDS, **shrink.COMMANDS, **study.COMMANDS}


def _build_parser(commands: dict[str, Command] | None = None) -> argparse.ArgumentParser:
    from prunebert import __version__

    parser = _Parser(prog="prunebert", description=__doc__)
    parser.add_argument("--version", action="version", version=f"prunebert {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add_parser, _ in (commands or _commands()).values():
        add_parser(sub)
    completion = sub.add_parser(
        "completion",
        help="print a shell completion script",
        description="Print a completion script for every command and option. bash: "
        "`prunebert completion bash > ~/.local/share/bash-completion/completions/prunebert`; zsh: "
        "`prunebert completion zsh > ~/.zfunc/_prunebert` with ~/.zfunc in $fpath before compinit",
    )
    completion.add_argument("shell", choices=SHELLS, help="the shell the script is for")
    return parser


SHELLS = ("bash", "zsh", "tcsh")


def _completion(parser: argparse.ArgumentParser, shell: str) -> None:
    """Print `shell`'s completion script for `parser` (shtab reads the argparse tree)."""
    import shtab

    print(shtab.complete(parser, shell=shell))


_NEGATIVE = re.compile(r"-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?|-inf(inity)?|-\.inf", re.IGNORECASE)


def _attach_negatives(argv: Sequence[str]) -> list[str]:
    """`--option -1e-5` as `--option=-1e-5`: argparse would take a negative number for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE.fullmatch(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; user errors print one line on stderr and exit with status 2."""
    commands = _commands()
    parser = _build_parser(commands)
    args, unknown = parser.parse_known_args(_attach_negatives(sys.argv[1:] if argv is None else argv))
    if unknown:  # reported here, where the subcommand whose --help lists the options is known
        fix = f"see `prunebert {args.command} --help`"
        parser.exit(2, f"prunebert: error: unrecognized arguments: {' '.join(unknown)}; {fix}\n")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.command == "completion":
            _completion(parser, args.shell)
        else:
            commands[args.command][1](args)
    except PrunebertError as exc:
        print(f"prunebert: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `prunebert info ... | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("prunebert: interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        unlock_all()  # the run directories this command locked
    return 0
