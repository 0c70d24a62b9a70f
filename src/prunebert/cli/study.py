"""The study commands of `prunebert`: study | report (parsers and dispatch)."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from prunebert.cli.train import Command

__all__ = ["COMMANDS"]


def _add_study(sub: Any) -> None:
    study = sub.add_parser(
        "study",
        help="a resumable grid of methods x sparsities x stages x tasks, aggregated to results.csv; "
        "several commands on one recipe share its runs (one per core)",
    )
    study.add_argument("recipe", help="study recipe (YAML), e.g. recipes/study-default.yaml")
    study.add_argument("--output_dir", help="where the runs and results go (overrides the recipe's)")


def _add_report(sub: Any) -> None:
    report = sub.add_parser("report", help="PNG/SVG figures and one HTML page from a study's results")
    report.add_argument(
        "results_dir",
        nargs="+",
        help="the output_dir of a `prunebert study` run; several: the same study run with other seeds "
        "(curves and summary show mean ± standard deviation; the page goes into the first)",
    )
    report.add_argument("--output", help="where the PNGs and report.html go (default RESULTS_DIR/report)")
    pick = "per-model figures (sparsity, Q/K patterns, embeddings) show the cell of this"
    report.add_argument("--stage", help=f"{pick} stage (default: pretrain if run)")
    report.add_argument("--task", help=f"{pick} task (default: the first)")
    report.add_argument("--method", help=f"{pick} method, also the mask-overlap method (default: magnitude)")
    report.add_argument("--sparsity", type=float, help=f"{pick} sparsity, e.g. 0.7 (default: the highest)")
    report.add_argument(
        "--layers", type=int, nargs="+", help="layers of the Q/K patterns (default: first, last)"
    )
    report.add_argument("--words", nargs="+", help="seed words of the embedding figure")
    report.add_argument(
        "--neighbours", type=int, default=5, help="neighbours shown per seed word (default 5)"
    )
    report.add_argument(
        "--bench", help="a `prunebert bench --json-out` file: inference speeds for the comparison table"
    )


def _study(args: argparse.Namespace) -> None:
    from prunebert.study import load_study, run_study
    from prunebert.study.results import CSV_FILE, format_cells, study_summary

    cfg = load_study(Path(args.recipe), Path(args.output_dir) if args.output_dir else None)
    with contextlib.redirect_stdout(sys.stderr):  # the runs' Trainer log lines, like the progress
        table = run_study(cfg)
    print(format_cells(table["cells"]), file=sys.stderr)
    print(
        f"\n{len(table['cells'])} cells; ran {table['runs_executed']} of {table['runs_total']} runs "
        f"(the rest were finished); results: {cfg.output_dir / CSV_FILE}",
        file=sys.stderr,
    )
    print(json.dumps(study_summary(table, cfg.output_dir), indent=2))  # stdout: the result alone


def _report(args: argparse.Namespace) -> None:
    from prunebert.report import PAGE, ReportOptions, build_report

    options = ReportOptions(
        stage=args.stage, task=args.task, method=args.method, sparsity=args.sparsity, layers=args.layers
    )
    if args.words:
        options.words = list(args.words)
    options.neighbours = args.neighbours
    options.bench = Path(args.bench) if args.bench else None
    first, *others = (Path(d) for d in args.results_dir)
    options.seed_dirs = others
    out = Path(args.output) if args.output else first / "report"
    for section in build_report(first, out, options):
        where = section.png or (out / "comparison.csv" if section.table else None)
        print(f"{section.name:<24} " + (str(where) if where else f"skipped: {section.note}"))
    print(f"\nreport: {out / PAGE}")


#: command -> (add its parser to the subcommands, run it)
COMMANDS: dict[str, Command] = {"study": (_add_study, _study), "report": (_add_report, _report)}
