"""Training runs: feature extraction on cached features, or a CNN from scratch.

`train()` runs one TrainConfig into one run folder (engine.runs) and reports
progress through a callback; it never touches a UI. The job registry
(engine.jobs) calls it in a worker thread, the CLI calls it directly.

- feature mode: the backbone is frozen, so its pooled features are computed
  once (engine.training.feature_cache) and a small head model is fitted on them. The
  head's layers are shared with the flat classifier (backbone -> GAP -> head),
  which is what gets saved as model.keras.
- scratch mode: the whole CNN is fitted on decoded, augmented image batches.

Every finished epoch writes history.json and a checkpoint (what is being
fitted, optimizer state included), atomically. A NaN loss aborts at once and
marks the run failed; the last good checkpoint stays. A stopped, failed or
killed run resumes from its last finished epoch.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np

from engine import backbones, runs
from engine.config import TrainConfig
from engine.data import sources
from engine.data.ingest import Dataset, Item
from engine.data.pipeline import make_tf_dataset
from engine.data.splits import split_items
from engine.errors import ConvScopeError, TrainingError
from engine.runs import Run
from engine.training import distribute

Report = Callable[..., None]  # report(stage=..., **fields): progress for the UI or the CLI
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
# A validation loss better by less than this is no improvement: a converged head creeps down by
# a hundred-thousandth per epoch for hundreds of epochs and would otherwise never stop.
EARLY_STOPPING_MIN_DELTA = 1e-3


class Stopped(Exception):
    """Raised inside training when the stop event is set (caught by train())."""


class NanLoss(Exception):
    """Raised inside training when the loss stops being a finite number."""


def _noop(**_: object) -> None:
    pass


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced weights n / (k * count): rare classes count more in the loss."""
    counts = np.bincount(labels, minlength=num_classes)
    present = max(int((counts > 0).sum()), 1)
    return {c: (len(labels) / (present * counts[c]) if counts[c] else 1.0) for c in range(num_classes)}


def make_optimizer(name: str, learning_rate: float):
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    return keras.optimizers.Adam(learning_rate)


def penalise_head(head, l2: float) -> None:
    """Put an L2 penalty `l2 * sum(w ** 2)` on every Dense kernel of a freshly built head.

    engine.training.models builds the head's layers without a regulariser; setting it on the layer
    (so it is saved with the model's config) and on the kernel variable (which Keras reads
    when it adds the penalty to the loss) gives the same model as building it with one.
    """
    if not l2:
        return
    import keras

    penalty = keras.regularizers.L2(l2)
    for layer in head.layers:
        if isinstance(layer, keras.layers.Dense):
            layer.kernel_regularizer = penalty
            layer.kernel.regularizer = penalty


