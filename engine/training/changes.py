"""What a fine-tune changed: a parent classifier against its fine-tuned child.

Both models have the same architecture and layer names (the child is a clone
of the parent that trained further). Three views, per block of
`engine.training.blocks.group`:

- weights: the relative change ||W_after - W_before|| / ||W_before|| of all the
  block's weights, trainable and not (BatchNormalization's moving statistics
  included), so a frozen block reads exactly 0;
- representations: linear CKA (Kornblith et al. 2019, "Similarity of Neural
  Network Representations Revisited") between the two models' activations at
  the block's last layer on the same images; 1 means the block still computes
  the same features up to a rotation and a scale;
- the pooled features that feed the head, projected to 2-D for both models,
  with their leave-one-out k-NN accuracy.

Activations are global-average-pooled inside one compiled multi-output
function per model, so memory stays (N, C) per block whatever the image size.

An imported model (engine.importing) has no backbone blocks: each layer with
weights is a row ("base_model/block2_conv" inside a nested model), with its
weight change, and CKA for the layers of its nested base model (None for the
rest); the projection is taken at the first top-level layer with (N, C)
features (its global pooling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from engine import backbones, runs
from engine.errors import FinetuneError
from engine.runs import Run
from engine.training.blocks import HEAD, Block, for_spec
from engine.training.features import knn_accuracy, pca_2d
from engine.training.finetune import base_of, probe_set, units

BATCH = 32  # images per compiled call, as in engine.model.compiled
FEATURE_LAYER = "avg_pool"  # the GlobalAveragePooling2D of engine.training.models.feature_classifier


# ---- weights ---------------------------------------------------------------
def weight_changes(before, after, blocks: Sequence[Block]) -> list[dict]:
    """Relative weight change of every block that has weights, in block order.

    Layers are matched by name; within a layer, weights by position (same
    architecture). Only weights count (kernels, biases, BatchNormalization's scale
    and offset), not BatchNormalization's moving statistics: those are about 30
    times larger than Lite0's kernels and, frozen by default, would make a block
    that really retrained read as almost unchanged. `params` counts every variable.

    Args:
        before: the parent keras.Model.
        after: the fine-tuned child, same layer names and weight shapes.
        blocks: `engine.training.blocks.group(before, ...)`.

    Returns:
        [{"block": str, "params": int, "change": float}], where change is
        ||W_after - W_before|| / ||W_before|| over the block's weights
        concatenated (float64): exactly 0.0 for an untouched block; `inf` if
        the block's weights were all zero before and are not now.
    """
    out = []
    for block in blocks:
        diff_sq = base_sq = 0.0
        params = 0
        for name in block.layer_names:
            layer_before, layer_after = _layer(before, name), _layer(after, name)
            params += sum(int(np.prod(w.shape)) for w in layer_before.weights)
            # _trainable_variables: what trains when the layer does, whatever its flag now.
            old = [np.asarray(v) for v in layer_before._trainable_variables]
            new = [np.asarray(v) for v in layer_after._trainable_variables]
            if len(old) != len(new):
                raise FinetuneError(f"layer {name!r} has {len(old)} weights before the fine-tune and {len(new)} after")
            for w0, w1 in zip(old, new, strict=True):
                if w0.shape != w1.shape:
                    raise FinetuneError(f"layer {name!r}: weight shape {w0.shape} before, {w1.shape} after")
                w0 = np.asarray(w0, np.float64)
                diff_sq += float(np.sum(np.square(np.asarray(w1, np.float64) - w0)))
                base_sq += float(np.sum(np.square(w0)))
        if params == 0:
            continue  # activations, pooling, adds: nothing to change
        if base_sq > 0:
            change = math.sqrt(diff_sq) / math.sqrt(base_sq)
        else:
            change = 0.0 if diff_sq == 0 else math.inf
        out.append({"block": block.name, "params": params, "change": change})
    return out


def _layer(model, name: str):
    """A layer by name, "outer/inner" inside a nested model."""
    try:
        layer = model
        for part in name.split("/"):
            layer = layer.get_layer(part)
        return layer
    except (ValueError, AttributeError) as exc:
        raise FinetuneError(
            f"the fine-tuned model has no layer {name!r}: compare a model with its own fine-tune"
        ) from exc


# ---- representations -------------------------------------------------------
def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between two representations of the same n examples.

    CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) after centring the
    columns, in float64 (the feature-space form of Kornblith et al. 2019, eq. 5).
    It is invariant to orthogonal transforms and isotropic scaling of either
    side, so a block whose features were only rotated or rescaled reads 1.0.
    With few examples (n much smaller than the feature count) it is biased
    upwards: compare CKAs measured on the same images.

    Args:
        x: (n, p) activations.
        y: (n, q) activations of the same n examples.

    Returns:
        A float in [0, 1]; nan when either side has no variance (every row
        the same), where the similarity is undefined.
    """
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"linear_cka needs (n, p) and (n, q) arrays with the same n, got {x.shape} and {y.shape}")
    xc = x - x.mean(axis=0, keepdims=True)
    yc = y - y.mean(axis=0, keepdims=True)
    if _no_variance(xc, x) or _no_variance(yc, y):
        return math.nan
    cka = np.linalg.norm(yc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    return float(min(cka, 1.0))  # <= 1 by Cauchy-Schwarz; the min only drops rounding


def _no_variance(centred: np.ndarray, raw: np.ndarray) -> bool:
    # Centring a constant column can leave rounding noise instead of exact zeros
    # (a float64 mean of n equal values), so compare with the values' own scale.
    spread = np.abs(centred).max(initial=0.0)
    return len(raw) < 2 or not np.isfinite(spread) or spread <= 1e-10 * np.abs(raw).max(initial=0.0)


def _gap(tensor):
    """(N, ..., C) -> (N, C): average over every axis between the batch and the channels."""
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

    rank = len(tensor.shape)
    return tf.reduce_mean(tensor, axis=list(range(1, rank - 1))) if rank > 2 else tensor


def pooled_outputs(model, images: np.ndarray, layers: Sequence[str], batch_size: int = BATCH) -> list[np.ndarray]:
    """Globally average-pooled outputs of `layers`, from one compiled forward pass per batch.

    Args:
        model: a flat keras.Model taking preprocessed (N, S, S, 3) images.
        images: (N, S, S, 3) preprocessed float32 images.
        layers: layer names of `model` (all top-level, or all "outer/inner" inside one nested model).
        batch_size: images per compiled call.

    Returns:
        One (N, C_layer) float32 array per layer, in the order asked.
    """
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

    images = np.asarray(images, np.float32)
    size = tuple(model.input_shape[1:])
    if images.ndim != 4 or images.shape[1:] != size or len(images) == 0:
        raise ValueError(f"expected preprocessed images (N, {', '.join(map(str, size))}), N >= 1, got {images.shape}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    unique = list(dict.fromkeys(layers))
    multi = _outputs_of(model, unique)

    # One trace for any batch size (the last batch is usually short).
    @tf.function(input_signature=[tf.TensorSpec((None, *size), tf.float32)])
    def forward(x):
        out = multi(x, training=False)
        out = out if isinstance(out, list | tuple) else [out]
        return [_gap(a) for a in out]

    parts: list[list[np.ndarray]] = [[] for _ in unique]
    for start in range(0, len(images), batch_size):
        for part, a in zip(parts, forward(tf.constant(images[start : start + batch_size])), strict=True):
            part.append(np.asarray(a, np.float32))
    pooled = {name: np.concatenate(p) for name, p in zip(unique, parts, strict=True)}
    return [pooled[name] for name in layers]


def _outputs_of(model, names: list[str]):
    """A keras.Model from `model`'s input to the named layers' outputs: all top-level, or all "outer/inner"
    inside the same nested model (reached through where the nested model sits in the outer graph)."""
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    outers = {name.split("/")[0] if "/" in name else "" for name in names}
    if outers == {""}:
        return keras.Model(model.input, [model.get_layer(name).output for name in names])
    if len(outers) > 1 or "" in outers:
        raise FinetuneError(f"layers {', '.join(names)} are not all top-level or all inside one nested model")
    nested = model.get_layer(outers.pop())
    below = keras.Model(model.input, nested._inbound_nodes[0].input_tensors[0])  # the outer call of the nested model
    inside = keras.Model(nested.input, [nested.get_layer(name.split("/", 1)[1]).output for name in names])
    x = keras.Input(model.input_shape[1:])
    return keras.Model(x, inside(below(x)))


def _compared_blocks(model, blocks: Sequence[Block]) -> list[Block]:
    """Backbone blocks whose last layer computes something (not the head, not a bare InputLayer)."""
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    return [
        b
        for b in blocks
        if b.name != HEAD and not isinstance(model.get_layer(b.layer_names[-1]), keras.layers.InputLayer)
    ]


def block_similarity(before, after, images: np.ndarray, blocks: Sequence[Block], batch_size: int = BATCH) -> list[dict]:
    """Linear CKA between the two models' pooled activations at each backbone block's last layer.

    Args:
        before: the parent keras.Model.
        after: the fine-tuned child (same layer names).
        images: (N, S, S, 3) preprocessed float32 images, N >= 2 (a few dozen for a stable figure).
        blocks: `engine.training.blocks.group(before, ...)`; the head is left out.
        batch_size: images per compiled call.

    Returns:
        [{"block": str, "cka": float}] in block order (nan where a block's output is constant).
    """
    compared = _compared_blocks(before, blocks)
    names = [b.layer_names[-1] for b in compared]
    a = pooled_outputs(before, images, names, batch_size)
    b = pooled_outputs(after, images, names, batch_size)
    return [{"block": blk.name, "cka": linear_cka(x, y)} for blk, x, y in zip(compared, a, b, strict=True)]


# ---- the features the head sees ---------------------------------------------
def feature_layer(model, spec=None) -> str:
    """The layer whose (pooled) output feeds the head: `avg_pool`, else the spec's last conv layer."""
    names = {layer.name for layer in model.layers}
    if FEATURE_LAYER in names:
        return FEATURE_LAYER
    if spec is not None and spec.last_conv_layer in names:
        return spec.last_conv_layer
    raise FinetuneError(
        f"{model.name} has no {FEATURE_LAYER!r} layer"
        + (f" nor {spec.last_conv_layer!r}" if spec is not None else "")
        + ": name the layer that feeds the head"
    )


def _projection(features: np.ndarray, labels: np.ndarray) -> dict:
    return {"xy": pca_2d(features), "knn": knn_accuracy(features, labels)}


def _labels(labels, n: int) -> np.ndarray:
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (n,) or (n and labels.min() < 0):
        raise ValueError(f"expected {n} non-negative integer labels, one per image, got shape {labels.shape}")
    return labels


def penultimate(before, after, images: np.ndarray, labels, layer: str | None = None, batch_size: int = BATCH) -> dict:
    """The pooled features that feed the head, for both models, in 2-D with their k-NN accuracy.

    Each model's features are projected on their own two principal axes
    (`pca_2d`), so compare the clusters, not the axes.

    Args:
        before: the parent keras.Model.
        after: the fine-tuned child.
        images: (N, S, S, 3) preprocessed float32 images.
        labels: (N,) integer class of each image.
        layer: the layer feeding the head; default `avg_pool`.
        batch_size: images per compiled call.

    Returns:
        {"layer": str, "before": {"xy": (N, 2) float32, "knn": float}, "after": {...}};
        knn is leave-one-out 5-NN accuracy (cosine) in [0, 1], nan for fewer than 2 images.
    """
    layer = layer or feature_layer(before)
    labels = _labels(labels, len(images))
    (f0,) = pooled_outputs(before, images, [layer], batch_size)
    (f1,) = pooled_outputs(after, images, [layer], batch_size)
    return {"layer": layer, "before": _projection(f0, labels), "after": _projection(f1, labels)}


# ---- an imported model ------------------------------------------------------------
def imported_blocks(model) -> list[Block]:
    """An imported model's layers with weights, one block each, named as units() names them."""
    return [Block(u.name, i, i, (u.name,)) for i, u in enumerate(units(model)) if u.layer.weights]


def imported_feature_layer(model) -> str:
    """The first top-level layer with (N, C) features: where an imported model's convolutions end (its pooling)."""
    for layer in model.layers[1:]:
        try:
            if len(layer.output.shape) == 2:
                return layer.name
        except (AttributeError, ValueError):
            continue
    raise FinetuneError(f"{model.name} has no top-level layer with (N, C) features to project")


def compare_imported(before, after, images: np.ndarray, labels, batch_size: int = BATCH) -> dict:
    """compare() for an imported model: weight change per layer with weights, CKA inside its base, the features.

    Args:
        before: the imported parent (keras.Model, preprocessed images -> logits).
        after: its fine-tuned child, the same layers.
        images: (N, S, S, C) preprocessed float32 images.
        labels: (N,) integer class of each image.
    """
    if [u.name for u in units(after)] != [u.name for u in units(before)]:
        raise FinetuneError(
            f"{before.name} and {after.name} do not have the same layers: compare a model with its own fine-tune"
        )
    labels = _labels(labels, len(images))
    changes = weight_changes(before, after, imported_blocks(before))
    base = base_of(before)
    inside = [w["block"] for w in changes if base is not None and w["block"].startswith(f"{base.name}/")]
    cka = {}
    if inside:
        a = pooled_outputs(before, images, inside, batch_size)
        b = pooled_outputs(after, images, inside, batch_size)
        cka = {name: linear_cka(x, y) for name, x, y in zip(inside, a, b, strict=True)}
    rows = [
        {"block": w["block"], "params": w["params"], "weight_change": w["change"], "cka": cka.get(w["block"])}
        for w in changes
    ]
    projection = penultimate(before, after, images, labels, imported_feature_layer(before), batch_size)
    return {"blocks": rows, "projection": projection}


# ---- all of it ---------------------------------------------------------------
def compare(before, after, images: np.ndarray, labels, spec, batch_size: int = BATCH) -> dict:
    """Weights, representations and head features of a parent and its fine-tuned child.

    One compiled forward pass per model and batch gives every block's pooled
    activations and the head's input at once.

    Args:
        before: the parent classifier (keras.Model, preprocessed images -> logits).
        after: its fine-tuned child, same layer names.
        images: (N, S, S, 3) preprocessed float32 images (spec.preprocess), N >= 2.
        labels: (N,) integer class of each image.
        spec: the backbone's BackboneSpec (its finetune_blocks and last_conv_layer).
        batch_size: images per compiled call.

    Returns:
        {
          "blocks": [{"block": str, "params": int, "weight_change": float | None,
                      "cka": float | None}, ...]   # stem, block1.., head, in order;
                      # weight_change None for a block without weights,
                      # cka None for the head;
          "projection": {"layer": str,
                         "before": {"xy": (N, 2) float32 array, "knn": float},
                         "after": {"xy": (N, 2) float32 array, "knn": float}},
        }
        `to_json` turns it into lists and plain floats.
    """
    blocks = for_spec(before, spec)
    if [layer.name for layer in after.layers] != [layer.name for layer in before.layers]:
        raise FinetuneError(
            f"{before.name} and {after.name} do not have the same layers: compare a model with its own fine-tune"
        )
    labels = _labels(labels, len(images))
    weights = {w["block"]: w for w in weight_changes(before, after, blocks)}
    compared = _compared_blocks(before, blocks)
    head_in = feature_layer(before, spec)
    names = [b.layer_names[-1] for b in compared] + [head_in]
    a = pooled_outputs(before, images, names, batch_size)
    b = pooled_outputs(after, images, names, batch_size)
    cka = {blk.name: linear_cka(x, y) for blk, x, y in zip(compared, a[:-1], b[:-1], strict=True)}
    rows = []
    for blk in blocks:
        w = weights.get(blk.name)
        if w is None and blk.name not in cka:
            continue  # an InputLayer-only stem: nothing to show
        rows.append(
            {
                "block": blk.name,
                "params": w["params"] if w else 0,
                "weight_change": w["change"] if w else None,
                "cka": cka.get(blk.name),
            }
        )
    projection = {"layer": head_in, "before": _projection(a[-1], labels), "after": _projection(b[-1], labels)}
    return {"blocks": rows, "projection": projection}


def to_json(changes: dict) -> dict:
    """`compare`'s result with lists and plain floats; nan and inf become None."""

    def num(v):
        if v is None:
            return None
        v = float(v)
        return v if math.isfinite(v) else None

    def side(p: dict) -> dict:
        return {"xy": np.asarray(p["xy"], np.float64).round(5).tolist(), "knn": num(p["knn"])}

    proj = changes["projection"]
    rows = [
        {
            "block": r["block"],
            "params": int(r["params"]),
            "weight_change": num(r["weight_change"]),
            "cka": num(r["cka"]),
        }
        for r in changes["blocks"]
    ]
    return {
        "blocks": rows,
        "projection": {"layer": proj["layer"], "before": side(proj["before"]), "after": side(proj["after"])},
    }


# ---- of two runs ---------------------------------------------------------------------


def what_changed(parent: Run, child: Run) -> dict:
    """Per block weight change and CKA, and the penultimate features before and after (kept in changes.json).

    Returns:
        compare()'s JSON form for the two runs' classifiers on the child's probe set.
    """
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    saved = runs.read_json(child.path / "changes.json")
    if saved and "labels" in saved.get("projection", {}):
        return saved
    config = child.config()
    images, labels = probe_set(config)
    x = np.asarray(backbones.preprocess_of(config)(images), dtype=np.float32)
    before = keras.models.load_model(parent.model_file, safe_mode=True)
    after = keras.models.load_model(child.model_file, safe_mode=True)
    if config.get("imported"):
        result = to_json(compare_imported(before, after, x, labels))
    else:
        result = to_json(compare(before, after, x, labels, backbones.get_spec(config["backbone"])))
    result["projection"]["labels"] = [int(v) for v in labels]
    runs.write_json(child.path / "changes.json", result, inside=child.path)  # a run deleted meanwhile stays so
    return result
