"""Stratified train / validation / test splits.

A source's own splits are kept; only the missing ones are carved out of its
training part, per class, with a seeded shuffle, so the same seed gives the
same split on every machine.
"""

from __future__ import annotations

import numpy as np

from engine.config import check_fractions
from engine.data.ingest import Item

SPLITS = ("train", "validation", "test")


def split_items(
    items: list[Item], seed: int = 0, val_frac: float = 0.15, test_frac: float = 0.15
) -> dict[str, list[Item]]:
    """Assign every item to exactly one split.

    Every class keeps at least one training image; a class with 2+ images gets
    one validation image and one with 3+ a test image, when those are carved.
    """
    check_fractions(val_frac, test_frac)
    out: dict[str, list[Item]] = {s: [] for s in SPLITS}
    own = {i.split for i in items if i.split}
    carve_val = "validation" not in own
    carve_test = "test" not in own
    pool: dict[int, list[Item]] = {}
    for item in items:
        if item.split in ("validation", "test"):
            out[item.split].append(item)
        else:
            pool.setdefault(item.label, []).append(item)
    for label in sorted(pool):
        group = sorted(pool[label], key=lambda i: i.rel)
        order = np.random.default_rng([seed, label]).permutation(len(group))
        group = [group[k] for k in order]
        n = len(group)
        n_val = max(1 if n >= 2 else 0, round(n * val_frac)) if carve_val and val_frac > 0 else 0
        n_test = max(1 if n >= 3 else 0, round(n * test_frac)) if carve_test and test_frac > 0 else 0
        while n_val + n_test >= n and (n_val or n_test):
            if n_test:
                n_test -= 1
            else:
                n_val -= 1
        out["validation"].extend(group[:n_val])
        out["test"].extend(group[n_val : n_val + n_test])
        out["train"].extend(group[n_val + n_test :])
    return out
