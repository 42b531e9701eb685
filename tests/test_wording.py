"""Numbers in words (ui.wording): plurals, changes equal to the shown difference, percentages under a threshold."""

import pytest

from ui import wording


def test_plural():
    assert wording.plural(1, "mistake") == "1 mistake"  # was "1 mistakes" on Evaluate
    assert wording.plural(0, "mistake") == "0 mistakes"
    assert wording.plural(1200, "right answer") == "1,200 right answers"
    assert wording.plural(2, "class", "classes") == "2 classes"


@pytest.mark.parametrize("before, after", [(0.0604, 0.0666), (0.0596, 0.0664), (0.1235, 0.1234), (0.5, 0.25)])
def test_a_change_equals_the_difference_of_the_shown_values(before, after):
    """Evaluate showed ECE 0.060 → 0.067 with a delta of "+0.006" (computed before rounding)."""
    shown = float(wording.change(before, after, 3))
    assert shown == pytest.approx(float(f"{after:.3f}") - float(f"{before:.3f}"), abs=1e-9)
    assert wording.change(0.0604, 0.0666, 3) == "+0.007"
    assert wording.change(0.1235, 0.1235, 3) == "+0.000"  # never "-0.000"


def test_points_are_percentage_points_of_the_shown_percentages():
    """Runs said "+2.2%" for an accuracy 2.2 percentage points higher: that reads as relative."""
    assert wording.points(0.911, 0.933) == "+2.2 points"
    assert wording.points(0.9335, 0.9554) == "+2.2 points"  # 93.3% → 95.5% as shown, not 2.19 → "+2.2" by luck
    assert wording.points(0.93349, 0.95551) == "+2.3 points"  # 93.3% → 95.6%: the unrounded 2.202 said +2.2
    assert wording.points(0.5, 0.495, digits=0) == "+0 points"  # 50% → 50% (0.495 shows as 50%), never "-0"
    assert wording.points(0.8, 0.7, digits=0) == "-10 points"


@pytest.mark.parametrize(
    "value, threshold, expected",
    [
        (0.496, 0.5, "49.6%"),  # was "unsure 50%" under a 50% threshold
        (0.4996, 0.5, "49.96%"),
        (0.49999, 0.5, "49.99%"),
        (0.31, 0.5, "31%"),
        (0.5, 0.5, "50%"),
        (0.694, 0.7, "69%"),
        (0.6996, 0.7, "69.96%"),
    ],
)
def test_a_percentage_below_a_threshold_never_reads_as_reaching_it(value, threshold, expected):
    shown = wording.percent_below(value, threshold)
    assert shown == expected
    if value < threshold:
        assert float(shown.rstrip("%")) < 100 * threshold


def test_the_channel_grid_and_the_opened_channel_say_the_same_share():
    """The grid said "CAM 0%" where the opened channel said "+0.2%": one formatter now, one decimal."""
    assert wording.share(0.002) == "+0.2%"
    assert wording.share(-0.004) == "-0.4%"
    assert wording.share(0.1234) == "+12.3%"
    assert wording.share(-0.0004) == wording.share(0.0) == "0.0%"  # no "-0.0%"
