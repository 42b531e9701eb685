"""Charts shared by the dashboard and reports (Plotly, and Altair where Plotly cannot; no Streamlit here)."""

from __future__ import annotations

import colorsys
import math

import plotly.colors
import plotly.graph_objects as go

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


SPLIT_COLOURS = {"train": "#4c78a8", "validation": "#f58518", "test": "#54a24b"}


def class_balance_bar(per_split: dict[str, dict[str, int]]) -> go.Figure:
    """Stacked bars: images per class, split by train / validation / test.

    Args:
        per_split: {split: {class: count}}.
    """
    fig = go.Figure()
    for split, counts in per_split.items():
        fig.add_bar(x=list(counts), y=list(counts.values()), name=split, marker_color=SPLIT_COLOURS.get(split))
    fig.update_layout(
        barmode="stack",
        yaxis_title="images",
        margin={"l": 10, "r": 10, "t": 30, "b": 40},
        height=320,
        legend={"orientation": "h", "y": 1.12},
    )
    return fig


def class_colours(classes: list[str]) -> dict[str, str]:
    """One colour per class from a qualitative palette of distinct hues, in first-seen order.

    D3's ten colours (Tableau 10) up to ten classes, then Plotly's 26-colour
    Alphabet; beyond that colours repeat. Every chart of a dataset colours a
    class the same way.
    """
    names = list(dict.fromkeys(classes))
    palette = plotly.colors.qualitative.D3 if len(names) <= 10 else plotly.colors.qualitative.Alphabet
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def hue(colour: str) -> float:
    """Hue in degrees of a '#rrggbb' colour."""
    r, g, b = (int(colour.lstrip("#")[i : i + 2], 16) / 255 for i in (0, 2, 4))
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360


def read_knn(accuracy: float, num_classes: int) -> str:
    """One sentence that reads a k-NN accuracy in feature space for the user.

    The thresholds are on the accuracy above chance, rescaled so that chance is
    0 and perfect is 1 (Cohen's kappa for balanced classes).
    """
    chance = 1 / max(num_classes, 1)
    above = (accuracy - chance) / (1 - chance) if chance < 1 else 0.0
    if above >= 0.8:
        verdict = "the classes already separate well in these features, so a linear head should do well"
    elif above >= 0.5:
        verdict = (
            "the classes mostly separate; a head on these features should learn them, "
            "and more images or fine-tuning can close the gap"
        )
    elif above >= 0.2:
        verdict = (
            "the classes overlap a lot in these features; expect a modest accuracy from a head alone, "
            "and try another backbone or fine-tuning"
        )
    else:
        verdict = (
            "barely better than chance: these features do not tell the classes apart; check the labels, "
            "or fine-tune or train from scratch"
        )
    return f"k-NN accuracy {accuracy:.0%} (chance {chance:.0%}): {verdict}."


def size_scatter(widths: list[int], heights: list[int], classes: list[str], paths: list[str]) -> go.Figure:
    """Image width against height, one colour per class; hover shows the file."""
    fig = go.Figure()
    colours = class_colours(classes)
    for name in colours:
        idx = [i for i, c in enumerate(classes) if c == name]
        fig.add_scatter(
            x=[widths[i] for i in idx],
            y=[heights[i] for i in idx],
            mode="markers",
            name=name,
            text=[f"{paths[i]}<br>{widths[i]}×{heights[i]} (aspect {widths[i] / heights[i]:.2f})" for i in idx],
            hoverinfo="text",
            marker={"size": 7, "opacity": 0.6, "color": colours[name]},
        )
    fig.update_layout(
        xaxis_title="width (px)",
        yaxis_title="height (px)",
        margin={"l": 10, "r": 10, "t": 30, "b": 40},
        height=320,
    )
    return fig


