"""Sparse storage: bit-identical round trips, the 12% size goal, fp16 tolerance, damage detection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from prunebert import Pruner, PruningConfig
from prunebert.cli import main
from prunebert.deploy.storage import SUFFIX, compress_model, decode_tensor, decompress_model, encode_tensor
from prunebert.errors import PrunebertError
from prunebert.masks import MASKS_FILE, topk_mask
from prunebert.model_card import CARD_FILE
from prunebert.models import load_model, save_pruned
from prunebert.sentence_modules import write_sentence_modules
from prunebert.transforms.custom_code import MODELING_FILE
from prunebert.transforms.slim import slim_model
from test_slim import _structured
from tiny import PADDED_MASK, padded_ids, tiny_classifier


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's raw bytes, so -0.0 != 0.0 and NaN == NaN."""
    return t.contiguous().reshape(-1).view(torch.uint8)


def _round_trip(t: torch.Tensor, **kwargs: object) -> torch.Tensor:
    enc = encode_tensor(t, **kwargs)  # type: ignore[arg-type]
    out, _ = decode_tensor(enc.entry, enc.parts, kwargs.get("reference"))  # type: ignore[arg-type]
    return out


def _special(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    t = torch.randn(37, 19, generator=g)
    t[t.abs() < 1.0] = 0.0  # ~68% zeros: stored as a bitmask
    t[0, :5] = torch.tensor([-0.0, float("nan"), float("inf"), -float("inf"), 1e-30])
    t[1, 3] = -0.0
    return t.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_float_round_trip_is_bit_identical(dtype: torch.dtype) -> None:
    t = _special(dtype)
    assert encode_tensor(t).entry["encoding"] == "bitmask"
    out = _round_trip(t)
    assert out.dtype == dtype and out.shape == t.shape
    assert torch.equal(_bits(out), _bits(t))  # keeps -0.0, NaN payloads, subnormals


@pytest.mark.parametrize(
    "tensor",
    [
        torch.arange(-50, 50, dtype=torch.int64).reshape(10, 10)
        * (torch.arange(100).reshape(10, 10) % 3 == 0),
        torch.rand(64, 3, generator=torch.Generator().manual_seed(1)) > 0.8,
        torch.randint(0, 255, (7, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)),
        torch.randn(1000),  # dense: no zeros, stored without a mask
        torch.zeros(0, 4),
        torch.tensor(3.5),
        torch.zeros(5, 5),
    ],
    ids=["int64", "bool", "uint8", "dense", "empty", "scalar", "all-zero"],
)
def test_other_tensors_round_trip(tensor: torch.Tensor) -> None:
    out = _round_trip(tensor)
    assert out.dtype == tensor.dtype and out.shape == tensor.shape
    assert torch.equal(_bits(out), _bits(tensor))


def test_mask_against_its_weight_is_almost_free() -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 256, generator=g)
    mask = topk_mask(weight.abs(), 0.9)
    weight = weight.masked_fill(~mask, 0.0)
    reference = encode_tensor(weight).nonzero
    alone = encode_tensor(mask)
    paired = encode_tensor(mask, reference=reference)
    assert paired.entry["encoding"] == "xor_ref"
    assert sum(p.nbytes for p in paired.parts.values()) < 0.05 * sum(p.nbytes for p in alone.parts.values())
    assert torch.equal(_round_trip(mask, reference=reference), mask)


def _encoder_tensor_set(path: Path, negative_zeros: bool) -> None:
    """Two BERT-base-shaped (but 256-wide) encoder layers, 90% sparse weights, dense biases/LayerNorms."""
    g = torch.Generator().manual_seed(0)
    tensors = {}
    shapes = {"attention.self.query": (256, 256), "attention.self.key": (256, 256)}
    shapes |= {"attention.self.value": (256, 256), "attention.output.dense": (256, 256)}
    shapes |= {"intermediate.dense": (1024, 256), "output.dense": (256, 1024)}
    for layer in range(2):
        for name, shape in shapes.items():
            key = f"bert.encoder.layer.{layer}.{name}"
            weight = torch.randn(shape, generator=g) * 0.02
            mask = topk_mask(weight.abs(), 0.9)
            # Pruner.enforce multiplies by the mask, which leaves -0.0 where a weight was negative
            tensors[f"{key}.weight"] = weight * mask if negative_zeros else weight.masked_fill(~mask, 0.0)
            tensors[f"{key}.bias"] = torch.randn(shape[0], generator=g) * 0.02
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            tensors[f"bert.encoder.layer.{layer}.{norm}.weight"] = torch.ones(256)
            tensors[f"bert.encoder.layer.{layer}.{norm}.bias"] = torch.zeros(256)
    path.mkdir()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_size_goal_on_a_90_percent_sparse_encoder(tmp_path: Path) -> None:
    _encoder_tensor_set(tmp_path / "src", negative_zeros=False)
    report = compress_model(tmp_path / "src", tmp_path / "c")
    assert report["encoder_layers"]["dense_fp32_bytes"] == report["whole_model"]["dense_fp32_bytes"]
    assert report["encoder_layers"]["ratio"] <= 0.12, report
    assert report["files_bytes"] <= 0.12 * report["encoder_layers"]["dense_fp32_bytes"] + 20_000  # + header
    decompress_model(tmp_path / "c", tmp_path / "d")
    a, b = (
        load_file(str(tmp_path / "src/model.safetensors")),
        load_file(str(tmp_path / "d/model.safetensors")),
    )
    assert a.keys() == b.keys() and all(torch.equal(_bits(a[k]), _bits(b[k])) for k in a)


