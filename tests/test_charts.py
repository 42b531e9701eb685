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


def _labels(fig) -> list[tuple]:
    """Where each text label of a figure sits: annotations and the text of "text" mode traces."""
    spots = [(a.xref, a.yref, a.x, a.y, a.xanchor, a.yanchor) for a in fig.layout.annotations]
    for trace in fig.data:
        if "text" in (getattr(trace, "mode", "") or "") and trace.text:
            spots += [("x", "y", x, y, trace.textposition) for x, y in zip(trace.x, trace.y, strict=True)]
    return spots


def test_finetune_labels_cannot_overlap():
    """A baseline near the top and a short fine-tune put "before fine-tuning" on top of "fine-tune starts"."""
    parent = {"accuracy": [0.8, 0.95, 1.0], "val_accuracy": [0.9, 0.97, 1.0]}
    child = {"accuracy": [1.0], "val_accuracy": [1.0]}
    fig = charts.finetune_curves(parent, child, parent_val_accuracy=1.0, child_epochs=1)
    assert [a.text for a in fig.layout.annotations] == ["fine-tune starts"]  # the only label on the plot
    baseline = [t for t in fig.data if t.name == "before fine-tuning (100.0%)"]
    assert len(baseline) == 1 and set(baseline[0].y) == {1.0} and baseline[0].showlegend is not False
    assert len(set(_labels(fig))) == len(_labels(fig))


def test_lr_finder_labels_cannot_overlap():
    """The chosen rate is often the "minimum ÷ 10" suggestion itself: their labels sat on one spot."""
    lrs = [10 ** (-5 + k / 4) for k in range(21)]
    losses = [2 - k / 40 for k in range(21)]
    fig = charts.lr_finder(lrs, losses, 1e-3, 1e-2, chosen=1e-2)
    spots = _labels(fig)
    assert len(set(spots)) == len(spots)
    names = [t.name for t in fig.data]
    assert names[1:] == ["steepest: 1.0e-03", "minimum ÷ 10: 1.0e-02", "chosen: 1.0e-02"]  # told in the legend
    minimum, chosen = fig.data[2], fig.data[3]
    assert chosen.marker.symbol.endswith("-open") and chosen.marker.size > minimum.marker.size  # both visible


@pytest.mark.parametrize(
    "points",
    [
        [(1.0, 12.9), (0.933, 366.8), (0.9, 40.0)],  # one at 100%, one far right
        [(0.5, 3.0)],  # a single run
        [(0.2, 1.0), (0.99, 80.0)],
    ],
)
def test_accuracy_latency_ranges_hold_every_point_with_room(points):
    rows = [{"title": f"run {k}", "accuracy": a, "latency_ms": ms, "backbone": "b"} for k, (a, ms) in enumerate(points)]
    fig = charts.accuracy_latency(rows)
    x0, x1 = fig.layout.xaxis.range
    y0, y1 = fig.layout.yaxis.range
    accs, lats = [a for a, _ in points], [ms for _, ms in points]
    assert x0 <= 0 and x1 >= 1.15 * max(lats)  # room for the rightmost marker and the half of its label
    assert y0 <= min(accs) - 0.02 and y1 >= max(accs) + 0.04  # room below, and above for the labels
    ticks = fig.layout.yaxis.tickvals
    assert ticks and max(ticks) <= 1.0 and all(y0 <= t <= y1 for t in ticks)  # never a "104%" accuracy tick
    assert all(t.cliponaxis is False for t in fig.data)


def test_live_training_chart_follows_the_epochs_done_when_early_stopping_is_on():
    """A 200-epoch plan with early stopping usually ends near epoch 48: the axis must not span 0-200 meanwhile."""
    history = {"loss": [1 / (k + 1) for k in range(40)], "val_loss": [1 / (k + 1) for k in range(40)]}
    live = {"loss": 0.02, "accuracy": 0.99}
    fig = charts.training_curves(history, charts.curve_epochs(40, 200, early_stopping=10), live)
    low, high = fig.layout.xaxis.range
    assert 41.5 <= high <= 60.5  # the epoch in progress (41) and a little room, not 200
    assert list(fig.layout.xaxis.range) == list(fig.layout.xaxis2.range)
    assert charts.curve_epochs(0, 200, 10) >= 2  # room for the first epoch before any is done
    assert charts.curve_epochs(198, 200, 10) == 200  # never past the plan
    assert charts.curve_epochs(40, 200, 0) == 200  # without early stopping the plan is the end


