"""Numbers in words for the pages: plurals, changes that equal the shown difference, percentages near a threshold.

Plain Python (no Streamlit), so tests check every wording directly (tests/test_wording.py).
"""

from __future__ import annotations

import math


def plural(count: int, word: str, many: str | None = None) -> str:
    """ "1 mistake", "2 mistakes" ("right answer" → "right answers"; `many` for irregular plurals)."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"


def change(before: float, after: float, digits: int = 3) -> str:
    """`after - before` signed, from the two values as shown with `digits` decimals.

    The difference of the rounded values, so it always equals what a reader subtracts (0.060 → 0.067 is
    +0.007, never the unrounded +0.006); no "-0.000".
    """
    delta = round(float(f"{after:.{digits}f}") - float(f"{before:.{digits}f}"), digits)
    return f"{delta + 0.0:+.{digits}f}"  # + 0.0 turns -0.0 into 0.0


def points(before: float, after: float, digits: int = 1) -> str:
    """The change between two fractions shown as percentages with `digits` decimals, in percentage points.

    "+2.2 points", not "+2.2%" (which reads as relative); the difference of the percentages as shown.
    """
    delta = round(float(f"{100 * after:.{digits}f}") - float(f"{100 * before:.{digits}f}"), digits)
    return f"{delta + 0.0:+.{digits}f} points"


def percent_below(value: float, threshold: float) -> str:
    """`value` as a percentage that never reads as reaching `threshold` when it lies below it.

    Whole percents where that is honest; one or two decimals where rounding would reach the threshold
    (49.6% under 50% is "49.6%", not "50%"); floored beyond that.
    """
    if value >= threshold:
        return f"{value:.0%}"
    for digits in (0, 1, 2):
        shown = f"{value:.{digits}%}"
        if float(shown[:-1]) < 100 * threshold:
            return shown
    return f"{math.floor(value * 1e4) / 100:.2f}%"


def share(value: float) -> str:
    """A signed share as "+12.3%", "-0.4%", and "0.0%" for what rounds to nothing (never "-0.0%")."""
    return "0.0%" if abs(value) < 0.0005 else f"{value:+.1%}"
