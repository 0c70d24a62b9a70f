"""Every bad input ends in one line naming the problem and the fix, exit status 2, no traceback, and an
output directory left exactly as it was (absent if it was absent).

`scripts/error_table.py` runs the same table and prints the README's "Errors you may see".
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import huggingface_hub.constants
import pytest
from transformers import BertModel, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase

from prunebert.cli import main
from prunebert.config import PruningConfig
from prunebert.masks import MASKS_FILE
from prunebert.pruner import Pruner
from tiny import tiny_classifier, tiny_config, write_workspace

OUT = "out"  # the output directory every case names (inside the workspace)


class _Pickled:
    """A pickle that would leave a file behind if it were ever unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., object], tuple[str, ...]]:
        return (shutil.copy, (__file__, str(self.marker)))


def _make_readonly(directory: Path) -> bool:
    """Make `directory` unwritable even for root (chattr +i where chmod is not enough); True if it is."""
    directory.chmod(0o555)
    with contextlib.suppress(OSError, FileNotFoundError):
        subprocess.run(["chattr", "+i", str(directory)], capture_output=True, check=False)
    try:
        (directory / "probe").touch()
    except OSError:
        return True
    (directory / "probe").unlink()
    return False


def _undo_readonly(directory: Path) -> None:
    with contextlib.suppress(OSError, FileNotFoundError):
        subprocess.run(["chattr", "-i", str(directory)], capture_output=True, check=False)
    directory.chmod(0o755)


def build_workspace(root: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """The tiny workspace plus every broken input the table needs."""
    ws = write_workspace(root, tokenizer)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32))
    gpt2.save_pretrained(ws / "gpt2")
    tiny_classifier(num_labels=2).save_pretrained(ws / "classifier-2")
    tokenizer.save_pretrained(ws / "classifier-2")
    (ws / "three-labels.csv").write_text(
        "text,label\n" + "".join(f"a good film {i},{i % 3}\n" for i in range(30))
    )
    (ws / "empty.csv").write_text("text,label\n")
    (ws / "short.txt").write_text("the cat sat")
    for name in ("truncated", "foreign-masks", "damaged-masks", "pickled"):
        shutil.copytree(ws / "tiny-mlm", ws / name)
    weights = ws / "truncated" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    narrow = BertModel(tiny_config(hidden_size=16, intermediate_size=32, num_attention_heads=2))
    Pruner(narrow, PruningConfig()).save(ws / "foreign-masks")
    (ws / "damaged-masks" / MASKS_FILE).write_bytes(b"\x10\x00\x00\x00not a header")
    (ws / "pickled" / "model.safetensors").unlink()
    (ws / "pickled" / "pytorch_model.bin").write_bytes(pickle.dumps(_Pickled(ws / "unpickled")))
    (ws / "unknown-key.yaml").write_text("pruning:\n  sparsityy: 0.5\n")
    (ws / "wrong-type.yaml").write_text("train:\n  learning_rate: fast\n")
    (ws / "not-yaml.yaml").write_text("train: [\n")
    (ws / "other-run").mkdir()
    (ws / "other-run" / "recipe.yaml").write_text("model: another-model\n")
    (ws / "finished-run").mkdir()
    (ws / "finished-run" / "results.json").write_text("{}\n")
    (ws / "foreign-dir").mkdir()
    (ws / "foreign-dir" / "notes.txt").write_text("mine\n")
    (ws / "a-file").write_text("not a directory\n")
    (ws / "readonly").mkdir()
    return ws


def _ft(
    ws: Path, *extra: str, model: str = "tiny-mlm", task: str = "task.csv", out: str = OUT, max_steps: int = 2
) -> list[str]:
    """`prunebert finetune` of `model` on `task` into `out` (in `ws`) for `max_steps` steps, then `extra`."""
    return [
        "finetune",
        "--model",
        str(ws / model),
        "--task",
        str(ws / task),
        "--output_dir",
        str(ws / out),
        "--train.max_steps",
        str(max_steps),
        "--max_seq_length",
        "16",
        *extra,
    ]


def _pt(ws: Path, text: str) -> list[str]:
    return ["pretrain", "--model", str(ws / "tiny-mlm"), "--text", text, "--output_dir", str(ws / OUT)]


def _readonly(ws: Path) -> list[str]:
    if not _make_readonly(ws / "readonly"):
        pytest.skip("this filesystem cannot make a directory read-only")
    return _ft(ws, out="readonly/run")


