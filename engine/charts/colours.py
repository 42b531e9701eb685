"""Colours every chart shares: one per split, per phase, per class."""

from __future__ import annotations

import colorsys

import plotly.colors

SPLIT_COLOURS = {"train": "#4c78a8", "validation": "#f58518", "test": "#54a24b"}
PHASE_COLOURS = {"parent": "#4c78a8", "fine-tune": "#e45756"}
SUGGESTION_COLOURS = {"steepest": "#e45756", "minimum ÷ 10": "#54a24b", "chosen": "#b279a2"}
BEFORE_AFTER_COLOURS = {"before": "#9d9da1", "after": "#4c78a8"}


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
