"""Training: feature mode on cached features, scratch CNNs, the run store, stop, NaN, resume, jobs."""

import json
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, poison_from_epoch
from engine import jobs, runs
from engine.config import AugmentConfig, DataConfig, HeadConfig, TrainConfig
from engine.data import pipeline
from engine.data.sources import open_dataset
from engine.errors import ConfigError, ConvScopeError, TrainingError
from engine.training import callbacks, feature_cache, fit, loop, models, presets
from engine.training.features import FeatureExtractor

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def feature_config(**kw) -> TrainConfig:
    data = kw.pop("data", DataConfig(source=TINY, image_size=96))
    return TrainConfig(data=data, epochs=kw.pop("epochs", 3), **kw)


def scratch_config(**kw) -> TrainConfig:
    data = kw.pop("data", DataConfig(source=TINY, image_size=32))
    return TrainConfig(data=data, backbone="small_cnn", mode="scratch", epochs=kw.pop("epochs", 3), **kw)


def new_run(config: TrainConfig) -> runs.Run:
    return runs.create(backbone=config.backbone, mode=config.mode)


# ---- config, presets, models -------------------------------------------------------


def test_configs_validate_and_round_trip():
    config = TrainConfig(
        head=HeadConfig.parse("256,128", 0.3), optimizer="sgd", data=DataConfig(augment=AugmentConfig.standard())
    )
    assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config
    for bad in ({"mode": "finetune"}, {"optimizer": "adagrad"}, {"epochs": 0}, {"learning_rate": 0}, {"batch_size": 0}):
        with pytest.raises(ConfigError):
            TrainConfig(**bad)
    with pytest.raises(ConfigError, match="sizes like 256"):
        HeadConfig.parse("big")


@pytest.mark.parametrize("name", list(presets.PRESETS))
def test_presets_give_valid_configs(name):
    config = presets.get(name).apply(TrainConfig(data=DataConfig(source="some/folder", seed=3)))
    assert config.preset == name and config.data.source == "some/folder" and config.data.seed == 3
    assert (config.mode == "scratch") == (name == "alexnet-scratch")


def test_defaults_train_to_convergence_with_early_stopping():
    feature = TrainConfig()
    assert feature.mode == "feature" and feature.epochs >= 100 and feature.early_stopping > 0
    assert feature.head.l2 > 0, "the default head is penalised like a logistic-regression probe"
    scratch = TrainConfig(mode="scratch", backbone="small_cnn")
    assert scratch.early_stopping > 0 and scratch.learning_rate < feature.learning_rate
    assert TrainConfig(mode="scratch", epochs=5).epochs == 5, "a value given wins over the mode's default"
    # a config saved before heads had a penalty still means no penalty
    old = TrainConfig().to_json()
    del old["head"]["l2"]
    assert TrainConfig.from_json(old).head.l2 == 0.0
    # the recipes reproduce their tutorials: fixed epochs, no penalty
    assert all(p.apply(TrainConfig()).early_stopping == 0 for p in presets.PRESETS.values())
    assert all(p.apply(TrainConfig()).head.l2 == 0 for p in presets.PRESETS.values())


def test_no_preset_promises_a_page_that_does_not_exist():
    pages = {p.stem for p in (ROOT / "pages").glob("*.py")}
    for p in presets.PRESETS.values():
        if "finetune" not in pages:
            assert "fine-tune page" not in (p.note + p.published + p.title).lower(), p.name
    assert "layer 100" in presets.get("keras-tutorial-mobilenet").followup


def test_scratch_outlook_warns_on_small_data_only():
    small = fit.scratch_outlook(210, 5)
    assert small is not None and "210 training images" in small and "chance (20%)" in small
    assert fit.scratch_outlook(5000, 5) is None


def test_class_weights_favour_rare_classes():
    w = loop.class_weights(np.array([0] * 8 + [1] * 2), 3)
    assert w[1] == pytest.approx(4 * w[0]) and w[2] == 1.0
    assert w[0] * 8 + w[1] * 2 == pytest.approx(10)


@pytest.mark.slow  # builds the feature model on the bundled Lite0 with its ImageNet weights
def test_feature_classifier_summary_counts_frozen_backbone_and_head():
    built = models.build(replace(feature_config(), head=HeadConfig((16,), 0.2)), 4)
    summary = models.summarise(built.classifier)
    assert summary.trainable == (1280 * 16 + 16) + (16 * 4 + 4)
    assert summary.non_trainable == models.summarise(built.base).total
    assert summary.layers[0]["type"].startswith("frozen backbone") and not summary.layers[0]["trainable"]
    assert [r["layer"] for r in summary.layers[-4:]] == ["avg_pool", "head_dense1", "head_dropout1", "logits"]
    # the head's layers are the classifier's: one set of weights
    assert built.classifier.get_layer("logits") is built.head.get_layer("logits")


def test_scratch_mode_refuses_pretrained_backbones_and_vice_versa():
    with pytest.raises(TrainingError, match="scratch mode"):
        models.build(TrainConfig(mode="scratch"), 3)
    with pytest.raises(TrainingError, match="feature mode"):
        models.build(TrainConfig(backbone="small_cnn"), 3)


# ---- feature mode ------------------------------------------------------------------


@pytest.mark.slow
def test_feature_mode_writes_a_complete_run_and_reuses_cached_features(monkeypatch, cache_dir):
    config = feature_config()
    run = new_run(config)
    out = fit.train(config, run)
    assert out["status"] == "finished" and out["epochs_run"] == 3
    assert out["features"]["computed"] > 0
    for name in ("config.json", "history.json", "labels.json", "metrics.json", "model.keras", "status.json"):
        assert (run.path / name).is_file(), name
    assert run.checkpoint.is_file() and run.checkpoint_epoch() == 3
    assert any(run.logs.rglob("events.out.tfevents.*")), "TensorBoard logs"
    assert set(out["history"]) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in out["history"].values())
    assert run.status()["status"] == "finished" and run.labels() == ["circle", "square", "triangle"]
    assert run.config()["backbone"] == "efficientnet_lite0"
    assert not list(run.path.rglob(".*")), "no temporary files left behind"

    # A second run on the same data computes no features at all.
    def no_features(self, images):
        raise AssertionError("features were computed again")

    monkeypatch.setattr(FeatureExtractor, "__call__", no_features)
    again = fit.train(config, new_run(config))
    assert again["features"] == {"computed": 0, "cached": out["features"]["computed"]}
    assert again["history"] == out["history"], "same seed, same data: identical metrics"


@pytest.mark.slow
def test_trained_run_is_explainable_after_reload():
    from engine.explain import Explainable, explain_image
    from engine.samples import sample_photo

    config = feature_config(epochs=1)
    run = new_run(config)
    fit.train(config, run)
    model = Explainable.from_run(run.path)
    assert model.labels == ["circle", "square", "triangle"] and model.input_size == 96
    result = explain_image(model, sample_photo("chelsea"), "gradcam")
    assert result.layer == "top_activation" and result.heatmap.shape == (96, 96)
    assert np.isfinite(result.heatmap).all()


@pytest.mark.slow
def test_augmented_views_are_computed_once_and_differ(cache_dir):
    aug = AugmentConfig(flip="horizontal", rotation=0.1, zoom=0.2)
    config = feature_config(data=DataConfig(source=TINY, image_size=96, augment=aug), aug_views=2)
    first = fit.train(config, new_run(config))
    assert first["features"]["augmented_views"] == 2 and first["features"]["augmented_computed"] > 0
    second = fit.train(config, new_run(config))
    assert second["features"]["augmented_computed"] == 0 and second["features"]["computed"] == 0
    stored = [np.load(p) for p in feature_cache.FeatureKey("efficientnet_lite0", 96, "stretch").folder.glob("aug-*")]
    views = next(a for a in stored if a.shape[0] == 2)
    assert not np.allclose(views[0], views[1]), "two augmented views of the same images differ"


