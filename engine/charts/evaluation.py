"""Charts of predictions and evaluations: top-k bars, confusion matrices, calibration, per-class scores."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from engine.charts.colours import BEFORE_AFTER_COLOURS
from engine.imagenet import short_label
from engine.model.classifier import Prediction


def topk_bar(prediction: Prediction) -> go.Figure:
    """Horizontal bar chart of a prediction's top-k probabilities, best on top."""
    top = list(reversed(prediction.top))
    fig = go.Figure(
        go.Bar(
            x=[t.probability for t in top],
            y=[short_label(t.label) for t in top],
            orientation="h",
            text=[f"{t.probability:.1%}" for t in top],
            textposition="auto",
            hovertext=[f"{t.label} (class {t.index})" for t in top],
            hoverinfo="text",
            marker_color="#4c78a8",
        )
    )
    fig.update_layout(
        xaxis={"range": [0, 1], "tickformat": ".0%", "title": "probability"},
        margin={"l": 10, "r": 10, "t": 10, "b": 40},
        height=60 + 34 * len(top),
    )
    return fig


def confusion_matrix(matrix: list[list[int]], classes: list[str], title: str) -> go.Figure:
    """Counts of true class (rows) against predicted class (columns)."""
    fig = go.Figure(
        go.Heatmap(
            z=matrix,
            x=classes,
            y=classes,
            colorscale="Blues",
            text=matrix,
            texttemplate="%{text}",
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
            showscale=False,
        )
    )
    fig.update_layout(
        title=title,
        xaxis={"title": "predicted"},
        yaxis={"title": "true", "autorange": "reversed"},
        height=120 + 40 * len(classes),
        margin={"l": 10, "r": 10, "t": 40, "b": 40},
    )
    return fig


def confusion_grid(matrix, classes: list[str], normalised: bool = False) -> go.Figure:
    """A confusion matrix drawn as square markers, so a click selects a cell (Plotly heatmaps cannot be selected).

    Points are row-major: point k is (true k // n, predicted k % n), also in its customdata.
    Rows are true classes, top to bottom.
    """

    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    shown = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0) if normalised else counts
    n = len(classes)
    t, p = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    t, p = t.ravel(), p.ravel()
    values = shown[t, p]
    text = [f"{v:.0%}" if normalised else f"{int(v)}" for v in values]
    cell = max(14, min(60, 520 // max(n, 1)))
    fig = go.Figure(
        go.Scatter(
            x=[classes[k] for k in p],
            y=[classes[k] for k in t],
            mode="markers+text",
            text=text,
            textfont={"color": ["white" if v > 0.55 * max(values.max(), 1e-9) else "#222" for v in values]},
            customdata=np.stack([t, p], axis=1),
            # A click selects one cell; the others stay readable (Plotly dims unselected points to 0.2).
            selected={"marker": {"opacity": 1.0}},
            unselected={"marker": {"opacity": 0.55}},
            hovertemplate="true %{y}, predicted %{x}: %{text}<br>click to see these images<extra></extra>",
            marker={
                "symbol": "square",
                "size": cell,
                "color": values,
                "colorscale": "Blues",
                "cmin": 0,
                "cmax": max(values.max(), 1e-9),
                "line": {"width": 1, "color": "#ddd"},
            },
        )
    )
    fig.update_layout(
        xaxis={"title": "predicted", "type": "category", "categoryorder": "array", "categoryarray": classes},
        yaxis={"title": "true", "type": "category", "categoryorder": "array", "categoryarray": classes[::-1]},
        height=140 + int(cell * 1.15) * n,
        width=None,
        margin={"l": 10, "r": 10, "t": 20, "b": 40},
        clickmode="event+select",
        dragmode=False,
    )
    return fig


def reliability_diagram(before: dict, after: dict | None = None, temperature: float | None = None) -> go.Figure:
    """Accuracy against confidence per bin (engine.evaluate.calibration.reliability), before and after scaling.

    Bars: the share of images per bin. The diagonal is perfect calibration.
    """
    edges = before["edges"]
    centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:], strict=True)]
    total = max(sum(before["count"]), 1)
    fig = go.Figure()
    fig.add_trace(
        go.Bar(
            x=centres,
            y=[c / total for c in before["count"]],
            width=(edges[1] - edges[0]) * 0.9,
            name="share of images",
            marker_color="rgba(157,157,161,0.35)",
            hovertemplate="confidence %{x:.2f}: %{y:.0%} of the images<extra></extra>",
        )
    )
    fig.add_trace(
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated", line={"dash": "dot", "color": "#888"})
    )
    curves = [("as trained", before, BEFORE_AFTER_COLOURS["before"])]
    if after is not None and temperature is not None:
        curves.append((f"temperature {temperature:.2f}", after, BEFORE_AFTER_COLOURS["after"]))
    for name, data, colour in curves:
        keep = [k for k, c in enumerate(data["count"]) if c]
        fig.add_trace(
            go.Scatter(
                x=[data["confidence"][k] for k in keep],
                y=[data["accuracy"][k] for k in keep],
                mode="lines+markers",
                name=f"{name} (ECE {data['ece']:.3f})",
                line={"color": colour},
                customdata=[data["count"][k] for k in keep],
                hovertemplate="confidence %{x:.2f}, accuracy %{y:.0%}, %{customdata} images<extra></extra>",
            )
        )
    fig.update_layout(
        xaxis={"title": "confidence (top class probability)", "range": [0, 1], "tickformat": ".0%"},
        yaxis={"title": "accuracy", "range": [0, 1.02], "tickformat": ".0%"},
        height=380,
        margin={"l": 10, "r": 10, "t": 20, "b": 40},
        legend={"orientation": "h", "y": -0.25},
    )
    return fig


def per_class_bars(per_class: dict[str, dict]) -> go.Figure:
    """Precision, recall and F1 per class, grouped."""
    names = list(per_class)
    colours = {"precision": "#4c78a8", "recall": "#f58518", "f1": "#54a24b"}
    fig = go.Figure(
        [
            go.Bar(x=names, y=[per_class[n][m] for n in names], name=m, marker_color=colours[m])
            for m in ("precision", "recall", "f1")
        ]
    )
    fig.update_layout(
        barmode="group",
        yaxis={"range": [0, 1.02], "tickformat": ".0%"},
        height=320,
        margin={"l": 10, "r": 10, "t": 20, "b": 40},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig
