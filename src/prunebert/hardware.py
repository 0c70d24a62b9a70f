"""What this machine's CPU computes natively: the facts speed results and the training precision depend on."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["ISA_FLAGS", "cpu_features", "cpu_name", "native_bf16"]

#: /proc/cpuinfo flags that decide CPU inference and training speed, by the name results report
ISA_FLAGS = {
    "AVX2": "avx2",
    "AVX-512": "avx512f",
    "AVX-512 VNNI": "avx512_vnni",
    "AVX-VNNI": "avx_vnni",
    "AVX-512 BF16": "avx512_bf16",
    "AMX-BF16": "amx_bf16",
    "AMX-INT8": "amx_int8",
}


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """(model name, flags) of the first CPU in /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    path = Path("/proc/cpuinfo")
    if not path.is_file():
        return platform.processor(), frozenset()
    fields: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())  # the first CPU's
    return fields.get("model name", platform.processor()), frozenset(fields.get("flags", "").split())


def cpu_name() -> str:
    """The CPU's model name."""
    return _cpuinfo()[0]


def cpu_features() -> list[str]:
    """The speed-relevant instruction sets this CPU has (names of `ISA_FLAGS`)."""
    flags = _cpuinfo()[1]
    return [name for name, flag in ISA_FLAGS.items() if flag in flags]


def native_bf16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX-512 BF16 or AMX): where bf16 autocast pays.

    Elsewhere oneDNN emulates bf16 through fp32 and autocast is slower than fp32, so `precision: auto`
    trains in fp32 there.
    """
    return bool({"avx512_bf16", "amx_bf16"} & _cpuinfo()[1])