# (input, argv in the workspace, what the one-line message must say)
CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("sparsity outside [0, 1)", lambda ws: _ft(ws, "--pruning.sparsity", "1.5"), "'pruning.sparsity'"),
    ("unknown method", lambda ws: _ft(ws, "--pruning.method", "lottery"), "unknown pruning method"),
    ("unknown schedule", lambda ws: _ft(ws, "--pruning.schedule", "linear"), "'pruning.schedule'"),
    ("unknown method option", lambda ws: _ft(ws, "--pruning.options", "{lam: 1}"), "unknown option(s)"),
    ("value out of range", lambda ws: _ft(ws, "--train.batch_size", "0"), "'train.batch_size'"),
    ("unknown command-line option", lambda ws: _ft(ws, "--pruning.sparsityy", "0.5"), "unrecognized"),
    (
        "recipe with an unknown key",
        lambda ws: _ft(ws, "--recipe", str(ws / "unknown-key.yaml")),
        "unknown recipe key 'pruning.sparsityy'",
    ),
    (
        "recipe with a wrong type",
        lambda ws: _ft(ws, "--recipe", str(ws / "wrong-type.yaml")),
        "'train.learning_rate'",
    ),
    ("recipe that is not YAML", lambda ws: _ft(ws, "--recipe", str(ws / "not-yaml.yaml")), "not valid YAML"),
    ("decoder-only model (GPT-2)", lambda ws: _ft(ws, model="gpt2"), "not a supported encoder"),
    ("nonexistent model path", lambda ws: _ft(ws, model="no/such/model"), "does not exist"),
    (
        "model name neither built-in, local nor reachable",
        lambda ws: [*_ft(ws)[:1], "--model", "no-such-org/no-such-model", *_ft(ws)[3:]],
        "could not load model",
    ),
    ("truncated safetensors weights", lambda ws: _ft(ws, model="truncated"), "cannot load the weights"),
    ("pickled weights only (pytorch_model.bin)", lambda ws: _ft(ws, model="pickled"), "safetensors only"),
    ("mask file from another model", lambda ws: _ft(ws, model="foreign-masks"), "come from another model"),
    ("damaged mask file", lambda ws: _ft(ws, model="damaged-masks"), "is damaged"),
    ("missing text column", lambda ws: _ft(ws, "--text_column", "sentence"), "pass --text_column"),
    ("missing label column", lambda ws: _ft(ws, "--label_column", "y"), "pass --label_column"),
    ("empty dataset", lambda ws: _ft(ws, task="empty.csv"), "has no rows"),
    (
        "labels that do not fit the model",
        lambda ws: _ft(ws, model="classifier-2", task="three-labels.csv"),
        "2-label classifier but the task has 3",
    ),
    (
        "dataset neither built-in, local nor reachable",
        lambda ws: [*_ft(ws)[:3], "--task", "no-such-org/no-such-dataset", *_ft(ws)[5:]],
        "could not be loaded from the hub",
    ),
    ("missing text file", lambda ws: _pt(ws, str(ws / "missing.txt")), "is not built-in"),
    ("text too short for two blocks", lambda ws: _pt(ws, str(ws / "short.txt")), "--block_size"),
    (
        "missing distillation teacher",
        lambda ws: _ft(ws, "--distill.teacher", str(ws / "no-teacher")),
        "does not exist",
    ),
    ("output dir holding another run", lambda ws: _ft(ws, out="other-run"), "different recipe"),
    ("output dir holding a finished run", lambda ws: _ft(ws, out="finished-run"), "finished run"),
    ("output dir with files of someone else", lambda ws: _ft(ws, out="foreign-dir"), "not written by"),
    ("output dir under a file", lambda ws: _ft(ws, out="a-file/run"), "is a file"),
    ("read-only output dir", _readonly, "cannot write to"),
]


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """HF_HUB_OFFLINE=1 for code already imported: hub lookups fail at once instead of timing out."""
    saved = (os.environ.get("HF_HUB_OFFLINE"), huggingface_hub.constants.HF_HUB_OFFLINE)
    saved_datasets = datasets.config.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    huggingface_hub.constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        huggingface_hub.constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved[1], saved_datasets
        if saved[0] is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = saved[0]


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Exit status and stderr of `prunebert ARGV`, run in this process (offline)."""
    err = io.StringIO()
    with offline_hub(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse's usage errors
            status = int(exc.code or 0)
    return status, err.getvalue()


def _output_dir(argv: list[str]) -> Path | None:
    """The directory `prunebert ARGV` writes to (None if it writes none)."""
    if "--output_dir" in argv:
        return Path(argv[argv.index("--output_dir") + 1])
    return Path(argv[2]) if argv[0] in ("compress", "decompress", "slim") else None


def _snapshot(directory: Path) -> dict[str, bytes] | None:
    """Every file under `directory` with its bytes (None if it does not exist)."""
    if not directory.exists():
        return None
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def assert_one_line_error(argv: list[str], expected: str) -> None:
    """`prunebert ARGV` exits 2 with one `prunebert: error: problem; fix` line naming `expected`, no
    traceback, and leaves its output directory (if it has one) as it was."""
    out = _output_dir(argv)
    before = _snapshot(out) if out is not None else None
    status, err = run_cli(argv)
    lines = err.strip().splitlines()
    assert status == 2, err[-3000:]
    assert "Traceback" not in err
    assert sum("prunebert: error:" in line for line in lines) == 1
    message = lines[-1]
    assert message.startswith("prunebert: error: ") and expected in message, message
    assert "; " in message  # problem; fix
    if out is not None:
        assert _snapshot(out) == before


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: PreTrainedTokenizerBase
) -> Iterator[Path]:
    ws = build_workspace(tmp_path_factory.mktemp("bad"), tiny_tokenizer)
    yield ws
    _undo_readonly(ws / "readonly")


@pytest.mark.parametrize(("argv", "expected"), [pytest.param(a, e, id=name) for name, a, e in CASES])
def test_bad_input_is_one_line_error_and_the_output_dir_is_untouched(
    workspace: Path, argv: Callable[[Path], list[str]], expected: str
) -> None:
    assert_one_line_error(argv(workspace), expected)
    assert not (workspace / "unpickled").exists()
