"""The command line behaves like other tools: --version, choices and readable defaults in --help, JSON alone
on stdout (logs on stderr), shell completion."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerBase

import prunebert
from prunebert.cli import main
from tiny import write_workspace


def _exit_output(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_output(["--version"], capsys).strip() == f"prunebert {prunebert.__version__}"


def test_help_lists_choices_and_readable_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_exit_output(["finetune", "--help"], capsys).split())  # argparse wraps lines
    assert "--pruning.schedule {oneshot,cubic,iterative,fixed}" in text
    assert "--train.report_to {tensorboard,wandb,mlflow,none}" in text
    assert "--start_from {model,teacher}" in text
    assert "(default: runs/finetune)" in text and "PosixPath" not in text
    assert "(default: [query, key, value, attention_output, ffn_in, ffn_out])" in text
    assert "(default: 5e-05)" in text and "(default: true)" in text and "(default: null)" in text


def test_a_bad_choice_is_still_the_recipe_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["finetune", "--pruning.schedule", "bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("prunebert: error: bad value for 'pruning.schedule'") and "\n" not in err


def test_finetune_prints_json_alone_on_stdout(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase, capsys: pytest.CaptureFixture[str]
) -> None:
    workspace = write_workspace(tmp_path, tiny_tokenizer)
    argv = ["finetune", "--model", str(workspace / "tiny-mlm"), "--task", str(workspace / "task.csv")]
    argv += ["--output_dir", str(tmp_path / "ft"), "--max_seq_length", "16", "--train.max_steps", "4"]
    argv += ["--train.batch_size", "4", "--train.logging_steps", "2", "--pruning.sparsity", "0.5"]
    argv += ["--pruning.frequency", "2"]
    capsys.readouterr()
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert set(json.loads(captured.out)) == {"stage", "metrics"}  # nothing else on stdout
    assert "'loss':" in captured.err and "'sparsity':" in captured.err  # the Trainer's log lines


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completion_completes_commands_options_and_choices(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    script = tmp_path / "prunebert.bash"
    script.write_text(_exit_or_zero(["completion", "bash"], capsys))

    def complete(*words: str) -> list[str]:
        line = f"COMP_WORDS=(prunebert {' '.join(words)}); COMP_CWORD={len(words)}"
        shell = f'source {script}; {line}; _shtab_prunebert; echo "${{COMPREPLY[@]}}"'
        return subprocess.run(
            ["bash", "-c", shell], capture_output=True, text=True, check=True
        ).stdout.split()

    assert complete("fin") == ["finetune"]
    assert "--pruning.sparsity" in complete("finetune", "--pruning.sp")
    assert complete("finetune", "--pruning.schedule", "") == ["oneshot", "cubic", "iterative", "fixed"]


def test_zsh_completion_is_a_compdef(capsys: pytest.CaptureFixture[str]) -> None:
    script = _exit_or_zero(["completion", "zsh"], capsys)
    assert script.startswith("#compdef prunebert") and "--train.report_to" in script


def _exit_or_zero(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out
