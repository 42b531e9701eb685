"""Feature maps as pictures and numbers: channel grids, layer statistics,
first-layer filters, and the same image at several depths."""

from __future__ import annotations

import math

import numpy as np

from engine.explain.base import normalise, upsample
from engine.explain.model import Explainable, ExplainError
from engine.explain.overlay import colourise


def channel_order(acts: np.ndarray, sort: str = "mean") -> np.ndarray:
    """Channel indices of (h, w, C) activations: by decreasing mean activation, or as stored."""
    if sort == "index":
        return np.arange(acts.shape[-1])
    if sort != "mean":
        raise ValueError(f"sort must be 'mean' or 'index', got {sort!r}")
    return np.argsort(-acts.mean(axis=(0, 1)), kind="stable")


def channel_grid(
    acts: np.ndarray, channels: np.ndarray, tile: int = 48, columns: int = 8, colormap: str = "Viridis"
) -> np.ndarray:
    """A picture of chosen channels of (h, w, C) activations, each scaled to its own range.

    Returns:
        (rows * (tile + 2), columns * (tile + 2), 3) uint8.
    """
    maps = normalise(upsample(np.moveaxis(acts[..., channels], -1, 0).astype(np.float32), tile))
    rows = math.ceil(len(channels) / columns)
    pad = tile + 2
    grid = np.full((rows * pad, columns * pad, 3), 255, np.uint8)
    for k, m in enumerate(maps):
        r, c = divmod(k, columns)
        grid[r * pad + 1 : r * pad + 1 + tile, c * pad + 1 : c * pad + 1 + tile] = colourise(m, colormap)
    return grid


def layer_stats(acts: np.ndarray) -> dict:
    """Numbers about one image's (h, w, C) activations.

    `dead_fraction`: channels that are zero (or below) everywhere, i.e. dead ReLU units for this image.
    """
    per_channel_max = acts.max(axis=(0, 1))
    return {
        "channels": int(acts.shape[-1]),
        "height": int(acts.shape[0]),
        "width": int(acts.shape[1]),
        "mean": float(acts.mean()),
        "max": float(acts.max()),
        "zero_fraction": float((acts <= 0).mean()),
        "dead_fraction": float((per_channel_max <= 0).mean()),
    }


def first_layer_filters(model: Explainable, tile: int = 32) -> tuple[str, list[np.ndarray]]:
    """The first convolution's kernels as RGB tiles (each scaled to its own range).

    Returns:
        (layer name, list of (tile, tile, 3) uint8).
    """
    import keras
    from PIL import Image

    for info in model.layers():
        outer, _, inner = info.name.rpartition("/")
        layer = model.model.get_layer(outer).get_layer(inner) if outer else model.model.get_layer(info.name)
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = np.asarray(layer.kernel)  # (k, k, in, out)
            if kernel.shape[2] != 3:
                break
            tiles = []
            for f in np.moveaxis(kernel, -1, 0):
                lo, hi = f.min(), f.max()
                f8 = ((f - lo) / (hi - lo or 1) * 255).astype(np.uint8)
                tiles.append(np.asarray(Image.fromarray(f8).resize((tile, tile), Image.Resampling.NEAREST)))
            return info.name, tiles
    raise ExplainError(f"{model.name} has no first convolution on RGB input to show")


def depth_layers(model: Explainable, count: int = 5) -> list[str]:
    """`count` spatial layers spread from input to output, for the walk through the network."""
    infos = [i for i in model.layers() if i.spatial]
    if not infos:
        raise ExplainError(f"{model.name} has no spatial layers")
    # Prefer activation outputs: what the next layer actually sees.
    acts = [i.name for i in infos if i.type in ("ReLU", "Activation") or i.name.endswith(("activation", "relu"))]
    names = acts if len(acts) >= count else [i.name for i in infos]
    picks = np.unique(np.linspace(0, len(names) - 1, min(count, len(names))).round().astype(int))
    return [names[i] for i in picks]


def mean_map(acts: np.ndarray, size: int) -> np.ndarray:
    """The channel-mean of (h, w, C) activations, upsampled to (size, size) and scaled to [0, 1]."""
    return normalise(upsample(acts.mean(axis=-1)[None].astype(np.float32), size))[0]
