"""Sparse storage: `prunebert compress` / `decompress`, a compact safetensors-based format for sparse models.

Every `*.safetensors` file of a model directory becomes `<stem>.prunebert-sparse.safetensors`, itself a
plain safetensors file of uint8 payloads plus a JSON manifest in its header. Each tensor is stored as
    dense:   all its bytes, byte-shuffled (byte 0 of every element, then byte 1, ...) and zlib-compressed;
    bitmask: a packed bit per element (numpy packbits) saying which elements are nonzero, plus the
             byte-shuffled nonzero elements, each part zlib-compressed;
    xor_ref: a bool mask (prunebert_masks.safetensors) stored as its XOR with the nonzero pattern of the
             weight it masks, which is all zeros, hence almost free, for a baked model;
whichever is smallest. "Nonzero" means any bit set, so -0.0 and NaN survive: the round trip is
bit-identical, and a CRC32 of every tensor's bytes catches any damage. With `fp16=True` float32 tensors
are stored as float16 and decompressed back to float32: lossy (fp16 rounding), about half the bytes.
Every other file and subdirectory (config, tokenizer, model card, custom code, sentence-transformers
modules such as `1_Pooling/`, weights inside a subdirectory) is copied as it is, both ways. OUT is written
into a staging directory beside it and renamed whole at the end: a killed or failed command leaves no
half-written OUT.
"""

from __future__ import annotations

import json
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from prunebert.errors import PrunebertError
from prunebert.io import LOCK_FILE, check_output_dir, staged_dir
from prunebert.masks import MASKS_FILE
from prunebert.model_files import COMPRESSED_SUFFIX

__all__ = [
    "FORMAT",
    "SUFFIX",
    "VERSION",
    "compress_model",
    "decode_tensor",
    "decompress_model",
    "encode_tensor",
    "format_report",
]

FORMAT = "prunebert-sparse"
VERSION = 1
SUFFIX = COMPRESSED_SUFFIX
_MANIFEST_KEY = "prunebert_sparse"
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INTS = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool)
_DTYPES = {str(d).removeprefix("torch."): d for d in (*_FLOATS, *_INTS)}
_ENCODER = re.compile(r"(^|\.)(encoder|transformer)\.layer\.\d+\.")  # BERT-like and DistilBERT layers


@dataclass
class Encoded:
    """One tensor's manifest entry and its payloads (uint8 arrays keyed by part name)."""

    entry: dict[str, Any]
    parts: dict[str, np.ndarray]
    nonzero: np.ndarray  # (numel,) bool: the stored value-nonzero pattern, a reference for masks


def _raw(tensor: torch.Tensor) -> np.ndarray:
    """The tensor's bytes as a (numel, itemsize) uint8 array."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().reshape(flat.numel(), tensor.element_size())


def _pack(data: np.ndarray) -> tuple[np.ndarray, str]:
    """zlib-compress `data`'s bytes unless that makes them larger."""
    raw = np.ascontiguousarray(data).tobytes()
    packed = zlib.compress(raw, 6)
    if len(packed) < len(raw):
        return np.frombuffer(packed, np.uint8), "zlib"
    return np.frombuffer(raw, np.uint8), "raw"


def _unpack(part: np.ndarray, codec: str, size: int) -> np.ndarray:
    data = zlib.decompress(part.tobytes()) if codec == "zlib" else part.tobytes()
    if len(data) != size:
        raise ValueError(f"payload holds {len(data)} bytes, expected {size}")
    return np.frombuffer(data, np.uint8)


def _shuffle(rows: np.ndarray) -> np.ndarray:
    """(n, k) element bytes -> byte planes (k, n): exponents then mantissas compress far better."""
    return np.ascontiguousarray(rows.T)


def _nonzero(raw: np.ndarray, floating: bool) -> tuple[np.ndarray, np.ndarray]:
    """(numel,) value-nonzero pattern and (numel,) negative-zero pattern of (numel, k) element bytes.

    Floats: the sign bit (top bit of the last byte, little-endian) does not make an element nonzero,
    so -0.0 costs one bit of a `negzero` part instead of a stored value; NaN counts as nonzero.
    """
    if not floating or raw.shape[1] == 0:
        return np.asarray(raw.any(axis=1), bool), np.zeros(raw.shape[0], bool)
    top = raw[:, -1]
    nonzero = (top & 0x7F).astype(bool) | raw[:, :-1].any(axis=1)
    return nonzero, ~nonzero & (top >= 0x80)


