"""The machine a result was produced on: what its CPU computes natively (the facts speed results and the
training precision depend on), and the versions and settings recorded beside every result."""

from __future__ import annotations

import functools
import importlib.metadata
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

__all__ = ["ISA_FLAGS", "PACKAGES", "cpu_features", "cpu_name", "environment", "native_bf16", "versions"]

#: packages whose versions a result records; those not installed (the optional runtimes) are left out
PACKAGES = ("prunebert", "torch", "transformers", "onnx", "onnxscript", "onnxruntime", "openvino", "nncf")

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


def versions() -> dict[str, str]:
    """The installed versions of `PACKAGES`."""
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def environment(threads: int | None = None) -> dict[str, Any]:
    """Versions and machine facts that make a result reproducible; `threads`: torch's own unless given."""
    return {
        "versions": versions(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu": cpu_name(),
        "cpu_features": cpu_features(),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads() if threads is None else threads,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
