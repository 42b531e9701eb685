"""Backbone features: images in, one vector per image out.

A FeatureExtractor is read-only after construction, so one instance can be
shared by every session (the dashboard caches it); training builds its own
models and never touches it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np

from engine import backbones
from engine.training import distribute


class FeatureExtractor:
    """A frozen backbone followed by global average pooling."""

    def __init__(
        self, backbone: str = backbones.DEFAULT_BACKBONE, image_size: int | None = None, model=None, strategy=None
    ) -> None:
        """`model`: an already built feature extractor of this backbone (else it is loaded).

        `strategy`: a tf.distribute strategy whose scope built `model`; with several replicas each
        batch is split over them (and over every worker: then all must call with the same batches).
        """
        self.spec = backbones.get_spec(backbone)
        self.model = model if model is not None else backbones.load(backbone, include_top=False, image_size=image_size)
        self.input_size = int(self.model.input_shape[1])
        self._lock = threading.Lock()  # see ImageNetClassifier: shared models are called one at a time
        self._forward = None
        if strategy is not None and strategy.num_replicas_in_sync > 1:
            self._forward = distribute.spread(self._call, strategy)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 or float in [0, 255] -> (N, D) float32 features."""
        out = self.maps(images)
        if out.ndim == 4:  # a feature map: pool it
            out = out.mean(axis=(1, 2))
        return out.astype(np.float32)

    def maps(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) in [0, 255] -> the backbone's output before pooling: (N, h, w, D), or (N, D) if it pools.

        The same traced pass as the features: the training timeline takes its frozen activations from it.
        """
        x = np.asarray(self.spec.preprocess(np.asarray(images, dtype=np.float32)), dtype=np.float32)
        with self._lock:
            if self._forward is None:
                import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

                # A compiled graph is about twice as fast as an eager call on CPU; one
                # signature with any batch size, so a short last batch is not traced again.
                spec = tf.TensorSpec((None, *self.model.input_shape[1:]), tf.float32)
                self._forward = tf.function(self._call, input_signature=[spec])
            return np.asarray(self._forward(x))

    def _call(self, x):
        return self.model(x, training=False)

    def embed(
        self,
        load: Callable[[int], np.ndarray],
        count: int,
        batch_size: int = 32,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Features for `count` images, `load(i)` giving image i as (S, S, 3) uint8.

        Returns:
            (count, D) float32.
        """
        chunks = []
        for start in range(0, count, batch_size):
            stop = min(start + batch_size, count)
            chunks.append(self(np.stack([load(i) for i in range(start, stop)])))
            if progress:
                progress(stop, count)
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def pca_2d(features: np.ndarray) -> np.ndarray:
    """Project (N, D) features on their two main axes: (N, 2), deterministic signs."""
    x = features - features.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    axes = vt[:2]
    axes *= np.sign(axes[:, np.argmax(np.abs(axes), axis=1)].diagonal())[:, None]
    out = x @ axes.T
    if out.shape[1] < 2:
        out = np.pad(out, ((0, 0), (0, 2 - out.shape[1])))
    return out.astype(np.float32)


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-nearest-neighbour accuracy (cosine similarity).

    A quick, training-free measure of how well the classes separate in the
    backbone's feature space: near 1.0 means a linear head will do well.
    """
    n = len(labels)
    if n < 2:
        return float("nan")
    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, n - 1)
    nearest = np.argsort(-sim, axis=1)[:, :k]
    votes = labels[nearest]
    predicted = np.array([np.bincount(v, minlength=labels.max() + 1).argmax() for v in votes])
    return float((predicted == labels).mean())
