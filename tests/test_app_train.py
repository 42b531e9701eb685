"""The Train page through AppTest: form, summary, start, live job, stop, reattach, presets, runs."""

import threading
import time

import pytest

from conftest import TINY
from engine import jobs, runs
from engine.config import AugmentConfig, DataConfig

pytestmark = pytest.mark.slow  # every test opens the Train page through AppTest


@pytest.fixture
def page(open_page, runs_dir):
    def _open(data: DataConfig | None = None, **query):
        return open_page("pages/train.py", state={"data_config": data or DataConfig(source=TINY)}, **query)

    return _open


def wait_for(job_id: str, timeout: float = 300) -> dict:
    snap = jobs.registry().wait(job_id, timeout)
    assert snap is not None and snap["status"] not in runs.ACTIVE, snap
    return snap


def start(at, **widgets):
    if "train_mode" in widgets:  # as a user would: the mode first (it resets the schedule), then the rest
        at.session_state["train_mode"] = widgets.pop("train_mode")
        at.run()
    for key, value in widgets.items():
        at.session_state[key] = value
    at.run()
    assert not at.error, [e.value for e in at.error]
    at.button(key="train_start").click().run()
    assert not at.exception, at.exception
    job_id = at.query_params["job"][0] if isinstance(at.query_params["job"], list) else at.query_params["job"]
    return job_id


def texts(at) -> list[str]:
    """Every piece of text the page shows."""
    out = []
    for kind in ("markdown", "caption", "info", "success", "warning", "error", "text", "title", "subheader"):
        out += [str(e.value) for e in at.get(kind)]
    out += [b.label for b in at.button] + [str(e.proto) for e in at.get("page_link")]
    return out


def test_form_shows_the_model_summary_before_training(page):
    at = page()
    metrics = {m.label: m.value for m in at.metric}
    assert int(metrics["Trainable"].replace(",", "")) == 1280 * 3 + 3  # the head only
    assert int(metrics["Non-trainable (frozen)"].replace(",", "")) > 3_000_000
    assert at.radio(key="train_mode").value == "feature"
    assert at.select_slider(key="train_size").value == 224  # the backbone's own size
    # feature mode trains the head to convergence by default
    assert at.number_input(key="train_epochs").value == 200 and at.number_input(key="train_patience").value == 10
    assert at.select_slider(key="train_lr").value == 1e-2 and at.select_slider(key="train_l2").value == 1e-3
    assert not any("Too little data" in w.value for w in at.warning)
    assert "No runs yet." in [c.value for c in at.caption]
    assert not [t for t in texts(at) if str(runs.runs_root()) in t], "no server paths"
    at.radio(key="train_mode").set_value("scratch").run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Non-trainable (frozen)"] == "0" and at.select_slider(key="train_size").value == 64
    assert at.number_input(key="train_epochs").value == 60 and at.select_slider(key="train_lr").value == 1e-3
    # 36 images: the page says what to expect before anyone starts
    warning = next(w.value for w in at.warning if "Too little data" in w.value)
    assert "training images" in warning and "chance (33%)" in warning


@pytest.mark.slow
def test_a_bad_option_is_said_in_words_not_a_traceback(page):
    """The config's ConfigError (bad input) is shown as its message; the form waits for a fix."""
    at = page()
    at.text_input(key="train_hidden").set_value("big").run()
    assert not at.exception, at.exception
    assert "hidden layers 'big': give sizes like 256 or 256,128" in [e.value for e in at.error]


def test_train_live_then_results_and_runs_list(page, tmp_path):
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
    # curves, the timeline's pointing game (the shapes have boxes) and the confusion matrix
    assert len(at.get("plotly_chart")) == 3
    assert len(at.get("image")) == 6, "the timeline's grid: two validation images per class"
    assert {m.label for m in at.metric} >= {"Validation accuracy", "Test accuracy"}
    names = at.dataframe[-1].value["name"].tolist()
    assert names.count(job_id) == 1 and len(names) == 1, "exactly one run was started"
    # The run is named, never located: no server paths on the page.
    shown = texts(at)
    assert any(job_id in t and "python -m engine runs" in t for t in shown)
    for secret in (str(tmp_path), str(runs.runs_root()), "/root", "~/.keras", "CONVSCOPE_"):
        assert not [t for t in shown if secret in t], secret

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
    # The button says what it does: where the run goes on from, and up to where.
    assert at.button(key=f"resume_{job_id}").label == f"▶ Continue from epoch {done + 1} of 200"
    at.number_input(key=f"resume_epochs_{job_id}").set_value(done + 1).run()
    assert at.button(key=f"resume_{job_id}").label == f"▶ Continue from epoch {done + 1} of {done + 1}"
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


