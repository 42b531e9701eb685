"""Charts shared by the dashboard and reports (Plotly, and Altair where Plotly cannot; no Streamlit here).

One module per kind of thing shown; pages use them as `charts.X`.
"""

from engine.charts.colours import (
    BEFORE_AFTER_COLOURS,
    PHASE_COLOURS,
    SPLIT_COLOURS,
    SUGGESTION_COLOURS,
    class_colours,
    hue,
)
from engine.charts.concepts import tcav_scores
from engine.charts.data import class_balance_bar, feature_scatter, read_knn, size_scatter
from engine.charts.evaluation import confusion_grid, confusion_matrix, per_class_bars, reliability_diagram, topk_bar
from engine.charts.imported import convention_accuracy
from engine.charts.network import before_after_bars, faithfulness_curves, layer_map, projection_pair, what_changed
from engine.charts.training import (
    accuracy_latency,
    curve_epochs,
    finetune_curves,
    lr_finder,
    pointing_curve,
    runs_curves,
    training_curves,
)

__all__ = [
    "BEFORE_AFTER_COLOURS",
    "PHASE_COLOURS",
    "SPLIT_COLOURS",
    "SUGGESTION_COLOURS",
    "accuracy_latency",
    "before_after_bars",
    "class_balance_bar",
    "class_colours",
    "confusion_grid",
    "convention_accuracy",
    "confusion_matrix",
    "curve_epochs",
    "faithfulness_curves",
    "feature_scatter",
    "finetune_curves",
    "hue",
    "layer_map",
    "lr_finder",
    "pointing_curve",
    "per_class_bars",
    "projection_pair",
    "read_knn",
    "reliability_diagram",
    "runs_curves",
    "size_scatter",
    "tcav_scores",
    "topk_bar",
    "training_curves",
    "what_changed",
]
