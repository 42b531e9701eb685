"""Charts of a dataset: class balance, image sizes, features in 2-D and how to read their k-NN accuracy."""

from __future__ import annotations

import plotly.graph_objects as go

from engine.charts.colours import SPLIT_COLOURS, class_colours


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
    import altair as alt  # heavy: Altair and pandas load in about a second; only this scatter needs them
    import pandas as pd  # heavy: as Altair

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