@pytest.mark.slow
def test_default_feature_run_stops_early_and_keeps_the_best_epoch():
    config = TrainConfig(data=DataConfig(source=TINY, image_size=96), epochs=80)  # the default schedule otherwise
    run = new_run(config)
    out = fit.train(config, run)
    h = out["history"]
    assert out["status"] == "finished" and out["reason"].startswith("early stopping after"), out["reason"]
    assert out["epochs_run"] < 80 and len(h["val_loss"]) == out["epochs_run"]
    best = run.metrics()["best_epoch"]
    assert out["epochs_run"] - best >= config.early_stopping
    assert min(h["val_loss"][best:]) > h["val_loss"][best - 1] - callbacks.EARLY_STOPPING_MIN_DELTA
    # The saved model holds the best epoch's weights, not the last epoch's.
    assert out["val_accuracy"] == pytest.approx(h["val_accuracy"][best - 1])
    import keras

    reloaded = keras.models.load_model(run.model_file, safe_mode=True)
    assert reloaded.get_layer("logits").kernel_regularizer is not None, "the head's L2 penalty is part of the model"


def test_missing_source_leaves_no_run_folder_but_a_failed_run_keeps_its_own(runs_dir, tmp_path):
    config = feature_config(data=DataConfig(source=str(tmp_path / "no-such-folder")))
    run = new_run(config)
    with pytest.raises(ConvScopeError, match="no such folder"):
        fit.train(config, run)
    assert not run.path.exists() and list(runs_dir.iterdir()) == []
    (tmp_path / "one" / "only").mkdir(parents=True)  # opens, but is not trainable: no folder either
    run = new_run(config)
    with pytest.raises(ConvScopeError, match="at least 2 classes"):
        fit.train(feature_config(data=DataConfig(source=str(tmp_path / "one"))), run)
    assert not run.path.exists()
    # A folder with anything else in it (a user's file, a started run) is never removed.
    run = new_run(config)
    (run.path / "notes.txt").write_text("mine")
    with pytest.raises(ConvScopeError):
        fit.train(config, run)
    assert (run.path / "notes.txt").is_file() and run.status()["status"] == "failed"


def test_a_bug_is_not_bad_input(runs_dir, monkeypatch):
    """A bare ValueError from inside training (NumPy's, say) is a bug: the run is kept, failed with the
    error's type, and the ValueError reaches the caller as itself, not as bad input (its folder discarded)."""

    def numpy_bug(*args, **kwargs):
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    monkeypatch.setattr(loop, "_fit", numpy_bug)
    config = feature_config()
    run = new_run(config)
    with pytest.raises(ValueError, match="broadcast") as caught:
        fit.train(config, run)
    assert not isinstance(caught.value, ConvScopeError)
    assert run.path.is_dir(), "a bug must not be cleaned away like a typo in the options"
    status = run.status()
    assert status["status"] == "failed" and status["reason"].startswith("ValueError: operands could not")


@pytest.mark.slow
def test_feature_mode_reaches_high_validation_accuracy_in_few_epochs():
    config = TrainConfig(
        data=DataConfig(source="shapes:per_class=40,classes=3,size=160", image_size=224),
        epochs=8,
        learning_rate=1e-2,
    )
    out = fit.train(config, new_run(config))
    assert out["val_accuracy"] >= 0.8 and out["test_accuracy"] >= 0.8, out["history"]["val_accuracy"]


# ---- time left -------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_eta_says_estimating_until_a_few_batches_are_timed_and_ignores_tracing():
    fake = FakeClock()
    clock = callbacks.BatchClock(min_timed=3, clock=fake)
    lefts = []
    for k, seconds in enumerate([12.0, 0.5, 0.5, 0.5, 0.5]):  # batch 1 traces the step: 12 s
        clock.batch_begin(first_of_epoch=k == 0)
        fake.now += seconds
        clock.batch_end()
        lefts.append(clock.left(batches_left=100, epoch_ends_left=10, val_batches=2))
    assert lefts[:3] == [None, None, None], "estimating until 3 batches after the first were timed"
    # (more than settle_s seconds passed: with no epoch end seen yet, it is guessed)
    # 100 batches at 0.5 s, and 10 epoch ends guessed at 2 validation batches of 0.5 s each
    assert lefts[3] == pytest.approx(100 * 0.5 + 10 * 1.0) and lefts[4] == lefts[3]
    # The measured gap between epochs (validation, checkpoint) replaces the guess.
    fake.now += 3.0  # epoch end of epoch 1
    clock.batch_begin(first_of_epoch=True)
    fake.now += 0.5
    clock.batch_end()
    assert clock.left(100, 10, 2) == pytest.approx(100 * 0.5 + 10 * 3.0)

    # Short batches: no guess about the epoch end until one was measured.
    fake = FakeClock()
    quick = callbacks.BatchClock(min_timed=3, clock=fake)
    for k in range(5):
        quick.batch_begin(first_of_epoch=k == 0)
        fake.now += 0.01
        quick.batch_end()
    assert quick.left(100, 10, 2) is None
    fake.now += 0.2  # validation and checkpoint
    quick.batch_begin(first_of_epoch=True)
    fake.now += 0.01
    quick.batch_end()
    assert quick.left(100, 10, 2) == pytest.approx(100 * 0.01 + 10 * 0.2)


