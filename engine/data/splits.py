"""Stratified train / validation / test splits.

A source's own splits are kept; only the missing ones are carved out of its
training part, per class, with a seeded shuffle, so the same seed gives the
same split on every machine.
"""

from __future__ import annotations

import numpy as np

from engine.config import check_fractions
from engine.data.ingest import Dataset, Item

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
        else:  # pooled by the folder's label: relabelling an image moves no image to another split
            pool.setdefault(item.label if item.given is None else item.given, []).append(item)
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


def split_dataset(
    dataset: Dataset, seed: int = 0, val_frac: float = 0.15, test_frac: float = 0.15
) -> dict[str, list[Item]]:
    """`split_items` of the data as on disk, less the images a correction excluded.

    So a correction moves no other image to another split: a run on corrected data is
    tested on the same images as the run before it (less the excluded ones).
    """
    if dataset.raw_items is None:
        return split_items(dataset.items, seed, val_frac, test_frac)
    current = {i.rel: i for i in dataset.items}  # with their corrected labels
    raw = split_items(dataset.raw_items, seed, val_frac, test_frac)
    return {s: [current[i.rel] for i in items if i.rel in current] for s, items in raw.items()}
