"""Evaluation of trained runs: metrics, calibration, mistakes, latency.

- metrics.py: accuracy, top-k, per-class precision/recall/F1, confusion (scikit-learn).
- calibration.py: expected calibration error, reliability bins, temperature scaling.
- evaluation.py: a run on a labelled source, scored once and cached in the run folder.
- latency.py: inference time per image through the compiled path.
"""

from engine.evaluate.evaluation import (
    SPLITS,
    Evaluation,
    EvaluationError,
    LabelledSet,
    evaluate,
    labelled_set,
    run_model,
    save_temperature,
    saved_temperature,
    score,
)

__all__ = [
    "SPLITS",
    "Evaluation",
    "EvaluationError",
    "LabelledSet",
    "evaluate",
    "labelled_set",
    "run_model",
    "save_temperature",
    "saved_temperature",
    "score",
]
