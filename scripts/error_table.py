"""Print the README's "Errors you may see" table: runs every case of tests/test_bad_inputs.py for real.

.venv/bin/python scripts/error_table.py > /tmp/errors.md
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from transformers import BertTokenizerFast  # noqa: E402

from conftest import TINY_WORDS  # noqa: E402
from test_bad_inputs import CASES, _undo_readonly, build_workspace, run_cli  # noqa: E402


def main() -> None:
    """One markdown row per case: the input and the message the CLI printed (paths shortened)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "vocab.txt").write_text(
            "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS])
        )
        ws = build_workspace(root / "ws", BertTokenizerFast.from_pretrained(str(root)))
        print("| input | message (`prunebert: error: ...`, exit status 2) |\n|---|---|")
        try:
            for name, argv, _ in CASES:
                status, err = run_cli(argv(ws))
                message = err.strip().splitlines()[-1].removeprefix("prunebert: error: ")
                message = message.replace(str(ws), "DIR").replace("|", "\\|")
                print(f"| {name} | {message} |" if status == 2 else f"| {name} | (exit {status}) |")
        finally:
            _undo_readonly(ws / "readonly")


if __name__ == "__main__":
    main()
