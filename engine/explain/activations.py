"""Feature maps as pictures and numbers: channel grids, layer statistics,
first-layer filters, and the same image at several depths."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from engine.explain.base import normalise, upsample
from engine.explain.overlay import colourise, label_tile
from engine.model.explainable import Explainable, ExplainError


def channel_order(acts: np.ndarray, sort: str = "mean") -> np.ndarray:
    """Channel indices of (h, w, C) activations: by decreasing mean activation, or as stored."""
    if sort == "index":
        return np.arange(acts.shape[-1])
    if sort != "mean":
        raise ValueError(f"sort must be 'mean' or 'index', got {sort!r}")
    return np.argsort(-acts.mean(axis=(0, 1)), kind="stable")


def nearest(maps: np.ndarray, scale: int) -> np.ndarray:
    """(N, h, w) -> (N, h * scale, w * scale), each value repeated: a 7x7 map stays visibly 7x7."""
    return np.repeat(np.repeat(maps, scale, axis=1), scale, axis=2)


def channel_grid(
    acts: np.ndarray, channels: np.ndarray, tile: int = 48, columns: int = 8, colormap: str = "Viridis"
) -> np.ndarray:
    """A picture of chosen channels of (h, w, C) activations, each scaled to its own range.

    Each map is drawn at its true resolution (nearest neighbour, an integer scale, at
    least `tile` pixels where the map is smaller) under a strip with its channel number.

    Returns:
        (rows * (side + 14), columns * (side + 2), 3) uint8, side = h * max(1, ceil(tile / h)).
    """
    h = acts.shape[0]
    scale = max(1, math.ceil(tile / h))
    side = h * scale
    maps = nearest(normalise(np.moveaxis(acts[..., channels], -1, 0).astype(np.float32)), scale)
    rows = math.ceil(len(channels) / columns)
    cell_h, cell_w = side + 14, side + 2
    grid = np.full((rows * cell_h, columns * cell_w, 3), 255, np.uint8)
    for k, (m, channel) in enumerate(zip(maps, channels, strict=True)):
        r, c = divmod(k, columns)
        tile_img = label_tile(colourise(m, colormap), f"#{int(channel)}")
        grid[r * cell_h + 1 : r * cell_h + 1 + side + 12, c * cell_w + 1 : c * cell_w + 1 + side] = tile_img
    return grid


def layer_stats(acts: np.ndarray) -> dict:
    """Numbers about (h, w, C) activations of one image, or (N, h, w, C) of a batch.

    `dead_fraction`: channels that are zero (or below) at every position of every image:
    dead units. Over one image this overstates it (a unit can be silent for one picture),
    so the page measures it over a batch.
    """
    batch = acts if acts.ndim == 4 else acts[None]
    per_channel_max = batch.max(axis=(0, 1, 2))
    acts = batch[0]
    return {
        "channels": int(acts.shape[-1]),
        "height": int(acts.shape[0]),
        "width": int(acts.shape[1]),
        "mean": float(acts.mean()),
        "max": float(acts.max()),
        "zero_fraction": float((acts <= 0).mean()),
        "dead_fraction": float((per_channel_max <= 0).mean()),
        "images": int(len(batch)),
    }


def first_layer_filters(model: Explainable, tile: int = 32) -> tuple[str, list[np.ndarray]]:
    """The first convolution's kernels as RGB tiles (each scaled to its own range; a grayscale model's in gray).

    Returns:
        (layer name, list of (tile, tile, 3) uint8).
    """
    import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays

    for info in model.layers():
        outer, _, inner = info.name.rpartition("/")
        layer = model.model.get_layer(outer).get_layer(inner) if outer else model.model.get_layer(info.name)
        if isinstance(layer, keras.layers.Conv2D) and not isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = np.asarray(layer.kernel)  # (k, k, in, out)
            if kernel.shape[2] not in (1, 3):
                break
            tiles = []
            for f in np.moveaxis(np.repeat(kernel, 3 // kernel.shape[2], axis=2), -1, 0):  # one channel: gray
                lo, hi = f.min(), f.max()
                f8 = ((f - lo) / (hi - lo or 1) * 255).astype(np.uint8)
                tiles.append(np.asarray(Image.fromarray(f8).resize((tile, tile), Image.Resampling.NEAREST)))
            return info.name, tiles
    raise ExplainError(f"{model.name} has no first convolution on its RGB or grayscale input to show")


def depth_layers(model: Explainable, count: int = 5) -> list[str]:
    """`count` spatial layers spread from input to output, for the walk through the network."""
    # Random* layers (an imported model's augmentation) pass the image through unchanged outside training
    infos = [i for i in model.layers() if i.spatial and not i.type.startswith("Random")]
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
