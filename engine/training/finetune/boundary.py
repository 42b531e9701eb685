"""The boundary: the classifier cut at the unfreeze point, and the cache of what crosses it.

What is below the unfreeze point is frozen and deterministic, so its output at the boundary
(the tensors that cross from the frozen part to the trainable part; one tensor at a block
boundary) is computed once per image and per augmented view, kept on disk in float16 beside
the feature cache, and only the part above it is fitted. When those tensors would need more
memory than `boundary_budget_bytes()`, training falls back to full forward passes on image
batches and says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

import numpy as np

from engine.config import TrainConfig
from engine.training import distribute, feature_cache
from engine.training.batches import index_batches
from engine.training.callbacks import features_progress

_CACHE_VERSION = 1
DEFAULT_BOUNDARY_BUDGET_MB = 2048  # float16 boundary tensors of every image and view kept in memory


def boundary_budget_bytes() -> int:
    """The memory the boundary cache may use (CONVSCOPE_BOUNDARY_BUDGET_MB, default 2048 MB)."""
    raw = os.environ.get("CONVSCOPE_BOUNDARY_BUDGET_MB", "")
    try:
        mb = float(raw) if raw.strip() else DEFAULT_BOUNDARY_BUDGET_MB
    except ValueError:
        mb = DEFAULT_BOUNDARY_BUDGET_MB
    return int(mb * 1024 * 1024)


class BoundaryOverflow(Exception):
    """Boundary tensors too large for float16: the fine-tune runs whole-model passes instead."""


@dataclass
class Split:
    """The classifier cut at the unfreeze point.

    lower: (N, S, S, 3) preprocessed images -> the crossing tensors (frozen).
    upper: the crossing tensors -> (N, classes) logits; its layers ARE the classifier's.
    """

    lower: object
    upper: object
    crossing: list[str]  # the layers whose outputs cross the boundary
    shapes: list[tuple[int, ...]]  # each crossing tensor's shape without the batch axis

    @property
    def elements(self) -> int:
        """Numbers per image at the boundary."""
        return int(sum(math.prod(s) for s in self.shapes))


def split(model, first: int) -> Split:
    """Cut `model` between layer `first - 1` and layer `first`: every tensor made below and used above."""
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    index = {id(layer): i for i, layer in enumerate(model.layers)}
    crossing, seen = [], set()
    for layer in model.layers[first:]:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                producer = tensor._keras_history.operation
                if index.get(id(producer), first) < first and id(tensor) not in seen:
                    seen.add(id(tensor))
                    crossing.append(tensor)
    lower = keras.Model(model.input, crossing, name="below_boundary")
    upper = keras.Model(crossing if len(crossing) > 1 else crossing[0], model.output, name="above_boundary")
    return Split(
        lower,
        upper,
        [t._keras_history.operation.name for t in crossing],
        [tuple(int(d) for d in t.shape[1:]) for t in crossing],
    )


class _Boundary:
    """A compiled call of the frozen part: (B, S, S, 3) [0, 255] images -> (B, F) float16, tensors flattened."""

    def __init__(self, cut: Split, preprocess) -> None:
        import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

        self.preprocess = preprocess
        size = cut.lower.input_shape[1:]
        lower = cut.lower

        def forward(x):
            out = lower(x, training=False)
            out = out if isinstance(out, list | tuple) else [out]
            flat = [tf.reshape(o, (tf.shape(o)[0], -1)) for o in out]
            return tf.cast(tf.concat(flat, axis=1), tf.float16)

        strategy = distribute.current()
        if strategy.num_replicas_in_sync > 1:  # each batch split over every replica of every worker
            self._forward = distribute.spread(forward, strategy)
        else:
            self._forward = tf.function(forward, input_signature=[tf.TensorSpec((None, *size), tf.float32)])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(self.preprocess(np.asarray(images, dtype=np.float32)), dtype=np.float32)
        out = np.asarray(self._forward(x))
        if not np.isfinite(out).all():
            raise BoundaryOverflow("the boundary tensors exceed float16's range (65504)")
        return out


def unflatten(flat: np.ndarray, shapes: list[tuple[int, ...]]):
    """(B, F) float16 -> the crossing tensors as float32 (one array, or a list for several)."""
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[:, start : start + size].astype(np.float32).reshape(-1, *shape))
        start += size
    return out[0] if len(out) == 1 else out


def weights_digest(model) -> str:
    """A digest of the frozen part's weights: a fine-tune of a fine-tune has other lower weights."""
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(np.asarray(w)).tobytes())
    return h.hexdigest()[:16]


