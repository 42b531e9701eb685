"""Where the model looked, epoch by epoch: the images chosen, the files, Grad-CAM equal to Explain's, resume, CLI."""

import json
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, train_tiny_run
from engine import runs
from engine.cli.main import main
from engine.config import DataConfig, TrainConfig
from engine.data.ingest import Item
from engine.explain import timeline as reader
from engine.runs import timeline as store
from engine.training import finetune, fit
from engine.training.timeline import choose, scaled

MAP_TOLERANCE = 2e-3  # the maps are kept as float16 scaled to a maximum of 1: about 3 significant digits


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def items(labels: list[int]) -> list[Item]:
    return [Item(f"c{label}/{i}.png", label, None, str(i), 8, 8) for i, label in enumerate(labels)]


def test_two_images_per_class_from_validation_seeded():
    val = items([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    splits = {"train": items([0, 1]), "validation": val, "test": []}
    picked = choose(splits, seed=3)
    assert [i.label for i in picked] == [0, 0, 1, 1, 2, 2]
    assert all(i in val for i in picked)
    assert picked == choose(splits, seed=3), "the same seed picks the same images"
    assert any(choose(splits, seed=s) != picked for s in range(4, 12)), "the seed matters"
    assert [i.label for i in choose({"validation": [], "test": items([1, 1, 1])}, 0)] == [1, 1], "falls back to test"
    many = choose({"validation": items(list(range(30)) * 2)}, 0)  # 30 classes: one each, the first 16
    assert [i.label for i in many] == list(range(16))


def test_stored_epochs_load_stacked_and_cut_after(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(store.NoTimeline, match="no timeline"):
        store.load(run_dir)
    meta = {"images": ["a.png", "b.png"], "labels": [0, 1], "classes": ["x", "y"], "layer": "conv",
            "input_size": 8, "sizes": [[16, 16], [16, 16]], "boxes": [[0, 0, 8, 8], None]}  # fmt: skip
    store.write_meta(run_dir, meta)
    for epoch in (1, 2, 3):
        raw = np.random.default_rng(epoch).random((2, 4, 4)).astype(np.float32)
        raw[0, 0, 0] = raw[1, 3, 3] = 7  # the peaks: top left, bottom right
        store.write_epoch(
            run_dir, epoch, maps=scaled(raw), predicted=np.array([0, epoch % 2], np.int16),
            probability=np.array([0.9, 0.6], np.float32),
            seconds=np.float64(0.01), epoch_seconds=np.float64(1.0), cpu_seconds=np.float64(0.02),
            epoch_cpu_seconds=np.float64(2.0),
        )  # fmt: skip
    tl = store.load(run_dir)
    assert tl.epochs.tolist() == [1, 2, 3] and tl.maps.shape == (3, 2, 4, 4) and tl.maps.dtype == np.float16
    assert np.allclose(tl.maps.max(axis=(2, 3)), 1.0), "each map scaled to a maximum of 1"
    store.cut_after(run_dir, 1)
    assert store.load(run_dir).epochs.tolist() == [1]
    # the pointing game: a peak at (1, 1) of the 8 px input is pixel (3, 3) of the 16 px original, in [0, 0, 8, 8]
    assert reader.pointing_game(store.load(run_dir)) == [1.0]
    rows = reader.entries(store.load(run_dir))
    assert rows[0]["peak"] == [0, 0] and rows[1]["peak"] == [7, 7]
    assert rows[0]["hit"] is True and "hit" not in rows[1], "no box, no hit"


def test_peaks_are_those_of_gradcams_upsampling():
    from engine.explain.base import upsample

    maps = np.random.default_rng(0).random((20, 7, 7)).astype(np.float32)
    for size in (96, 224, 7):
        up = upsample(maps, size)
        expected = np.stack(np.unravel_index(up.reshape(20, -1).argmax(axis=1), (size, size)), axis=1)
        np.testing.assert_array_equal(store.peaks_of(maps, size), expected)


def feature_config(**kw) -> TrainConfig:
    return TrainConfig(data=DataConfig(source=TINY, image_size=96), epochs=3, early_stopping=0, **kw)


def explain_reference(run: runs.Run, tl):
    """Grad-CAM of the saved model (engine.explain) for the timeline's images, at its predicted classes."""
    from engine.data.ingest import load_item
    from engine.data.sources import open_dataset
    from engine.explain import Explainable
    from engine.explain.grad_cam import GradCAM

    model = Explainable.from_run(run.path)
    dataset = open_dataset(run.config()["data"]["source"])
    by_rel = {item.rel: item for item in dataset.items}
    x = np.stack([model.prepare(load_item(dataset, by_rel[rel])) for rel in tl.meta["images"]])
    logits = model.logits(x)
    classes = logits.argmax(axis=1)
    return GradCAM(model, tl.meta["layer"])(x, list(classes)), classes, logits


def check_last_epoch_is_explain_gradcam(run: runs.Run, epoch: int | None = None) -> None:
    """The timeline at `epoch` (default: the last) is Grad-CAM of the saved model, its class and probability."""
    from engine.explain.base import normalise, upsample
    from engine.numerics import softmax

    tl = store.load(run.path)
    e = -1 if epoch is None else tl.epochs.tolist().index(epoch)
    ref, classes, logits = explain_reference(run, tl)
    assert tl.predicted[e].tolist() == classes.tolist()
    np.testing.assert_allclose(tl.probability[e], softmax(logits).max(axis=1), atol=1e-5)
    mine = normalise(upsample(tl.maps[e].astype(np.float32), ref.shape[1]))
    np.testing.assert_allclose(mine, ref, atol=MAP_TOLERANCE)
    peaks = np.stack(np.unravel_index(ref.reshape(len(ref), -1).argmax(axis=1), ref.shape[1:]), axis=1)
    assert (tl.peaks[e] == peaks).all(1).mean() >= 0.8, "the peaks agree (but for float16 near-ties)"


@pytest.fixture(scope="module")
def feature_run(tmp_path_factory) -> runs.Run:
    """A 3-epoch feature run on the tiny shapes without early stopping (the saved model is the last epoch's)."""
    return runs.Run(train_tiny_run(tmp_path_factory.mktemp("runs"), "timeline-run", early_stopping=0))


@pytest.mark.slow  # trains a feature run on the tiny shapes
def test_feature_run_records_every_epoch_equal_to_gradcam_of_the_saved_model(feature_run, capsys):
    run = feature_run
    tl = store.load(run.path)
    n = 6  # two per class, three classes
    assert tl.epochs.tolist() == [1, 2, 3]
    assert tl.maps.shape == (3, n, 3, 3), "float16 maps at the layer's size (top_activation: 3 x 3 at 96 px)"
    assert tl.predicted.shape == tl.probability.shape == (3, n) and tl.peaks.shape == (3, n, 2)
    assert tl.meta["layer"] == "top_activation" and len(set(tl.meta["labels"])) == 3
    assert store.read_images(run.path).shape == (n, 96, 96, 3)
    assert (tl.seconds > 0).all() and (tl.epoch_seconds > 0).all()
    check_last_epoch_is_explain_gradcam(run)

    assert main(["timeline", str(run.path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["epochs"] == [1, 2, 3] and len(out["entries"]) == 3 * n
    row = out["entries"][-1]
    assert set(row) == {"epoch", "image", "label", "predicted", "probability", "peak", "hit"}
    assert row["image"] == tl.meta["images"][-1] and 0 <= row["peak"][0] < 96
    assert len(out["pointing_game"]) == 3 and all(0 <= p <= 1 for p in out["pointing_game"])
    assert len(out["cost"]["timeline_seconds"]) == 3 and out["cost"]["share"] > 0


@pytest.mark.slow  # writes the report of a trained run
def test_the_report_has_the_grid_at_the_first_middle_and_last_epochs(feature_run):
    from engine.export.report import TIMELINE, write_report

    page = Path(write_report(feature_run.path)["path"]).read_text()
    section = page.split(f"<h2>{TIMELINE}</h2>")[1].split("</section>")[0]
    assert [f"<h3>Epoch {e}</h3>" in section for e in (1, 2, 3)] == [True, True, True]
    assert section.count("data:image/png;base64,") == 3 * 6
    assert "plotly-graph-div" in section, "the pointing game per epoch (the shapes have boxes)"


@pytest.mark.slow  # opens the Train page through AppTest
def test_the_train_page_shows_the_slider_and_the_grid(feature_run, open_page, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(feature_run.path.parent))
    at = open_page("pages/train.py", job=feature_run.name)
    assert not at.exception, at.exception
    assert "Where it looked, epoch by epoch" in [s.value for s in at.subheader]
    slider = at.select_slider(key=f"train_{feature_run.name}_timeline_epoch")
    assert slider.value == 3
    tl = store.load(feature_run.path)

    def shown(at) -> list[str]:
        return [m.value for m in at.markdown if "is " in m.value and ("green" in m.value or "red" in m.value)]

    assert len(shown(at)) == 6
    assert len(at.get("image")) == 6, "one overlay per image"
    slider.set_value(1).run()
    assert not at.exception, at.exception
    first = [f"{tl.meta['classes'][c]} " for c in tl.predicted[0]]
    assert all(name in text for name, text in zip(first, shown(at), strict=True)), "the grid follows the slider"


@pytest.mark.slow  # opens the Train page through AppTest
def test_the_slider_follows_new_epochs_until_the_user_picks_one(feature_run, open_page, monkeypatch, tmp_path):
    """While a run is watched its timeline grows: the slider moves on with it, unless the user moved it back."""
    run = runs.Run(Path(shutil.copytree(feature_run.path, tmp_path / "runs" / feature_run.name)))
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(run.path.parent))
    third = store.folder(run.path) / "epoch_0003.npz"
    held = third.read_bytes()
    key = f"train_{run.name}_timeline_epoch"
    for pick, expected in ((None, 3), (1, 1)):
        third.unlink()  # two epochs recorded so far
        at = open_page("pages/train.py", job=run.name)
        assert not at.exception, at.exception
        assert at.select_slider(key=key).value == 2
        if pick is not None:
            at.select_slider(key=key).set_value(pick).run()
        third.write_bytes(held)  # the third epoch is recorded; the page redraws
        at.run()
        assert not at.exception, at.exception
        assert at.select_slider(key=key).value == expected, pick


@pytest.mark.slow  # trains with the CLI
def test_no_timeline_saves_none_and_the_cli_says_so(capsys, runs_dir):
    args = ["train", TINY, "--image-size", "96", "--epochs", "1", "--no-timeline", "--out", str(runs_dir / "r")]
    assert main([*args, "--json"]) == 0
    capsys.readouterr()
    assert not (runs_dir / "r" / "timeline").exists()
    assert runs.Run(runs_dir / "r").config()["timeline"] is False
    assert main(["timeline", str(runs_dir / "r"), "--json"]) == 2
    assert "no timeline" in json.loads(capsys.readouterr().out)["error"]


@pytest.mark.slow  # trains a scratch CNN, stops it and resumes it
def test_a_resumed_scratch_run_continues_the_timeline_with_the_same_images():
    config = TrainConfig(
        data=DataConfig(source=TINY, image_size=32), backbone="small_cnn", mode="scratch", epochs=4, batch_size=4,
        early_stopping=0,
    )  # fmt: skip
    run = runs.create(backbone=config.backbone, mode=config.mode)
    stop = threading.Event()

    def report(stage="", **fields):
        if stage == "training" and fields.get("epoch") == 3 and fields.get("batch") == 1:
            stop.set()

    assert fit.train(config, run, stop=stop, report=report)["status"] == "stopped"
    before = store.load(run.path)
    assert before.epochs.tolist() == [1, 2]
    assert fit.resume(run)["status"] == "finished"
    after = store.load(run.path)
    assert after.epochs.tolist() == [1, 2, 3, 4], "contiguous"
    assert after.meta["images"] == before.meta["images"]
    np.testing.assert_array_equal(after.maps[:2], before.maps)
    check_last_epoch_is_explain_gradcam(run)  # the whole pass (scratch): the same maps


@pytest.mark.slow  # trains a parent and fine-tunes it
def test_a_fine_tune_records_its_start_and_every_epoch(runs_dir, capsys):
    parent_config = TrainConfig(data=DataConfig(source=TINY, image_size=96), epochs=2, early_stopping=0)
    parent = runs.create(backbone=parent_config.backbone, mode="feature")
    assert fit.train(parent_config, parent)["status"] == "finished"
    config = finetune.finetune_config(parent, unfreeze_top=1, epochs=2)
    run = runs.create(backbone=config.backbone, mode="finetune")
    assert fit.train(config, run)["status"] == "finished"
    tl = store.load(run.path)
    assert tl.epochs.tolist() == [2, 3, 4], "the parent's model first, then each fine-tune epoch"
    assert tl.meta["images"] == store.load(parent.path).meta["images"], "the same split, seed and images"
    check_last_epoch_is_explain_gradcam(run)

    args = ["finetune", str(parent.path), "--unfreeze-top", "1", "--epochs", "1", "--no-timeline"]
    assert main([*args, "--out", str(runs_dir / "off"), "--json"]) == 0
    assert not (runs_dir / "off" / "timeline").exists() and runs.Run(runs_dir / "off").config()["timeline"] is False


@pytest.mark.slow  # loads a trained model
def test_feature_mode_runs_only_the_layers_after_the_frozen_one_traced_once(feature_run):
    from engine.explain import Explainable
    from engine.training.timeline import CUT, CamPass

    model = Explainable.from_run(feature_run.path)
    x = store.read_images(feature_run.path).astype(np.float32)
    fast = CamPass(model.model, model.preprocess, "top_activation", x, frozen_below=True)
    full = CamPass(model.model, model.preprocess, "top_activation", x, frozen_below=False)
    assert fast.layer == CUT and fast.inputs.shape == (6, 3, 3, 1280), "the frozen part's activations are kept"
    for _ in range(3):
        (cam, logits), (cam_full, logits_full) = fast(), full()
    np.testing.assert_allclose(cam, cam_full, rtol=1e-4, atol=1e-5 * cam_full.max())
    np.testing.assert_allclose(logits, logits_full, atol=1e-4)
    assert sum(fast.compiled.traces.values()) == 1, "traced once, not per call"


@pytest.mark.slow  # loads a trained model
def test_a_fine_tunes_timeline_runs_only_the_layers_above_its_frozen_boundary(feature_run):
    from engine.config import FinetuneConfig
    from engine.explain import Explainable
    from engine.model.compiled import OUTPUTS
    from engine.training.finetune.boundary import split
    from engine.training.finetune.layers import first_trainable
    from engine.training.timeline import CamPass

    model = Explainable.from_run(feature_run.path)
    first = first_trainable(model.model, "efficientnet_lite0", FinetuneConfig(parent="p", unfreeze_top=2))
    boundary = split(model.model, first).crossing
    assert len(boundary) == 1
    x = store.read_images(feature_run.path).astype(np.float32)
    fast = CamPass(model.model, model.preprocess, "top_activation", x, frozen_below=boundary[0])
    full = CamPass(model.model, model.preprocess, "top_activation", x, frozen_below=False)
    assert fast.layer == OUTPUTS and fast.inputs.shape[0] == 6 and fast.inputs.shape[1:] != x.shape[1:]
    for _ in range(2):
        (cam, logits), (cam_full, logits_full) = fast(), full()
    np.testing.assert_allclose(cam, cam_full, rtol=1e-4, atol=1e-5 * cam_full.max())
    np.testing.assert_allclose(logits, logits_full, atol=1e-4)
    assert sum(fast.compiled.traces.values()) == 1, "traced once, not per call"
    above = CamPass(model.model, model.preprocess, "top_activation", x, frozen_below="avg_pool")
    assert above.layer == "top_activation", "frozen above the maps' layer: the whole pass, as before"


@pytest.mark.slow  # trains a feature run until early stopping ends it
def test_with_early_stopping_the_saved_model_is_the_best_epochs_entry():
    config = replace(feature_config(), epochs=40, early_stopping=2, learning_rate=0.05)
    run = runs.create(backbone=config.backbone, mode=config.mode)
    assert fit.train(config, run)["status"] == "finished"
    best, ran = run.metrics()["best_epoch"], len(run.history()["loss"])
    assert best < ran, "early stopping put back an earlier epoch's weights"
    assert store.load(run.path).epochs.tolist() == list(range(1, ran + 1)), "every epoch run is recorded"
    check_last_epoch_is_explain_gradcam(run, epoch=best)


@pytest.mark.slow  # trains two feature runs on the tiny shapes
def test_a_feature_run_takes_the_frozen_activations_from_the_feature_pass_and_then_from_the_cache(monkeypatch):
    """No new pass over the backbone is traced for the timeline: the first run's come from the features' own
    traced pass, a second run's from the feature cache; the maps are those of the classifier's own pass."""
    from engine.model.compiled import CompiledModel
    from engine.training import timeline

    first = runs.create(backbone="efficientnet_lite0", mode="feature")
    passes = []
    real = CompiledModel.activations
    monkeypatch.setattr(CompiledModel, "activations", lambda self, *a: passes.append(1) or real(self, *a))
    assert fit.train(feature_config(), first)["status"] == "finished"
    assert not passes, "the timeline's frozen activations came from the pass that computed the features"
    kept = {}
    real_pass = timeline.CamPass.__init__

    def spy(self, classifier, preprocess, layer, images, frozen_below, activations=None):
        kept["activations"], kept["args"] = activations, (classifier, preprocess, layer, images)
        real_pass(self, classifier, preprocess, layer, images, frozen_below, activations)

    monkeypatch.setattr(timeline.CamPass, "__init__", spy)
    second = runs.create(backbone="efficientnet_lite0", mode="feature")
    assert fit.train(feature_config(), second)["status"] == "finished"
    assert not passes and kept["activations"] is not None, "read from the feature cache"
    classifier, preprocess, layer, images = kept["args"]
    own = CompiledModel(classifier, preprocess).activations(images, layer)
    np.testing.assert_allclose(kept["activations"], own, rtol=1e-5, atol=1e-5 * float(np.abs(own).max()))
    np.testing.assert_allclose(store.load(second.path).maps, store.load(first.path).maps, atol=MAP_TOLERANCE)
