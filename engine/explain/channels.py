"""What one channel does for one image: its activation, its share of the class's Grad-CAM, and its
counterpart in the model a fine-tune started from.

Feature pictures are engine.explain.featurevis, dataset examples engine.explain.top_examples;
this module ties them to the image and class a user is looking at.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.model.explainable import Explainable, ExplainError


@dataclass(frozen=True)
class Drive:
    """How much one channel drives one class's Grad-CAM on one image."""

    channel: int
    weight: float  # Grad-CAM weight: d logit / d activation averaged over the map
    mean_activation: float  # the channel's spatial mean on the image
    contribution: float  # weight x mean activation: its term in the CAM's sum before the ReLU
    share: float  # contribution / sum of the positive contributions (negative: it argues against)

    def to_json(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def drivers(model: Explainable, image: np.ndarray, layer: str, class_index: int) -> list[Drive]:
    """Every channel of `layer` for one prepared image (S, S, 3) in [0, 255] and one class, largest first.

    The Grad-CAM map is ReLU(sum_c w_c A_c) with w_c the mean gradient of the class logit
    over channel c's map; summed over the map, channel c adds w_c * sum(A_c). So
    w_c * mean(A_c) is the channel's part of the map, and its share is that over the sum of
    the positive parts.
    """
    model.check_layer(layer)
    if not 0 <= class_index < len(model.labels):
        raise ExplainError(f"class index must be 0..{len(model.labels) - 1}, got {class_index}")
    a, g, _ = model.compiled.layer_gradients(np.asarray(image, np.float32)[None], layer, [class_index])
    weight = g[0].mean(axis=(0, 1)).astype(np.float64)  # (C,)
    mean = a[0].mean(axis=(0, 1)).astype(np.float64)
    contribution = weight * mean
    positive = contribution[contribution > 0].sum()
    share = contribution / positive if positive > 0 else np.zeros_like(contribution)
    order = np.argsort(-contribution, kind="stable")
    return [Drive(int(c), float(weight[c]), float(mean[c]), float(contribution[c]), float(share[c])) for c in order]


def parent_run(run_dir: str | Path) -> Path | None:
    """The run a fine-tune started from (its folder), or None for a run that is not a fine-tune."""
    run = Path(run_dir)
    try:
        config = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return None
    # config.json keeps the parent's folder under "finetune" (a full path); a bare "parent" name
    # is read beside the run, as in the runs folder
    parent = (config.get("finetune") or {}).get("parent") or config.get("parent")
    if not parent:
        return None
    path = Path(parent) if Path(parent).is_absolute() else run.parent / parent
    return path if (path / "model.keras").is_file() else None


def weight_change(before: Explainable, after: Explainable, layer: str, channel: int) -> float | None:
    """Relative change of the weights that make one channel: |w_after - w_before| / |w_before|.

    The weights are the layer's kernel slice for that output channel, or, for a layer
    without weights (an activation), those of the nearest layer before it that has them.
    None when the models do not share the layer.
    """
    try:
        source = _weighted_layer(after.model, layer)
        old = before.model.get_layer(source.name)
    except (ValueError, ExplainError):
        return None
    a, b = _channel_weights(old, channel), _channel_weights(source, channel)
    if a is None or b is None or a.shape != b.shape:
        return None
    return float(np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-12))


def _channel_weights(layer, channel: int) -> np.ndarray | None:
    """The kernel (and bias) entries that produce one output channel, flattened."""
    # a depthwise kernel is (k, k, C, multiplier): channel c is its third axis
    axis = 2 if type(layer).__name__ == "DepthwiseConv2D" else -1
    parts = []
    for w in layer.get_weights():
        if w.ndim == 4 and w.shape[axis] > channel:
            parts.append(np.take(w, channel, axis=axis).ravel())
        elif w.ndim == 1 and w.shape[0] > channel:
            parts.append(w[channel : channel + 1])
    return np.concatenate(parts) if parts else None


def _weighted_layer(model, name: str):
    """The layer `name`, or the nearest one feeding it that holds a kernel (through BN and activations)."""
    layer = model.get_layer(name)
    for _ in range(8):
        if any(w.ndim == 4 for w in layer.get_weights()):
            return layer
        inbound = layer._inbound_nodes[0].input_tensors
        if len(inbound) != 1:
            break
        layer = inbound[0]._keras_history.operation
    raise ExplainError(f"no convolution found at or just before {name!r}")
