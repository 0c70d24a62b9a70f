"""Print the docs' "Errors you may see" table: runs every case of tests/test_bad_inputs.py and
tests/test_never_silent.py for real.

.venv/bin/python scripts/error_table.py > /tmp/errors.md
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from transformers import BertTokenizerFast  # noqa: E402

import test_never_silent  # noqa: E402
from conftest import TINY_WORDS  # noqa: E402
from test_bad_inputs import CASES, _undo_readonly, build_workspace, run_cli  # noqa: E402


def main() -> None:
    """One markdown row per case: the input and the message the CLI printed (paths shortened)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "vocab.txt").write_text(
            "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS])
        )
        tokenizer = BertTokenizerFast.from_pretrained(str(root))
        ws = build_workspace(root / "ws", tokenizer)
        ws2 = test_never_silent.build_workspace(root / "ws2", tokenizer)
        print("| input | message (`prunebert: error: ...`, exit status 2) |\n|---|---|")
        try:
            for where, cases in ((ws, CASES), (ws2, test_never_silent.CASES)):
                for name, argv, _ in cases:
                    _row(name, *run_cli(argv(where)), where)
        finally:
            _undo_readonly(ws / "readonly")


def _row(name: str, status: int, err: str, ws: Path) -> None:
    """One markdown row: the message without its prefix, the workspace shortened to DIR."""
    message = err.split("prunebert: error: ")[-1].strip().splitlines()[0] if err.strip() else ""
    message = message.replace(str(ws), "DIR").replace("|", "\\|")
    print(f"| {name} | {message} |" if status == 2 else f"| {name} | (exit {status}) |")


if __name__ == "__main__":
    main()