def compile_model(model, config: TrainConfig) -> None:
    import keras

    model.compile(
        optimizer=make_optimizer(config.optimizer, config.learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


# ---- what to expect ----------------------------------------------------------------

# Training images per class below which a CNN from random weights mostly memorises its data.
# Measured on the built-in shapes (5 classes, chance 20%), small_cnn at 64 px, Adam 1e-3:
# 42 training images per class (the default set): test accuracy 0.27 after 10 epochs, 0.27-0.29
# after 80 (training loss falling, validation flat); 350 per class (shapes:per_class=500): 0.56
# after 40 epochs (about 3 minutes on 2 CPU cores), still rising.
SCRATCH_ENOUGH_PER_CLASS = 300


def scratch_outlook(train_images: int, num_classes: int) -> str | None:
    """A plain warning before a scratch run on too little data, with the outcome to expect; None when enough."""
    per_class = train_images / max(num_classes, 1)
    if per_class >= SCRATCH_ENOUGH_PER_CLASS:
        return None
    chance = 1 / max(num_classes, 1)
    return (
        f"Too little data to train a CNN from scratch: {train_images} training images, about {per_class:.0f} "
        f"per class. Expect a model not far above chance ({chance:.0%}): it memorises the training images "
        "while validation accuracy stays low. For example, on the built-in shapes (42 per class) the small CNN "
        "ends near 25-40% test accuracy (chance 20%); with 350 per class (shapes:per_class=500) it reaches "
        "about 55% after 40 epochs. Networks from random weights want hundreds to thousands of images per "
        "class; feature extraction on a pretrained backbone reaches about 85-90% on the built-in shapes "
        "in under a minute."
    )


# ---- data ----------------------------------------------------------------------


def _labels(items: list[Item]) -> np.ndarray:
    return np.array([i.label for i in items], dtype=np.int32)


def index_batches(n: int, views: int, labels: np.ndarray, batch_size: int, seed: int, fetch):
    """Shuffled batches of `n` examples; each epoch a new seeded order and one of `views` views per example.

    `fetch(view_indices, example_indices)` returns the batch's inputs. The order depends only on
    (n, views, seed), so cached features, cached boundary tensors and image batches of one split
    are served in the same order.
    """
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__()
            self.rng = np.random.default_rng(seed)
            self.on_epoch_end()

        def __len__(self) -> int:
            return math.ceil(n / batch_size)

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(n)
            self.view = self.rng.integers(0, views, n)

        def __getitem__(self, k: int):
            idx = self.order[k * batch_size : (k + 1) * batch_size]
            return fetch(self.view[idx], idx), labels[idx]

    return Batches()


def _feature_batches(views: np.ndarray, labels: np.ndarray, batch_size: int, seed: int):
    """Shuffled batches of cached features; each epoch draws one view per image.

    Args:
        views: (V, n, D) float32; V = 1 without augmentation.
    """
    return index_batches(len(labels), len(views), labels, batch_size, seed, lambda v, i: views[v, i])


def _image_batches(dataset: Dataset, items: list[Item], config: TrainConfig, train: bool):
    """Preprocessed image batches for scratch mode (shuffled and augmented when `train`)."""
    spec = backbones.get_spec(config.backbone)
    data = config.data
    ds = make_tf_dataset(
        dataset,
        items,
        data.image_size,
        resize=data.resize,
        batch_size=config.batch_size,
        shuffle=train,
        seed=config.seed,
        augment=data.augment if train else None,
    )
    return ds.map(lambda x, y: (spec.preprocess(x), y))


# ---- time left ---------------------------------------------------------------------


class BatchClock:
    """Seconds left in a fit, from measured batch times; None ("estimating") until enough are timed.

    The first batch of a fit is never timed: it includes tracing the training
    step, often seconds, so extrapolating from it promised minutes that then
    vanished. Between epochs a run also validates, checkpoints and logs; that
    gap is measured too. Until the first gap is seen the estimate waits for it
    (short epochs: feature mode, where the gap is most of the time) or, once
    `settle_s` seconds have passed (long epochs), assumes a validation batch
    costs about a training batch. The median of recent batch times is used,
    so one slow batch does not swing it.
    """

    def __init__(self, min_timed: int = 3, clock: Callable[[], float] = time.monotonic, settle_s: float = 5.0) -> None:
        self.min_timed = min_timed
        self.clock = clock
        self.settle_s = settle_s
        self._start: float | None = None
        self.batch_times: list[float] = []
        self.gaps: list[float] = []
        self._begin: float | None = None
        self._last_end: float | None = None
        self._seen = 0

    def batch_begin(self, first_of_epoch: bool = False) -> None:
        now = self.clock()
        if self._start is None:
            self._start = now
        if first_of_epoch and self._last_end is not None:
            self.gaps.append(now - self._last_end)
        self._begin = now

    def batch_end(self) -> None:
        now = self.clock()
        self._seen += 1
        if self._seen > 1 and self._begin is not None:
            self.batch_times.append(now - self._begin)
        self._last_end = now

    def left(self, batches_left: int, epoch_ends_left: int, val_batches: int = 0) -> float | None:
        """Estimated seconds for `batches_left` training batches and `epoch_ends_left` epoch ends."""
        if len(self.batch_times) < self.min_timed:
            return None
        if not self.gaps and epoch_ends_left > 1 and self.clock() - (self._start or 0.0) < self.settle_s:
            return None  # an epoch end is coming soon: measure it rather than guess it
        per_batch = float(np.median(self.batch_times[-50:]))
        if self.gaps:  # the first gap also traced the validation step: drop it once there are others
            gap = float(np.mean(self.gaps[1:][-10:] or self.gaps))
        else:
            gap = val_batches * per_batch
        return max(batches_left, 0) * per_batch + max(epoch_ends_left, 0) * gap


# ---- callbacks -------------------------------------------------------------------


def _callbacks(
    run: Run,
    fitted,
    config: TrainConfig,
    history: dict,
    stop,
    report: Report,
    steps: int,
    val_steps: int,
    seconds: Callable[[], float] | None = None,
):
    """Keras callbacks of a fit; `seconds()` is the run's training time so far, recorded at each epoch end."""
    import keras

    class Watch(keras.callbacks.Callback):
        """Per-batch progress, Stop within one batch, NaN detection, per-epoch checkpoint."""

        def on_train_begin(self, logs=None) -> None:
            self.clock = BatchClock()

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None) -> None:
            self.clock.batch_begin(first_of_epoch=batch == 0)

        def on_train_batch_end(self, batch, logs=None) -> None:
            self.clock.batch_end()
            values = {k: float(v) for k, v in (logs or {}).items() if k in HISTORY_KEYS}
            if not all(math.isfinite(v) for v in values.values()):
                bad = ", ".join(f"{k} {v}" for k, v in values.items() if not math.isfinite(v))
                raise NanLoss(f"the loss became NaN or infinite ({bad}) at epoch {self.epoch + 1}, batch {batch + 1}")
            batches_left = (config.epochs - self.epoch - 1) * steps + (steps - batch - 1)
            report(
                stage="training",
                epoch=self.epoch + 1,
                epochs=config.epochs,
                batch=batch + 1,
                batches=steps,
                logs=values,
                eta=self.clock.left(batches_left, config.epochs - self.epoch, val_steps),
                eta_upper_bound=bool(config.early_stopping),
            )
            if distribute.stop_agreed(stop):  # with several workers: when any of them is stopped
                raise Stopped(f"by the user at epoch {self.epoch + 1}, batch {batch + 1}")

        def on_epoch_end(self, epoch, logs=None) -> None:
            logs = logs or {}
            values = {k: float(logs[k]) for k in HISTORY_KEYS if k in logs}
            if not all(math.isfinite(v) for v in values.values()):
                raise NanLoss(
                    f"the {'validation ' if 'val_loss' in values else ''}loss became NaN at epoch {epoch + 1}"
                )
            for k, v in values.items():
                history.setdefault(k, []).append(v)
            # The history first, then the checkpoint and its record (runs.Run.save_checkpoint): a kill
            # between any two writes leaves the history at least as long as the recorded checkpoint's
            # epoch, and a resume cuts it back to that (runs.Run.consistent_epoch). All atomic.
            run.write_history(history)
            run.save_checkpoint(epoch + 1, lambda tmp: fitted.save(tmp))
            # The time so far, as it goes: a killed call's time is then kept for the resume to add to.
            run.set_status("running", epoch=epoch + 1, **({"seconds": seconds()} if seconds else {}))
            report(
                stage="training",
                epoch=epoch + 1,
                epochs=config.epochs,
                history={k: list(v) for k, v in history.items()},
            )

    out = [Watch()]
    if config.early_stopping:
        out.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss" if val_steps else "loss",
                min_delta=EARLY_STOPPING_MIN_DELTA,
                patience=config.early_stopping,
                restore_best_weights=True,
            )
        )
    out.append(keras.callbacks.TensorBoard(log_dir=str(run.logs), write_graph=False, update_freq="epoch"))
    return out


