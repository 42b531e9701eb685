"""Charts shared by the dashboard and reports (Plotly, and Altair where Plotly cannot; no Streamlit here)."""

from __future__ import annotations

import colorsys

import plotly.colors
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


def training_curves(history: dict[str, list[float]], epochs: int, live: dict[str, float] | None = None) -> go.Figure:
    """Loss and accuracy per epoch, train solid and validation dashed, side by side.

    Args:
        history: per-epoch lists ("loss", "accuracy", "val_loss", "val_accuracy").
        epochs: planned epochs (fixes the x range, so the curves grow into it).
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
