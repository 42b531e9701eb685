"""Drawing heatmaps and activations as pictures (NumPy and Pillow only)."""

from __future__ import annotations

import numpy as np
from PIL import Image

COLORMAPS = ("Jet", "Viridis", "Inferno", "Hot", "Greys")


def _lut(name: str) -> np.ndarray:
    """(256, 3) uint8 colour table from Plotly's named colour scales."""
    from plotly.colors import get_colorscale, sample_colorscale

    if name not in COLORMAPS:
        raise ValueError(f"colour map must be one of {', '.join(COLORMAPS)}, got {name!r}")
    colours = sample_colorscale(get_colorscale(name), list(np.linspace(0, 1, 256)), colortype="tuple")
    lut = np.array(colours, dtype=np.float64)
    if lut.max() <= 1.0:
        lut = lut * 255
    return np.clip(np.rint(lut), 0, 255).astype(np.uint8)


def colourise(heat: np.ndarray, colormap: str = "Jet") -> np.ndarray:
    """(H, W) in [0, 1] -> (H, W, 3) uint8."""
    idx = np.clip(np.rint(np.nan_to_num(heat) * 255), 0, 255).astype(np.uint8)
    return _lut(colormap)[idx]


def overlay(rgb: np.ndarray, heat: np.ndarray, opacity: float = 0.5, colormap: str = "Jet") -> np.ndarray:
    """Blend a [0, 1] heatmap over an (H, W, 3) uint8 image; the heatmap is resized to the image."""
    if not 0 <= opacity <= 1:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    h, w = rgb.shape[:2]
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((w, h), Image.Resampling.BILINEAR))
    colour = colourise(np.clip(heat, 0, 1), colormap).astype(np.float32)
    return np.clip(rgb.astype(np.float32) * (1 - opacity) + colour * opacity, 0, 255).astype(np.uint8)


def to_png(rgb: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()
