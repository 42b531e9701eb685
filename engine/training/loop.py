"""The one training loop: every run (feature, scratch, fine-tune) goes through `train()`.

A run's mode prepares what differs, as a `Recipe`: how its data opens and splits, what a new
run's config and history start with, and the model, batches and optimizer it fits (`Prepared`).
The loop owns the rest, in this order: open the data, check a resumed run's data is unchanged
or write a new run's config.json and labels.json, seed, prepare, class weights, compile, the
progress report, callbacks, `distribute.fitting` + `fit`, and `finish` (metrics, model, latency).
A fine-tune is a schedule over the same fit, as fastai's `fine_tune` is.

Every finished epoch writes history.json and a checkpoint (what is being fitted, optimizer
state included), atomically. A NaN loss aborts at once and marks the run failed; the last good
checkpoint stays. A stopped, failed or killed run resumes from its last finished epoch.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from engine import runs
from engine.backbones import preprocess_of
from engine.config import TrainConfig
from engine.data import sources
from engine.data.ingest import Dataset, Item
from engine.errors import ConvScopeError, TrainingError
from engine.model import latency
from engine.runs import Run
from engine.training import distribute, timeline
from engine.training.batches import labels_of
from engine.training.callbacks import HISTORY_KEYS, NanLoss, Report, Stopped, callbacks, noop


def class_weights(labels: np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced weights n / (k * count): rare classes count more in the loss."""
    counts = np.bincount(labels, minlength=num_classes)
    present = max(int((counts > 0).sum()), 1)
    return {c: (len(labels) / (present * counts[c]) if counts[c] else 1.0) for c in range(num_classes)}


def make_optimizer(name: str, learning_rate):
    """A Keras optimizer by name ("adam", "sgd" with momentum 0.9, "rmsprop"); the rate may be a schedule."""
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate)
    return keras.optimizers.Adam(learning_rate)


def compile_model(model, optimizer) -> None:
    """Compile for integer labels and logits: sparse cross-entropy and accuracy."""
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def open_checked(config: TrainConfig, report: Report = noop, stop: threading.Event | None = None) -> Dataset:
    """The run's data source, opened (reporting progress, stopping on request) and checked usable."""

    def data_progress(stage: str, done: int, total: int) -> None:
        report(stage="data", message=stage, done=done, total=total)
        if stop is not None and stop.is_set():
            raise Stopped("by the user while the data was opened")

    dataset = sources.open_dataset(config.data.source, data_progress)
    dataset.check()
    if _corrected(dataset):
        report(stage="data", message=f"Corrections applied: {dataset.corrections.sentence()}")
    return dataset


def _corrected(dataset: Dataset) -> bool:
    return dataset.corrections is not None and dataset.corrections.changes_data


# ---- what a mode hands over --------------------------------------------------------


@dataclass
class Prepared:
    """What a mode fits, handed to the loop."""

    fitted: object  # the keras.Model fit() trains
    classifier: object  # the keras.Model saved as model.keras (shares fitted's layers, or follows it)
    train_data: object  # a PyDataset or tf.data.Dataset of (x, y) batches, shuffling itself, seeded
    val_data: object  # (x, y), a tf.data.Dataset, or None without a validation split
    predict: Callable[[str], np.ndarray]  # predict(split) -> (n, classes) logits, after the fit
    # optimizer(steps per epoch) to compile `fitted` with; None: `fitted` is a checkpoint, loaded compiled
    optimizer: Callable[[int], object] | None = None
    restore: Callable[[], None] | None = None  # after compiling a resumed run: its checkpoint's state
    predicts_later: tuple = ()  # more models whose predict() runs after the fit (distribute.fitting)
    callbacks: list = field(default_factory=list)  # run after the loop's own, every epoch
    after_fit: Callable[[], None] | None = None
    # the layer up to which nothing changes while it trains, True for the timeline's own (the timeline runs
    # only what is above it), and its activations when the mode has them: frozen_maps(layer, items, images)
    # -> (N, h, w, C) or None
    frozen_below: bool | str | None = None
    frozen_maps: Callable | None = None
    # predict(split) gives the saved model's logits on the split's images (not through a float16 boundary):
    # they are kept as the model's scores, so the Evaluate page does not score those images again
    scores_exact: bool = True