@pytest.fixture
def fake_jobs(monkeypatch):
    """A registry whose jobs report one batch in and then hold until released (no training)."""
    release, started, seen = threading.Event(), threading.Event(), {}

    def fake_train(config, run, *, stop, report, resume):
        seen["config"] = config
        report(stage="training", epoch=1, epochs=config.epochs, batch=1, batches=9, logs={"loss": 1.5}, eta=None)
        started.set()
        release.wait(30)  # the batch in progress when Stop is pressed
        status = "stopped" if stop.is_set() else "finished"
        run.set_status(status, "by the user at epoch 1, batch 2" if stop.is_set() else "")
        return {"status": status, "reason": "", "history": {}}

    registry = jobs.JobRegistry(train_fn=fake_train, devices=["/CPU:0"])
    monkeypatch.setattr(jobs, "_REGISTRY", registry)
    yield registry, release, started, seen
    release.set()


def test_time_left_says_estimating_and_a_stop_shows_at_once(page, fake_jobs):
    registry, release, started, _ = fake_jobs
    at = page()
    job_id = start(at, train_size=96)
    assert started.wait(30)
    at.run()
    bars = [e.proto.text for e in at.get("progress")]
    assert any("Epoch 1/200 · batch 1/9" in b and "estimating time left" in b for b in bars), bars
    assert not any("0 s left" in b for b in bars)
    at.button(key=f"stop_{job_id}").click().run()
    # The batch is still running, but the page already says the run is stopping, and offers no second Stop.
    assert registry.snapshot(job_id)["status"] == "running"
    assert any("Stopping" in i.value for i in at.info), [i.value for i in at.info]
    assert all(b.key != f"stop_{job_id}" for b in at.button)
    release.set()
    assert wait_for(job_id, 30)["status"] == "stopped"


def test_clicking_widgets_while_training_neither_stops_nor_starts_another(page, fake_jobs):
    registry, release, started, _ = fake_jobs
    at = page()
    job_id = start(at, train_size=96)
    assert started.wait(30)

    def still_one_job_running() -> None:
        assert not at.exception, at.exception
        assert registry.active() == [job_id], registry.active()
        snap = registry.snapshot(job_id)
        assert snap["status"] == "running" and not snap["stopping"], snap
        assert [r.name for r in runs.list_runs()] == [job_id]

    assert at.button(key="train_start").disabled  # (AppTest, like a browser, cannot click it)
    changes = [
        lambda: at.number_input(key="train_epochs").set_value(7),
        lambda: at.select_slider(key="train_lr").set_value(1e-3),
        lambda: at.number_input(key="train_patience").set_value(3),
        lambda: at.radio(key="train_mode").set_value("scratch"),
        lambda: at.radio(key="train_mode").set_value("feature"),
        lambda: at.selectbox(key="train_preset").set_value(at.selectbox(key="train_preset").options[-1]),
    ]
    for change in changes:
        change().run()
        still_one_job_running()
    for _ in range(3):  # the page's own refreshes
        at.run()
        still_one_job_running()
    release.set()
    assert wait_for(job_id, 30)["status"] == "finished"
    assert registry.active() == []


def test_a_queued_job_shows_its_position(page, fake_jobs):
    registry, release, started, _ = fake_jobs
    first = start(page(), train_size=96)
    assert started.wait(30)  # the first job holds its batch: the second must wait
    second_at = page()
    second = start(second_at, train_size=96)
    second_at.run()
    assert registry.snapshot(first)["status"] == "running" and registry.position(second) == 1
    assert any("position 1" in i.value for i in second_at.info), [i.value for i in second_at.info]
    release.set()
    assert wait_for(first, 30)["status"] == "finished" and wait_for(second, 30)["status"] == "finished"