@pytest.mark.slow
def test_training_reports_no_time_left_before_it_has_timed_batches(cache_dir):
    config = feature_config(epochs=3, batch_size=4)
    etas, feature_etas = [], []

    def report(stage="", **fields):
        if stage == "training" and "batch" in fields and "logs" in fields:
            etas.append(fields["eta"])
        if stage == "features":
            feature_etas.append(fields["eta"])

    fit.train(config, new_run(config), report=report)
    assert len(feature_etas) == 9 and feature_etas[:3] == [None, None, None]  # 36 images in batches of 4
    assert all(e is not None for e in feature_etas[3:])
    assert len(etas) == 3 * 6 and etas[:3] == [None, None, None]  # 24 training images, batches of 4
    known = [e for e in etas if e is not None]
    first = etas.index(known[0])
    assert first >= 3 and all(e is not None and e >= 0 for e in etas[first:]), etas
    # never a small promise followed by a jump: no later estimate is much above the first one
    assert max(known) <= 1.5 * known[0] + 0.5, etas


# ---- the image pipeline ---------------------------------------------------------------


def test_training_batches_shuffle_indices_before_decoding_and_decode_each_image_once(monkeypatch):
    ds = open_dataset(TINY)  # 36 images
    real, calls = pipeline.load_resized, []

    def counted(path, size, policy="stretch"):
        calls.append(path)
        if len(calls) > 8:  # a pipeline that must decode everything before its first batch fails here
            raise RuntimeError("decoded more images than the first batch needs")
        return real(path, size, policy)

    monkeypatch.setattr(pipeline, "load_resized", counted)
    data = pipeline.make_tf_dataset(ds, ds.items, 32, batch_size=2, shuffle=True, seed=0)
    x, _ = next(iter(data))
    assert x.shape == (2, 32, 32, 3), "the first batch needs only its own images decoded"

    calls.clear()
    monkeypatch.setattr(pipeline, "load_resized", lambda *a: (calls.append(a[0]), real(*a))[1])
    data = pipeline.make_tf_dataset(ds, ds.items, 32, batch_size=5, shuffle=True, seed=0)
    orders = [np.concatenate([y.numpy() for _, y in data]) for _ in range(3)]
    assert sorted(calls) == sorted({str(ds.path(i)) for i in ds.items}), "each file decoded once, in 3 epochs"
    assert all(sorted(o) == sorted(i.label for i in ds.items) for o in orders)
    assert len({tuple(o) for o in orders}) == 3, "a fresh order every epoch"


# ---- scratch mode ------------------------------------------------------------------


