"""Fine-tuning: unfreeze points, the boundary cache against full passes, BN, stop/resume, the finder, the CLI."""

import hashlib
import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import train_tiny_run
from engine import runs
from engine.config import DataConfig, FinetuneConfig
from engine.errors import ConfigError
from engine.training import blocks, finetune, fit, lr_finder, presets
from engine.training.finetune import boundary

ROOT = Path(__file__).resolve().parents[1]
TINY = "shapes:per_class=12,classes=3,size=64"


@pytest.fixture(scope="module")
def parent_dir(tmp_path_factory):
    """A finished feature-mode run on the tiny shapes (96 px, 3 epochs), shared by the module: never written."""
    return train_tiny_run(tmp_path_factory.mktemp("runs"), "parent")


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


@pytest.fixture
def parent(parent_dir):
    return runs.Run(parent_dir)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load(path):
    import keras

    return keras.models.load_model(path, safe_mode=True)


def by_layer(model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.asarray(w) for w in layer.weights] for layer in model.layers if layer.weights}


# ---- where fine-tuning starts ----------------------------------------------------------


@pytest.mark.slow
def test_unfreeze_points_resolve_to_block_starts(parent):
    model = load(parent.model_file)
    groups = finetune.model_blocks(model, "efficientnet_lite0")
    assert [g.name for g in groups] == ["stem", *[f"block{i}" for i in range(1, 8)], "top", "head"]
    assert model.layers[groups[-1].first].name == "avg_pool" and groups[-1].layer_names[-1] == "logits"

    def first(**kw) -> int:
        return finetune.first_trainable(model, "efficientnet_lite0", FinetuneConfig(parent="p", **kw))

    assert model.layers[first(unfreeze_top=2)].name.startswith("block7")
    assert first(unfreeze_from="block5") == next(g.first for g in groups if g.name == "block5")
    assert first(unfreeze_from="top_conv") == [la.name for la in model.layers].index("top_conv")
    assert first(unfreeze_from="100") == 100
    assert first(unfreeze_from="-3") == groups[-1].first - 3
    assert first(unfreeze_from="head") == groups[-1].first
    for bad, message in (
        ({"unfreeze_top": 9}, "has 8 blocks"),
        ({"unfreeze_from": "block9"}, "no block or layer named"),
        ({"unfreeze_from": "logits"}, "in the head"),
        ({"unfreeze_from": "5000"}, "outside the backbone"),
        ({"unfreeze_from": "--5"}, "no block or layer named '--5'"),  # a typo, not int()'s ValueError
    ):
        with pytest.raises(finetune.FinetuneError, match=message):
            first(**bad)
    with pytest.raises(ConfigError, match="say where fine-tuning starts"):
        FinetuneConfig(parent="p")


def test_mobilenet_blocks_and_the_tutorial_boundary():
    """MobileNetV2 (random weights: no download) groups into its blocks; layer 100 is the tutorial's point."""
    import keras

    from engine import backbones

    base = keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(96, 96, 3))
    spec = backbones.get_spec("mobilenet_v2")
    groups = blocks.group(base, spec.finetune_blocks, spec.last_conv_layer)
    assert groups[0].name == "stem" and groups[-1].name == "Conv_1" and "out_relu" in groups[-1].layer_names
    assert len(base.layers) == 154 and base.layers[100].name.startswith("block_11_")
    cut = finetune.split(base, 100)
    assert len(cut.crossing) == 2, cut.crossing  # inside a residual block: the skip crosses too


@pytest.mark.slow
def test_counts_match_keras_and_the_map_does_not_mutate(parent):
    model = load(parent.model_file)
    before = [layer.trainable for layer in model.layers]
    for bn in ("frozen", "train"):
        for top in (1, 3):
            first = finetune.first_trainable(model, "efficientnet_lite0", FinetuneConfig(parent="p", unfreeze_top=top))
            predicted = finetune.counts(model, first, bn)
            rows = finetune.layer_map(model, "efficientnet_lite0", first, bn)
            assert [la.trainable for la in model.layers] == before  # nothing set yet
            fresh = load(parent.model_file)
            finetune.unfreeze(fresh, first, bn)
            trainable = sum(int(np.prod(w.shape)) for w in fresh.trainable_weights)
            fixed = sum(int(np.prod(w.shape)) for w in fresh.non_trainable_weights)
            assert (predicted["trainable"], predicted["non_trainable"]) == (trainable, fixed), (bn, top)
            assert sum(r["params"] for r in rows) == trainable + fixed
            assert {r["layer"] for r in rows if r["trainable"]} == {
                la.name for la in fresh.layers if la.trainable_weights
            }
    assert rows[0]["block"] == "stem" and rows[-1]["block"] == "head"


