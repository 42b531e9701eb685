"""Calibration: expected calibration error, reliability bins and temperature scaling (Guo et al. 2017).

scikit-learn has `calibration_curve` (binary only) but neither an ECE nor temperature scaling
of a multi-class model's logits, so these few lines are written here. Pure NumPy and SciPy; the
softmax itself is engine.numerics.softmax.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from engine.numerics import check_temperature

BINS = 15
T_BOUNDS = (0.05, 20.0)  # the temperatures fit_temperature searches


def _logits(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[1] == 0:
        raise ValueError(f"logits must be (N, classes), got shape {z.shape}")
    return z


def _labels(labels: np.ndarray, n: int, classes: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must be ({n},) to match the scores, got shape {labels.shape}")
    if n == 0:
        raise ValueError("no images to measure calibration on")
    if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= classes:
        raise ValueError(f"labels must be class indices 0..{classes - 1}, got {labels.min()}..{labels.max()}")
    return labels.astype(np.int64)


def _confidence(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) top-class confidence and (N,) 1.0 where the top class is the true one."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] == 0:
        raise ValueError(f"probs must be (N, classes), got shape {probs.shape}")
    labels = _labels(labels, probs.shape[0], probs.shape[1])
    return probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(np.float64)


def _bins(confidence: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(bins + 1,) edges over [0, 1] and (N,) bin of each confidence: (lo, hi], the first bin [0, hi]."""
    if int(bins) < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    # side="left" puts a confidence equal to an edge in the bin below it, so 1.0 lands in the last bin;
    # the clip puts 0.0 in the first.
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, int(bins) - 1)
    return edges, which


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> dict:
    """The reliability diagram's data: per equal-width confidence bin, mean confidence, accuracy and count.

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) true class indices.
        bins: number of equal-width bins over [0, 1].

    Returns:
        {"edges": bins + 1 floats, "confidence": bins x (float | None), "accuracy": bins x (float | None),
         "count": bins ints, "ece": float}; empty bins have None. Plain Python types only.
    """
    confidence, correct = _confidence(probs, labels)
    edges, which = _bins(confidence, bins)
    count = np.bincount(which, minlength=len(edges) - 1)
    conf_sum = np.bincount(which, weights=confidence, minlength=len(edges) - 1)
    right_sum = np.bincount(which, weights=correct, minlength=len(edges) - 1)
    # Hand-written (scikit-learn has no ECE): sum over bins of (n_b / N) |acc_b - conf_b|,
    # and n_b * acc_b and n_b * conf_b are just the per-bin sums.
    ece_value = float(np.abs(right_sum - conf_sum).sum() / len(confidence))
    return {
        "edges": [float(e) for e in edges],
        "confidence": [float(c / n) if n else None for c, n in zip(conf_sum, count, strict=True)],
        "accuracy": [float(r / n) if n else None for r, n in zip(right_sum, count, strict=True)],
        "count": [int(n) for n in count],
        "ece": ece_value,
    }


def ece(probs: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error of the top-class confidence with equal-width bins (Guo et al. 2017).

    Args:
        probs: (N, C) class probabilities.
        labels: (N,) true class indices.
        bins: number of equal-width bins over [0, 1].

    Returns:
        ECE in [0, 1]: 0 when, in every bin, accuracy equals mean confidence.
    """
    return reliability(probs, labels, bins)["ece"]


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under softmax(logits / temperature).

    Args:
        logits: (N, C) raw scores.
        labels: (N,) true class indices.
        temperature: T > 0.

    Returns:
        Mean NLL in nats, computed with log-sum-exp so large logits do not overflow.
    """
    z = _logits(logits) / check_temperature(temperature)
    labels = _labels(labels, z.shape[0], z.shape[1])
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(z)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling: the T > 0 that minimises the NLL of softmax(logits / T) on a held-out set.

    One scalar for all classes, so the model's ranking (its answers and accuracy) never changes.
    Searched on log T (the NLL is better behaved there and T stays positive) within T_BOUNDS.

    Args:
        logits: (N, C) raw scores of a validation set, not the set being reported on.
        labels: (N,) true class indices.

    Returns:
        T as a plain float; 1.0 (no change) when there are fewer than 2 samples to fit on.
    """
    z = _logits(logits)
    if len(z) < 2:
        if np.shape(labels) != (len(z),):
            raise ValueError(f"labels must be ({len(z)},) to match the scores, got shape {np.shape(labels)}")
        return 1.0  # nothing to fit on
    labels = _labels(labels, z.shape[0], z.shape[1])

    def loss(log_t: float) -> float:
        return nll(z, labels, float(np.exp(log_t)))

    found = minimize_scalar(loss, bounds=tuple(np.log(T_BOUNDS)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))
