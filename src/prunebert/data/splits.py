"""Seeded, reproducible splits of row indices (``random.Random(seed)``, stable across Python versions)."""

from __future__ import annotations

import random
from collections.abc import Sequence

__all__ = ["carve", "group_split", "split_three", "subsample"]


def _shuffled(n: int, seed: int) -> list[int]:
    """A seeded permutation of ``range(n)``."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def _share(n: int, fraction: float) -> int:
    """``round(n * fraction)``, but at least 1 when ``n`` > 1 so no split ends up empty."""
    return max(1, round(n * fraction)) if n > 1 else 0


def carve(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into (kept, carved) with ``fraction`` of rows carved off; both sorted."""
    order = _shuffled(n, seed)
    k = _share(n, fraction)
    return sorted(order[k:]), sorted(order[:k])


def split_three(n: int, seed: int, dev: float = 0.1, test: float = 0.1) -> tuple[list[int], ...]:
    """Split ``range(n)`` into sorted (train, dev, test) index lists, by default 80/10/10."""
    order = _shuffled(n, seed)
    n_test = _share(n, test)
    n_dev = _share(n - n_test, dev / (1 - test)) if n - n_test > 1 else 0
    test_idx, dev_idx = order[:n_test], order[n_test : n_test + n_dev]
    return sorted(order[n_test + n_dev :]), sorted(dev_idx), sorted(test_idx)


def group_split(
    groups: Sequence[str], seed: int, dev: float = 0.1, test: float = 0.1
) -> tuple[list[int], ...]:
    """Split rows by group so no group spans two splits: sorted (train, dev, test) index lists.

    Unique group names are sorted, shuffled with ``random.Random(seed)``, then whole groups go to test
    until it holds >= ``test`` of the rows, then to dev until it holds >= ``dev``; the rest is train.
    """
    rows: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        rows.setdefault(g, []).append(i)
    names = sorted(rows)
    random.Random(seed).shuffle(names)
    splits: tuple[list[int], list[int], list[int]] = ([], [], [])
    target = 2  # fill test first, then dev, then train
    for name in names:
        if target == 2 and len(splits[2]) >= test * len(groups):
            target = 1
        if target == 1 and len(splits[1]) >= dev * len(groups):
            target = 0
        splits[target].extend(rows[name])
    return tuple(sorted(s) for s in splits)


def subsample(n: int, k: int | None, seed: int) -> list[int]:
    """A seeded, sorted sample of ``k`` indices of ``range(n)``; all of them when ``k`` is None or >= n."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(random.Random(seed).sample(range(n), k))