def test_augmentation_is_shown_and_can_be_turned_off(page, fake_jobs):
    registry, release, started, seen = fake_jobs
    aug = AugmentConfig(flip="horizontal", rotation=0.1)
    at = page(DataConfig(source=TINY, augment=aug))
    toggle = at.toggle(key="train_augment")
    assert toggle.value is True
    assert any("flip horizontal" in c.value and "rotation 0.1" in c.value for c in at.caption)
    toggle.set_value(False).run()
    assert any("off for this run" in c.value for c in at.caption)
    start(at, train_size=96)
    assert started.wait(30)
    assert not seen["config"].data.augment.enabled, "turned off on the Train page: trained without augmentation"
    assert at.session_state["data_config"].augment == aug, "the Explorer's choice itself is left alone"
    release.set()


def test_no_fine_tune_page_is_promised_before_one_exists(page):
    from pathlib import Path

    at = page()
    at.selectbox(key="train_preset").set_value("keras-tutorial-mobilenet").run()
    assert not at.exception
    if not (Path(__file__).resolve().parents[1] / "pages" / "finetune.py").is_file():
        assert not [t for t in texts(at) if "fine-tune page" in t.lower()]


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


def test_the_runs_table_shows_no_server_path_and_no_none(page, tmp_path, monkeypatch):
    from streamlit.dataframe_util import convert_arrow_bytes_to_pandas_df

    from engine.data import sources

    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    upload = sources.save_upload("pets.zip", b"PK\x05\x06" + b"\0" * 18)  # the cache names it by its content
    for name, status in (("upload-run", "finished"), ("busy-run", "running")):
        run = runs.create(name)
        data = {"source": str(upload), "image_size": 64}
        runs.write_json(run.path / "config.json", {"backbone": "small_cnn", "mode": "scratch", "data": data})
        run.set_status(status)  # "running": owned by this living process
    runs.write_json(runs.Run(runs.runs_root() / "upload-run").path / "metrics.json", {"val_accuracy": 0.9})
    at = page()  # a new session: it never saw the upload's name
    element = next(d for d in at.dataframe if "source" in d.value.columns)
    sent = [str(v) for v in element.value.to_numpy().ravel()]
    assert not [c for c in sent if str(tmp_path) in c], sent  # the cache folder was the data source shown
    assert set(element.value["source"]) == {"pets.zip"}
    shown = convert_arrow_bytes_to_pandas_df(element.proto.arrow_data.styler.display_values)
    assert not [c for c in shown.astype(str).to_numpy().ravel() if str(tmp_path) in c]
    shown.columns = element.value.columns
    busy = shown.iloc[list(element.value["name"]).index("busy-run")]
    assert busy["val_accuracy"] == "running" and busy["test_accuracy"] == "running", dict(busy)
    drawn = [str(v) for v in shown.to_numpy().ravel()]
    assert not [c for c in drawn if c in ("None", "nan")], drawn
    assert not element.value.isna().to_numpy().any()  # the grid draws a missing cell as "None"


def test_the_timeline_is_on_by_default_and_can_be_switched_off(page, fake_jobs):
    registry, release, started, seen = fake_jobs
    at = page()
    assert at.checkbox(key="train_timeline").value is True
    start(at, train_size=96, train_timeline=False)
    assert started.wait(30)
    assert seen["config"].timeline is False, "switched off on the page: a run without a timeline"
    release.set()


def test_a_finished_run_says_what_its_worker_still_measures_and_redraws_until_done(page, fake_jobs, monkeypatch):
    """Latency follows a finished run in its worker: the page shows the results now and says so."""
    from ui import widgets

    registry, release, started, _ = fake_jobs
    at = page()
    job_id = start(at, train_size=96)
    assert started.wait(30)
    release.set()
    assert wait_for(job_id, 30)["status"] == "finished"
    real = registry.snapshot
    monkeypatch.setattr(registry, "snapshot", lambda i: {**real(i), "following": "Measuring its latency"})
    at.run()
    assert not at.exception, at.exception
    captions = [c.value for c in at.caption]
    assert any("Measuring its latency… The run is finished and ready to use" in c for c in captions), captions
    assert widgets.job_live(registry.snapshot(job_id)), "the panel keeps redrawing until the follow-up ends"
    monkeypatch.setattr(registry, "snapshot", real)
    at.run()
    assert not any("Measuring its latency" in c.value for c in at.caption)
    assert not widgets.job_live(registry.snapshot(job_id))