def encode_tensor(
    tensor: torch.Tensor,
    fp16: bool = False,
    reference: np.ndarray | None = None,
    canonical_zeros: bool = False,
) -> Encoded:
    """Encode one tensor compactly and losslessly; `fp16` and `canonical_zeros` are the lossy options.

    `reference`: a nonzero pattern that the tensor (a bool mask) should equal; it is stored as an XOR.
    `canonical_zeros`: write -0.0 as +0.0 (equal values, different bits).
    """
    stored = tensor
    if fp16 and tensor.dtype == torch.float32:
        half = tensor.half()
        if bool((torch.isfinite(half) | ~torch.isfinite(tensor)).all()):  # no overflow to inf
            stored = half
    raw = _raw(stored)  # (numel, k)
    nonzero, negzero = _nonzero(raw, stored.is_floating_point())
    if canonical_zeros and negzero.any():
        raw = raw.copy()
        raw[negzero] = 0
        negzero[:] = False
    numel, nnz = raw.shape[0], int(nonzero.sum())
    entry: dict[str, Any] = {
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "stored_dtype": str(stored.dtype).removeprefix("torch."),
        "shape": list(tensor.shape),
        "nnz": nnz,
        "crc32": zlib.crc32(raw.tobytes()),
        "codecs": {},
    }
    if reference is not None and reference.shape == nonzero.shape:
        entry["encoding"], bits = "xor_ref", nonzero ^ reference
    elif numel - nnz > numel / (8 * raw.shape[1]):  # the zeros saved pay for a bit per element
        entry["encoding"], bits = "bitmask", nonzero
    else:
        entry["encoding"], bits = "dense", None
    parts = {}
    if bits is None:
        parts["values"], entry["codecs"]["values"] = _pack(_shuffle(raw))
    else:
        parts["mask"], entry["codecs"]["mask"] = _pack(np.packbits(bits))
        parts["values"], entry["codecs"]["values"] = _pack(_shuffle(raw[nonzero]))
        if negzero.any():  # one sign bit per zero; none for models baked with +0.0
            parts["negzero"], entry["codecs"]["negzero"] = _pack(np.packbits(negzero[~nonzero]))
    return Encoded(entry, parts, nonzero)


