"""The learning-rate finder (engine.training.lr_finder) and the fine-tuning charts (engine.charts)."""

import json
import math
import threading

import numpy as np
import pytest

from engine import charts
from engine.training import lr_finder
from engine.training.lr_finder import LRFinderError, LRSweep


def blobs(seed: int = 0, n: int = 200, batch: int = 16, scale: float = 3.0):
    """Three Gaussian blobs in 2-D as a list of (x (B, 2) float32, y (B,) int32) batches; the last one short."""
    rng = np.random.default_rng(seed)
    centres = np.array([[1, 0], [-1, 0], [0, 1]], dtype=np.float32) * scale
    y = rng.integers(0, 3, n).astype(np.int32)
    x = (centres[y] + rng.normal(0, 1, (n, 2))).astype(np.float32)
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]


def mlp(seed: int = 0, norm: bool = False):
    """Dense(16, relu) -> Dense(3) logits on (B, 2); with `norm`, BatchNorm and Dropout (non-trainable state)."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = [keras.Input((2,)), keras.layers.Dense(16, activation="relu")]
    if norm:
        layers += [keras.layers.BatchNormalization(), keras.layers.Dropout(0.2)]
    return keras.Sequential([*layers, keras.layers.Dense(3)])


def same_weights(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# ---- the sweep ---------------------------------------------------------------------


def test_adam_suggests_a_sensible_rate_and_leaves_the_model_alone():
    # This problem trains fine with Adam at 1e-2 (97% accuracy in 10 epochs).
    model = mlp()
    before = model.get_weights()
    result = lr_finder.sweep(model, blobs(), optimizer="adam", max_steps=100)
    assert same_weights(model.get_weights(), before)
    assert not model.compiled  # the caller's compile state is untouched
    assert not result.diverged and not result.stopped and len(result.lrs) == 100
    assert 1e-4 <= result.suggestion <= 1
    assert result.suggestion in (result.steepest, result.min_over_10)
    # the loss falls over the sweep: the model learns at the higher rates
    assert min(result.losses) < 0.8 * result.losses[10]


def test_sgd_diverges_before_max_steps():
    result = lr_finder.sweep(mlp(), blobs(), optimizer="sgd", end_lr=10.0, max_steps=100)
    assert result.diverged
    assert len(result.lrs) < 100
    assert result.losses[-1] > 4.0 * min(result.losses)
    assert 1e-4 <= result.suggestion <= 1


def test_schedule_smoothing_and_step_count():
    calls = []
    result = lr_finder.sweep(
        mlp(),
        blobs(),
        start_lr=1e-5,
        end_lr=1e-1,
        max_steps=30,  # more than the 13 batches: the sweep cycles over them
        beta=0.9,
        diverge=1e9,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert len(result.lrs) == len(result.losses) == len(result.raw) == 30
    assert calls == [(i, 30) for i in range(1, 31)]
    lrs = np.array(result.lrs)
    assert lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1e-1)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], (1e-1 / 1e-5) ** (1 / 29), rtol=1e-9)
    # bias-corrected EMA: s0 = r0; s1 = (0.9 * 0.1 * r0 + 0.1 * r1) / (1 - 0.9 ** 2) = (0.9 r0 + r1) / 1.9
    r0, r1 = result.raw[:2]
    assert result.losses[0] == pytest.approx(r0)
    assert result.losses[1] == pytest.approx((0.9 * r0 + r1) / 1.9)
    assert all(math.isfinite(v) for v in result.raw)


def test_weights_restored_after_an_error_and_with_batchnorm():
    import keras

    model = mlp(norm=True)
    optimizer = keras.optimizers.Adam(1e-3)
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = model.get_weights()

    def fail(done: int, total: int) -> None:
        if done == 5:
            assert not same_weights(model.get_weights(), before)  # it does train (and update BatchNorm)
            raise RuntimeError("progress failed")

    with pytest.raises(RuntimeError, match="progress failed"):
        lr_finder.sweep(model, blobs(), optimizer="rmsprop", max_steps=20, progress=fail)
    assert same_weights(model.get_weights(), before)  # BatchNorm's moving statistics included
    lr_finder.sweep(model, blobs(), optimizer="sgd", end_lr=10.0, max_steps=40)
    assert same_weights(model.get_weights(), before)
    assert model.optimizer is optimizer and float(optimizer.learning_rate) == pytest.approx(1e-3)


def test_only_trainable_weights_train_and_frozen_model_is_refused():
    model = mlp()
    model.layers[0].trainable = False
    result = lr_finder.sweep(model, blobs(), max_steps=20)
    assert len(result.lrs) == 20
    model.trainable = False
    with pytest.raises(LRFinderError, match="no trainable weights"):
        lr_finder.sweep(model, blobs(), max_steps=20)


def test_stop_event_and_nan_end_the_sweep():
    stop = threading.Event()

    def stop_at_7(done: int, total: int) -> None:
        if done == 7:
            stop.set()

    model = mlp()
    before = model.get_weights()
    result = lr_finder.sweep(model, blobs(), max_steps=50, stop=stop, progress=stop_at_7)
    assert result.stopped and not result.diverged and len(result.lrs) == 7
    assert same_weights(model.get_weights(), before)

    result = lr_finder.sweep(model, blobs(), max_steps=50, stop=stop)  # already set: nothing recorded
    assert result.stopped and result.lrs == [] and result.suggestion is None

    import keras
    from keras import ops

    def nan_on_negative_labels(y, logits):
        ce = keras.losses.sparse_categorical_crossentropy(ops.maximum(y, 0), logits, from_logits=True)
        return ops.mean(ce) * ops.where(ops.min(y) < 0, float("nan"), 1.0)

    batches = blobs()
    batches[3] = (batches[3][0], np.full_like(batches[3][1], -1))
    result = lr_finder.sweep(model, batches, loss_fn=nan_on_negative_labels, max_steps=50)
    assert result.diverged and len(result.lrs) == 3  # the NaN loss is not recorded
    assert same_weights(model.get_weights(), before)
    json.dumps(result.to_json(), allow_nan=False)


def test_pydataset_tf_data_and_multi_input_models():
    import keras
    import tensorflow as tf

    batches = blobs()

    class TwoInputs(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.epochs = 0

        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, k: int):
            x, y = batches[k]
            return [x[:, :1], x[:, 1:]], y, np.ones(len(y))  # sample weights are ignored

        def on_epoch_end(self) -> None:
            self.epochs += 1

    keras.utils.set_random_seed(0)
    a, b = keras.Input((1,)), keras.Input((1,))
    hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], keras.layers.Dense(3)(hidden))
    data = TwoInputs()
    result = lr_finder.sweep(model, data, max_steps=30, diverge=1e9)
    assert len(result.lrs) == 30 and data.epochs == 2  # 13 batches a pass: cycled twice

    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32)
    result = lr_finder.sweep(mlp(), ds, max_steps=20, diverge=1e9)
    assert len(result.lrs) == 20
    assert len(lr_finder.sweep(mlp(), [], max_steps=20).lrs) == 0


@pytest.mark.parametrize(
    "kw",
    [{"start_lr": 1.0, "end_lr": 0.1}, {"start_lr": 0}, {"max_steps": 1}, {"beta": 1.0}, {"diverge": 1.0}],
)
def test_bad_options_are_refused(kw):
    with pytest.raises(LRFinderError):
        lr_finder.sweep(None, [], **kw)
    with pytest.raises(LRFinderError, match="Unknown optimizer"):
        lr_finder.sweep(None, [], optimizer="adagrad")


# ---- suggestions -------------------------------------------------------------------


def test_suggestions_on_a_synthetic_curve():
    lrs = list(lr_finder.schedule(1e-6, 1.0, 100))
    x = np.log10(lrs)
    # flat at 2, falling around 1e-3 to a minimum near 1e-1, then blowing up
    losses = list(2 - 1.5 / (1 + np.exp(-(x + 3) * 3)) + np.where(x > -1, (x + 1) ** 2 * 20, 0))
    steepest, min_over_10, suggestion = lr_finder.suggest(lrs, losses, 100)
    assert 10**-3.3 < steepest < 10**-2.7
    assert 10**-2.3 < min_over_10 < 10**-1.7
    assert suggestion == steepest
    assert steepest in lrs and min_over_10 * 10 in lrs

    # never falling: the steepest point is meaningless, the suggestion is minimum / 10
    rising = list(1 + np.linspace(0, 1, 100) ** 2)
    steepest, min_over_10, suggestion = lr_finder.suggest(lrs, rising, 100)
    assert suggestion == min_over_10 == pytest.approx(lrs[10] / 10)

    assert lr_finder.suggest([], [], 100) == (None, None, None)
    assert lr_finder.suggest([1e-3], [1.0], 100) == (None, 1e-4, 1e-4)
    steepest, min_over_10, suggestion = lr_finder.suggest([1e-3, 1e-2], [1.0, 0.5], 100)
    assert (steepest, suggestion) == (1e-3, 1e-3) and min_over_10 == pytest.approx(1e-3)


def test_to_json():
    sweep = LRSweep([1e-3, 1e-2], [1.0, 0.5], [1.0, 0.4], 1e-3, 1e-3, 1e-3, False)
    assert set(sweep.to_json()) == {"lrs", "losses", "suggestion", "steepest", "min_over_10", "diverged"}
    assert json.loads(json.dumps(sweep.to_json()))["lrs"] == [1e-3, 1e-2]


# ---- charts ------------------------------------------------------------------------


def test_lr_finder_chart():
    lrs = list(lr_finder.schedule(1e-5, 1.0, 20))
    losses = list(np.linspace(2, 1, 20))
    fig = charts.lr_finder(lrs, losses, 1e-3, 1e-2, chosen=3e-3)
    assert fig.layout.xaxis.type == "log"
    assert [t.name.split(":")[0] for t in fig.data[1:]] == ["steepest", "minimum ÷ 10", "chosen"]
    assert fig.data[1].x[0] == 1e-3 and 1 < fig.data[1].y[0] < 2
    assert len(charts.lr_finder(lrs, losses, None, 1e-2).data) == 2
    assert len(charts.lr_finder([], [], None, None).data) == 1


def test_finetune_curves():
    parent = {"loss": [1.0, 0.8, 0.7], "accuracy": [0.5, 0.6, 0.7], "val_loss": [0.9, 0.8, 0.75]}
    parent["val_accuracy"] = [0.55, 0.65, 0.72]
    child = {"loss": [0.6, 0.5], "accuracy": [0.75, 0.8], "val_loss": [0.7], "val_accuracy": [0.78]}
    fig = charts.finetune_curves(parent, child, parent_val_accuracy=0.72)
    by_name = {t.name: t for t in fig.data}
    assert list(by_name["fine-tune train"].x) == [4, 5]
    assert list(by_name["fine-tune validation"].x) == [4]
    assert list(by_name["parent validation"].y) == [0.55, 0.65, 0.72]
    assert by_name["parent train"].line.dash == "solid" and by_name["parent validation"].line.dash == "dash"
    assert by_name["parent train"].line.color != by_name["fine-tune train"].line.color
    assert [s.x0 for s in fig.layout.shapes if s.type == "line" and s.x0 == s.x1] == [3.5]
    assert list(by_name["before fine-tuning (72.0%)"].y) == [0.72, 0.72]  # the baseline, named in the legend
    assert [a.text for a in fig.layout.annotations] == ["fine-tune starts"]

    # child not started, no baseline; loss instead of accuracy
    fig = charts.finetune_curves(parent, {}, None, metric="loss", child_epochs=5)
    assert len(fig.layout.shapes) == 1 and list(fig.layout.xaxis.range) == [0.5, 8.5]
    assert [len(t.x) for t in fig.data] == [3, 3, 0, 0]
    assert fig.layout.yaxis.tickformat is None
    assert len(charts.finetune_curves({}, {}).data) == 4


def test_what_changed_projection_pair_and_before_after():
    blocks = [
        {"block": "stem", "params": 864, "weight_change": 0.001, "cka": 0.99},
        {"block": "block6", "params": 50000, "weight_change": 0.05, "cka": 0.7},
        {"block": "head", "params": 6405, "weight_change": 0.4, "cka": None},
    ]
    fig = charts.what_changed(blocks)
    change, cka = fig.data
    assert list(change.x) == ["stem", "block6", "head"] and list(cka.x) == ["stem", "block6"]
    assert list(change.customdata) == [864, 50000, 6405] and "parameters" in change.hovertemplate
    assert list(fig.layout.xaxis.categoryarray) == ["stem", "block6", "head"]

    rng = np.random.default_rng(0)
    labels, classes = ["cat", "dog", "cat", "bird"], ["cat", "dog", "bird"]
    fig = charts.projection_pair(rng.normal(size=(4, 2)), rng.normal(size=(4, 2)), labels, classes, 0.5, 0.9)
    titles = [a.text for a in fig.layout.annotations]
    assert titles == ["Before fine-tuning (k-NN accuracy 50%)", "After fine-tuning (k-NN accuracy 90%)"]
    assert len(fig.data) == 6 and sum(t.showlegend for t in fig.data) == 3
    colours = charts.class_colours(classes)
    assert all(t.marker.color == colours[t.name] for t in fig.data)
    assert [len(t.x) for t in fig.data if t.name == "cat"] == [2, 2]
    fig = charts.projection_pair(np.zeros((4, 2)), np.zeros((4, 2)), labels, classes, None, None)
    assert [a.text for a in fig.layout.annotations] == ["Before fine-tuning", "After fine-tuning"]

    before = {"validation accuracy": 0.84, "test accuracy": 0.8, "pointing game": 0.5}
    after = {"validation accuracy": 0.9, "test accuracy": 0.85}
    fig = charts.before_after_bars(before, after)
    assert [t.name for t in fig.data] == ["before fine-tuning", "after fine-tuning"]
    assert list(fig.data[0].x) == list(before) and list(fig.data[1].text) == ["90.0%", "85.0%"]
    assert fig.layout.barmode == "group" and fig.layout.yaxis.tickformat == ".0%"
