"""Predict with a trained run, the Evaluate page (confusion cell to its images and CAMs, calibration) and the
Runs page (table, rename, delete, compare, bake-off) through AppTest."""

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import train_tiny_run
from engine import evaluate, jobs, runs
from engine.model.classifier import saved_temperature

pytestmark = pytest.mark.slow  # every test opens a page through AppTest on runs trained once for the module


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """Two finished feature runs on the tiny shapes (96 px; 1 and 3 epochs), in a runs folder of their own."""
    root = tmp_path_factory.mktemp("eval-runs")
    train_tiny_run(root, "short-run", epochs=1)
    train_tiny_run(root, "eval-run", epochs=3)
    return root


@pytest.fixture
def root(runs_root, tmp_path, monkeypatch):
    """A private copy of the runs folder for one test."""
    copy = Path(shutil.copytree(runs_root, tmp_path / "runs"))
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(copy))
    return copy


def texts(at) -> str:
    kinds = ("markdown", "caption", "info", "success", "warning", "error", "subheader")
    return " ".join(str(e.value) for kind in kinds for e in at.get(kind))


def table_with(at, column: str):
    """The first dataframe on the page with this column (AppTest keeps no keys for dataframes)."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def image_captions(at) -> str:
    return " ".join(str(i.proto) for i in at.get("image"))


def test_predict_a_runs_test_split_and_explain_a_tile(root, open_page):
    at = open_page("pages/predict.py")
    at.radio(key="predict_kind").set_value("Trained run").run()
    assert at.selectbox(key="predict_run").value == "eval-run"  # the newest
    at.radio(key="image_source").set_value("Test split").run()
    assert not at.exception, at.exception
    n = runs.Run(root / "eval-run").config()["split_sizes"]["test"]
    shown = texts(at)
    assert f"{n} image(s)" in shown and f"of {n} right" in shown, shown
    labels = runs.Run(root / "eval-run").labels()
    badges = " ".join(m.value for m in at.markdown if "badge[" in m.value)
    assert any(label in badges for label in labels), badges  # the run's classes, not ImageNet's
    at.button(key="explain_0").click().run()
    assert not at.exception, at.exception
    assert at.title[0].value.startswith("🔍 Inside the network")
    assert at.session_state["inside_kind"] == "Trained run"
    assert at.selectbox(key="inside_run").value == root / "eval-run"


def test_a_confusion_cell_shows_its_images_with_both_cams(root, open_page):
    run = runs.Run(root / "short-run")
    result = evaluate.evaluate(run, split="all")
    wrong = result.mistake_indices()
    assert len(wrong), "the 1-epoch run should make mistakes on its own data"
    t, p = int(result.labels[wrong[0]]), int(result.predicted[wrong[0]])
    at = open_page("pages/evaluate.py", run="short-run")
    assert at.selectbox(key="eval_run").value == "short-run"  # from the URL
    at.selectbox(key="eval_split_The run's own data").set_value("all").run()
    assert not at.exception, at.exception
    assert any(m.label == "Accuracy" and m.value == f"{result.metrics['accuracy']:.1%}" for m in at.metric)
    at.selectbox(key="cm_cell").set_value((t, p)).run()
    assert not at.exception, at.exception
    names = result.class_names
    assert any(f"{names[t]} predicted as {names[p]}" in s.value for s in at.subheader)
    captions = image_captions(at)
    count = min(len(result.cell(t, p)), 8)
    assert captions.count("(predicted)") == count and captions.count("(true)") == count, captions
    first = result.row(int(result.cell(t, p)[0]), "relative")["image"]
    assert first in captions  # most confident first
    # A right-answer cell: one map per image (nothing to compare with).
    at.selectbox(key="cm_cell").set_value((t, t)).run()
    captions = image_captions(at)
    assert captions.count("(predicted)") == min(len(result.cell(t, t)), 8) and "(true)" not in captions


def test_calibration_saves_a_temperature_that_predict_uses(root, open_page):
    at = open_page("pages/evaluate.py", run="eval-run")
    at.session_state["eval_tab"] = "🎯 Calibration"
    at.run()
    assert "expected calibration error" in texts(at)
    result = evaluate.evaluate(runs.Run(root / "eval-run"))
    button = at.button(key="save_temperature")
    if result.ece_calibrated < result.ece and 0.05 < result.temperature < 20:
        button.click().run()
        assert not at.exception, at.exception
    else:  # a temperature that does not help is not offered
        assert button.disabled and "Not worth saving" in texts(at)
        evaluate.save_temperature(runs.Run(root / "eval-run"), result.temperature)
    saved = saved_temperature(root / "eval-run")
    assert saved and saved > 0
    at.switch_page("pages/predict.py").run()
    at.radio(key="predict_kind").set_value("Trained run").run()
    at.radio(key="image_source").set_value("Test split").run()
    assert f"calibrated: temperature {saved:.2f}" in texts(at)


def test_mistakes_view_lists_the_most_confident_first(root, open_page):
    at = open_page("pages/evaluate.py", run="short-run")
    at.selectbox(key="eval_split_The run's own data").set_value("all").run()
    at.session_state["eval_tab"] = "❌ Mistakes"
    at.run()
    assert not at.exception, at.exception
    result = evaluate.evaluate(runs.Run(root / "short-run"), split="all")
    captions = image_captions(at)
    assert result.mistakes("relative")[0]["image"] in captions
    at.radio(key="mistakes_view").set_value("Least confident right answers").run()
    assert result.row(int(result.unsure_correct()[0]), "relative")["image"] in image_captions(at)


def test_runs_table_rename_delete_and_compare(root, open_page):
    at = open_page("pages/runs.py")
    table = table_with(at, "folder")
    assert set(table["folder"]) == {"eval-run", "short-run"}
    assert table["params (M)"].notna().all() and table["train time (s)"].notna().all()
    at.selectbox(key="manage_run").set_value("eval-run").run()
    at.text_input(key="rename_eval-run").set_value("Lite0 head, 3 epochs")  # in a form: sent with the click
    at.button(key="rename").click().run()
    assert runs.Run(root / "eval-run").display_name() == "Lite0 head, 3 epochs"
    assert "Lite0 head, 3 epochs" in set(table_with(at, "folder")["run"])

    at.session_state["runs_tab"] = "⚖️ Compare"
    at.run()
    at.multiselect(key="compare_runs").set_value(["eval-run", "short-run"]).run()
    assert not at.exception, at.exception
    side = table_with(at, "short-run")
    assert list(side.columns) == ["Lite0 head, 3 epochs", "short-run"]
    assert side.loc["backbone"].tolist() == ["efficientnet_lite0"] * 2
    assert side.loc["test accuracy"].str.endswith("%").all()

    # A running run cannot be deleted; a finished one can, after the confirmation.
    busy = runs.create("busy-run")
    busy.set_status("running")  # owned by this (living) process
    at.session_state["runs_tab"] = "📋 All runs"
    at.run()
    at.selectbox(key="manage_run").set_value("busy-run").run()
    assert "stop it on the Train page first" in texts(at)
    assert not [b for b in at.button if b.key == "delete"]
    at.selectbox(key="manage_run").set_value("short-run").run()
    assert at.button(key="delete").disabled  # not before "Yes, delete it"
    at.checkbox(key="sure_short-run").check().run()
    at.button(key="delete").click().run()
    assert not at.exception, at.exception
    assert not (root / "short-run").exists()
    assert "short-run" not in set(table_with(at, "folder")["folder"])


def test_bakeoff_queues_one_run_per_backbone(root, open_page, monkeypatch):
    release = threading.Event()

    def fake_train(config, run, stop=None, report=None, resume=False):
        release.wait(30)
        runs.write_json(run.path / "config.json", {**config.to_json(), "labels": ["a", "b"]})
        runs.write_json(run.path / "metrics.json", {"test_accuracy": 0.9})
        run.set_status("finished")
        return {"status": "finished", "reason": "", "history": {}}

    registry = jobs.JobRegistry(fake_train, devices=["/CPU:0"])
    monkeypatch.setattr(jobs, "_REGISTRY", registry)
    at = open_page("pages/runs.py")
    at.session_state["runs_tab"] = "🏁 Bake-off"
    at.run()
    at.multiselect(key="bake_backbones").set_value(["efficientnet_lite0", "efficientnet_lite1"]).run()
    at.button(key="bake_start").click().run()
    assert not at.exception, at.exception
    table = [d.value for d in at.dataframe if "latency (ms)" in d.value.columns][-1]
    assert list(table["backbone"]) == ["efficientnet_lite0", "efficientnet_lite1"]
    release.set()
    for job_id in registry.active():
        registry.wait(job_id, timeout=60)
    at.run()
    table = [d.value for d in at.dataframe if "latency (ms)" in d.value.columns][-1]
    assert all("finished" in s for s in table["status"]) and np.allclose(table["test acc"], 0.9)


def test_other_labelled_data_opens_its_own_picker(root, open_page):
    at = open_page("pages/evaluate.py", run="eval-run")
    at.radio(key="eval_data_kind").set_value("Other labelled data").run()
    assert not at.exception, at.exception  # its picker's keys do not collide with the page's
    assert at.radio(key="eval_src_kind").value  # the built-in shapes by default
    # The default shapes have 5 classes, the run knows 3: a clear message, not a traceback.
    assert any("classes the run does not know" in e.value for e in at.error), [e.value for e in at.error]


def test_export_a_run_check_it_and_download_it(root, open_page, monkeypatch):
    at = open_page("pages/runs.py")
    at.selectbox(key="manage_run").set_value("eval-run").run()
    at.selectbox(key="export_format_eval-run").set_value("tflite").run()
    at.button(key="export_go").click().run()
    assert not at.exception, at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Top-1 agreement"] == "100.0%" and metrics["Size"].endswith("MB")
    assert (root / "eval-run" / "exports" / "model.tflite").is_file()
    assert [b for b in at.get("download_button") if "model.tflite" in str(b.proto)]
    assert [b for b in at.get("download_button") if "labels.txt" in str(b.proto)]
    labels = (root / "eval-run" / "exports" / "labels.txt").read_text().splitlines()
    assert labels == runs.Run(root / "eval-run").labels()

    import tf2onnx

    def refuse(*args, **kwargs):
        raise ValueError("Unsupported ops: SomeNewOp")

    monkeypatch.setattr(tf2onnx.convert, "from_function", refuse)
    at.selectbox(key="export_format_eval-run").set_value("onnx").run()
    at.button(key="export_go").click().run()
    assert "ONNX is unavailable for this model here" in texts(at) and "SomeNewOp" in texts(at)
    at.button(key="report_go").click().run()  # the one-file report, with the tflite export checked above
    assert not at.exception, at.exception
    assert [b for b in at.get("download_button") if "Download the report" in str(b.proto)]
    page = (root / "eval-run" / "report.html").read_text()
    assert "<h2>Exports</h2>" in page and "tflite" in page.split("<h2>Exports</h2>")[1]
