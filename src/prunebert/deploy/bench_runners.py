"""The runners `prunebert bench` times: one per (model, variant), built once and reused across rounds.

Variants: `torch` (eager fp32, as loaded), `torch-bf16`, `torch-int8`, `torch-csr`, `torch-csr+int8` (see
`prunebert.deploy.torch_variants`), `onnxruntime`, `onnxruntime-int8`, `openvino`, `openvino-int8`. ONNX and
OpenVINO files are exported by `prunebert.deploy.export` in a child process into a scratch directory, so this
process never runs `torch.onnx.export` (which slows later eager calls). Without a calibration task the
int8 exports are the data-free kinds (ONNX Runtime dynamic, NNCF weight-only); with one, static.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prunebert.deploy.export import FILES, ExportOptions, Format, export_model, needs
from prunebert.deploy.inference import InferenceModel, example_inputs, load_inference_model
from prunebert.deploy.runtimes import Runner, available, onnxruntime_runner, openvino_runner, torch_runner
from prunebert.deploy.torch_variants import TORCH_VARIANTS, CSRSettings, prepare_torch_variant
from prunebert.errors import PrunebertError

__all__ = ["EXPORT_VARIANTS", "VARIANTS", "RunnerFactory", "RunnerSettings", "check_variants"]

EXPORT_VARIANTS: dict[str, tuple[Format, bool]] = {
    "onnxruntime": ("onnx", False),
    "onnxruntime-int8": ("onnx", True),
    "openvino": ("openvino", False),
    "openvino-int8": ("openvino", True),
}
VARIANTS = ("torch", *(f"torch-{v}" for v in TORCH_VARIANTS if v != "fp32"), *EXPORT_VARIANTS)
DEFAULT_VARIANTS = ("torch", "onnxruntime", "openvino")


def check_variants(names: list[str], explicit: bool) -> tuple[list[str], list[dict[str, str]]]:
    """Known, installed variants in order, and the skipped ones with why.

    An explicitly requested variant whose runtime is missing is an error naming the extra to install;
    a default one is skipped with a note.
    """
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise PrunebertError(f"unknown bench variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    kept, skipped = [], []
    for name in dict.fromkeys(names):
        modules = needs(*EXPORT_VARIANTS[name]) if name in EXPORT_VARIANTS else ()
        missing = [m for m in modules if not available(m)]
        if missing and explicit:
            from prunebert.deploy.runtimes import require

            require(*missing)
        if missing:
            skipped.append({"variant": name, "reason": f"not installed: {', '.join(missing)}"})
        else:
            kept.append(name)
    return kept, skipped


@dataclass(frozen=True)
class RunnerSettings:
    """How runners are built: threads, CSR layer choice, int8 calibration, OpenVINO options."""

    threads: int
    seq_len: int
    csr: CSRSettings = field(default_factory=CSRSettings)
    calibration: str | None = None
    openvino_precision: str = "f32"
    openvino_sparse_rate: float | None = None
    seed: int = 0


@dataclass
class BuiltRunner:
    """A runner, the inputs it takes per batch size, and what was done to build it."""

    run: Runner
    info: dict[str, Any]


class RunnerFactory:
    """Loads each model once, exports each (model, format) once, and builds runners from them."""

    def __init__(self, settings: RunnerSettings, variants: list[str], scratch: Path) -> None:
        self.settings = settings
        self.variants = variants
        self.scratch = scratch
        self._models: dict[str, InferenceModel] = {}
        self._exports: dict[tuple[str, str], dict[str, Any]] = {}
        self._torch: dict[tuple[str, str], BuiltRunner] = {}

    def model(self, spec: str) -> InferenceModel:
        """The loaded model (fp32, eval mode), cached."""
        if spec not in self._models:
            self._models[spec] = load_inference_model(spec)
        return self._models[spec]

    def inputs(self, spec: str, batch: int) -> dict[str, np.ndarray]:
        """The bench input of `spec` for `batch`: seeded random ids, no padding, `seq_len` tokens."""
        model = self.model(spec)
        return example_inputs(
            model.config, model.input_names, batch, self.settings.seq_len, self.settings.seed
        )

    def build(self, spec: str, variant: str, batch: int) -> BuiltRunner:
        """The runner of `variant` for `spec`; CSR variants are re-decided per batch size."""
        if variant in EXPORT_VARIANTS:
            return self._exported(spec, variant)
        torch_variant = variant.removeprefix("torch").removeprefix("-") or "fp32"
        key = (spec, variant if "csr" not in variant else f"{variant}@{batch}")
        if key not in self._torch:
            model = self.model(spec)
            tokens = batch * self.settings.seq_len
            prepared = prepare_torch_variant(model.module, torch_variant, tokens, self.settings.csr)
            run = torch_runner(prepared.module, model.input_names)
            self._torch[key] = BuiltRunner(run, prepared.info)
        return self._torch[key]

    def _exported(self, spec: str, variant: str) -> BuiltRunner:
        fmt, int8 = EXPORT_VARIANTS[variant]
        manifest = self._export(spec, fmt)
        path = Path(manifest["out"]) / FILES[(fmt, int8)]
        threads = self.settings.threads
        if fmt == "onnx":
            run = onnxruntime_runner(path, threads)
        else:
            precision, rate = self.settings.openvino_precision, self.settings.openvino_sparse_rate
            run = openvino_runner(path, threads, precision, rate if int8 else None)
        info = {"file": path.name, "bytes": manifest["files"][path.name]["bytes"]}
        if int8:
            info["int8"] = manifest["int8"]
            info["calibration"] = manifest["calibration"] or "none (data-free)"
        return BuiltRunner(run, info)

    def _export(self, spec: str, fmt: Format) -> dict[str, Any]:
        """Export `spec` to `fmt` once (with its int8 twin if any int8 variant of `fmt` is wanted)."""
        if (spec, fmt) not in self._exports:
            int8 = any(EXPORT_VARIANTS[v] == (fmt, True) for v in self.variants if v in EXPORT_VARIANTS)
            out = self.scratch / f"{len(self._exports)}-{fmt}"
            options = ExportOptions(
                model=spec,
                out=str(out),
                format=fmt,
                int8=int8,
                calibration=self.settings.calibration if int8 else None,
                measure_accuracy=False,
                tolerance=1e-2,  # bench records the difference; `prunebert export` enforces 1e-4
                seed=self.settings.seed,
            )
            self._exports[(spec, fmt)] = export_model(options)
        return self._exports[(spec, fmt)]
