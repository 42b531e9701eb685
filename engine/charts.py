"""Plotly figures shared by the dashboard and reports (no Streamlit here)."""

from __future__ import annotations

import plotly.graph_objects as go

from engine.imagenet import short_label
from engine.predict import Prediction


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
