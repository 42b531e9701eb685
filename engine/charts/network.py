"""Charts of the network itself: faithfulness of its maps, its blocks, and what fine-tuning changed in them."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from engine.charts.colours import BEFORE_AFTER_COLOURS, class_colours


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


def what_changed(blocks: list[dict]) -> go.Figure:
    """Per block, in network order: how far fine-tuning moved the weights, and how alike the features stayed.

    Args:
        blocks: [{"block": name, "params": int, "weight_change": ||W1 - W0|| / ||W0||,
            "cka": linear CKA of the block's outputs before / after, 0..1 (None: not drawn, e.g. the head)}].
    """

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