def test_negative_zeros_cost_bits_unless_canonicalised(tmp_path: Path) -> None:
    _encoder_tensor_set(tmp_path / "src", negative_zeros=True)
    exact = compress_model(tmp_path / "src", tmp_path / "exact")
    canonical = compress_model(tmp_path / "src", tmp_path / "canon", canonical_zeros=True)
    assert exact["negative_zero_sign_bytes"] > 0 and canonical["negative_zero_sign_bytes"] == 0
    assert canonical["encoder_layers"]["ratio"] <= 0.12 < exact["encoder_layers"]["ratio"]
    decompress_model(tmp_path / "exact", tmp_path / "d1")
    decompress_model(tmp_path / "canon", tmp_path / "d2")
    src = load_file(str(tmp_path / "src/model.safetensors"))
    d1, d2 = (
        load_file(str(tmp_path / "d1/model.safetensors")),
        load_file(str(tmp_path / "d2/model.safetensors")),
    )
    assert all(torch.equal(_bits(src[k]), _bits(d1[k])) for k in src)  # lossless keeps the signs
    assert all(torch.equal(src[k], d2[k]) for k in src)  # canonical: equal values
    assert any(not torch.equal(_bits(src[k]), _bits(d2[k])) for k in src)  # ... but not equal bits


@pytest.fixture
def pruned_dir(tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase) -> Path:
    """A tiny classifier pruned to 90% by the Pruner, saved with masks and tokenizer."""
    model = tiny_classifier()
    pruner = Pruner(model, PruningConfig(method="magnitude", sparsity=0.9, schedule="oneshot"))
    pruner.start(1)
    pruner.update(1)
    save_pruned(model, tiny_tokenizer, pruner, tmp_path / "pruned")
    return tmp_path / "pruned"


def test_directory_round_trip_loads_in_transformers_with_identical_outputs(
    pruned_dir: Path, tmp_path: Path
) -> None:
    report = compress_model(pruned_dir, tmp_path / "c")
    assert report["whole_model"]["stored_bytes"] < report["whole_model"]["dense_fp32_bytes"]
    assert sorted(p.name for p in (tmp_path / "c").glob("*" + SUFFIX)) == [
        "model" + SUFFIX,
        MASKS_FILE.removesuffix(".safetensors") + SUFFIX,
    ]
    decompress_model(tmp_path / "c", tmp_path / "d")
    for name in ("model.safetensors", MASKS_FILE):
        a, b = load_file(str(pruned_dir / name)), load_file(str(tmp_path / "d" / name))
        assert a.keys() == b.keys() and all(torch.equal(_bits(a[k]), _bits(b[k])) for k in a)
    for other in ("config.json", "tokenizer.json"):
        assert (pruned_dir / other).read_bytes() == (tmp_path / "d" / other).read_bytes()
    ids = torch.randint(5, 29, (2, 9), generator=torch.Generator().manual_seed(0))
    before = AutoModelForSequenceClassification.from_pretrained(pruned_dir).eval()
    after = AutoModelForSequenceClassification.from_pretrained(tmp_path / "d").eval()
    with torch.no_grad():
        assert torch.equal(before(input_ids=ids).logits, after(input_ids=ids).logits)
    assert load_model(str(tmp_path / "d"), "classification").new_head is False


