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
