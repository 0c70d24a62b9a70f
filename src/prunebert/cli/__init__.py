"""The `prunebert` command line: `main` and one table of commands per group (train, deploy, study)."""

from prunebert.cli.main import main

__all__ = ["main"]
