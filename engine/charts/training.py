"""Charts of training: loss and accuracy per epoch, the LR finder, a fine-tune after its parent, runs compared."""

from __future__ import annotations

import math

import numpy as np
import plotly.colors
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.charts.colours import PHASE_COLOURS, SPLIT_COLOURS, SUGGESTION_COLOURS


def curve_epochs(done: int, planned: int, early_stopping: int = 0) -> int:
    """How many epochs a running training's chart spans.

    The planned epochs, unless early stopping is on: then such a run usually ends long before (48 of 200), and
    curves squeezed into the left quarter are hard to read; the axis follows the epochs done, with room ahead
    for the epoch in progress and a few more.
    """
    if not early_stopping:
        return max(planned, 1)
    return max(1, min(planned, done + max(5, done // 4)))


def training_curves(history: dict[str, list[float]], epochs: int, live: dict[str, float] | None = None) -> go.Figure:
    """Loss and accuracy per epoch, train solid and validation dashed, side by side.

    Args:
        history: per-epoch lists ("loss", "accuracy", "val_loss", "val_accuracy").
        epochs: epochs the x axis spans (curve_epochs while running), so the curves grow into it.
        live: the running training metrics of the epoch in progress, drawn as a hollow point.
    """

    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"), horizontal_spacing=0.08)
    for col, metric in ((1, "loss"), (2, "accuracy")):
        for key, name, dash in ((metric, "train", "solid"), (f"val_{metric}", "validation", "dash")):
            values = history.get(key) or []
            fig.add_trace(
                go.Scatter(
                    x=list(range(1, len(values) + 1)),
                    y=values,
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    line={"color": SPLIT_COLOURS["train" if name == "train" else "validation"], "dash": dash},
                ),
                row=1,
                col=col,
            )
        if live and metric in live:
            fig.add_trace(
                go.Scatter(
                    x=[len(history.get(metric) or []) + 1],
                    y=[live[metric]],
                    mode="markers",
                    name="this epoch so far",
                    showlegend=col == 1,
                    legendgroup="live",
                    marker={"color": SPLIT_COLOURS["train"], "symbol": "circle-open", "size": 10},
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="epoch", range=[0.5, max(epochs, 1) + 0.5], dtick=max(1, epochs // 10))
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=2)
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 40}, legend={"orientation": "h", "y": -0.25})
    return fig


def lr_finder(
    lrs: list[float],
    losses: list[float],
    steepest: float | None,
    min_over_10: float | None,
    chosen: float | None = None,
) -> go.Figure:
    """Smoothed loss against learning rate (log x axis), with the suggested rates marked on the curve.

    Args:
        lrs: (n,) rates of the sweep; losses: (n,) smoothed losses.
        steepest, min_over_10: the sweep's two suggestions (None: not drawn).
        chosen: the rate the user picked, drawn as a third marker.
    """

    fig = go.Figure()
    fig.add_scatter(
        x=lrs,
        y=losses,
        mode="lines",
        name="smoothed loss",
        line={"color": SPLIT_COLOURS["train"]},
        hovertemplate="rate %{x:.2e}<br>loss %{y:.3f}<extra></extra>",
    )
    log_lrs = np.log10(np.asarray(lrs, dtype=np.float64)) if lrs else None
    for name, rate, symbol in (
        ("steepest", steepest, "circle"),
        ("minimum ÷ 10", min_over_10, "diamond"),
        ("chosen", chosen, "star-open"),
    ):
        if rate is None or log_lrs is None:
            continue
        # On the curve (interpolated in log rate), so each marker reads as "the loss at this rate".
        y = float(np.interp(np.log10(rate), log_lrs, losses))
        # Named in the legend only: labels by the markers overlapped wherever two rates lie close (the chosen
        # rate is often exactly a suggestion). The chosen star is open and larger, so a suggestion under it shows.
        colour = SUGGESTION_COLOURS[name]
        chosen_marker = {"size": 20, "line": {"width": 2, "color": colour}} if name == "chosen" else {}
        fig.add_scatter(
            x=[rate],
            y=[y],
            mode="markers",
            name=f"{name}: {rate:.1e}",
            marker={"color": SUGGESTION_COLOURS[name], "size": 12, "symbol": symbol, **chosen_marker},
            hovertemplate=f"{name}<br>rate %{{x:.2e}}<br>loss %{{y:.3f}}<extra></extra>",
        )
    yaxis: dict = {"title": "loss (smoothed)"}
    if losses:
        # The blow-up at the end would squash the useful part: cap the view at 1.5x the first loss.
        low, high = min(losses), min(max(losses), 1.5 * losses[0])
        pad = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
        yaxis["range"] = [low - pad, high + 2 * pad]
    fig.update_layout(
        xaxis={"title": "learning rate", "type": "log", "exponentformat": "power"},
        yaxis=yaxis,
        margin={"l": 10, "r": 10, "t": 30, "b": 40},
        height=320,
        legend={"orientation": "h", "y": 1.15},
    )
    return fig


def finetune_curves(
    parent_history: dict[str, list[float]],
    child_history: dict[str, list[float]],
    parent_val_accuracy: float | None = None,
    metric: str = "accuracy",
    child_epochs: int | None = None,
) -> go.Figure:
    """The parent run's epochs 1..P, then the fine-tune's epochs P+1..P+C on one chart.

    Colour tells the phase, dash the split (train solid, validation dashed, as
    training_curves). A vertical line marks where fine-tuning starts.

    Args:
        parent_history, child_history: per-epoch lists ("loss", "accuracy", "val_loss",
            "val_accuracy"); either may be short or empty (the child still running).
        parent_val_accuracy: the parent's final validation accuracy, drawn as a dashed
            baseline "before fine-tuning" (accuracy only; None: no baseline).
        metric: "accuracy" or "loss".
        child_epochs: planned fine-tune epochs, to fix the x range so the curves grow into it.
    """
    parent_epochs = max((len(parent_history.get(k) or []) for k in (metric, f"val_{metric}")), default=0)
    child_done = max((len(child_history.get(k) or []) for k in (metric, f"val_{metric}")), default=0)
    fig = go.Figure()
    for phase, history, offset in (("parent", parent_history, 0), ("fine-tune", child_history, parent_epochs)):
        for key, split, dash in ((metric, "train", "solid"), (f"val_{metric}", "validation", "dash")):
            values = history.get(key) or []
            fig.add_scatter(
                x=list(range(offset + 1, offset + len(values) + 1)),
                y=values,
                mode="lines+markers",
                name=f"{phase} {split}",
                line={"color": PHASE_COLOURS[phase], "dash": dash},
            )
    fig.add_vline(
        x=parent_epochs + 0.5,
        line={"color": "#555555", "dash": "dot"},
        annotation_text="fine-tune starts",
        annotation_position="top right",
    )
    last = parent_epochs + max(child_done, child_epochs or 0, 1)
    if parent_val_accuracy is not None and metric == "accuracy":
        # A legend entry, not an annotation: a label on the line collided with "fine-tune starts" whenever the
        # baseline was near the top and the fine-tune short.
        fig.add_scatter(
            x=[0.5, last + 0.5],
            y=[parent_val_accuracy] * 2,
            mode="lines",
            name=f"before fine-tuning ({parent_val_accuracy:.1%})",
            line={"color": PHASE_COLOURS["parent"], "dash": "dot", "width": 1},
            hovertemplate=f"before fine-tuning: {parent_val_accuracy:.1%}<extra></extra>",
        )
    fig.update_xaxes(title_text="epoch", range=[0.5, last + 0.5], dtick=max(1, last // 10))
    if metric == "accuracy":
        fig.update_yaxes(title_text="accuracy", range=[0, 1.02], tickformat=".0%")
    else:
        fig.update_yaxes(title_text=metric, rangemode="tozero")
    fig.update_layout(height=320, margin={"l": 10, "r": 10, "t": 30, "b": 40}, legend={"orientation": "h", "y": -0.25})
    return fig


def runs_curves(histories: dict[str, dict], starts: dict[str, int] | None = None) -> go.Figure:
    """Validation accuracy and loss of several runs, overlaid (a fine-tune's epochs follow its parent's).

    Args:
        histories: {run title: history with "val_accuracy", "val_loss" (and train "accuracy", "loss")}.
        starts: {run title: epochs before this run's first (a fine-tune's parent epochs)}.
    """

    starts = starts or {}
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Validation accuracy", "Validation loss"))
    palette = plotly.colors.qualitative.Plotly
    for k, (title, history) in enumerate(histories.items()):
        colour = palette[k % len(palette)]
        first = starts.get(title, 0)
        for col, metric in ((1, "val_accuracy"), (2, "val_loss")):
            values = history.get(metric) or history.get(metric.removeprefix("val_")) or []
            fig.add_trace(
                go.Scatter(
                    x=list(range(first + 1, first + len(values) + 1)),
                    y=values,
                    mode="lines+markers",
                    name=title,
                    legendgroup=title,
                    showlegend=col == 1,
                    line={"color": colour},
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    fig.update_layout(height=360, margin={"l": 10, "r": 10, "t": 30, "b": 40}, legend={"orientation": "h", "y": -0.3})
    return fig


def accuracy_latency(rows: list[dict]) -> go.Figure:
    """Accuracy against inference latency per image, one point per run (up and to the left is better).

    rows: {"title", "accuracy", "latency_ms", "backbone"}; rows without both numbers are left out.
    """
    rows = [r for r in rows if r.get("accuracy") is not None and r.get("latency_ms")]
    palette = plotly.colors.qualitative.Plotly
    backbones = sorted({r["backbone"] for r in rows})
    fig = go.Figure()
    for k, name in enumerate(backbones):
        mine = [r for r in rows if r["backbone"] == name]
        fig.add_trace(
            go.Scatter(
                x=[r["latency_ms"] for r in mine],
                y=[r["accuracy"] for r in mine],
                mode="markers+text",
                text=[r["title"] for r in mine],
                textposition="top center",
                name=name,
                marker={"size": 13, "color": palette[k % len(palette)]},
                hovertemplate="%{text}<br>%{x:.1f} ms per image, accuracy %{y:.1%}<extra></extra>",
            )
        )
    # Padded ranges: Plotly's autorange ends at the outermost points, so their markers were cut in half and their
    # labels (above and centred on each point) ran off the plot.
    xs, ys = [r["latency_ms"] for r in rows], [r["accuracy"] for r in rows]
    xaxis: dict = {"title": "latency per image on this machine (ms, one image at a time)"}
    yaxis: dict = {"title": "accuracy", "tickformat": ".0%"}
    if rows:
        xaxis["range"] = [0, max(xs) * 1.25]
        low, high = min(ys), max(ys)
        pad = max(0.15 * (high - low), 0.02)
        bottom, top = low - pad, high + 2 * pad  # more room above: the labels sit over the points
        yaxis["range"] = [bottom, top]
        # Ticks only where an accuracy can be: the padding above 100% is room for labels, not a value.
        step = next((s for s in (0.01, 0.02, 0.05, 0.1) if (top - bottom) / s <= 8), 0.2)
        ticks, tick = [], math.ceil(bottom / step - 1e-9) * step
        while tick <= min(top, 1.0) + 1e-9:
            ticks.append(round(tick, 4))
            tick += step
        yaxis["tickvals"] = ticks
    fig.update_traces(cliponaxis=False)
    fig.update_layout(
        xaxis=xaxis,
        yaxis=yaxis,
        height=380,
        margin={"l": 10, "r": 10, "t": 20, "b": 40},
    )
    return fig


def pointing_curve(epochs: list[int], pointing: list[float], history: dict[str, list[float]]) -> go.Figure:
    """The pointing game per epoch (engine.explain.timeline) with the validation accuracy, on one 0-100% axis.

    Args:
        epochs: the timeline's epoch numbers (a fine-tune's count on from its parent's).
        pointing: per epoch, the share of the fixed images whose map peaks inside the object's box.
        history: the run's per-epoch lists; "val_accuracy" (else "accuracy") is drawn beside it.
    """
    fig = go.Figure()
    fig.add_scatter(
        x=list(epochs),
        y=list(pointing),
        mode="lines+markers",
        name="pointing game (peak in the box)",
        line={"color": "#54a24b"},
    )
    key = "val_accuracy" if history.get("val_accuracy") else "accuracy"
    values = history.get(key) or []
    fig.add_scatter(
        x=list(range(1, len(values) + 1)),
        y=values,
        mode="lines",
        name="validation accuracy" if key == "val_accuracy" else "training accuracy",
        line={"color": SPLIT_COLOURS["validation" if key == "val_accuracy" else "train"], "dash": "dash"},
    )
    fig.update_xaxes(title_text="epoch")
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    fig.update_layout(height=300, margin={"l": 10, "r": 10, "t": 30, "b": 40}, legend={"orientation": "h", "y": -0.3})
    return fig
