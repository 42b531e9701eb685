"""tf.data pipelines over an ingested dataset, and augmentation as Keras layers.

Images are decoded with engine.imaging (the same decoder as ingest,
prediction and CAM overlays, so EXIF orientation and colour modes agree
everywhere), resized by a policy, cached after decoding, batched and
prefetched. Augmentation runs on batches, after the cache, so every epoch
sees new random views. Batches are float32 in [0, 255]; each backbone's own
preprocessing belongs to the model.
"""

from __future__ import annotations

import numpy as np

from engine import imaging
from engine.config import AugmentConfig
from engine.data.ingest import Dataset, Item


def augmenter(config: AugmentConfig, seed: int | None = None):
    """A keras.Sequential of random layers for `config`, or None when it is all off.

    Input and output: float32 (B, H, W, 3) in [0, 255]; active only with training=True.
    """
    if not config.enabled:
        return None
    import keras

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
    cache: bool | str = True,
):
    """A tf.data.Dataset of (images float32 (B, S, S, 3) in [0, 255], labels int32 (B,)).

    Args:
        items: the split to serve (from splits.split_items).
        cache: True keeps decoded images in memory, a path caches them on disk.
        augment: applied to training batches after the cache (new views each epoch).
    """
    import tensorflow as tf

    if not items:
        raise ValueError("this split has no images; lower the validation/test fraction or add images")
    paths = [str(dataset.path(i)) for i in items]
    labels = np.array([i.label for i in items], dtype=np.int32)

    def decode(path: tf.Tensor) -> tf.Tensor:
        img = tf.numpy_function(lambda p: load_resized(p.decode(), image_size, resize), [path], tf.uint8)
        img.set_shape((image_size, image_size, 3))
        return img

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(lambda p, y: (decode(p), y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache(cache if isinstance(cache, str) else "")
    if shuffle:
        ds = ds.shuffle(len(items), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    aug = augmenter(augment, seed) if augment else None
    if aug is not None:
        ds = ds.map(lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)
