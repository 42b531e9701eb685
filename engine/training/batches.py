"""Shuffled, seeded batches served by index: cached features, cached boundary tensors or images."""

from __future__ import annotations

import math

import numpy as np

from engine.data.ingest import Item


def labels_of(items: list[Item]) -> np.ndarray:
    """(n,) int32 class indices of `items`."""
    return np.array([i.label for i in items], dtype=np.int32)


def index_batches(n: int, views: int, labels: np.ndarray, batch_size: int, seed: int, fetch):
    """Shuffled batches of `n` examples; each epoch a new seeded order and one of `views` views per example.

    `fetch(view_indices, example_indices)` returns the batch's inputs. The order depends only on
    (n, views, seed), so cached features, cached boundary tensors and image batches of one split
    are served in the same order.
    """
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.on_epoch_end()

        def __len__(self) -> int:
            return math.ceil(n / batch_size)

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(n)
            self.view = self.rng.integers(0, views, n)

        def __getitem__(self, k: int):
            idx = self.order[k * batch_size : (k + 1) * batch_size]
            return fetch(self.view[idx], idx), labels[idx]

    return Batches()