@pytest.mark.slow
def test_split_reproduces_the_model(parent):
    model = load(parent.model_file)
    x = np.random.default_rng(0).uniform(-1, 1, (3, 96, 96, 3)).astype("float32")
    whole = np.asarray(model(x))
    names = [la.name for la in model.layers]
    for first in (names.index("block6a_expand_conv"), names.index("block2b_project_conv")):
        cut = finetune.split(model, first)
        assert len(cut.crossing) == (1 if first == names.index("block6a_expand_conv") else 2)
        np.testing.assert_allclose(np.asarray(cut.upper(cut.lower(x))), whole, atol=1e-5)


# ---- the fit -----------------------------------------------------------------------


def fine_tune(parent, **kw) -> tuple[dict, runs.Run]:
    options = {"unfreeze_top": 2, "epochs": 1, **kw}
    config = finetune.finetune_config(parent, **options)
    run = runs.create(backbone=config.backbone, mode="finetune")
    return fit.train(config, run), run


@pytest.mark.slow
def test_only_unfrozen_layers_change_and_bn_statistics_stay(parent):
    original = digest(parent.model_file)
    result, run = fine_tune(parent, unfreeze_top=2, epochs=2, learning_rate=1e-3)
    assert result["status"] == "finished", result["reason"]
    assert result["parent"] == "parent" and result["boundary"]["mode"] == "cached"
    before, after = by_layer(load(parent.model_file)), load(run.model_file)
    first = finetune.first_trainable(after, "efficientnet_lite0", FinetuneConfig(parent="p", unfreeze_top=2))
    changed = set()
    for i, layer in enumerate(after.layers):
        for old, new in zip(before.get(layer.name, []), layer.weights, strict=True):
            if not np.array_equal(old, np.asarray(new)):
                changed.add((i >= first, type(layer).__name__))
    assert (True, "Conv2D") in changed and (True, "Dense") in changed
    assert not [c for c in changed if not c[0]], "a frozen layer changed"
    assert not [c for c in changed if c[1] == "BatchNormalization"], "BN changed with bn=frozen"
    assert digest(parent.model_file) == original
    history = run.history()
    parent_epochs = len(parent.history()["loss"])
    assert len(history["loss"]) == parent_epochs + 2 and history["loss"][:parent_epochs] == parent.history()["loss"]
    assert run.config()["parent"] == "parent" and run.config()["finetune"]["parent_epochs"] == parent_epochs
    assert result["params"]["trainable"] == finetune.counts(after, first, "frozen")["trainable"]


@pytest.mark.slow
def test_a_fine_tune_never_changes_the_models_other_sessions_predict_with(parent, lite0_classifier):
    """One session fine-tunes while others predict with the cached backbone and with the parent run."""
    from engine.explain import Explainable
    from engine.samples import sample_photo

    photo = sample_photo("chelsea")
    run_model = Explainable.from_run(parent.path)  # what Predict and Inside cache for a run
    x = run_model.prepare(photo)[None]

    def weights(model) -> list[np.ndarray]:
        return [np.array(w) for w in model.weights]

    cached_before, run_before = weights(lite0_classifier.model), weights(run_model.model)
    first = (lite0_classifier.predict([("cat", photo)], top_k=3)[0], run_model.logits(x))
    results, done = {}, threading.Event()

    def tune():
        try:
            results["finetune"] = fine_tune(parent, unfreeze_top=2, epochs=1, learning_rate=1e-2)
        finally:
            done.set()

    thread = threading.Thread(target=tune)
    thread.start()
    predictions = 0
    while not done.is_set() or predictions < 3:  # predicting all the while the fine-tune trains
        top = lite0_classifier.predict([("cat", photo)], top_k=3)[0]
        assert [(c.index, c.probability) for c in top.top] == [(c.index, c.probability) for c in first[0].top]
        np.testing.assert_array_equal(run_model.logits(x), first[1])
        predictions += 1
    thread.join()
    result, run = results["finetune"]
    assert result["status"] == "finished", result["reason"]
    for before, model in ((cached_before, lite0_classifier.model), (run_before, run_model.model)):
        for old, new in zip(before, weights(model), strict=True):
            np.testing.assert_array_equal(old, new)
    tuned = load(run.model_file)  # ...while the fine-tune itself did change its own copy
    assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(run_before, tuned.weights, strict=True))


