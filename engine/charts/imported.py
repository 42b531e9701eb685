"""Charts of an imported model: its accuracy under each pixel convention (engine.importing)."""

from __future__ import annotations

import plotly.graph_objects as go

from engine.backbones.conventions import TITLES

CHOSEN, FLAGGED, OTHER = "#54a24b", "#e45756", "#9d9da1"


def convention_accuracy(accuracy: dict[str, float], chosen: str, flagged: dict[str, str] | None = None) -> go.Figure:
    """Horizontal bars: top-1 accuracy on the labelled sample under each convention, in the given order.

    The chosen convention is green, a flagged one (clearly wrong) red and marked "⚠", the others grey.
    """
    flagged = flagged or {}
    names = list(accuracy)[::-1]  # plotly draws the first bar at the bottom: keep the given order top-down
    labels = [f"{'⚠ ' if n in flagged else ''}{TITLES.get(n, n)}" for n in names]
    colours = [CHOSEN if n == chosen else FLAGGED if n in flagged else OTHER for n in names]
    notes = [
        "chosen" if n == chosen else flagged[n] if n in flagged else "" for n in names
    ]  # hover text: why a bar is coloured
    fig = go.Figure(
        go.Bar(
            x=[accuracy[n] for n in names],
            y=labels,
            orientation="h",
            marker_color=colours,
            text=[f"{accuracy[n]:.0%}{' · chosen' if n == chosen else ''}" for n in names],
            textposition="auto",
            customdata=notes,
            hovertemplate="%{y}: %{x:.1%} top-1<br>%{customdata}<extra></extra>",
        )
    )
    fig.update_layout(
        xaxis={"range": [0, 1], "tickformat": ".0%", "title": "top-1 accuracy on the labelled sample"},
        margin={"l": 10, "r": 10, "t": 10, "b": 40},
        height=80 + 40 * len(names),
    )
    return fig