def boundary_plan(cut: Split, n_images: int, train_images: int, views: int) -> dict:
    """Whether the boundary tensors fit the memory budget: {"mode", "why", "bytes", "budget", "layers"}."""
    rows = n_images + (train_images * views)
    need = 2 * rows * cut.elements * 2  # float16, twice: the cache and the per-split copies served from it
    budget = boundary_budget_bytes()
    layers = cut.crossing
    if need <= budget:
        mode = "cached"
        why = (
            f"the frozen part, up to {', '.join(layers)}, runs once per image"
            + (f" and per augmented view ({views} views)" if views else "")
            + f": {need / 2**20:.0f} MB of float16 boundary tensors, within the {budget / 2**20:.0f} MB budget"
        )
    else:
        mode = "full"
        why = (
            f"the boundary tensors would need {need / 2**20:.0f} MB, more than the {budget / 2**20:.0f} MB budget "
            "(CONVSCOPE_BOUNDARY_BUDGET_MB), so every step runs the whole model on image batches"
        )
    return {"mode": mode, "why": why, "bytes": int(need), "budget": budget, "layers": layers}


def cached_batches(config: TrainConfig, cut: Split, dataset, splits, y, preprocess, views: int, report, stop):
    """The boundary tensors of every image (and augmented view), cached, served as batches for `cut.upper`.

    Returns:
        (features facts, training batches, validation (x, y) or None, predict(split) -> logits).

    Raises:
        BoundaryOverflow: a value does not fit float16.
    """
    boundary = _Boundary(cut, preprocess)
    key = feature_cache.FeatureKey(config.backbone, config.data.image_size, config.data.resize)
    tag = json.dumps([_CACHE_VERSION, dataset.fingerprint, cut.crossing, weights_digest(cut.lower)])
    name = hashlib.sha256(tag.encode()).hexdigest()[:32]
    progress = features_progress(report, stop, "Computing the boundary tensors")
    n = len(dataset.items)
    clean, hit = feature_cache.cached_array(
        key.folder / f"boundary-{name}.npy",
        (n,),
        lambda: feature_cache.compute_batches(
            boundary, dataset, dataset.items, key, config.batch_size, None, 0, progress, 0, n
        ),
        progress,
    )
    features = {"computed": 0 if hit else n, "cached": n if hit else 0}
    row = {item.rel: k for k, item in enumerate(dataset.items)}
    x = {s: clean[[row[i.rel] for i in items]] for s, items in splits.items()}
    stack = x["train"][None]
    if views:
        aug, hit = feature_cache.augmented_features(
            boundary,
            dataset,
            splits["train"],
            key,
            config.data.augment,
            views,
            config.seed,
            config.batch_size,
            progress,
            prefix=f"boundary-{name}-",
        )
        stack = np.concatenate([stack, aug])
        features["augmented_views"] = views

    def fetch(view, indices):
        return unflatten(stack[view, indices], cut.shapes)

    n_train = len(y["train"])
    train_data = index_batches(n_train, len(stack), y["train"], config.batch_size, config.seed, fetch)
    val_data = (unflatten(x["validation"], cut.shapes), y["validation"]) if len(y["validation"]) else None

    def predict(split_name: str) -> np.ndarray:
        return np.asarray(cut.upper.predict(unflatten(x[split_name], cut.shapes), verbose=0))

    return features, train_data, val_data, predict
