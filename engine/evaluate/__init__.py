"""Evaluation of trained runs: metrics, calibration, mistakes.

- metrics.py: accuracy, top-k, per-class precision/recall/F1, confusion (scikit-learn).
- calibration.py: expected calibration error, reliability bins, temperature scaling.
- evaluation.py: a run on a labelled source, scored once and cached in the run folder.
"""

from engine.evaluate.evaluation import (
    SPLITS,
    Evaluation,
    EvaluationError,
    LabelledSet,
    evaluate,
    labelled_set,
    save_temperature,
    score,
)

__all__ = [
    "SPLITS",
    "Evaluation",
    "EvaluationError",
    "LabelledSet",
    "evaluate",
    "labelled_set",
    "save_temperature",
    "score",
]