class Recipe:
    """What differs between modes; each method is called once, in the loop's order."""

    def open_data(self, config: TrainConfig, report: Report, stop) -> tuple[Dataset, dict[str, list[Item]]]:
        """The dataset, checked, and its train / validation / test items."""
        raise NotImplementedError

    def config_fields(self) -> dict:
        """More fields for a new run's config.json (after the config, before the labels)."""
        return {}

    def begin(self, run: Run, history: dict) -> None:
        """A new run's history before its first epoch (filled in place)."""

    def prepare(self, config, run, dataset, splits, y, report, stop, resume: bool, info: dict) -> Prepared:
        """The model, batches and optimizer of the fit, after seeding; fills `info` (params, features, ...)."""
        raise NotImplementedError


# ---- the run ---------------------------------------------------------------------


def train(
    config: TrainConfig,
    run: Run,
    recipe: Recipe,
    *,
    stop: threading.Event | None = None,
    report: Report | None = None,
    resume: bool = False,
    finished: Callable[[dict], None] | None = None,
) -> dict:
    """Train `config` into `run` as `recipe` prepares it (or continue it from its checkpoint with `resume`).

    A finished run is marked finished (its model saved, its metrics written) before the work a user does
    not wait for: `finished(result)` is called then, with what this call returns, and the model's latency is
    measured after it (latency.json), from the model in memory.

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
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

    report = report or noop
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
            status, reason = _fit(config, run, recipe, stop, report, resume, start_epoch, history, info)
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
        # _fit returned, so metrics.json was just written: add what the runs table compares.
        runs.write_json(
            run.path / "metrics.json",
            {**run.metrics(), "params": info.get("params"), "train_seconds": seconds, "strategy": strategy},
        )
    history = run.history()
    run.set_status(status, reason, epoch=len(history.get("loss", [])), seconds=seconds)
    metrics = run.metrics()
    result = {
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
        "corrections": run.config().get("corrections"),
        **({"parent": info["parent"], "boundary": info.get("boundary")} if "parent" in info else {}),
    }
    if status == "finished":
        if finished is not None:
            finished(result)
        report(stage="follow-up", message="Measuring its latency")
        _record_latency(run, info["classifier"], config)
    return result


def _record_latency(run: Run, classifier, config: TrainConfig) -> None:
    """The saved model's inference time per image on this machine, for the Runs page (latency.json)."""
    try:
        preprocess = preprocess_of(config.to_json())  # an imported model's convention, else its backbone's
        latency.save(run.path, latency.measure_model(classifier, preprocess, config.data.image_size))
    except Exception as exc:  # noqa: BLE001 - a timing that fails must not fail a finished run
        logging.getLogger(__name__).warning("%s: latency not measured (%s: %s)", run.name, type(exc).__name__, exc)


def _save_model(run: Run, classifier) -> None:
    runs.atomic_write(run.model_file, lambda tmp: classifier.save(tmp))


