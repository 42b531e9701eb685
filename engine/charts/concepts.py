"""Charts of concept tests (TCAV): the class's score along the concept, per layer, against random directions."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

CONCEPT_COLOUR = "#4c78a8"
NOT_SIGNIFICANT_COLOUR = "#bab0ac"  # grey and hatched: a score that random directions also reach
RANDOM_COLOUR = "#9d9da1"
WIDTH = 0.34  # of a layer's slot, per bar
SHIFT = 0.19  # the concept bar left of the layer's centre, the random baseline right


def _jitter(count: int, spread: float = 0.08) -> list[float]:
    """Fixed horizontal offsets that keep equal scores side by side instead of on top of each other."""
    if count <= 1:
        return [0.0] * count
    return [spread * (2 * k / (count - 1) - 1) for k in range(count)]


def _verdict(r: dict) -> str:
    if not r["significant"]:
        return "n.s." if r["separable"] else "n.s. (not separable)"
    return "p < 0.001" if r["p_corrected"] < 0.001 else f"p = {r['p_corrected']:.2g}"


def tcav_scores(layers: list[dict], concept: str, class_name: str, separable: float = 0.7) -> go.Figure:
    """Per layer, in network order: the concept CAVs' TCAV score beside random CAVs'; below, CAV accuracy.

    Bars are the means with one standard deviation as error bars; the points are the individual CAVs'
    scores. A layer whose scores do not differ significantly from random is grey, hatched and marked "n.s.".

    Args:
        layers: engine.explain.concepts LayerResult dicts (layer, scores, random_scores, score_mean, score_std,
            random_mean, random_std, p_corrected, significant, separable, cav_accuracy, cav_accuracies).
        separable: the CAV accuracy under which a layer cannot tell the concept from random images.
    """
    names = [str(r["layer"]) for r in layers]
    xs = list(range(len(layers)))
    fig = make_subplots(
        rows=2,
        cols=1,
        shared_xaxes=True,
        row_heights=[0.72, 0.28],
        vertical_spacing=0.13,
        subplot_titles=(
            f"TCAV score: share of {class_name!r} images whose score rises along {concept!r}",
            f"CAV accuracy on held-out images (under {separable:.0%}, red line: cannot tell the concept from random)",
        ),
    )
    labels = [_verdict(r) for r in layers]
    for significant in (True, False):  # two traces, so the legend shows both looks
        picked = [k for k, r in enumerate(layers) if bool(r["significant"]) == significant]
        if not picked:
            continue
        fig.add_trace(
            go.Bar(
                x=[xs[k] - SHIFT for k in picked],
                y=[layers[k]["score_mean"] for k in picked],
                width=WIDTH,
                error_y={"type": "data", "array": [layers[k]["score_std"] for k in picked], "color": "#333"},
                marker={
                    "color": CONCEPT_COLOUR if significant else NOT_SIGNIFICANT_COLOUR,
                    "pattern": {"shape": "" if significant else "/", "fgcolor": "#666"},
                },
                name=f"{concept!r} CAVs" + ("" if significant else ": not significant (n.s.)"),
                customdata=[[names[k], labels[k]] for k in picked],
                hovertemplate="%{customdata[0]}<br>TCAV %{y:.0%} (mean)<br>%{customdata[1]}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Bar(
            x=[x + SHIFT for x in xs],
            y=[r["random_mean"] for r in layers],
            width=WIDTH,
            error_y={"type": "data", "array": [r["random_std"] for r in layers], "color": "#333"},
            marker={"color": RANDOM_COLOUR, "opacity": 0.55},
            name="random CAVs (baseline)",
            customdata=names,
            hovertemplate="%{customdata}<br>random %{y:.0%} (mean)<extra></extra>",
        ),
        row=1,
        col=1,
    )
    for key, shift, colour, title in (
        ("scores", -SHIFT, "#1d3557", "one concept CAV"),
        ("random_scores", SHIFT, "#555", "one random CAV"),
    ):
        px, py = [], []
        for x, r in zip(xs, layers, strict=True):
            values = list(r[key])
            px += [x + shift + j for j in _jitter(len(values))]
            py += values
        fig.add_trace(
            go.Scatter(
                x=px,
                y=py,
                mode="markers",
                marker={"size": 5, "color": colour, "line": {"width": 0.5, "color": "white"}},
                name=title,
                hovertemplate="%{y:.0%}<extra>" + title + "</extra>",
            ),
            row=1,
            col=1,
        )
    fig.add_trace(  # the verdicts above the bars, clear of their error bars and points
        go.Scatter(
            x=[x - SHIFT for x in xs],
            y=[1.07] * len(xs),
            mode="text",
            text=labels,
            textfont={"color": ["#1d3557" if r["significant"] else "#7f7f7f" for r in layers]},
            showlegend=False,
            hoverinfo="skip",
        ),
        row=1,
        col=1,
    )
    fig.add_hline(y=0.5, line_dash="dash", line_color="#888", row=1, col=1)
    fig.add_annotation(
        x=1, xref="x domain", y=0.5, yref="y", text="0.5: chance", showarrow=False, xanchor="right", yshift=8
    )
    fig.add_trace(
        go.Bar(
            x=xs,
            y=[r["cav_accuracy"] for r in layers],
            width=2 * WIDTH,
            marker={
                "color": [CONCEPT_COLOUR if r["separable"] else NOT_SIGNIFICANT_COLOUR for r in layers],
                "pattern": {"shape": ["" if r["separable"] else "/" for r in layers], "fgcolor": "#666"},
            },
            text=[
                f"{r['cav_accuracy']:.0%}" + ("" if r["separable"] else ": cannot tell it from random") for r in layers
            ],
            textposition="inside",
            insidetextanchor="end",
            name="CAV accuracy",
            showlegend=False,
            customdata=names,
            hovertemplate="%{customdata}<br>CAV accuracy %{y:.0%} (held out)<extra></extra>",
        ),
        row=2,
        col=1,
    )
    fig.add_hline(y=separable, line_dash="dot", line_color="#e45756", row=2, col=1)
    fig.update_xaxes(tickvals=xs, ticktext=names, range=[-0.6, len(xs) - 0.4])
    fig.update_yaxes(range=[0, 1.13], tickformat=".0%", tickvals=[0, 0.25, 0.5, 0.75, 1], row=1, col=1)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", tickvals=[0, 0.5, 1], row=2, col=1)
    fig.update_layout(
        height=560,
        barmode="overlay",
        margin={"l": 10, "r": 10, "t": 40, "b": 40},
        legend={"orientation": "h", "y": -0.12},
    )
    return fig