# ---- evaluation ------------------------------------------------------------------


def _evaluate(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    predicted = logits.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else None,
        "confusion": confusion.tolist(),
        "count": int(len(labels)),
    }


# ---- the run ---------------------------------------------------------------------


def train(
    config: TrainConfig,
    run: Run,
    *,
    stop: threading.Event | None = None,
    report: Report | None = None,
    resume: bool = False,
) -> dict:
    """Train `config` into `run` (or continue it from its checkpoint with `resume`).

    Returns:
        {"run_dir", "status", "reason", "epochs_run", "history", "val_accuracy",
         "test_accuracy", "seconds", "train_seconds", "features", "params", "strategy"
         (engine.training.distribute.describe())}; the same facts are
        in the run folder. `seconds` is this call's wall time, `train_seconds` the run's total
        over every call (a resumed run adds to the time of its earlier calls).

    Raises:
        TrainingError / ConvScopeError: bad data or options. A new run whose data could not
            be opened or checked leaves no folder behind; any other run is marked failed first.
    """
    import tensorflow as tf

    report = report or _noop
    t0 = time.monotonic()
    strategy = distribute.describe()
    # A resume continues the run, so its time adds to that of the earlier calls (stopped, failed, killed).
    earlier = run.train_seconds() if resume else 0.0

    def total() -> float:
        return round(earlier + time.monotonic() - t0, 2)

    fresh = not resume and not (run.path / "config.json").is_file()
    if resume:
        run.clean_leftovers()  # of the writes a kill interrupted
    start_epoch = run.consistent_epoch() if resume else 0
    history = {k: v[:start_epoch] for k, v in run.history().items()} if resume else {}
    run.set_status("running", epoch=start_epoch)
    info: dict = {"features": {}, "seconds": total}
    try:
        # Every model, optimizer and metric is created under the strategy (engine.training.distribute).
        with distribute.current().scope():
            status, reason = _train(config, run, stop, report, resume, start_epoch, history, info)
        # With several workers: none leaves before all have finished (a peer gone breaks later collectives).
        distribute.everyone(True)
    except Stopped as exc:
        status, reason = "stopped", str(exc)
        info.setdefault("stopped", True)
    except NanLoss as exc:
        if run.checkpoint.is_file():
            kept = f"The last good checkpoint (epoch {run.checkpoint_epoch()}) is kept."
        else:
            kept = "No epoch finished, so there is no checkpoint to resume from."
        status, reason = "failed", f"{exc}; try a lower learning rate. {kept}"
    except (tf.errors.ResourceExhaustedError, MemoryError) as exc:
        status = "failed"
        reason = (
            f"out of memory ({type(exc).__name__}); lower the batch size ({config.batch_size}) "
            f"or the image size ({config.data.image_size}) and try again"
        )
    except ConvScopeError as exc:
        # Nothing was trained or written yet (missing or unusable data, bad options): a run
        # folder would only be litter in the runs list, so it goes.
        if not (fresh and not (run.path / "config.json").is_file() and runs.discard(run)):
            run.set_status("failed", str(exc), seconds=total())
        raise
    except BaseException as exc:
        run.set_status("failed", f"{type(exc).__name__}: {exc}", seconds=total())
        raise
    # A stop during training keeps the weights reached so far as the model.
    if status == "stopped" and info.get("classifier") is not None:
        _save_model(run, info["classifier"])
    seconds = total()
    if status == "finished":
        # _train returned, so metrics.json was just written: add what the runs table compares.
        runs.write_json(
            run.path / "metrics.json",
            {**run.metrics(), "params": info.get("params"), "train_seconds": seconds, "strategy": strategy},
        )
    history = run.history()
    run.set_status(status, reason, epoch=len(history.get("loss", [])), seconds=seconds)
    metrics = run.metrics()
    return {
        "run_dir": str(run.path),
        "status": status,
        "reason": reason,
        "epochs_run": len(history.get("loss", [])),
        "history": {k: history.get(k, []) for k in HISTORY_KEYS},
        "val_accuracy": metrics.get("val_accuracy"),
        "test_accuracy": metrics.get("test_accuracy"),
        "seconds": round(time.monotonic() - t0, 2),
        "train_seconds": seconds,
        "features": info["features"],
        "params": info.get("params"),
        "strategy": strategy,
        **({"parent": info["parent"], "boundary": info.get("boundary")} if "parent" in info else {}),
    }


