"""CPU facts read from /proc/cpuinfo, and the training precision `auto` resolves to."""

from pathlib import Path

import pytest
import torch

from prunebert import hardware
from prunebert.stages.common import resolve_precision


def _fake_cpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: str) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        f"processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t: x\n"
    )
    real = Path

    def fake_path(p: str) -> Path:
        return info if p == "/proc/cpuinfo" else real(p)

    monkeypatch.setattr(hardware, "Path", fake_path)
    hardware._cpuinfo.cache_clear()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize(
    ("flags", "features", "bf16"),
    [
        ("fpu avx2 fma", ["AVX2"], False),
        ("avx2 avx512f avx512_vnni", ["AVX2", "AVX-512", "AVX-512 VNNI"], False),
        ("avx2 avx512f avx512_vnni avx512_bf16", ["AVX2", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16"], True),
        ("avx2 avx512f amx_bf16 amx_int8", ["AVX2", "AVX-512", "AMX-BF16", "AMX-INT8"], True),
    ],
)
def test_features_and_auto_precision_follow_the_cpu_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, flags: str, features: list[str], bf16: bool
) -> None:
    _fake_cpu(monkeypatch, tmp_path, flags)
    try:
        assert hardware.cpu_name() == "Test CPU"
        assert hardware.cpu_features() == features
        assert hardware.native_bf16() is bf16
        assert resolve_precision("auto") == ("bf16" if bf16 else "fp32")
        assert resolve_precision("fp32") == "fp32" and resolve_precision("bf16") == "bf16"
    finally:
        hardware._cpuinfo.cache_clear()


def test_environment_records_versions_machine_and_threads(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _fake_cpu(monkeypatch, tmp_path, "avx2 avx512f")
    try:
        env = hardware.environment()
        assert {"prunebert", "torch", "transformers"} <= set(env["versions"])
        assert set(env["versions"]) <= set(hardware.PACKAGES)  # runtimes only where installed
        assert env["cpu"] == "Test CPU" and env["cpu_features"] == ["AVX2", "AVX-512"]
        assert env["threads"] == torch.get_num_threads() and hardware.environment(3)["threads"] == 3
        assert {"python", "machine", "cpu_count", "time"} <= set(env)
    finally:
        hardware._cpuinfo.cache_clear()