def colour_classes(root: Path, per_class: int = 24) -> Path:
    """Two classes a small CNN can learn in a few epochs: reddish and bluish noise."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, channel in (("red", 0), ("blue", 2)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 140, (32, 32, 3), dtype=np.uint8)
            img[..., channel] += 110
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_scratch_mode_learns(tmp_path):
    source = str(colour_classes(tmp_path / "colours"))
    config = scratch_config(data=DataConfig(source=source, image_size=32), epochs=8, batch_size=8)
    out = fit.train(config, new_run(config))
    h = out["history"]
    assert out["status"] == "finished" and h["loss"][-1] < h["loss"][0]
    assert out["val_accuracy"] > 0.8 and out["test_accuracy"] > 0.8, h  # chance is 0.5
    again_run = new_run(config)
    again = fit.train(config, again_run)
    assert again["history"] == h, "same seed, same data, CPU: identical metrics"
    # The test logits training kept for the Evaluate page are the saved model's on the images.
    from engine import evaluate

    kept = evaluate.evaluate(again_run)
    for old in (again_run.path / "evaluations").iterdir():
        old.unlink()
    fresh = evaluate.evaluate(again_run)
    assert kept.cached and not fresh.cached and np.array_equal(kept.predicted, fresh.predicted)
    np.testing.assert_allclose(kept.logits, fresh.logits, atol=1e-4)


# ---- stop, NaN, out of memory, atomic checkpoints, resume -----------------------------


@pytest.mark.slow
def test_stop_takes_effect_within_one_batch_and_the_run_resumes():
    config = scratch_config(epochs=4, batch_size=4)
    run = new_run(config)
    stop = threading.Event()
    after = []

    def report(stage="", **fields):
        if stop.is_set() and "batch" in fields and "history" not in fields:
            after.append(fields["batch"])
        if stage == "training" and fields.get("epoch") == 2 and fields.get("batch") == 2:
            stop.set()

    out = fit.train(config, run, stop=stop, report=report)
    assert out["status"] == "stopped" and out["reason"] == "by the user at epoch 2, batch 2"
    assert after == [], f"batches ran after the stop: {after}"
    assert out["epochs_run"] == 1 and run.checkpoint_epoch() == 1
    assert run.model_file.is_file() and run.resumable()
    resumed = fit.resume(run)
    assert resumed["status"] == "finished" and resumed["epochs_run"] == 4
    assert resumed["history"]["loss"][0] == out["history"]["loss"][0]


@pytest.mark.slow
def test_nan_loss_fails_the_run_and_keeps_the_last_good_checkpoint(monkeypatch):
    import keras

    poison_from_epoch(monkeypatch, 2)  # the real batches, turned to NaN from the third epoch on
    config = feature_config(epochs=6)
    run = new_run(config)
    out = fit.train(config, run)
    assert out["status"] == "failed" and "NaN" in out["reason"] and "lower learning rate" in out["reason"]
    assert run.checkpoint_epoch() == len(run.history()["loss"]) >= 1
    assert all(np.isfinite(run.history()["loss"]))
    assert not run.model_file.exists()
    keras.models.load_model(run.checkpoint, safe_mode=True)  # the good checkpoint loads


@pytest.mark.slow
def test_learning_rate_10_fails_the_run_and_keeps_the_last_good_checkpoint():
    import keras

    # AlexNet with SGD at learning rate 10: epoch 1 ends with finite numbers, epoch 2 diverges.
    config = TrainConfig(
        data=DataConfig(source=TINY, image_size=64),
        backbone="alexnet",
        mode="scratch",
        epochs=5,
        optimizer="sgd",
        learning_rate=10.0,
    )
    run = new_run(config)
    out = fit.train(config, run)
    assert out["status"] == "failed" and "NaN" in out["reason"], out
    assert run.status()["status"] == "failed" and "NaN" in run.status()["reason"]
    assert run.checkpoint_epoch() == len(run.history()["loss"]) == 1
    keras.models.load_model(run.checkpoint, safe_mode=True)
    assert run.resumable()


@pytest.mark.slow
def test_out_of_memory_is_a_friendly_failure_and_the_next_run_works(monkeypatch):
    import tensorflow as tf

    real = fit._feature_batches

    def oom(*args):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(fit, "_feature_batches", oom)
    config = feature_config(epochs=1)
    run = new_run(config)
    out = fit.train(config, run)
    assert out["status"] == "failed" and "out of memory" in out["reason"] and "batch size" in out["reason"]
    assert run.status()["status"] == "failed"
    monkeypatch.setattr(fit, "_feature_batches", real)
    assert fit.train(config, new_run(config))["status"] == "finished"


def test_atomic_write_keeps_the_old_file_when_a_write_dies(tmp_path):
    target = tmp_path / "x.json"
    runs.write_json(target, {"epoch": 1})

    def dies(tmp: Path) -> None:
        tmp.write_text('{"epo')  # half written, then killed
        raise OSError("killed")

    with pytest.raises(OSError):
        runs.atomic_write(target, dies)
    assert json.loads(target.read_text()) == {"epoch": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.slow
def test_a_checkpoint_write_that_dies_leaves_the_previous_checkpoint(monkeypatch):
    import keras

    real_save, calls = keras.Model.save, []

    def save(self, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:  # the epoch-2 checkpoint: half written, then the process "dies"
            Path(path).write_bytes(b"PK\x03\x04 half a zip")
            raise OSError("killed during the checkpoint write")
        return real_save(self, path, *a, **kw)

    monkeypatch.setattr(keras.Model, "save", save)
    config = feature_config(epochs=3)
    run = new_run(config)
    with pytest.raises(OSError):
        fit.train(config, run)
    monkeypatch.setattr(keras.Model, "save", real_save)
    assert run.checkpoint_epoch() == 1
    keras.models.load_model(run.checkpoint, safe_mode=True)
    assert not [p for p in (run.path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert run.status()["status"] == "failed"
    assert fit.resume(run)["epochs_run"] == 3


def long_cli_run(out_dir: Path, until_epoch: int) -> tuple[subprocess.Popen, runs.Run]:
    """A 300-epoch scratch run in a child process, returned once `until_epoch` epochs are checkpointed."""
    cmd = [sys.executable, "-m", "engine", "train", TINY, "--mode", "scratch", "--image-size", "32"]
    cmd += ["--epochs", "300", "--out", str(out_dir), "--json"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    run = runs.Run(out_dir)
    deadline = time.monotonic() + 120
    while run.checkpoint_epoch() < until_epoch and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    return proc, run


@pytest.mark.slow
def test_a_killed_training_process_resumes_from_its_last_finished_epoch(runs_dir):
    proc, run = long_cli_run(runs_dir / "killed", 2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = run.checkpoint_epoch()
    assert 2 <= done < 300
    status = run.status()
    assert status["status"] == "failed" and status["reason"] == runs.INTERRUPTED and run.resumable()
    before = run.history()["loss"][:done]

    res = subprocess.run(
        [sys.executable, "-m", "engine", "train", "--resume", str(run.path), "--epochs", str(done + 2), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout + res.stderr[-2000:]
    result = json.loads(res.stdout)
    assert result["status"] == "finished" and result["epochs_run"] == done + 2
    assert result["history"]["loss"][:done] == before


@pytest.mark.slow
def test_ctrl_c_stops_the_cli_run_after_the_current_batch_and_keeps_the_model(runs_dir):
    proc, run = long_cli_run(runs_dir / "interrupted", 1)
    proc.send_signal(signal.SIGINT)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout
    result = json.loads(stdout)
    assert result["status"] == "stopped" and result["reason"].startswith("by the user at epoch")
    assert run.model_file.is_file() and run.status()["status"] == "stopped" and run.resumable()


# ---- the job registry --------------------------------------------------------------


def test_registry_runs_one_job_at_a_time_and_queues_the_rest():
    release, running, peak = threading.Event(), [], []
    lock = threading.Lock()

    def fake_train(config, run, *, stop, report, resume):
        with lock:
            running.append(run.name)
            peak.append(len(running))
        report(stage="training", epoch=1, epochs=config.epochs, batch=1, batches=2)
        release.wait(10)
        with lock:
            running.remove(run.name)
        return {"status": "finished", "reason": "", "history": {"loss": [1.0]}}

    registry = jobs.JobRegistry(train_fn=fake_train, devices=["/CPU:0"])
    config = feature_config()
    with ThreadPoolExecutor(2) as pool:  # two users press Train at the same moment
        a, b = pool.map(lambda _: registry.submit(config), range(2))
    deadline = time.monotonic() + 10
    while not running and time.monotonic() < deadline:
        time.sleep(0.01)
    positions = sorted([registry.position(a.id), registry.position(b.id)])
    assert positions == [0, 1], "one runs, the other waits first in line"
    third = registry.submit(config)
    assert registry.position(third.id) == 2
    assert registry.stop(third.id) and registry.snapshot(third.id)["status"] == "stopped"
    assert third.run.status()["status"] == "stopped"
    release.set()
    for job in (a, b):
        assert registry.wait(job.id, 120)["status"] == "finished"
    assert max(peak) == 1
    assert registry.active() == []


@pytest.mark.slow
def test_registry_trains_for_real_and_a_failing_job_does_not_kill_the_worker():
    registry = jobs.JobRegistry(devices=["/CPU:0"])
    bad = registry.submit(feature_config(data=DataConfig(source="/no/such/folder")))
    good = registry.submit(feature_config(epochs=2))
    assert "no such folder" in registry.wait(bad.id, 60)["reason"]
    snap = registry.wait(good.id, 300)
    assert snap["status"] == "finished" and len(snap["history"]["loss"]) == 2
    # the last report: the latency measured after the run was marked finished
    assert snap["progress"]["stage"] == "follow-up" and snap["result"]["val_accuracy"] is not None
    assert registry.snapshot(bad.id)["status"] == "failed" and not bad.run.path.exists(), "no empty run folder"


def test_a_stop_shows_at_once_while_the_current_batch_finishes():
    in_batch, release = threading.Event(), threading.Event()

    def fake_train(config, run, *, stop, report, resume):
        report(stage="training", epoch=1, epochs=3, batch=1, batches=5, eta=None)
        in_batch.set()
        release.wait(10)  # the batch that was running when Stop was pressed
        return {"status": "stopped" if stop.is_set() else "finished", "reason": "", "history": {}}

    registry = jobs.JobRegistry(train_fn=fake_train, devices=["/CPU:0"])
    job = registry.submit(feature_config())
    assert in_batch.wait(120)
    assert registry.snapshot(job.id)["stopping"] is False
    assert registry.stop(job.id)
    snap = registry.snapshot(job.id)
    assert snap["status"] == "running" and snap["stopping"] is True
    release.set()
    done = registry.wait(job.id, 120)
    assert done["status"] == "stopped" and done["stopping"] is False


# ---- CLI ---------------------------------------------------------------------------


def cli(*args: str) -> tuple[int, dict]:
    res = subprocess.run(
        [sys.executable, "-m", "engine", *args, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    return res.returncode, json.loads(res.stdout)


@pytest.mark.slow
def test_cli_train_and_runs(runs_dir):
    code, out = cli(
        "train",
        TINY,
        "--backbone",
        "efficientnet_lite0",
        "--mode",
        "feature",
        "--epochs",
        "2",
        "--image-size",
        "96",
        "--batch-size",
        "8",
        "--lr",
        "0.003",
        "--seed",
        "1",
        "--augment",
        "flip=horizontal,rotation=0.05",
        "--aug-views",
        "1",
        "--out",
        str(runs_dir / "mine"),
    )
    assert code == 0, out
    assert set(out) >= {"run_dir", "status", "epochs_run", "history", "val_accuracy", "test_accuracy", "seconds"}
    assert out["run_dir"] == str(runs_dir / "mine") and out["status"] == "finished" and out["epochs_run"] == 2
    assert len(out["history"]["val_accuracy"]) == 2 and 0 <= out["test_accuracy"] <= 1
    assert out["params"]["trainable"] == 1280 * 3 + 3 and out["params"]["non_trainable"] > 3_000_000
    config = runs.Run(runs_dir / "mine").config()
    assert (config["batch_size"], config["learning_rate"], config["seed"]) == (8, 0.003, 1)
    assert config["data"]["augment"]["flip"] == "horizontal" and config["data"]["augment"]["rotation"] == 0.05
    assert out["features"]["augmented_views"] == 1 and out["strategy"]["replicas"] == 1
    code, listed = cli("runs")
    assert code == 0 and listed["runs"][0]["name"] == "mine" and listed["runs"][0]["status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "scratch", "--backbone", "efficientnet_lite0"], "scratch mode"),
        (["--epochs", "0"], "epochs"),
        (["--backbone", "resnet1000"], "unknown backbone"),
        (["--augment", "spin=3"], "augmentation"),
        (["--hidden", "lots"], "hidden"),
    ],
)
def test_cli_train_refuses_bad_options(args, message):
    code, out = cli("train", TINY, *args)
    assert code == 2 and message in out["error"], out


@pytest.mark.slow
def test_cli_train_refuses_unusable_data_and_missing_resume(tmp_path, runs_dir):
    (tmp_path / "data" / "only").mkdir(parents=True)
    code, out = cli("train", str(tmp_path / "data"))
    assert code == 2 and "at least 2 classes" in out["error"]
    code, out = cli("train", str(tmp_path / "missing"), "--out", str(runs_dir / "mine"))
    assert code == 2 and "no such folder" in out["error"]
    assert not (runs_dir / "mine").exists() and not [p for p in runs_dir.glob("*") if p.is_dir()], "no run folder"
    code, out = cli("train", "--resume", str(tmp_path / "nothing"))
    assert code == 2 and "not a run folder" in out["error"]
