"""The Runs page through AppTest on hand-written run folders (no training): Compare's epochs, Rename, the table."""

import pytest

from conftest import TINY
from engine import runs

pytestmark = pytest.mark.slow


def fake_run(name: str, status: str = "finished", config: dict | None = None, **files) -> runs.Run:
    run = runs.create(name)
    data = {"source": TINY, "image_size": 64}
    base = {"backbone": "efficientnet_lite0", "mode": "feature", "epochs": 3, "data": data}
    runs.write_json(run.path / "config.json", {**base, **(config or {}), "created": 1_700_000_000.0})
    for file, data in files.items():
        runs.write_json(run.path / f"{file}.json", data)
    run.set_status(status)  # "running" is owned by this (living) test process
    return run


@pytest.fixture
def root(runs_dir):
    parent = fake_run(
        "parent-run",
        history={"loss": [1.0, 0.8, 0.7], "val_loss": [1.0, 0.9, 0.8], "val_accuracy": [0.5, 0.6, 0.7]},
        metrics={"val_accuracy": 0.7, "test_accuracy": 0.65},
    )
    ft = {"parent": str(parent.path), "parent_epochs": 3}
    fake_run(  # a fine-tune's history.json starts with its parent's 3 epochs, then its own 2
        "ft-run",
        config={"mode": "finetune", "parent": "parent-run", "finetune": ft},
        history={
            "loss": [1.0, 0.8, 0.7, 0.5, 0.4],
            "val_loss": [1.0, 0.9, 0.8, 0.6, 0.5],
            "val_accuracy": [0.5, 0.6, 0.7, 0.8, 0.85],
        },  # fmt: skip
        metrics={"val_accuracy": 0.85, "test_accuracy": 0.8},
    )
    fake_run("busy-run", "running", history={"loss": [1.0], "val_loss": [1.0], "val_accuracy": [0.4]})
    return runs_dir


@pytest.fixture
def open_runs(open_page):
    return lambda: open_page("pages/runs.py")


def shown_table(at):
    """The runs table as users read it: the Styler's display values (what the grid draws), by column name."""
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    element = next(d for d in at.dataframe if "folder" in d.value.columns)
    shown = convert_arrow_bytes_to_pandas_df(element.proto.arrow_data.styler.display_values)
    shown.columns = element.value.columns
    return element.value, shown


def test_compare_draws_a_fine_tune_at_its_own_epochs(root, open_runs):
    import plotly.graph_objects as go
    import plotly.io

    at = open_runs()
    at.session_state["runs_tab"] = "⚖️ Compare"
    at.run()
    at.multiselect(key="compare_runs").set_value(["parent-run", "ft-run"]).run()
    assert not at.exception, at.exception
    chart = next(c for c in at.get("plotly_chart") if "Validation accuracy" in c.proto.spec)
    traces = go.Figure(plotly.io.from_json(chart.proto.spec)).data
    xs = {t.name: list(t.x) for t in traces if t.yaxis in (None, "y")}
    assert xs == {"parent-run": [1, 2, 3], "ft-run": [4, 5]}, xs  # was 4..8: its parent's epochs shifted again


def test_rename_takes_one_click(root, open_runs):
    at = open_runs()
    at.selectbox(key="manage_run").set_value("parent-run").run()
    # In a browser the click that leaves the text box is the one that commits its text: a Rename button
    # disabled until then needed a second click. It must be clickable with the text not yet sent.
    assert not at.button(key="rename").disabled
    at.text_input(key="rename_parent-run").set_value("Lite0 head")
    at.button(key="rename").click().run()
    assert not at.exception, at.exception
    assert runs.Run(root / "parent-run").display_name() == "Lite0 head"


def test_the_table_shows_the_kept_models_accuracy_and_no_none(root, open_runs):
    at = open_runs()
    values, shown = shown_table(at)
    row = {name: k for k, name in enumerate(values["folder"])}
    assert "val acc (kept model)" in shown.columns
    assert shown["val acc (kept model)"][row["ft-run"]] == "85.0%"
    assert shown["best val acc"][row["ft-run"]] == "85.0%"  # its own epochs' best
    busy = shown.iloc[row["busy-run"]]
    assert busy["val acc (kept model)"] == "running" and busy["test acc"] == "running", dict(busy)
    assert busy["latency (ms)"] == "—"
    assert not [v for v in shown.astype(str).to_numpy().ravel() if v in ("None", "nan", "NaN")], shown
    # The grid draws a missing cell as "None" whatever the Styler's text: no cell may be missing.
    assert not values.isna().to_numpy().any(), values


def test_a_run_on_corrected_data_says_so_in_the_table_and_in_compare(root, open_runs):
    fixed = {"relabelled": 2, "excluded": 1, "kept": 3, "stale": []}
    fake_run(
        "fixed-run",
        config={"corrections": fixed},
        history={"loss": [1.0, 0.6], "val_loss": [1.0, 0.7], "val_accuracy": [0.6, 0.75]},
        metrics={"val_accuracy": 0.75, "test_accuracy": 0.7},
    )
    at = open_runs()
    values, shown = shown_table(at)
    fixes = dict(zip(values["folder"], shown["data fixes"], strict=True))
    assert fixes["fixed-run"] == "2 relabelled, 1 excluded" and fixes["parent-run"] == "none"
    at.session_state["runs_tab"] = "⚖️ Compare"
    at.run()
    at.multiselect(key="compare_runs").set_value(["parent-run", "fixed-run"]).run()
    assert not at.exception, at.exception
    table = next(d for d in at.dataframe if "data corrections" in d.value.index).value
    assert list(table.loc["data corrections"]) == ["none", "2 relabelled, 1 excluded"]
