"""Golden tests: hand-written weights, exact expected masks."""

from pathlib import Path

import pytest
import torch

from prunebert.errors import PrunebertError
from prunebert.masks import (
    PackedMasks,
    global_masks,
    layerwise_masks,
    load_masks,
    pack_bits,
    save_masks,
    sparsity_of,
    topk_mask,
    unpack_bits,
)
from prunebert.methods.magnitude import magnitude_scores
from prunebert.methods.random_baseline import random_scores

W = torch.tensor([[0.1, -0.5, 0.3], [0.05, 0.9, -0.2]])


def test_magnitude_layerwise_golden() -> None:
    mask = topk_mask(magnitude_scores(W), 0.5)
    assert mask.tolist() == [[False, True, True], [False, True, False]]


def test_topk_extremes_and_rounding() -> None:
    assert topk_mask(W.abs(), 0.0).all()
    assert topk_mask(torch.arange(10.0), 0.25).sum() == 8  # round(2.5) == 2 pruned (banker's rounding)
    assert not topk_mask(W.abs(), 1.0).any()


def test_global_vs_layerwise_golden() -> None:
    scores = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([0.5, 5.0])}
    g = global_masks(scores, 0.5)
    assert g["a"].tolist() == [False, False, True, True]
    assert g["b"].tolist() == [False, True]
    layer = layerwise_masks(scores, 0.5)
    assert layer["a"].tolist() == [False, False, True, True]
    assert layer["b"].tolist() == [False, True]
    g2 = global_masks({"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([5.0, 6.0])}, 0.5)
    assert g2["a"].tolist() == [False, False, False, True]  # global takes more from the weaker tensor
    assert g2["b"].tolist() == [True, True]


def test_random_scores_are_seeded_per_name() -> None:
    a = random_scores(torch.Size([4, 4]), seed=1, name="x")
    assert torch.equal(a, random_scores(torch.Size([4, 4]), seed=1, name="x"))
    assert not torch.equal(a, random_scores(torch.Size([4, 4]), seed=1, name="y"))
    assert not torch.equal(a, random_scores(torch.Size([4, 4]), seed=2, name="x"))


def test_sparsity_of() -> None:
    assert sparsity_of(torch.tensor([0.0, 1.0, 0.0, 2.0])) == 0.5
    assert sparsity_of(torch.tensor([True, False, False, False])) == 0.75


def test_mask_file_round_trip_and_damage(tmp_path: Path) -> None:
    masks = {"m.weight": topk_mask(W.abs(), 0.5)}
    save_masks(masks, tmp_path / "m.safetensors", {"sparsity": 0.5})
    loaded, meta = load_masks(tmp_path / "m.safetensors")
    assert torch.equal(loaded["m.weight"], masks["m.weight"]) and meta == {"sparsity": 0.5}
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "bad.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PrunebertError, match="damaged"):
        load_masks(tmp_path / "bad.safetensors")


def test_written_files_are_readable_by_others(tmp_path: Path) -> None:
    save_masks({"m.weight": topk_mask(W.abs(), 0.5)}, tmp_path / "m.safetensors", {})
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o044 == 0o044


def test_pack_bits_golden() -> None:
    mask = torch.tensor([True, False, False, False, False, False, False, True, True, True])
    # byte 0: bits 0 and 7 -> 1 + 128; byte 1: bits 0 and 1 of the zero-padded tail -> 3
    assert pack_bits(mask).tolist() == [129, 3]
    assert torch.equal(unpack_bits(pack_bits(mask), mask.shape), mask)


def test_accelerator_path_packs_like_the_cpu_path() -> None:
    from prunebert.masks import _pack_bits_torch, _unpack_bits_torch

    mask = torch.rand(3, 37, generator=torch.Generator().manual_seed(1)) > 0.5
    assert torch.equal(_pack_bits_torch(mask), pack_bits(mask))
    assert torch.equal(_unpack_bits_torch(pack_bits(mask), mask.shape), mask)


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5), (4, 16), (2, 3, 7)])
def test_packed_masks_round_trip_any_shape(shape: tuple[int, ...]) -> None:
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    masks = PackedMasks({"w": mask})
    assert torch.equal(masks["w"], mask) and masks["w"].dtype == torch.bool
    assert masks.shape("w") == mask.shape


def test_packed_masks_cost_one_bit_per_weight_and_reads_are_copies() -> None:
    masks = PackedMasks({"a": torch.ones(384, 1536, dtype=torch.bool), "b": torch.ones(10, dtype=torch.bool)})
    assert masks.nbytes() == 384 * 1536 // 8 + 2
    masks["a"].zero_()  # an in-place op on a read changes only that copy ...
    assert bool(masks["a"].all())
    masks["a"] = torch.zeros(384, 1536, dtype=torch.bool)  # ... assignment changes the mask
    assert not bool(masks["a"].any()) and set(masks) == {"a", "b"} and len(masks) == 2