def decode_tensor(
    entry: dict[str, Any], parts: dict[str, np.ndarray], reference: np.ndarray | None = None
) -> tuple[torch.Tensor, np.ndarray]:
    """Rebuild a tensor from its manifest entry and parts; also returns its stored nonzero pattern."""
    dtype, stored = _DTYPES[entry["dtype"]], _DTYPES[entry["stored_dtype"]]
    shape = [int(s) for s in entry["shape"]]
    numel, nnz = int(np.prod(shape)), int(entry["nnz"])
    size = torch.empty(0, dtype=stored).element_size()
    codecs = entry["codecs"]
    if entry["encoding"] == "dense":
        raw = _unpack(parts["values"], codecs["values"], numel * size).reshape(size, numel).T
    else:
        bits = np.unpackbits(_unpack(parts["mask"], codecs["mask"], (numel + 7) // 8), count=numel)
        nonzero = bits.astype(bool)
        if entry["encoding"] == "xor_ref":
            if reference is None or reference.shape != nonzero.shape:
                raise ValueError("the weight this mask refers to is missing")
            nonzero ^= reference
        if int(nonzero.sum()) != nnz:
            raise ValueError("mask and values disagree")
        raw = np.zeros((numel, size), np.uint8)
        raw[nonzero] = _unpack(parts["values"], codecs["values"], nnz * size).reshape(size, nnz).T
        if "negzero" in parts:
            zeros = numel - nnz
            negative = np.unpackbits(
                _unpack(parts["negzero"], codecs["negzero"], (zeros + 7) // 8), count=zeros
            )
            raw[np.flatnonzero(~nonzero)[negative.astype(bool)], -1] = 0x80
    raw = np.ascontiguousarray(raw)
    if zlib.crc32(raw.tobytes()) != int(entry["crc32"]):
        raise ValueError("checksum mismatch")
    flat = torch.from_numpy(raw.reshape(-1).copy())
    tensor = (flat.view(stored) if numel else torch.empty(0, dtype=stored)).reshape(shape)
    return tensor.to(dtype), _nonzero(raw, stored.is_floating_point)[0]


def _model_dir(path: Path) -> Path:
    directory = path / "model" if (path / "model" / "config.json").is_file() else path
    if not directory.is_dir():
        raise PrunebertError(f"{path} is not a directory; pass a model directory written by save_pretrained")
    return directory


def _ordered(files: list[Path]) -> list[Path]:
    """Weights first, masks last: a mask is stored relative to the weight it masks."""
    return sorted(files, key=lambda p: (p.name.startswith(MASKS_FILE.split(".")[0]), p.name))


def _find_ref(name: str, refs: dict[str, np.ndarray]) -> np.ndarray | None:
    """The nonzero pattern of `name`'s weight, allowing a missing or extra `bert.`-style prefix."""
    if name in refs:
        return refs[name]
    short = name.split(".", 1)[-1]
    matches = [k for k in refs if k.split(".", 1)[-1] in (name, short) or k == short]
    return refs[matches[0]] if len(matches) == 1 else None


def _copy_others(src: Path, out: Path, skip: set[Path]) -> None:
    """Copy everything of `src` but the `skip` files into `out` unchanged: config, tokenizer, model card,
    custom code, and every subdirectory (sentence-transformers' `1_Pooling/`, `2_Normalize/`, ...)."""
    lock = shutil.ignore_patterns(LOCK_FILE)  # another command's lock, not part of the model
    for item in sorted(src.iterdir()):
        if item in skip or item.name == LOCK_FILE:
            continue
        if item.is_dir():
            shutil.copytree(item, out / item.name, ignore=lock, copy_function=shutil.copyfile)
        else:
            shutil.copyfile(item, out / item.name)


def compress_model(
    src: Path, out: Path, fp16: bool = False, canonical_zeros: bool = False, overwrite: bool = False
) -> dict[str, Any]:
    """Write `src`'s model in the sparse format to `out`; returns the size report."""
    given, src = src, _model_dir(src)
    if any(src.glob("*" + SUFFIX)):
        raise PrunebertError(f"{src} is already compressed; pass a plain model directory (or decompress it)")
    files = _ordered(sorted(src.glob("*.safetensors")))
    if not files:
        raise PrunebertError(f"no *.safetensors in {src}; save the model with save_pretrained first")
    check_output_dir(out, given, overwrite)
    check_output_dir(out, src, overwrite)
    with staged_dir(out) as stage:  # OUT appears whole, or not at all
        _copy_others(src, stage, set(files))
        refs: dict[str, np.ndarray] = {}
        rows: list[dict[str, Any]] = []
        for file in files:
            target = stage / (file.name.removesuffix(".safetensors") + SUFFIX)
            rows += _compress_file(file, target, Options(fp16, canonical_zeros), refs)
        report = _report(src, stage, rows, Options(fp16, canonical_zeros))
    return {**report, "output": str(out)}


@dataclass(frozen=True)
class Options:
    """The lossy choices of `compress_model`."""

    fp16: bool = False
    canonical_zeros: bool = False


def _compress_file(
    file: Path, target: Path, options: Options, refs: dict[str, np.ndarray]
) -> list[dict[str, Any]]:
    is_masks = file.name == MASKS_FILE
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "source_file": file.name,
        "fp16": options.fp16,
        "canonical_zeros": options.canonical_zeros,
    }
    payload: dict[str, torch.Tensor] = {}
    entries, rows = {}, []
    with _open(file) as f:
        manifest["source_metadata"] = f.metadata() or {}
        for i, name in enumerate(f.keys()):
            tensor = f.get_tensor(name)
            ref = _find_ref(name, refs) if is_masks and tensor.dtype == torch.bool else None
            enc = encode_tensor(tensor, options.fp16 and not is_masks, ref, options.canonical_zeros)
            if not is_masks and tensor.dim() == 2:
                refs[name] = enc.nonzero
            enc.entry["parts"] = {}
            for part, data in enc.parts.items():
                enc.entry["parts"][part] = key = f"{i}.{part}"
                payload[key] = torch.from_numpy(data.copy())
            entries[name] = enc.entry
            stored = sum(p.nbytes for p in enc.parts.values())
            negzero = enc.parts["negzero"].nbytes if "negzero" in enc.parts else 0
            rows.append(
                {
                    "name": name,
                    "mask": is_masks,
                    "numel": tensor.numel(),
                    "stored_bytes": stored,
                    "negzero_bytes": negzero,
                }
            )
    manifest["tensors"] = entries
    save_file(payload, str(target), metadata={_MANIFEST_KEY: json.dumps(manifest)})
    return rows


def _open(path: Path) -> Any:
    """`safe_open` whose failure is a one-line PrunebertError."""
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError, ValueError) as exc:
        raise _damaged(path, exc) from None


def _damaged(path: Path, exc: BaseException) -> PrunebertError:
    detail = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
    return PrunebertError(
        f"{path} is damaged or not a prunebert file ({detail}); "
        "re-create it (prunebert compress, or save_pretrained)"
    )


def decompress_model(src: Path, out: Path, overwrite: bool = False) -> dict[str, Any]:
    """Rebuild the plain safetensors model directory that `compress_model` stored in `src`."""
    files = _ordered(sorted(src.glob("*" + SUFFIX))) if src.is_dir() else []
    if not files:
        raise PrunebertError(f"no *{SUFFIX} in {src}; pass a directory written by prunebert compress")
    check_output_dir(out, src, overwrite)
    with staged_dir(out) as stage:  # OUT appears whole, or not at all
        _copy_others(src, stage, set(files))
        refs: dict[str, np.ndarray] = {}
        written = [_decompress_file(file, stage, refs) for file in files]
    return {"input": str(src), "output": str(out), "files": written}


def _decompress_file(file: Path, out: Path, refs: dict[str, np.ndarray]) -> str:
    try:
        with _open(file) as f:
            manifest = json.loads((f.metadata() or {})[_MANIFEST_KEY])
            if manifest.get("format") != FORMAT or int(manifest.get("version", -1)) > VERSION:
                raise ValueError(
                    f"format {manifest.get('format')} v{manifest.get('version')} is not supported"
                )
            is_masks = manifest["source_file"] == MASKS_FILE
            tensors = {}
            for name, entry in manifest["tensors"].items():
                parts = {p: f.get_tensor(key).numpy() for p, key in entry["parts"].items()}
                ref = _find_ref(name, refs) if entry["encoding"] == "xor_ref" else None
                tensors[name], nonzero = decode_tensor(entry, parts, ref)
                if not is_masks and len(entry["shape"]) == 2:
                    refs[name] = nonzero
    except PrunebertError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError, zlib.error, SafetensorError) as exc:
        raise _damaged(file, exc) from None
    target = out / Path(manifest["source_file"]).name
    save_file(tensors, str(target), metadata=manifest.get("source_metadata") or None)
    return target.name