@pytest.mark.slow
def test_train_page_live_chart_spans_the_epochs_done_with_early_stopping(open_page, tmp_path, monkeypatch):
    """The Train page's live chart of a 200-epoch run with early stopping, 40 epochs in: the axis follows them."""
    import threading

    import plotly.graph_objects as go

    from engine import jobs, runs
    from engine.config import DataConfig, TrainConfig

    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    release, started = threading.Event(), threading.Event()

    def fake_train(config, run, *, stop, report, resume):
        runs.write_json(run.path / "config.json", config.to_json())  # as fit.train does before the first epoch
        history = {"loss": [1 / (k + 1) for k in range(40)], "accuracy": [0.9] * 40}
        report(stage="training", epoch=41, epochs=config.epochs, batch=1, batches=9, logs={"loss": 0.1}, eta=None)
        report(history=history)
        started.set()
        release.wait(30)
        run.set_status("finished", "")
        return {"status": "finished", "reason": "", "history": history}

    registry = jobs.JobRegistry(train_fn=fake_train, devices=["/CPU:0"])
    monkeypatch.setattr(jobs, "_REGISTRY", registry)
    config = TrainConfig(data=DataConfig(source="shapes:per_class=12,classes=3,size=64"), epochs=200, early_stopping=10)
    job = registry.submit(config)
    try:
        assert started.wait(30)
        at = open_page("pages/train.py")
        at.query_params["job"] = job.id
        at.run()
        assert not at.exception, at.exception
        chart = next(c for c in at.get("plotly_chart") if c.proto.spec and "epoch" in c.proto.spec)
        fig = go.Figure(pio.from_json(chart.proto.spec))
        assert 41.5 <= fig.layout.xaxis.range[1] <= 60.5, fig.layout.xaxis.range
    finally:
        release.set()
        registry.wait(job.id, 30)


def _tcav_layer(name: str, significant: bool, separable: bool = True) -> dict:
    return {
        "layer": name,
        "scores": [0.9, 0.8, 0.85],
        "random_scores": [0.4, 0.6, 0.5],
        "score_mean": 0.85,
        "score_std": 0.04,
        "random_mean": 0.5,
        "random_std": 0.08,
        "p_corrected": 0.001 if significant else 0.4,
        "significant": significant,
        "separable": separable,
        "cav_accuracy": 0.95 if separable else 0.55,
    }


def test_tcav_chart_marks_layers_that_are_not_significant():
    layers = [_tcav_layer("early", False, separable=False), _tcav_layer("middle", False), _tcav_layer("late", True)]
    fig = charts.tcav_scores(layers, "mark", "circle", separable=0.7)
    significant, not_significant, random, points, random_points, verdicts, accuracy = fig.data
    assert list(verdicts.text) == ["n.s. (not separable)", "n.s.", "p = 0.001"]
    assert sorted(verdicts.x) == sorted([*significant.x, *not_significant.x])  # above the concept's bars
    assert list(significant.x) == [2 - 0.19] and len(not_significant.x) == 2
    assert not_significant.marker.pattern.shape == "/" and not significant.marker.pattern.shape  # hatched if n.s.
    assert not_significant.marker.color != significant.marker.color and "n.s." in not_significant.name
    assert list(not_significant.error_y.array) == [0.04] * 2 and list(random.y) == [0.5] * 3
    assert len(points.y) == len(random_points.y) == 9  # each CAV's score as a point
    assert all(abs(x - round(x)) < 0.4 for x in points.x)  # each near its own layer
    assert list(fig.layout.xaxis2.ticktext) == ["early", "middle", "late"]
    assert "cannot tell it from random" in accuracy.text[0] and accuracy.text[2] == "95%"
    lines = {(s.y0, s.yref) for s in fig.layout.shapes}
    assert (0.5, "y") in lines and (0.7, "y2") in lines  # chance, and the separability threshold