def features_progress(report: Report, stop, message: str) -> Callable[[int, int], None]:
    """progress(done, total) for a pass over every image: reports it with an ETA, and stops on request."""
    timed: list[tuple[float, int]] = []  # (time, images done) after each batch

    def progress(done: int, total: int) -> None:
        # The first batch traces the model: the rate is measured from its end, once 3 more are done.
        timed.append((time.monotonic(), done))
        eta = None
        if len(timed) > 3 and done > timed[0][1]:
            rate = (done - timed[0][1]) / max(timed[-1][0] - timed[0][0], 1e-6)
            eta = (total - done) / rate
        report(stage="features", message=message, done=done, total=total, eta=eta, cached=False)
        if distribute.stop_agreed(stop):
            raise Stopped(f"by the user while {message[0].lower() + message[1:]}")

    progress.cached = lambda total: report(stage="features", message=message, done=total, total=total, cached=True)
    return progress


def _record_latency(run: Run, classifier, config: TrainConfig) -> None:
    """The saved model's inference time per image on this machine, for the Runs page (latency.json)."""
    from engine.model import latency

    try:
        preprocess = backbones.get_spec(config.backbone).preprocess
        latency.save(run.path, latency.measure_model(classifier, preprocess, config.data.image_size))
    except Exception as exc:  # noqa: BLE001 - a timing that fails must not fail a finished run
        logging.getLogger(__name__).warning("%s: latency not measured (%s: %s)", run.name, type(exc).__name__, exc)