def _fit(config: TrainConfig, run: Run, recipe: Recipe, stop, report, resume, start_epoch, history, info):
    """Inside the strategy's scope: from the data to a finished run. Returns (status, reason)."""
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    replicas = distribute.current().num_replicas_in_sync
    if config.batch_size % replicas:
        raise TrainingError(
            f"a batch of {config.batch_size} does not split evenly over {replicas} replicas: give a multiple "
            f"of {replicas} (each replica takes batch / {replicas})"
        )
    dataset, splits = recipe.open_data(config, report, stop)
    if resume:
        if run.config().get("fingerprint") != dataset.fingerprint:
            raise TrainingError(f"{run.name}: the data changed since this run started, so it cannot be resumed")
    else:
        runs.write_json(
            run.path / "config.json",
            {
                **config.to_json(),
                **recipe.config_fields(),
                "labels": dataset.classes,
                "fingerprint": dataset.fingerprint,
                "files_fingerprint": dataset.files_fingerprint,
                # a run on corrected data says so (the Runs page and the report show it)
                **({"corrections": dataset.corrections.to_json()} if _corrected(dataset) else {}),
                "split_sizes": {k: len(v) for k, v in splits.items()},
                "created": time.time(),
            },
        )
        runs.write_json(run.path / "labels.json", dataset.classes)
        recipe.begin(run, history)
        start_epoch = len(history.get("loss", []))
    keras.utils.set_random_seed(config.seed)
    y = {k: labels_of(v) for k, v in splits.items()}
    prepared = recipe.prepare(config, run, dataset, splits, y, report, stop, resume, info)
    weights = class_weights(y["train"], len(dataset.classes)) if config.class_weights else None
    fitted, train_data = prepared.fitted, prepared.train_data
    steps = len(train_data) if hasattr(train_data, "__len__") else math.ceil(len(y["train"]) / config.batch_size)
    if prepared.optimizer is not None:
        compile_model(fitted, prepared.optimizer(steps))
    if prepared.restore is not None:
        prepared.restore()
    info["classifier"] = prepared.classifier
    epochs = config.total_epochs  # a fine-tune's count continues its parent's
    shown = replace(config, epochs=epochs)
    report(
        stage="training",
        epoch=start_epoch,
        epochs=epochs,
        batch=0,
        batches=steps,
        history={k: list(v) for k, v in history.items()},
    )
    val_steps = math.ceil(len(y["validation"]) / config.batch_size)
    watch = callbacks(run, fitted, shown, history, stop, report, steps, val_steps, info.get("seconds"))
    watch += prepared.callbacks
    # last: after a mixed-precision fine-tune's classifier has followed its copy (prepared.callbacks)
    record = (
        timeline.recorder(
            run, config, dataset, splits, prepared.classifier, start_epoch, prepared.frozen_below, prepared.frozen_maps
        )
        if config.timeline
        else None
    )
    watch += [record] if record is not None else []
    # A fit that is not run needs distribute.fitting only for models predicting after it.
    if start_epoch < epochs or prepared.predicts_later:
        with distribute.fitting(fitted, train_data, *prepared.predicts_later):
            if start_epoch < epochs:
                fitted.fit(
                    train_data,
                    validation_data=prepared.val_data,
                    epochs=epochs,
                    initial_epoch=start_epoch,
                    class_weight=weights,
                    shuffle=False,  # the data shuffles itself, seeded
                    callbacks=watch,
                    verbose=0,
                )
    if prepared.after_fit is not None:
        prepared.after_fit()
    kept = splits if prepared.scores_exact else None
    return finish(
        run, dataset, kept, y, prepared.predict, watch, shown, history, val_steps, report, prepared.classifier
    )


def finish(
    run, dataset, splits, y, predict, callbacks, config, history, val_steps, report, classifier
) -> tuple[str, str]:
    """After the fit: evaluate validation and test with `predict(split)`, write metrics.json, save the model.

    With `splits` (the items of each split; None when `predict` is not exact) the two splits' logits are
    kept as the saved model's scores (Run.keep_scores), so the Evaluate page, the report and the temperature
    start from the pass that computed them (a feature run's: its head on the features) instead of passing
    the images through the whole model again.

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
    logits = {}
    for split in ("validation", "test"):
        if len(y[split]):
            logits[split] = predict(split)
            result = _evaluate(logits[split], y[split], num_classes)
            metrics[f"{'val' if split == 'validation' else split}_accuracy"] = result["accuracy"]
            metrics[f"{split}_confusion"] = result["confusion"]
            metrics[f"{split}_count"] = result["count"]
    runs.write_json(run.path / "metrics.json", metrics)
    report(stage="saving")
    _save_model(run, classifier)
    size, policy = config.data.image_size, config.data.resize
    for split, scores in logits.items() if splits is not None else ():
        scores_file = run.scores_file(dataset.fingerprint, config.data.source, split, size, policy)
        run.keep_scores(scores_file, [item.rel for item in splits[split]], np.asarray(scores, np.float32))
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


def _evaluate(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    predicted = logits.argmax(axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=int)
    np.add.at(confusion, (labels, predicted), 1)
    return {
        "accuracy": float((predicted == labels).mean()) if len(labels) else None,
        "confusion": confusion.tolist(),
        "count": int(len(labels)),
    }