@pytest.mark.slow
def test_bn_train_updates_the_unfrozen_statistics(parent):
    result, run = fine_tune(parent, unfreeze_top=1, bn="train")
    assert result["status"] == "finished", result["reason"]
    before, after = by_layer(load(parent.model_file)), load(run.model_file)
    moved = [
        layer.name
        for layer in after.layers
        if type(layer).__name__ == "BatchNormalization"
        and not np.array_equal(before[layer.name][2], np.asarray(layer.moving_mean))
    ]
    assert moved and all(name.startswith("top") for name in moved), moved


@pytest.mark.slow
def test_boundary_cache_and_full_passes_give_the_same_weights(parent, monkeypatch):
    """One epoch, no augmentation, the same seed: the cached boundary (float16) against whole-model passes."""
    cached, run_a = fine_tune(parent, unfreeze_top=2, optimizer="sgd", learning_rate=0.01, warmup=0.0)
    monkeypatch.setenv("CONVSCOPE_BOUNDARY_BUDGET_MB", "0.001")
    full, run_b = fine_tune(parent, unfreeze_top=2, optimizer="sgd", learning_rate=0.01, warmup=0.0)
    assert cached["boundary"]["mode"] == "cached" and full["boundary"]["mode"] == "full"
    assert "budget" in full["boundary"]["why"]
    a, b, start = load(run_a.model_file), load(run_b.model_file), by_layer(load(parent.model_file))
    moved = 0.0
    for la, lb in zip(a.layers, b.layers, strict=True):
        for wa, wb, w0 in zip(la.weights, lb.weights, start.get(la.name, []), strict=False):
            wa, wb = np.asarray(wa), np.asarray(wb)
            moved = max(moved, float(np.abs(wa - w0).max()))
            np.testing.assert_allclose(wa, wb, atol=2e-4, err_msg=la.name)
    assert moved > 1e-3  # the weights did move, so the comparison means something
    assert abs(cached["val_accuracy"] - full["val_accuracy"]) <= 0.1
    # A fine-tune's logits came through the float16 boundary: none are kept as the model's scores.
    assert not (run_a.path / "evaluations").exists() and not (run_b.path / "evaluations").exists()


@pytest.mark.slow
def test_stop_and_resume_a_fine_tune(parent):
    config = finetune.finetune_config(parent, unfreeze_top=1, epochs=3)
    run = runs.create(backbone=config.backbone, mode="finetune")
    stop = threading.Event()
    parent_epochs = len(parent.history()["loss"])

    def report(stage="", **fields):
        if (
            stage == "training"
            and fields.get("history", {}).get("loss")
            and len(fields["history"]["loss"]) > parent_epochs
        ):
            stop.set()  # after the first fine-tune epoch

    first = fit.train(config, run, stop=stop, report=report)
    assert first["status"] == "stopped" and run.checkpoint_epoch() == parent_epochs + 1
    assert run.model_file.is_file()  # the weights reached so far are kept as the model
    assert run.planned_epochs() == parent_epochs + 3 and runs.summary(run)["epochs"] == parent_epochs + 3
    result = fit.resume(run, epochs=parent_epochs + 4)  # the new total, the parent's epochs included
    assert result["status"] == "finished", result["reason"]
    assert len(run.history()["loss"]) == parent_epochs + 4 and result["test_accuracy"] is not None
    assert run.config()["epochs"] == 4


