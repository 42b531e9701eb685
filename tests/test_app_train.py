"""The Train page through AppTest: form, summary, start, live job, stop, reattach, presets, runs."""

import time

import pytest

from engine import jobs, runs
from engine.config import DataConfig

TINY = "shapes:per_class=12,classes=3,size=64"


@pytest.fixture
def page(open_page, tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))

    def _open(data: DataConfig | None = None, **query):
        from pathlib import Path

        from streamlit.testing.v1 import AppTest

        app = str(Path(__file__).resolve().parents[1] / "app.py")
        at = AppTest.from_file(app, default_timeout=300)
        at.session_state["data_config"] = data or DataConfig(source=TINY)
        for k, v in query.items():
            at.query_params[k] = v
        at.run()
        at.switch_page("pages/train.py").run()
        assert not at.exception, at.exception
        return at

    return _open


def wait_for(job_id: str, timeout: float = 300) -> dict:
    snap = jobs.registry().wait(job_id, timeout)
    assert snap is not None and snap["status"] not in runs.ACTIVE, snap
    return snap


def start(at, **widgets):
    for key, value in widgets.items():
        at.session_state[key] = value
    at.run()
    assert not at.error, [e.value for e in at.error]
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    job_id = at.query_params["job"][0] if isinstance(at.query_params["job"], list) else at.query_params["job"]
    return job_id


def test_form_shows_the_model_summary_before_training(page):
    at = page()
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Trainable"].replace(",", "")) == 1280 * 3 + 3  # the head only
    assert int(metrics["Non-trainable (frozen)"].replace(",", "")) > 3_000_000
    assert at.radio(key="train_mode").value == "feature"
    assert at.select_slider(key="train_size").value == 224  # the backbone's own size
    at.radio(key="train_mode").set_value("scratch").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Non-trainable (frozen)"] == "0" and at.select_slider(key="train_size").value == 64


def test_train_live_then_results_and_runs_list(page):
    at = page()
    job_id = start(at, train_size=96, train_epochs=3)
    assert jobs.registry().get(job_id) is not None
    # Clicking around while it trains neither stops it nor starts another.
    for _ in range(3):
        at.run()
    active = [j for j in jobs.registry().active() if j == job_id]
    assert len(active) <= 1
    assert at.button(key="train_start").disabled or jobs.registry().snapshot(job_id)["status"] not in runs.ACTIVE
    snap = wait_for(job_id)
    assert snap["status"] == "finished"
    at.run()
    assert not at.exception
    assert any("Finished" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) == 2  # curves and the confusion matrix
    assert {m.label for m in at.metric} >= {"Validation accuracy", "Test accuracy"}
    names = at.dataframe[-1].value["name"].tolist()
    assert names.count(job_id) == 1 and len(names) == 1, "exactly one run was started"

    # A fresh tab with the job in its URL reattaches to it.
    again = page(job=job_id)
    assert any("Finished" in s.value for s in again.success)
    assert again.expander[0].proto.expanded is False


def test_stop_and_resume_from_the_page(page):
    at = page(DataConfig(source=TINY, image_size=32))
    job_id = start(at, train_mode="scratch", train_epochs=200, train_batch=4)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        snap = jobs.registry().snapshot(job_id)
        if snap["history"].get("loss"):
            break
        time.sleep(0.1)
    at.run()
    at.button(key=f"stop_{job_id}").click().run()
    snap = wait_for(job_id)
    assert snap["status"] == "stopped"
    at.run()
    assert any("Stopped" in s.value for s in at.success)
    run = runs.open_run(job_id)
    done = run.checkpoint_epoch()
    at.number_input(key=f"resume_epochs_{job_id}").set_value(done + 1).run()
    at.button(key=f"resume_{job_id}").click().run()
    snap = wait_for(job_id)
    assert snap["status"] == "finished" and len(snap["history"]["loss"]) == done + 1


def test_queue_position_is_shown(page):
    registry = jobs.registry()
    release = []

    at = page(DataConfig(source=TINY, image_size=32))
    first = start(at, train_mode="scratch", train_epochs=300, train_batch=4)
    second_at = page(DataConfig(source=TINY, image_size=32))
    second = start(second_at, train_mode="scratch", train_epochs=1)
    second_at.run()
    if registry.snapshot(first)["status"] == "running":
        assert any("position 1" in i.value for i in second_at.info), [i.value for i in second_at.info]
    registry.stop(first)
    release.append(wait_for(first))
    assert wait_for(second)["status"] == "finished"


def test_preset_fills_the_form(page):
    at = page()
    at.selectbox(key="train_preset").set_value("alexnet-scratch").run()
    assert at.radio(key="train_mode").value == "scratch"
    assert at.selectbox(key="train_scratch").value == "alexnet"
    assert at.number_input(key="train_epochs").value == 20
    assert "teaching contrast" in " ".join(c.value for c in at.caption)


def test_unusable_data_blocks_training(page, tmp_path):
    (tmp_path / "data" / "only").mkdir(parents=True)
    at = page(DataConfig(source=str(tmp_path / "data")))
    assert any("at least 2 classes" in e.value for e in at.error)
    assert all(b.key != "train_start" for b in at.button)


def test_a_job_in_the_url_cannot_name_a_folder_outside_the_runs(page, tmp_path):
    from engine.runs import create

    outside = create(str(tmp_path / "elsewhere" / "secret-run"))
    at = page(job=str(outside.path))
    assert any("No run called" in w.value for w in at.warning)


def test_other_data_can_be_chosen_on_the_page(page):
    at = page()
    at.number_input(key="train_data_classes").set_value(2).run()
    at.number_input(key="train_data_per_class").set_value(10).run()
    at.button(key="train_use_data").click().run()
    assert not at.exception
    assert at.session_state["data_config"].source.startswith("shapes:per_class=10,classes=2")
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Trainable"].replace(",", "")) == 1280 * 2 + 2


def test_a_preset_whose_backbone_cannot_load_says_so(page):
    at = page()
    at.selectbox(key="train_preset").set_value("hub-course-mobilenet").run()
    assert not at.exception
    assert any("cannot load here" in w.value for w in at.warning)
    assert at.number_input(key="train_epochs").value == 6  # the rest of the recipe applies
    assert at.selectbox(key="train_backbone").value == "efficientnet_lite0"
