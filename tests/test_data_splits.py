"""Stratified, seeded splits; a source's own splits are kept."""

from collections import Counter

import pytest

from engine.data.ingest import Item
from engine.data.splits import split_items
from engine.errors import ConfigError


def _items(per_class: dict[int, int], split: str | None = None) -> list[Item]:
    return [
        Item(f"c{label}/{i}.png", label, split, f"{label}-{i}", 8, 8)
        for label, n in per_class.items()
        for i in range(n)
    ]


def test_stratified_and_complete():
    items = _items({0: 40, 1: 20, 2: 10})
    out = split_items(items, seed=0, val_frac=0.2, test_frac=0.1)
    assert sorted(i.rel for s in out.values() for i in s) == sorted(i.rel for i in items)
    val = Counter(i.label for i in out["validation"])
    test = Counter(i.label for i in out["test"])
    assert val == {0: 8, 1: 4, 2: 2} and test == {0: 4, 1: 2, 2: 1}


def test_seeded():
    items = _items({0: 30, 1: 30})
    a = split_items(items, seed=1)
    assert a == split_items(list(reversed(items)), seed=1)  # input order does not matter
    assert a != split_items(items, seed=2)


def test_small_classes_keep_a_training_image():
    out = split_items(_items({0: 2, 1: 3, 2: 1}), seed=0)
    train = Counter(i.label for i in out["train"])
    assert train == {0: 1, 1: 1, 2: 1}
    assert Counter(i.label for i in out["validation"]) == {0: 1, 1: 1}
    assert Counter(i.label for i in out["test"]) == {1: 1}


def test_own_splits_are_kept_and_only_missing_ones_carved():
    items = _items({0: 20, 1: 20}, "train") + [Item("test/x.png", 0, "test", "t", 8, 8)]
    out = split_items(items, seed=0, val_frac=0.25, test_frac=0.25)
    assert [i.rel for i in out["test"]] == ["test/x.png"]  # not carved: the source has a test split
    assert len(out["validation"]) == 10 and len(out["train"]) == 30


def test_bad_fractions():
    with pytest.raises(ConfigError, match="sum below 1"):
        split_items(_items({0: 4}), val_frac=0.6, test_frac=0.5)