def test_fp16_is_within_fp16_tolerance_and_smaller(pruned_dir: Path, tmp_path: Path) -> None:
    lossless = compress_model(pruned_dir, tmp_path / "c32")
    half = compress_model(pruned_dir, tmp_path / "c16", fp16=True)
    assert half["whole_model"]["stored_bytes"] < 0.7 * lossless["whole_model"]["stored_bytes"]
    decompress_model(tmp_path / "c16", tmp_path / "d")
    a, b = load_file(str(pruned_dir / "model.safetensors")), load_file(str(tmp_path / "d/model.safetensors"))
    for key in a:
        assert b[key].dtype == a[key].dtype
        assert torch.allclose(a[key], b[key], rtol=2**-10, atol=1e-7), key
        assert torch.equal(a[key] == 0, b[key] == 0), key  # the sparsity pattern survives
    masks = load_file(str(tmp_path / "d" / MASKS_FILE))
    assert all(torch.equal(m, load_file(str(pruned_dir / MASKS_FILE))[k]) for k, m in masks.items())


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) * 2 // 3]))
    elif how == "flip":
        data[-50] ^= 0xFF  # inside the last payload
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(b"not a safetensors file")


@pytest.mark.parametrize("how", ["truncate", "flip", "garbage"])
def test_damaged_input_is_a_one_line_error(pruned_dir: Path, tmp_path: Path, how: str) -> None:
    compress_model(pruned_dir, tmp_path / "c")
    _damage(tmp_path / "c" / ("model" + SUFFIX), how)
    with pytest.raises(PrunebertError, match="damaged") as info:
        decompress_model(tmp_path / "c", tmp_path / "d")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "d" / "model.safetensors").exists()
    assert main(["decompress", str(tmp_path / "c"), str(tmp_path / "d2")]) == 2


def test_cli_round_trip_and_refusals(
    pruned_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compress", str(pruned_dir), str(tmp_path / "c"), "--fp16"]) == 0
    out = capsys.readouterr().out
    assert "whole model" in out and "encoder layers" in out and "lossy: fp16" in out
    assert main(["compress", str(pruned_dir), str(tmp_path / "c")]) == 2  # OUT not empty
    assert "--overwrite" in capsys.readouterr().err
    assert main(["decompress", str(tmp_path / "c"), str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "model.safetensors").is_file()
    assert main(["decompress", str(pruned_dir), str(tmp_path / "x")]) == 2  # not a compressed dir
    assert main(["compress", str(tmp_path / "c"), str(tmp_path / "y")]) == 2  # already compressed
    assert "already compressed" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "c"), "--variants", "torch"]) == 2  # must be decompressed first
    assert "prunebert decompress" in capsys.readouterr().err


def _tree(directory: Path) -> dict[str, bytes | None]:
    """Every path under `directory`, a file with its bytes, a folder with None."""
    return {
        str(p.relative_to(directory)): p.read_bytes() if p.is_file() else None
        for p in sorted(directory.rglob("*"))
    }


@torch.no_grad()
def _logits(path: Path) -> torch.Tensor:
    model = load_model(str(path), "classification").model.eval()
    return model(input_ids=padded_ids(), attention_mask=PADDED_MASK).logits


def test_cli_round_trip_keeps_every_other_file_and_folder(
    tmp_path: Path, tiny_tokenizer: PreTrainedTokenizerBase, capsys: pytest.CaptureFixture[str]
) -> None:
    """A slimmed sentence-transformers model with custom code, card and extra folders: compress ->
    decompress gives the same tree, the same bytes but for the weights, which hold equal tensors."""
    model = tiny_classifier(seed=1).eval()
    _structured(model).bake()
    src = tmp_path / "src"
    save_pruned(slim_model(model), tiny_tokenizer, None, src)  # ships modeling_prunebert.py
    write_sentence_modules(src, model.config.hidden_size, max_seq_length=64)  # 1_Pooling/, 2_Normalize/
    (src / CARD_FILE).write_text("---\ntags: [prunebert]\n---\n# a card\n")
    (src / "prunebert_qat.json").write_text('{"note": "kept as it is"}\n')
    (src / "2_Dense").mkdir()  # a subfolder's weights are copied, not compressed
    save_file({"linear.weight": torch.randn(4, 32)}, str(src / "2_Dense" / "model.safetensors"))
    (src / "extra" / "deeper").mkdir(parents=True)
    (src / "extra" / "deeper" / "notes.txt").write_text("nested\n")
    assert main(["compress", str(src), str(tmp_path / "c")]) == 0
    assert main(["decompress", str(tmp_path / "c"), str(tmp_path / "d")]) == 0
    capsys.readouterr()

    compressed, before, after = _tree(tmp_path / "c"), _tree(src), _tree(tmp_path / "d")
    for name in ("1_Pooling/config.json", "2_Normalize", "modules.json", CARD_FILE, MODELING_FILE):
        assert name in compressed and name in after, name
    assert after.keys() == before.keys()
    weights = {"model.safetensors"}
    assert all(after[name] == data for name, data in before.items() if name not in weights)
    a, b = load_file(str(src / "model.safetensors")), load_file(str(tmp_path / "d" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(_bits(a[k]), _bits(b[k])) for k in a)
    assert torch.equal(_logits(src), _logits(tmp_path / "d"))