def _save_model(run: Run, classifier) -> None:
    runs.atomic_write(run.model_file, lambda tmp: classifier.save(tmp))


def _train(config, run, stop, report, resume, start_epoch, history, info) -> tuple[str, str]:
    import keras

    from engine.training import feature_cache, models
    from engine.training.features import FeatureExtractor

    replicas = distribute.current().num_replicas_in_sync
    if config.batch_size % replicas:
        raise TrainingError(
            f"a batch of {config.batch_size} does not split evenly over {replicas} replicas: give a multiple "
            f"of {replicas} (each replica takes batch / {replicas})"
        )
    if config.mode == "finetune":
        from engine.training import finetune

        return finetune.run_finetune(config, run, stop, report, resume, start_epoch, history, info)

    def data_progress(stage: str, done: int, total: int) -> None:
        report(stage="data", message=stage, done=done, total=total)
        if stop is not None and stop.is_set():
            raise Stopped("by the user while the data was opened")

    dataset = sources.open_dataset(config.data.source, data_progress)
    dataset.check()
    distribute.agree(dataset.fingerprint, "their data")
    splits = split_items(dataset.items, config.seed, config.data.val_frac, config.data.test_frac)
    num_classes = len(dataset.classes)
    saved = run.config()
    if resume:
        if saved.get("fingerprint") != dataset.fingerprint:
            raise TrainingError(f"{run.name}: the data changed since this run started, so it cannot be resumed")
    else:
        runs.write_json(
            run.path / "config.json",
            {
                **config.to_json(),
                "labels": dataset.classes,
                "fingerprint": dataset.fingerprint,
                "split_sizes": {k: len(v) for k, v in splits.items()},
                "created": time.time(),
            },
        )
        runs.write_json(run.path / "labels.json", dataset.classes)
    keras.utils.set_random_seed(config.seed)
    y = {k: _labels(v) for k, v in splits.items()}
    has_val = len(y["validation"]) > 0
    weights = class_weights(y["train"], num_classes) if config.class_weights else None

    built = models.build(config, num_classes)
    classifier = built.classifier
    counts = models.summarise(classifier)
    info["params"] = {"total": counts.total, "trainable": counts.trainable, "non_trainable": counts.non_trainable}
    if config.mode == "feature":
        base, head = built.base, built.head
        extractor = FeatureExtractor(config.backbone, model=base, strategy=distribute.current())
        key = feature_cache.FeatureKey(config.backbone, config.data.image_size, config.data.resize)
        n = len(dataset.items)

        feat_progress = features_progress(report, stop, "Computing backbone features")
        feats, hit = feature_cache.clean_features(extractor, dataset, key, config.batch_size, feat_progress)
        info["features"] = {"computed": 0 if hit else n, "cached": n if hit else 0}
        row = {item.rel: k for k, item in enumerate(dataset.items)}
        x = {s: feats[[row[i.rel] for i in items]] for s, items in splits.items()}
        views = x["train"][None]
        if config.data.augment.enabled:
            aug, hit = feature_cache.augmented_features(
                extractor,
                dataset,
                splits["train"],
                key,
                config.data.augment,
                config.aug_views,
                config.seed,
                config.batch_size,
                feat_progress,
            )
            views = np.concatenate([views, aug])
            info["features"]["augmented_views"] = config.aug_views
            info["features"]["augmented_computed"] = 0 if hit else int(aug.shape[0] * aug.shape[1])
        fitted = head
        if resume and run.checkpoint.is_file():
            fitted = keras.models.load_model(run.checkpoint, safe_mode=True)
            classifier = models.feature_classifier(base, fitted)
        else:
            penalise_head(fitted, config.head.l2)
            compile_model(fitted, config)
        train_data = _feature_batches(views, y["train"], config.batch_size, config.seed)
        val_data = (x["validation"], y["validation"]) if has_val else None

        def predict(split: str) -> np.ndarray:
            return np.asarray(fitted(x[split], training=False))  # a few Dense layers: one eager call
    else:
        fitted = classifier
        if resume and run.checkpoint.is_file():
            fitted = classifier = keras.models.load_model(run.checkpoint, safe_mode=True)
        else:
            compile_model(fitted, config)
        train_data = _image_batches(dataset, splits["train"], config, train=True)
        val_data = _image_batches(dataset, splits["validation"], config, train=False) if has_val else None

        def predict(split: str) -> np.ndarray:
            return np.asarray(fitted.predict(_image_batches(dataset, splits[split], config, False), verbose=0))

    info["classifier"] = classifier
    steps = len(train_data) if hasattr(train_data, "__len__") else math.ceil(len(y["train"]) / config.batch_size)
    report(
        stage="training",
        epoch=start_epoch,
        epochs=config.epochs,
        batch=0,
        batches=steps,
        history={k: list(v) for k, v in history.items()},
    )
    val_steps = math.ceil(len(y["validation"]) / config.batch_size)
    callbacks = _callbacks(run, fitted, config, history, stop, report, steps, val_steps, info.get("seconds"))
    if start_epoch < config.epochs:
        with distribute.fitting(fitted, train_data):
            fitted.fit(
                train_data,
                validation_data=val_data,
                epochs=config.epochs,
                initial_epoch=start_epoch,
                class_weight=weights,
                shuffle=False,  # the data shuffles itself, seeded
                callbacks=callbacks,
                verbose=0,
            )
    return finish(run, dataset, y, predict, callbacks, config, history, val_steps, report, classifier)


