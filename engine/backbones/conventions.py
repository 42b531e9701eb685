"""Named pixel conventions: how a model brought from elsewhere wants its input.

An imported model (engine.importing) carries no backbone spec, so its preprocessing
is one of these names, saved with the run. Each function maps [0, 255] RGB float
images (N, S, S, 3), NumPy or TensorFlow, to the model's input; a grayscale model
(one channel) sees the luma of the RGB image first, so every ConvScope path (datasets,
uploads, exports) keeps feeding RGB.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from engine.backbones.registry import get_spec
from engine.backbones.spec import caffe_bgr, identity, scale_0_1, scale_minus1_1
from engine.errors import ConfigError

TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
LUMA = ((0.299,), (0.587,), (0.114,))  # ITU-R BT.601 weights; they sum to 1, so a gray image stays itself


def torch_norm(images):
    """[0, 255] RGB -> ImageNet mean/std standardised (PyTorch / timm models, 'torch' mode)."""
    return (images / 255.0 - list(TORCH_MEAN)) / list(TORCH_STD)


CONVENTIONS: dict[str, Callable] = {
    "raw": identity,
    "unit": scale_0_1,
    "symmetric": scale_minus1_1,
    "caffe": caffe_bgr,
    "torch": torch_norm,
}
TITLES = {
    "raw": "raw pixels 0-255 (the model rescales inside)",
    "unit": "[0, 1] (pixels / 255)",
    "symmetric": "[-1, 1] (pixels / 127.5 - 1)",
    "caffe": "Caffe: BGR minus the ImageNet means",
    "torch": "Torch: ImageNet mean / std",
}
RGB_ONLY = ("caffe", "torch")  # per-channel statistics of colour images


def convention(name: str, channels: int = 3) -> Callable:
    """The preprocessing of convention `name` for a model with `channels` input channels (1 or 3)."""
    if name not in CONVENTIONS:
        raise ConfigError(f"preprocessing must be one of {', '.join(CONVENTIONS)}, got {name!r}")
    if channels not in (1, 3):
        raise ConfigError(f"a model takes 1 (grayscale) or 3 (RGB) channels, not {channels}")
    scale = CONVENTIONS[name]
    if channels == 3:
        return scale
    if name in RGB_ONLY:
        raise ConfigError(f"the {name} convention needs RGB input; a grayscale model takes raw, unit or symmetric")

    def gray(images):
        """[0, 255] RGB (N, S, S, 3) -> (N, S, S, 1) luma, then the convention."""
        return scale(images @ _luma(images))

    gray.__name__ = f"gray_{name}"
    return gray


def _luma(images):
    """The (3, 1) luma weights in the images' own float type (NumPy or TensorFlow)."""
    if isinstance(images, np.ndarray):
        return np.asarray(LUMA, dtype=images.dtype)
    import tensorflow as tf  # heavy: only a grayscale model's traced preprocessing gets here

    return tf.constant(LUMA, dtype=images.dtype)


def preprocess_of(config: dict) -> Callable:
    """A run's preprocessing, from its config.json: its imported convention, else its backbone's."""
    imported = config.get("imported")
    if imported:
        return convention(str(imported.get("preprocess", "raw")), int(imported.get("channels", 3)))
    return get_spec(str(config.get("backbone", ""))).preprocess
