"""Small numerics shared by the layers above: NumPy only, so anything may import it."""

from __future__ import annotations

import numpy as np


def check_temperature(temperature: float) -> float:
    """A softmax temperature as a float; ValueError unless it is a positive finite number."""
    t = float(temperature)
    if not (t > 0 and np.isfinite(t)):
        raise ValueError(f"temperature must be a positive number, got {temperature}")
    return t


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Softmax of logits / temperature over the last axis, stable for large logits.

    Args:
        logits: (..., C) raw scores, usually (N, C).
        temperature: T > 0; above 1 softens, below 1 sharpens (a run's saved calibration).

    Returns:
        (..., C) float64 probabilities, each row summing to 1.
    """
    z = np.asarray(logits, dtype=np.float64) / check_temperature(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) weights of a bilinear resize with half-pixel centres, as tf.image.resize does it.

    `W @ x` resizes a length-`in_size` signal; `W_r @ m @ W_c.T` an (h, w) map, without TensorFlow.
    """
    src = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
    low = np.floor(src)
    frac = src - low
    w = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    np.add.at(w, (rows, np.clip(low, 0, in_size - 1).astype(int)), 1 - frac)
    np.add.at(w, (rows, np.clip(low + 1, 0, in_size - 1).astype(int)), frac)
    return w