@pytest.mark.slow
def test_layer_decay_scales_each_block(parent):
    import keras

    model = load(parent.model_file)
    first = finetune.first_trainable(model, "efficientnet_lite0", FinetuneConfig(parent="p", unfreeze_top=2))
    finetune.unfreeze(model, first)
    factors = finetune.decay_multipliers(model, "efficientnet_lite0", first, 0.5)
    assert factors["logits/kernel"] == 1.0 and factors["top_conv/kernel"] == 0.5
    assert {v for k, v in factors.items() if k.startswith("block7")} == {0.25}
    assert finetune.decay_multipliers(model, "efficientnet_lite0", first, 1.0) == {}
    # a factor of 0 freezes a variable inside one optimizer: the rate really is per variable
    config = replace(finetune.finetune_config(parent, unfreeze_top=2, optimizer="sgd", warmup=0.0), learning_rate=0.1)
    opt = finetune.make_optimizer(config, 10, {k: (0.0 if k.startswith("top_conv") else 1.0) for k in factors})
    model.compile(optimizer=opt, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = {v.path: np.asarray(v).copy() for v in model.trainable_variables}
    model.train_on_batch(np.random.default_rng(0).uniform(-1, 1, (4, 96, 96, 3)), np.array([0, 1, 2, 0]))
    after = {v.path: np.asarray(v) for v in model.trainable_variables}
    assert np.array_equal(before["top_conv/kernel"], after["top_conv/kernel"])
    assert not np.array_equal(before["logits/kernel"], after["logits/kernel"])


@pytest.mark.slow
def test_the_finder_leaves_the_parent_untouched(parent):
    original = digest(parent.model_file)
    config = finetune.finetune_config(parent, unfreeze_top=1)
    result = lr_finder.lr_find(config, steps=12, start_lr=1e-5, end_lr=1.0)
    assert set(result) >= {"lrs", "losses", "suggestion", "steepest", "min_over_10"}
    assert 0 < len(result["lrs"]) <= 12 and result["suggestion"] is None or 1e-5 <= result["suggestion"] <= 1.0
    assert digest(parent.model_file) == original


@pytest.mark.slow
def test_parents_that_cannot_be_fine_tuned(parent, tmp_path):
    scratch = runs.create("scratch-run", backbone="small_cnn", mode="scratch")
    runs.write_json(scratch.path / "config.json", {"mode": "scratch", "backbone": "small_cnn"})
    scratch.set_status("finished")
    scratch.model_file.write_bytes(b"x")
    with pytest.raises(finetune.FinetuneError, match="nothing to unfreeze"):
        finetune.parent_of(str(scratch.path))
    running = runs.create("running-run", backbone="efficientnet_lite0", mode="feature")
    runs.write_json(running.path / "config.json", {"mode": "feature", "backbone": "efficientnet_lite0"})
    with pytest.raises(finetune.FinetuneError, match="finished run"):
        finetune.parent_of(str(running.path))
    # the same folder with other data under it: refused before anything trains
    moved = replace(
        finetune.finetune_config(parent, unfreeze_top=1),
        data=DataConfig(source="shapes:per_class=13,classes=3,size=64", image_size=96),
    )
    with pytest.raises(fit.TrainingError, match="changed since"):
        fit.train(moved, runs.create(backbone="efficientnet_lite0", mode="finetune"))


@pytest.mark.slow
def test_finetune_presets_check_the_backbone(parent):
    keras_recipe = presets.get_finetune("keras-tutorial-mobilenet")
    assert keras_recipe.unfreeze_from == "100" and keras_recipe.optimizer == "rmsprop"
    assert keras_recipe.learning_rate == 1e-5 and keras_recipe.epochs == 10
    with pytest.raises(finetune.FinetuneError, match="fine-tunes mobilenet_v2"):
        keras_recipe.options(parent)
    assert presets.get_finetune("inception-top15").unfreeze_from == "-15"


# ---- the CLI ------------------------------------------------------------------------


def cli(*args: str, env_runs: Path) -> tuple[int, dict]:
    import os

    env = {**os.environ, "CONVSCOPE_RUNS_DIR": str(env_runs)}
    proc = subprocess.run(
        [sys.executable, "-m", "engine", *args, "--json"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_cli_finetune_and_lr_find(parent, runs_dir):
    code, out = cli("finetune", str(parent.path), "--unfreeze-top", "1", "--epochs", "1", env_runs=runs_dir)
    assert code == 0, out
    for key in ("parent", "trainable_params", "non_trainable_params", "boundary", "changes", "val_accuracy", "history"):
        assert key in out, key
    assert out["boundary"]["mode"] == "cached" and out["parent"] == "parent"
    assert [c["block"] for c in out["changes"]][-1] == "head"
    assert all(c["weight_change"] == 0 for c in out["changes"] if c["block"] in ("stem", "block1"))
    code, out = cli("lr-find", str(parent.path), "--steps", "8", env_runs=runs_dir)
    assert code == 0 and len(out["lrs"]) <= 8, out
    code, out = cli("finetune", str(parent.path), "--epochs", "1", env_runs=runs_dir)
    assert code == 2 and "say where fine-tuning starts" in out["error"]


@pytest.mark.slow
def test_mixed_precision_fits_a_float16_copy_and_saves_float32(parent, monkeypatch):
    """What a GPU machine runs (forced here on the CPU): float16 compute, loss scaling, float32 weights saved."""
    monkeypatch.setenv("CONVSCOPE_MIXED_PRECISION", "1")
    result, run = fine_tune(parent, unfreeze_top=1, epochs=1)
    assert result["status"] == "finished", result["reason"]
    assert result["boundary"]["mixed_precision"] is True
    model = load(run.model_file)
    assert {la.dtype_policy.name for la in model.layers if la.weights} == {"float32"}
    before = by_layer(load(parent.model_file))
    assert not np.array_equal(before["top_conv"][0], np.asarray(model.get_layer("top_conv").kernel))
    assert np.array_equal(before["block6a_expand_conv"][0], np.asarray(model.get_layer("block6a_expand_conv").kernel))
    assert result["val_accuracy"] is not None


@pytest.mark.slow
def test_a_fine_tune_queues_behind_a_job_in_the_registry(parent):
    from engine import jobs

    registry = jobs.JobRegistry(devices=["/CPU:0"])
    first = registry.submit(finetune.finetune_config(parent, unfreeze_top=1, epochs=1))
    second = registry.submit(finetune.finetune_config(parent, unfreeze_top=2, epochs=1))
    assert registry.position(second.id) in (1, 2)  # one worker: the second waits
    for job in (first, second):
        snap = registry.wait(job.id, timeout=300)
        assert snap["status"] == "finished", snap["reason"]
        assert snap["epochs"] == len(parent.history()["loss"]) + 1
    assert runs.Run(Path(registry.snapshot(second.id)["run_dir"])).config()["finetune"]["unfreeze_top"] == 2


def test_inception_blocks_end_at_their_concatenation():
    """InceptionV3 names each module's last layer (mixedK): a block holds the convolutions before it."""
    import keras

    from engine import backbones

    base = keras.applications.InceptionV3(weights=None, include_top=False, input_shape=(75, 75, 3))
    groups = blocks.for_spec(base, backbones.get_spec("inception_v3"))
    by_name = {g.name: g for g in groups}
    assert [g.name for g in groups] == [f"mixed{i}" for i in range(11)]  # the stem joins the first module
    last = by_name["mixed10"]
    assert last.layer_names[-1] == "mixed10" and any(base.get_layer(n).weights for n in last.layer_names)
    assert by_name["mixed9"].layer_names[-1] == "mixed9" and "mixed9" not in last.layer_names


@pytest.mark.slow
def test_layerwise_optimizers_keep_their_own_names(parent):
    import keras

    made = {}
    for name in ("sgd", "adam"):
        config = finetune.finetune_config(parent, unfreeze_top=1, optimizer=name)
        made[name] = finetune.make_optimizer(config, 10, {"logits/kernel": 0.5})
    names = {keras.saving.get_registered_name(type(o)) for o in made.values()}
    assert names == {"convscope>LayerwiseSGD", "convscope>LayerwiseAdam"}, names


@pytest.mark.slow
def test_float16_overflow_falls_back_to_full_passes(parent, monkeypatch, tmp_path):
    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path / "cache"))  # no boundary cached yet

    def overflow(self, images):
        raise finetune.BoundaryOverflow("the boundary tensors exceed float16's range (65504)")

    monkeypatch.setattr(boundary._Boundary, "__call__", overflow)
    result, _ = fine_tune(parent, unfreeze_top=1)
    assert result["status"] == "finished", result["reason"]
    assert result["boundary"]["mode"] == "full" and "float16" in result["boundary"]["why"]