def _report(src: Path, out: Path, rows: list[dict[str, Any]], options: Options) -> dict[str, Any]:
    """Stored bytes against dense fp32 bytes, for the whole model and for the encoder layers only."""

    def ratio(selected: list[dict[str, Any]]) -> dict[str, Any]:
        dense = 4 * sum(r["numel"] for r in selected if not r["mask"])
        stored = sum(r["stored_bytes"] for r in selected)  # masks' stored bytes count, at no dense cost
        return {"dense_fp32_bytes": dense, "stored_bytes": stored, "ratio": stored / max(dense, 1)}

    encoder = [r for r in rows if _ENCODER.search(r["name"])]
    return {
        "input": str(src),
        "output": str(out),
        "fp16": options.fp16,
        "canonical_zeros": options.canonical_zeros,
        "whole_model": ratio(rows),
        "encoder_layers": ratio(encoder),
        "negative_zero_sign_bytes": sum(r["negzero_bytes"] for r in rows),
        "files_bytes": sum(p.stat().st_size for p in out.glob("*" + SUFFIX)),
        "source_safetensors_bytes": sum(p.stat().st_size for p in src.glob("*.safetensors")),
    }


def format_report(report: dict[str, Any]) -> str:
    """A readable summary of `compress_model`'s report."""
    whole, enc = report["whole_model"], report["encoder_layers"]
    lossy = [name for name in ("fp16", "canonical_zeros") if report[name]]
    lines = [
        f"compressed {report['input']} -> {report['output']}"
        + (f"  (lossy: {', '.join(lossy)})" if lossy else "  (lossless)"),
        f"whole model:    {whole['stored_bytes']:>13,} bytes = {whole['ratio']:6.2%} of dense fp32 "
        f"({whole['dense_fp32_bytes']:,})",
        f"encoder layers: {enc['stored_bytes']:>13,} bytes = {enc['ratio']:6.2%} of dense fp32 "
        f"({enc['dense_fp32_bytes']:,})",
        f"files on disk:  {report['files_bytes']:>13,} bytes (source safetensors "
        f"{report['source_safetensors_bytes']:,})",
    ]
    if report["negative_zero_sign_bytes"]:
        lines.append(
            f"note: {report['negative_zero_sign_bytes']:,} of those bytes keep the sign of -0.0 weights "
            "(zeros baked by multiplying with the mask); --canonical-zeros stores them as +0.0"
        )
    return "\n".join(lines)
