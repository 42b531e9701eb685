"""Drawing heatmaps and activations as pictures (NumPy, Pillow and Plotly's colour scales)."""

from __future__ import annotations

import io
from functools import cache

import numpy as np
from PIL import Image, ImageDraw
from plotly.colors import get_colorscale, sample_colorscale

from engine.errors import ExplainError

COLORMAPS = ("Jet", "Viridis", "Inferno", "Hot", "Greys")


@cache
def _lut(name: str) -> np.ndarray:
    """(256, 3) uint8 colour table from Plotly's named colour scales, built once per name (read-only)."""
    if name not in COLORMAPS:
        raise ExplainError(f"colour map must be one of {', '.join(COLORMAPS)}, got {name!r}")
    colours = sample_colorscale(get_colorscale(name), list(np.linspace(0, 1, 256)), colortype="tuple")
    lut = np.array(colours, dtype=np.float64)
    if lut.max() <= 1.0:
        lut = lut * 255
    table = np.clip(np.rint(lut), 0, 255).astype(np.uint8)
    table.flags.writeable = False  # shared by every caller: sampling Plotly's scale took 2 ms a map
    return table


def colourise(heat: np.ndarray, colormap: str = "Jet") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8."""
    idx = np.clip(np.rint(np.nan_to_num(heat) * 255), 0, 255).astype(np.uint8)
    return _lut(colormap)[idx]


def overlay(rgb: np.ndarray, heat: np.ndarray, opacity: float = 0.5, colormap: str = "Jet") -> np.ndarray:
    """Blend a [0, 1] heatmap over an (H, W, 3) uint8 image; the heatmap is resized to the image."""
    if not 0 <= opacity <= 1:
        raise ExplainError(f"opacity must be in [0, 1], got {opacity}")
    h, w = rgb.shape[:2]
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))
    colour = colourise(np.clip(heat, 0, 1), colormap).astype(np.float32)
    return np.clip(rgb.astype(np.float32) * (1 - opacity) + colour * opacity, 0, 255).astype(np.uint8)


def colour_bar(colormap: str = "Jet", width: int = 320, labels: tuple[str, str, str] = ("0", "0.5", "1")) -> np.ndarray:
    """A horizontal colour bar with three labels under it, for a legend: (34, width, 3) uint8."""
    bar = colourise(np.tile(np.linspace(0, 1, width, dtype=np.float32), (16, 1)), colormap)
    canvas = Image.new("RGB", (width, 34), "white")
    canvas.paste(Image.fromarray(bar), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for text, x, anchor in zip(labels, (0, width // 2, width - 1), ("la", "ma", "ra"), strict=True):
        draw.text((x, 19), text, fill=(40, 40, 40), anchor=anchor)
    return np.asarray(canvas)


def label_tile(tile: np.ndarray, text: str) -> np.ndarray:
    """An (h, w, 3) uint8 tile with a 12-px white strip above it carrying `text`: (h + 12, w, 3)."""
    h, w = tile.shape[:2]
    canvas = Image.new("RGB", (w, h + 12), "white")
    canvas.paste(Image.fromarray(tile), (0, 12))
    ImageDraw.Draw(canvas).text((1, 0), text, fill=(40, 40, 40))
    return np.asarray(canvas)


def to_png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
