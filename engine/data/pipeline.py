"""tf.data pipelines over an ingested dataset, and augmentation as Keras layers.

Images are decoded with engine.imaging (the same decoder as ingest,
prediction and CAM overlays, so EXIF orientation and colour modes agree
everywhere), resized by a policy, kept in memory after the first decode,
batched and prefetched. Augmentation runs on batches, after the cache, so
every epoch sees new random views. Batches are float32 in [0, 255]; each
backbone's own preprocessing belongs to the model.

Shuffling happens on the file list, before decoding: the shuffle buffer holds
indices, not decoded images, so an epoch starts at once instead of first
filling a buffer with every decoded image of the split (tf.data's "Filling up
shuffle buffer"), and every epoch still gets a full, fresh, seeded order.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from engine import imaging
from engine.config import AugmentConfig
from engine.data.ingest import Dataset, Item
from engine.errors import DatasetError


def augmenter(config: AugmentConfig, seed: int | None = None):
    """A keras.Sequential of random layers for `config`, or None when it is all off.

    Input and output: float32 (B, H, W, 3) in [0, 255]; active only with training=True.
    """
    if not config.enabled:
        return None
    import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays

    layers = []
    if config.flip != "none":
        layers.append(keras.layers.RandomFlip(config.flip, seed=seed))
    if config.rotation:
        layers.append(keras.layers.RandomRotation(config.rotation, fill_mode="reflect", seed=seed))
    if config.zoom:
        layers.append(keras.layers.RandomZoom(config.zoom, fill_mode="reflect", seed=seed))
    if config.translation:
        layers.append(keras.layers.RandomTranslation(config.translation, config.translation, "reflect", seed=seed))
    if config.contrast:
        layers.append(keras.layers.RandomContrast(config.contrast, value_range=(0, 255), seed=seed))
    if config.brightness:
        layers.append(keras.layers.RandomBrightness(config.brightness, value_range=(0, 255), seed=seed))
    return keras.Sequential(layers, name="augmentation")


def preview(rgb: np.ndarray, config: AugmentConfig, n: int = 8, size: int = 160, seed: int = 0) -> list[np.ndarray]:
    """`n` random augmented views of one image.

    Args:
        rgb: (H, W, 3) uint8.

    Returns:
        n arrays (size, size, 3) uint8; all equal to the resized input when augmentation is off.
    """
    base = imaging.resize(rgb, size).astype("float32")
    aug = augmenter(config, seed)
    if aug is None:
        return [base.astype(np.uint8)] * n
    batch = np.repeat(base[None], n, axis=0)
    out = np.asarray(aug(batch, training=True))
    return [np.clip(np.rint(x), 0, 255).astype(np.uint8) for x in out]


def load_resized(path: str, size: int, policy: str = "stretch") -> np.ndarray:
    """Decode and resize one file: (size, size, 3) uint8."""
    return imaging.resize(imaging.load_rgb(path), size, policy)


def decoded_batches(paths: list[str], size: int, policy: str = "stretch", batch: int = 32) -> Iterator[np.ndarray]:
    """The files decoded and resized, `batch` at a time: (n, size, size, 3) float32 in [0, 255].

    The next batch is decoded in a worker thread while the caller works on this one (Pillow
    releases the GIL), so a pass of a compiled model over thousands of files costs little more
    than the model itself. The first batch, which nothing can hide, is decoded on every core.
    """

    def decode(chunk: list[str]) -> np.ndarray:
        return np.stack([load_resized(p, size, policy) for p in chunk]).astype(np.float32)

    chunks = [paths[k : k + batch] for k in range(0, len(paths), batch)]
    if not chunks:
        return
    cores = max(1, min(os.cpu_count() or 1, len(chunks[0])))
    step = -(-len(chunks[0]) // cores)  # the first batch split evenly over the cores
    with ThreadPoolExecutor(max_workers=cores, thread_name_prefix="convscope-decode") as pool:
        images = np.concatenate(
            list(pool.map(decode, [chunks[0][k : k + step] for k in range(0, len(chunks[0]), step)]))
        )
        for k in range(1, len(chunks) + 1):
            pending = pool.submit(decode, chunks[k]) if k < len(chunks) else None  # one batch ahead, one thread
            yield images
            if pending is not None:
                images = pending.result()


class DecodedImages:
    """Decoded, resized images of a list of files, each decoded once and then kept in memory.

    tf.data's own `cache()` only replays a stream in the order it was first
    read, so a shuffle after it must refill a buffer of decoded images every
    epoch; this memo is read by index, in any order.
    """

    def __init__(self, paths: list[str], size: int, policy: str = "stretch", keep: bool = True) -> None:
        self.paths, self.size, self.policy, self.keep = paths, size, policy, keep
        self._images: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.paths)

    def __call__(self, index) -> np.ndarray:
        """(size, size, 3) uint8 of file `index`."""
        k = int(index)
        img = self._images.get(k)
        if img is None:
            img = load_resized(self.paths[k], self.size, self.policy)
            if self.keep:
                with self._lock:
                    self._images[k] = img
        return img

    def batch(self, indices: np.ndarray) -> np.ndarray:
        """(len(indices), size, size, 3) uint8: one Python call per batch, not per image."""
        return np.stack([self(k) for k in indices])


def make_tf_dataset(
    dataset: Dataset,
    items: list[Item],
    image_size: int,
    *,
    resize: str = "stretch",
    batch_size: int = 32,
    shuffle: bool = False,
    seed: int = 0,
    augment: AugmentConfig | None = None,
    cache: bool = True,
):
    """A tf.data.Dataset of (images float32 (B, S, S, 3) in [0, 255], labels int32 (B,)).

    Args:
        items: the split to serve (from splits.split_items).
        shuffle: a new seeded order every epoch, drawn over file indices before decoding.
        cache: keep decoded images in memory (each file is decoded once); False decodes
            on every pass (one pass only, e.g. computing features once).
        augment: applied to training batches after the cache (new views each epoch).
    """
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

    if not items:
        raise DatasetError("this split has no images; lower the validation/test fraction or add images")
    images = DecodedImages([str(dataset.path(i)) for i in items], image_size, resize, keep=bool(cache))
    labels = tf.constant(np.array([i.label for i in items], dtype=np.int32))

    def decode(indices: tf.Tensor) -> tf.Tensor:
        batch = tf.numpy_function(images.batch, [indices], tf.uint8)
        batch.set_shape((None, image_size, image_size, 3))
        return tf.cast(batch, tf.float32)

    ds = tf.data.Dataset.range(len(items))
    if shuffle:  # a buffer of len(items) integers: negligible, and a full reshuffle every epoch
        ds = ds.shuffle(len(items), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda k: (decode(k), tf.gather(labels, k)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    aug = augmenter(augment, seed) if augment else None
    if aug is not None:
        # One batch at a time: the random layers draw from one seeded state, so batches augmented in
        # parallel took their draws in whatever order threads ran, and the same seed gave other views
        # (and other cached augmented features) on every run. Decoding above stays parallel.
        ds = ds.map(lambda x, y: (aug(x, training=True), y))
    return ds.prefetch(tf.data.AUTOTUNE)
