"""The charts (engine.charts) and the report's figures: labels that fit, never overlap, and ranges that hold."""

import json

import plotly.io as pio
import pytest

from engine import charts
from engine.export.report import _figure


def _layout(div: str) -> dict:
    """The layout Plotly.newPlot receives in a figure's HTML div."""
    decoder = json.JSONDecoder()
    rest = div[div.index("Plotly.newPlot(") + len("Plotly.newPlot(") :]
    rest = rest[rest.index(",") + 1 :].lstrip()  # after the div's id
    _, end = decoder.raw_decode(rest)
    rest = rest[end:].lstrip().lstrip(",").lstrip()
    return decoder.raw_decode(rest)[0]


@pytest.fixture
def streamlit_template():
    """The process default in the dashboard: Streamlit's Plotly template (placeholder colours, no automargin)."""
    from streamlit.elements.lib.streamlit_plotly_theme import configure_streamlit_plotly_theme

    before = pio.templates.default
    configure_streamlit_plotly_theme()
    yield
    pio.templates.default = before


def test_report_figures_grow_margins_for_their_labels(streamlit_template):
    names = ["circle", "square", "a class with a long name"]
    for fig in (
        charts.confusion_matrix([[3, 1, 0], [0, 4, 0], [1, 0, 2]], names, "Test split"),
        charts.per_class_bars({n: {"precision": 0.9, "recall": 0.8, "f1": 0.85} for n in names}),
    ):
        div = _figure(fig)
        layout = _layout(div)
        assert "#000001" not in div  # no Streamlit placeholder colour, which only its frontend replaces
        for axis in ("xaxis", "yaxis"):
            assert layout[axis]["automargin"] is True  # labels push the margin instead of being clipped
    assert layout["yaxis"]["tickformat"] == ".0%"