def feature_scatter(xy, classes: list[str], paths: list[str], thumbnails: list[str], title: str):
    """2-D projection of image features, coloured by class, with the image in the tooltip.

    An Altair chart: Vega's tooltip shows a field named `image` as a picture,
    which Plotly's hover labels cannot.
    """
    import altair as alt
    import pandas as pd

    frame = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "class": classes, "file": paths, "image": thumbnails})
    colours = class_colours(classes)  # explicit: the dashboard theme's palette pairs light and dark of one hue
    return (
        alt.Chart(frame, title=title)
        .mark_circle(size=70, opacity=0.75)
        .encode(
            x=alt.X("x", title="component 1", axis=alt.Axis(labels=False, ticks=False)),
            y=alt.Y("y", title="component 2", axis=alt.Axis(labels=False, ticks=False)),
            color=alt.Color(
                "class:N",
                scale=alt.Scale(domain=list(colours), range=list(colours.values())),
                legend=alt.Legend(orient="right"),
            ),
            tooltip=["image", "class", "file"],
        )
        .properties(height=460)
    )  # not .interactive(): wheel-zoom would hijack scrolling the page


def faithfulness_curves(fractions, deletion, insertion, deletion_auc: float, insertion_auc: float) -> go.Figure:
    """Class probability as the map's top pixels are deleted / inserted (Petsiuk et al.)."""
    fig = go.Figure()
    fig.add_scatter(
        x=fractions, y=deletion, mode="lines+markers", name=f"deletion (area {deletion_auc:.2f}, lower is better)"
    )
    fig.add_scatter(
        x=fractions, y=insertion, mode="lines+markers", name=f"insertion (area {insertion_auc:.2f}, higher is better)"
    )
    fig.update_layout(
        xaxis={"title": "fraction of pixels, most important first", "tickformat": ".0%"},
        yaxis={"title": "class probability", "range": [0, 1]},
        margin={"l": 10, "r": 10, "t": 30, "b": 40},
        height=320,
        legend={"orientation": "h", "y": 1.15},
    )
    return fig


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
    from plotly.subplots import make_subplots

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


# ---- learning-rate finder and fine-tuning -------------------------------------------------

SUGGESTION_COLOURS = {"steepest": "#e45756", "minimum ÷ 10": "#54a24b", "chosen": "#b279a2"}
PHASE_COLOURS = {"parent": "#4c78a8", "fine-tune": "#e45756"}
BEFORE_AFTER_COLOURS = {"before": "#9d9da1", "after": "#4c78a8"}


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
    import numpy as np

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


def what_changed(blocks: list[dict]) -> go.Figure:
    """Per block, in network order: how far fine-tuning moved the weights, and how alike the features stayed.

    Args:
        blocks: [{"block": name, "params": int, "weight_change": ||W1 - W0|| / ||W0||,
            "cka": linear CKA of the block's outputs before / after, 0..1 (None: not drawn, e.g. the head)}].
    """
    from plotly.subplots import make_subplots

    names = [str(b["block"]) for b in blocks]
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.12,
        subplot_titles=("Relative weight change", "Feature similarity before / after (CKA)"),
    )
    for row, key, colour, fmt in ((1, "weight_change", "#4c78a8", ".2%"), (2, "cka", "#f58518", ".3f")):
        shown = [b for b in blocks if b.get(key) is not None]
        fig.add_trace(
            go.Bar(
                x=[str(b["block"]) for b in shown],
                y=[b[key] for b in shown],
                customdata=[b.get("params") for b in shown],
                # labelled: early blocks often move by a fraction of a percent, too short a bar to read
                text=[format(b[key], fmt) for b in shown],
                textposition="outside",
                cliponaxis=False,
                name="weight change" if row == 1 else "CKA",
                marker_color=colour,
                showlegend=False,
                hovertemplate=f"%{{x}}<br>%{{y:{fmt}}}<br>%{{customdata:,}} parameters<extra></extra>",
            ),
            row=row,
            col=1,
        )
    # Both panels keep the network's order, also where the CKA panel lacks a block.
    fig.update_xaxes(categoryorder="array", categoryarray=names)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(range=[0, 1.15], tickvals=[0, 0.25, 0.5, 0.75, 1], row=2, col=1)  # room for the labels
    fig.update_layout(height=460, margin={"l": 10, "r": 10, "t": 30, "b": 40})
    return fig


