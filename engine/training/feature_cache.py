"""Backbone features computed once and kept on disk.

A frozen backbone gives the same features for the same image every epoch,
so feature-mode training computes them once and trains the head on them.
They are stored under `<cache>/features/` keyed by backbone, image size,
resize policy and the dataset's content fingerprint (plus, for augmented
views, the augmentation, the number of views, the seed and the training
images), so a second run on the same data starts training at once.

Augmentation policy: each training image gets `views` augmented copies,
computed once (the original is kept as one more view). Every epoch draws
one of the views per image, so the head still sees a different version of
an image from epoch to epoch, at the cost of computing features `views`
extra times once instead of once per epoch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import settings
from engine.config import AugmentConfig
from engine.data.ingest import Dataset, Item
from engine.data.pipeline import make_tf_dataset
from engine.runs import atomic_write
from engine.training import distribute
from engine.training.features import FeatureExtractor

_VERSION = 1  # bump when the way features are computed changes
Progress = Callable[[int, int], None]  # may offer .cached(total): says the arrays were read, not computed


@dataclass(frozen=True)
class FeatureKey:
    backbone: str
    image_size: int
    resize: str

    @property
    def folder(self) -> Path:
        return settings.cache_dir() / "features" / f"v{_VERSION}-{self.backbone}-{self.image_size}-{self.resize}"


def _load(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array, or None when missing, unreadable or of another shape (then recomputed)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return None
    return arr if arr.shape[: len(shape)] == shape and np.isfinite(arr).all() else None


def _save(path: Path, arr: np.ndarray) -> None:
    try:
        atomic_write(path, lambda tmp: np.save(tmp, arr, allow_pickle=False))
    except OSError:
        pass  # a read-only cache only costs speed


def cached_array(path: Path, shape: tuple[int, ...], compute, progress: Progress | None) -> tuple[np.ndarray, bool]:
    """The array at `path` if it has the leading `shape`, else `compute()` saved there."""
    cached = _load(path, shape)
    # Workers compute together (a collective): all use the cache, or none does.
    if distribute.everyone(cached is not None):
        if progress:
            total = int(np.prod(shape))  # images (times views)
            # Read, not computed: a progress that can say so does (the CLI printed "Computing ...: 300/300").
            getattr(progress, "cached", lambda n: progress(n, n))(total)
        return cached, True
    arr = compute()
    _save(path, arr)
    return arr, False


def compute_batches(
    extractor: Callable[[np.ndarray], np.ndarray],
    dataset: Dataset,
    items: list[Item],
    key: FeatureKey,
    batch_size: int,
    augment: AugmentConfig | None,
    seed: int,
    progress: Progress | None,
    done_before: int,
    total: int,
) -> np.ndarray:
    """`extractor` over `items` in order, in batches: (B, S, S, 3) [0, 255] images -> (B, ...) arrays, stacked."""
    ds = make_tf_dataset(
        dataset,
        items,
        key.image_size,
        resize=key.resize,
        batch_size=batch_size,
        augment=augment,
        seed=seed,
        cache=False,
    )
    chunks, done = [], done_before
    for images, _ in ds:
        chunks.append(extractor(images.numpy()))
        done += len(chunks[-1])
        if progress:
            progress(done, total)
    return np.concatenate(chunks)


def per_file(
    dataset: Dataset, path: Path, compute: Callable[[list[Item]], np.ndarray], progress: Progress | None = None
) -> tuple[np.ndarray, bool]:
    """An array of one row per image, kept at `path` for the data as on disk; rows in `dataset.items` order.

    Rows depend on pixels only (features, hashes), so relabelling or excluding images
    (engine.data.corrections) reuses them: `compute` runs over every file, corrected or not.

    Returns:
        ((N, ...) array, whether it came from the cache).
    """
    every = dataset.items if dataset.raw_items is None else dataset.raw_items
    arr, cached = cached_array(path, (len(every),), lambda: compute(every), progress)
    if every is not dataset.items:
        row = {item.rel: k for k, item in enumerate(every)}
        arr = arr[[row[item.rel] for item in dataset.items]]
    return arr, cached


def clean_features(
    extractor: FeatureExtractor,
    dataset: Dataset,
    key: FeatureKey,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> tuple[np.ndarray, bool]:
    """Features of every item of the dataset, in `dataset.items` order (kept per files: `per_file`).

    Returns:
        ((N, D) float32, whether they came from the cache).
    """
    return per_file(
        dataset,
        key.folder / f"{dataset.files_fingerprint[:32]}.npy",
        lambda every: compute_batches(extractor, dataset, every, key, batch_size, None, 0, progress, 0, len(every)),
        progress,
    )


def augmented_features(
    extractor: FeatureExtractor,
    dataset: Dataset,
    items: list[Item],
    key: FeatureKey,
    augment: AugmentConfig,
    views: int,
    seed: int,
    batch_size: int = 32,
    progress: Progress | None = None,
    prefix: str = "aug-",
) -> tuple[np.ndarray, bool]:
    """`views` augmented copies of each of `items` (the training split).

    Returns:
        ((views, n, D) float32, whether they came from the cache).
    """
    # the files, not their labels: a relabelled image keeps its views (engine.data.corrections)
    tag = json.dumps([dataset.files_fingerprint, [i.sha256 for i in items], augment.__dict__, views, seed])
    path = key.folder / f"{prefix}{hashlib.sha256(tag.encode()).hexdigest()[:32]}.npy"
    n = len(items)

    def compute() -> np.ndarray:
        return np.stack(
            [
                compute_batches(
                    extractor, dataset, items, key, batch_size, augment, seed * 1000 + v, progress, v * n, views * n
                )
                for v in range(views)
            ]
        )

    return cached_array(path, (views, n), compute, progress)


def frozen_maps(extractor: FeatureExtractor, key: FeatureKey, items: list[Item], images: np.ndarray) -> np.ndarray:
    """The backbone's output before pooling for a few images (the training timeline's), kept per image file.

    Args:
        images: (N, S, S, 3) in [0, 255]: `items` resized to `key.image_size` with `key.resize`.

    Returns:
        (N, h, w, D) float32: read from `<features>/maps/<sha256>.npy` when all are there, else one pass of
        `extractor` (its traced function, which computing the features already traced) saved there.
    """
    paths = [key.folder / "maps" / f"{item.sha256}.npy" for item in items]
    kept = [_load(path, ()) for path in paths]
    if all(k is not None for k in kept) and len({k.shape for k in kept}) == 1:
        return np.stack(kept)
    maps = np.asarray(extractor.maps(images), dtype=np.float32)
    for path, one in zip(paths, maps, strict=True):
        _save(path, one)
    return maps
