"""Classification metrics of a labelled set (scikit-learn's, in one JSON-ready dict).

Pure NumPy and scikit-learn: no TensorFlow, so the metrics can be computed and tested
on saved scores alone.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support, top_k_accuracy_score


def _check(labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: labels (N,) int64, probs (N, C) float64."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, classes), got shape {probs.shape}")
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must be ({probs.shape[0]},) to match probs, got shape {labels.shape}")
    if len(class_names) != probs.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {probs.shape[1]} classes")
    if len(labels) == 0:
        raise ValueError("no images to evaluate")
    if labels.dtype.kind not in "iu" and not (labels.dtype.kind == "f" and np.all(labels == np.round(labels))):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must be class indices 0..{probs.shape[1] - 1}, got {labels.min()}..{labels.max()}")
    return labels.astype(np.int64), probs


def _top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    classes = probs.shape[1]
    if k >= classes:
        # Every class is in the top k. scikit-learn warns here (and for 2 classes it rejects 2-D scores).
        return 1.0
    if classes == 2:
        # scikit-learn treats 2 classes as binary and wants the positive class's score, not (N, 2).
        return float(top_k_accuracy_score(labels, probs[:, 1], k=k, labels=[0, 1]))
    # labels=range(C): classes missing from `labels` still count as candidates.
    return float(top_k_accuracy_score(labels, probs, k=k, labels=list(range(classes))))


def classification_metrics(labels: np.ndarray, probs: np.ndarray, class_names: list[str], top_k: int = 3) -> dict:
    """Accuracy, top-k accuracy, the confusion matrix and per-class precision/recall/F1/support.

    Args:
        labels: (N,) true class indices in 0..C-1.
        probs: (N, C) class probabilities (the prediction is the argmax of each row).
        class_names: C names, index = class.
        top_k: k of the top-k accuracy; at most C is used (reported as "top_k").

    Returns:
        {"count": N, "accuracy", "top_k", "top_k_accuracy", "labels": class_names,
         "confusion_matrix": C x C ints (rows true, columns predicted),
         "per_class": {name: {"precision", "recall", "f1", "support"}}}, plain Python types only.

    Raises:
        ValueError: no images, mismatched shapes, labels out of range, or top_k < 1.
    """
    labels, probs = _check(labels, probs, class_names)
    if int(top_k) < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    classes = list(range(probs.shape[1]))
    predicted = probs.argmax(axis=1)
    k = min(int(top_k), len(classes))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    return {
        "count": int(len(labels)),
        "accuracy": float(accuracy_score(labels, predicted)),
        "top_k": k,
        "top_k_accuracy": _top_k_accuracy(labels, probs, k),
        "labels": [str(name) for name in class_names],
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).astype(int).tolist(),
        "per_class": {
            str(name): {
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
            }
            for c, name in enumerate(class_names)
        },
    }


def row_normalised(confusion: np.ndarray | list[list[int]]) -> np.ndarray:
    """Each row of a confusion matrix divided by its sum (so the diagonal is each class's recall).

    Args:
        confusion: (C, C) counts, rows = true class.

    Returns:
        (C, C) float64; a row with no images stays all 0 rather than NaN.
    """
    counts = np.asarray(confusion, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape {counts.shape}")
    rows = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