def finish(run, dataset, y, predict, callbacks, config, history, val_steps, report, classifier) -> tuple[str, str]:
    """After the fit: evaluate validation and test with `predict(split)`, write metrics.json, save the model.

    Returns:
        (status, reason) of the finished run.
    """
    num_classes = len(dataset.classes)
    early = callbacks[1] if config.early_stopping else None
    # EarlyStopping puts back the weights of the epoch with the best monitored loss at the end of fit.
    best_epoch = early.best_epoch + 1 if early is not None and early.best_weights is not None else None
    report(stage="evaluating")
    metrics = {"classes": dataset.classes}
    if best_epoch is not None:
        metrics["best_epoch"] = best_epoch
    for split in ("validation", "test"):
        if len(y[split]):
            result = _evaluate(predict(split), y[split], num_classes)
            metrics[f"{'val' if split == 'validation' else split}_accuracy"] = result["accuracy"]
            metrics[f"{split}_confusion"] = result["confusion"]
            metrics[f"{split}_count"] = result["count"]
    runs.write_json(run.path / "metrics.json", metrics)
    report(stage="saving")
    _save_model(run, classifier)
    _record_latency(run, classifier, config)
    epochs_run = len(history.get("loss", []))
    watched = "validation loss" if val_steps else "training loss"
    if early is not None and early.stopped_epoch:
        return "finished", (
            f"early stopping after {epochs_run} epochs: the {watched} had not improved for "
            f"{config.early_stopping} epochs; the weights of epoch {best_epoch} (the best) were kept"
        )
    if best_epoch is not None and best_epoch < epochs_run:
        return "finished", f"the weights of epoch {best_epoch}, the best {watched}, were kept"
    return "finished", ""


def resume_config(run: Run, epochs: int | None = None) -> TrainConfig:
    """The config to continue a stopped, failed or killed run with (optionally up to `epochs` in total).

    Raises:
        TrainingError: the run is still active, or has no checkpoint or config.
    """
    status = run.status()
    if status.get("status") in runs.ACTIVE:
        raise TrainingError(f"{run.name} is still {status['status']}; stop it before resuming")
    saved = run.config()
    if not saved or not run.resumable():
        raise TrainingError(f"{run.name} has no checkpoint to resume from (no finished epoch)")
    config = TrainConfig.from_json(saved)
    if epochs is not None and epochs != config.total_epochs:
        before = config.total_epochs - config.epochs  # a fine-tune's own epochs follow its parent's
        own = epochs - before
        if own < 1:
            raise TrainingError(f"{run.name} starts after epoch {before}; give more epochs than that")
        config = replace(config, epochs=own)
        runs.write_json(run.path / "config.json", {**saved, "epochs": own})
    return config


def resume(run: Run, *, epochs: int | None = None, stop=None, report: Report | None = None) -> dict:
    """Continue a run from its last finished epoch, in this thread."""
    return train(resume_config(run, epochs), run, stop=stop, report=report, resume=True)
