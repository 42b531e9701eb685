"""The Fine-tune page through AppTest: pick a run, the layer map, advice, the finder, a fine-tune to the end."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY, runs_dir_set, train_tiny_run
from engine import jobs, runs
from engine.config import DataConfig, TrainConfig
from engine.training import finetune, fit

pytestmark = pytest.mark.slow  # every test opens the page through AppTest on runs trained once for the module


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """A finished feature run (96 px, 3 epochs) and a scratch run, in a runs folder of their own."""
    root = tmp_path_factory.mktemp("ft-runs")
    with runs_dir_set(root):
        train_tiny_run(root, "parent-run")
        scratch = TrainConfig(
            data=DataConfig(source=TINY, image_size=32), backbone="small_cnn", mode="scratch", epochs=1
        )
        fit.train(scratch, runs.create("scratch-run", backbone="small_cnn", mode="scratch"))
        changed = root / "changed-run"  # the same run, as if its data had changed since it trained
        shutil.copytree(root / "parent-run", changed)
        saved = json.loads((changed / "config.json").read_text())
        (changed / "config.json").write_text(
            json.dumps({**saved, "fingerprint": "0" * 64, "files_fingerprint": "0" * 64})
        )
    return root


@pytest.fixture
def page(open_page, runs_root, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(runs_root))
    return lambda **query: open_page("pages/finetune.py", **query)


def _figure(chart):
    import plotly.graph_objects as go
    import plotly.io

    return go.Figure(plotly.io.from_json(chart.proto.spec)) if chart.proto.spec else go.Figure()


def metric(at, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def texts(at) -> str:
    kinds = ("markdown", "caption", "info", "success", "warning", "error", "subheader")
    return " ".join(str(e.value) for kind in kinds for e in at.get(kind))


def test_the_layer_map_follows_the_unfreeze_point(page):
    at = page(run="parent-run")
    assert at.selectbox(key="ft_parent").value == "parent-run"  # from the URL
    assert not at.error, [e.value for e in at.error]
    model = finetune.load_classifier(runs.open_run("parent-run"))
    for block in ("top", "block5"):
        at.select_slider(key="ft_from_parent-run").set_value(block).run()
        first = finetune.first_trainable(model, "efficientnet_lite0", finetune.FinetuneConfig("-", unfreeze_from=block))
        expected = finetune.counts(model, first, "frozen")
        assert metric(at, "Trainable parameters") == f"{expected['trainable']:,}", block
        assert metric(at, "Frozen parameters") == f"{expected['non_trainable']:,}", block
    assert len(at.get("plotly_chart")) >= 1  # the per-block map
    at.text_input(key="ft_layer_parent-run").set_value("block9").run()
    assert any("no block or layer named" in e.value for e in at.error)
    at.text_input(key="ft_layer_parent-run").set_value("").run()
    at.toggle(key="ft_bn_parent-run").set_value(True).run()
    assert "inference mode" in " ".join(w.value for w in at.warning)


def test_the_advice_presets_the_controls(page):
    at = page(run="parent-run")
    assert "small" in texts(at) and "ImageNet" in texts(at)
    at.number_input(key="ft_lr_parent-run").set_value(0.05).run()
    at.button(key="ft_use_advice").click().run()
    assert not at.exception
    spec_blocks = [f"block{i}" for i in range(1, 8)] + ["top", "head"]
    chosen = at.select_slider(key="ft_from_parent-run").value
    assert chosen in spec_blocks and chosen != "head"
    assert at.number_input(key="ft_lr_parent-run").value == pytest.approx(1e-3)  # 0.01 x 0.1


def test_the_finder_draws_its_suggestions(page):
    at = page(run="parent-run")
    at.select_slider(key="ft_from_parent-run").set_value("top").run()
    charts_before = len(at.get("plotly_chart"))
    at.button(key="ft_find").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(at.get("plotly_chart")) == charts_before + 1
    steepest = at.session_state["ft_finder"]["result"]["steepest"]
    at.button(key="ft_use_steepest").click().run()
    assert at.number_input(key="ft_lr_parent-run").value == pytest.approx(steepest)


def test_fine_tune_from_the_page_to_the_end(page):
    at = page(run="parent-run")
    at.select_slider(key="ft_from_parent-run").set_value("top").run()
    at.number_input(key="ft_epochs").set_value(1).run()
    at.button(key="ft_start").click().run()
    assert not at.exception, at.exception
    job = at.query_params["job"]
    job = job[0] if isinstance(job, list) else job
    snap = jobs.registry().wait(job, 300)
    assert snap["status"] == "finished", snap["reason"]
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "Validation accuracy" in [m.label for m in at.metric]
    assert "What changed" in texts(at)
    legend = {trace.name for chart in at.get("plotly_chart") for trace in _figure(chart).data if trace.name}
    assert {"circle", "square", "triangle"} & legend, legend  # class names, not indices
    links = [link.proto.page for link in at.get("page_link")]
    assert sum("inside" in p for p in links) >= 2, links
    # one probe image per class (3), before and after; the timeline's grid: two validation images per class
    assert len(at.get("image")) == 6 + 6
    assert at.select_slider(key=f"ft_{job}_timeline_epoch").value == 4, "the parent's 3 epochs, then this one"


def test_a_scratch_run_says_why_it_cannot_be_fine_tuned(page):
    at = page(run="scratch-run")
    assert any("nothing to unfreeze" in e.value for e in at.error), [e.value for e in at.error]


def test_a_run_whose_data_changed_cannot_start(page):
    at = page(run="changed-run")
    assert any("changed since" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="ft_start").disabled and at.button(key="ft_find").disabled


def test_a_reattached_fine_tune_shows_its_own_settings(page, runs_root):
    """After a reload (?job= in the URL) the form showed defaults (block7, 1e-3) above a job training from block5
    at 1.5e-4, and no panel said which settings the job used."""
    parent = runs.open_run("parent-run")
    config = finetune.finetune_config(parent, unfreeze_from="block5", learning_rate=1.5e-4, epochs=2, optimizer="sgd")
    child = runs.create("ft-reattached", backbone=config.backbone, mode="finetune")
    try:
        runs.write_json(child.path / "config.json", {**config.to_json(), "parent": "parent-run"})
        child.set_status("running")  # a job of this (living) process, as a worker's run looks after a reload
        at = page(job=child.name)
        assert not at.exception, at.exception
        assert at.select_slider(key="ft_from_parent-run").value == "block5"
        assert at.number_input(key="ft_lr_parent-run").value == pytest.approx(1.5e-4)
        assert at.selectbox(key="ft_optimizer_parent-run").value == "sgd"
        assert at.number_input(key="ft_epochs").value == 2
        shown = texts(at)
        assert "Settings of this fine-tune" in shown
        assert "trains from: **block5**" in shown and "learning rate (peak): **1.5e-04**" in shown, shown
        assert "optimizer: **sgd**" in shown and "BatchNorm statistics: **frozen**" in shown
        assert "batch size: **32**" in shown and "epochs: **2 (epochs 4-5" in shown

        # Finished: the panel still says what it ran with (the model and metrics of a finished run)
        shutil.copy(parent.model_file, child.model_file)
        shutil.copy(parent.path / "labels.json", child.path / "labels.json")
        runs.write_json(child.path / "metrics.json", parent.metrics())
        runs.write_json(child.path / "history.json", parent.history())
        child.set_status("finished")
        at.session_state["ft_from_parent-run"] = "top"  # the user set up the next one meanwhile
        at.run()
        assert not at.exception, at.exception
        shown = texts(at)
        assert "Finished" in shown and "trains from: **block5**" in shown, shown
        assert at.select_slider(key="ft_from_parent-run").value == "top"  # the form is filled once, not forced
    finally:
        shutil.rmtree(child.path)


def test_the_timeline_can_be_switched_off_for_a_fine_tune(page):
    at = page(run="parent-run")
    at.select_slider(key="ft_from_parent-run").set_value("top").run()
    at.number_input(key="ft_epochs").set_value(1).run()
    at.checkbox(key="ft_timeline").uncheck().run()
    at.button(key="ft_start").click().run()
    assert not at.exception, at.exception
    job = at.query_params["job"]
    job = job[0] if isinstance(job, list) else job
    snap = jobs.registry().wait(job, 300)
    assert snap["status"] == "finished", snap["reason"]
    assert runs.Run(Path(snap["run_dir"])).config()["timeline"] is False
    at.run()
    assert any("trained with the timeline switched off" in c.value for c in at.caption)