def projection_pair(
    before_xy,
    after_xy,
    labels: list[str],
    classes: list[str],
    before_knn: float | None,
    after_knn: float | None,
) -> go.Figure:
    """2-D projections of the same images' features before and after fine-tuning, side by side.

    Args:
        before_xy, after_xy: (n, 2) projected features.
        labels: (n,) class name of each point.
        classes: all class names, in the dataset's order (fixes the colours).
        before_knn, after_knn: k-NN accuracy in each feature space, shown in the titles (None: left out).
    """
    from plotly.subplots import make_subplots

    def title(when: str, knn: float | None) -> str:
        return when if knn is None else f"{when} (k-NN accuracy {knn:.0%})"

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(title("Before fine-tuning", before_knn), title("After fine-tuning", after_knn)),
        horizontal_spacing=0.06,
    )
    colours = class_colours(list(classes) + list(labels))
    for col, xy in ((1, before_xy), (2, after_xy)):
        for name in colours:
            idx = [i for i, c in enumerate(labels) if c == name]
            if not idx:
                continue
            fig.add_trace(
                go.Scatter(
                    x=[float(xy[i][0]) for i in idx],
                    y=[float(xy[i][1]) for i in idx],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    marker={"size": 7, "opacity": 0.75, "color": colours[name]},
                    hovertemplate=f"{name}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(showticklabels=False, title_text="component 1")
    fig.update_yaxes(showticklabels=False, title_text="component 2", col=1)
    fig.update_yaxes(showticklabels=False, col=2)
    fig.update_layout(height=420, margin={"l": 10, "r": 10, "t": 40, "b": 40})
    return fig


def before_after_bars(before: dict[str, float], after: dict[str, float]) -> go.Figure:
    """Metrics before and after fine-tuning, side by side per metric; percentages when all lie in 0..1."""
    names = list(dict.fromkeys([*before, *after]))
    values_all = [v for d in (before, after) for v in d.values() if v is not None]
    fractions = all(0 <= v <= 1 for v in values_all)
    fmt = ".1%" if fractions else ".3g"
    fig = go.Figure()
    for when, values in (("before", before), ("after", after)):
        shown = [n for n in names if values.get(n) is not None]
        fig.add_bar(
            x=shown,
            y=[values[n] for n in shown],
            name=f"{when} fine-tuning",
            text=[format(values[n], fmt) for n in shown],
            textposition="auto",
            marker_color=BEFORE_AFTER_COLOURS[when],
            hovertemplate=f"%{{x}} {when}: %{{y:{fmt}}}<extra></extra>",
        )
    fig.update_layout(
        barmode="group",
        yaxis={"range": [0, 1.05], "tickformat": ".0%"} if fractions else {"rangemode": "tozero"},
        margin={"l": 10, "r": 10, "t": 30, "b": 40},
        height=320,
        legend={"orientation": "h", "y": 1.15},
    )
    return fig


def layer_map(blocks: list[dict]) -> go.Figure:
    """Parameters per block, trainable (coloured) and frozen (grey), input at the top.

    Args:
        blocks: [{"block", "layers", "trainable", "frozen"}] in network order (finetune.block_rows).
    """
    names = [b["block"] for b in blocks]
    fig = go.Figure()
    for key, colour, label in (("trainable", "#1f77b4", "trains"), ("frozen", "#c7c7c7", "frozen")):
        fig.add_trace(
            go.Bar(
                y=names,
                x=[b[key] for b in blocks],
                orientation="h",
                name=label,
                marker_color=colour,
                customdata=[b["layers"] for b in blocks],
                hovertemplate=f"%{{y}}: %{{x:,}} {label} parameters (%{{customdata}} layers)<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="stack",
        height=60 + 26 * len(blocks),
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis={"autorange": "reversed", "title": None},
        xaxis={"title": "parameters"},
        legend={"orientation": "h", "y": 1.08, "x": 0},
    )
    return fig


# ---- evaluation and runs ------------------------------------------------------------------


def confusion_grid(matrix, classes: list[str], normalised: bool = False) -> go.Figure:
    """A confusion matrix drawn as square markers, so a click selects a cell (Plotly heatmaps cannot be selected).

    Points are row-major: point k is (true k // n, predicted k % n), also in its customdata.
    Rows are true classes, top to bottom.
    """
    import numpy as np

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


def runs_curves(histories: dict[str, dict], starts: dict[str, int] | None = None) -> go.Figure:
    """Validation accuracy and loss of several runs, overlaid (a fine-tune's epochs follow its parent's).

    Args:
        histories: {run title: history with "val_accuracy", "val_loss" (and train "accuracy", "loss")}.
        starts: {run title: epochs before this run's first (a fine-tune's parent epochs)}.
    """
    from plotly.subplots import make_subplots

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
