"""A fine-tune ready to fit: a private copy of the parent's classifier, unfrozen, and its batches."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace

import numpy as np

from engine import backbones, runs
from engine.config import FinetuneConfig, TrainConfig
from engine.data.pipeline import DecodedImages, augmenter, make_tf_dataset
from engine.runs import Run
from engine.training import distribute, fit
from engine.training.finetune.boundary import (
    BoundaryOverflow,
    Split,
    boundary_budget_bytes,
    boundary_plan,
    cached_batches,
    split,
    weights_digest,
)
from engine.training.finetune.layers import counts, first_trainable, unfreeze
from engine.training.finetune.parent import open_data, parent_of, split_seed
from engine.training.finetune.schedule import decay_multipliers, make_optimizer


def _image_fetch(dataset, items, config: TrainConfig, spec, train: bool, keep: bool):
    """fetch(view, indices) -> preprocessed image batch (augmented when `train`) for full forward passes."""
    decoded = DecodedImages([str(dataset.path(i)) for i in items], config.data.image_size, config.data.resize, keep)
    aug = augmenter(config.data.augment, config.seed) if train and config.data.augment.enabled else None

    def fetch(_view, indices):
        x = decoded.batch(indices).astype(np.float32)
        if aug is not None:
            x = np.asarray(aug(x, training=True))
        return np.asarray(spec.preprocess(x), dtype=np.float32)

    return fetch


@dataclass
class Setup:
    """A fine-tune ready to fit: the model to fit, its batches, and how to predict a split."""

    classifier: object  # the whole classifier (a private copy of the parent's), flags set
    fitted: object  # what fit() trains: the part above the boundary, or a model sharing all layers
    first: int
    cut: Split
    boundary: dict  # boundary_plan(): cached or full, and why
    params: dict
    train_data: object  # a PyDataset of shuffled batches
    val_data: object  # (x, y) or a tf.data.Dataset, None without a validation split
    predict: object  # predict(split) -> (n, classes) logits
    labels: dict  # split -> (n,) int32
    dataset: object
    splits: dict
    features: dict
    mixed: bool = False  # `fitted` is a mixed-precision copy, not sharing the classifier's variables


def prepare(
    config: TrainConfig, parent: Run, dataset, splits, report=fit._noop, stop=None, mixed: bool | None = None
) -> Setup:
    """Load a private copy of the parent's classifier, unfreeze it, and serve its data (cached boundary or images).

    `mixed`: fit a mixed-precision copy (default: mixed_precision(), i.e. on a GPU).
    """
    import keras

    ft: FinetuneConfig = config.finetune
    spec = backbones.get_spec(config.backbone)
    y = {k: fit._labels(v) for k, v in splits.items()}
    classifier = keras.models.load_model(parent.model_file, safe_mode=True)  # the parent's file is only read
    first = first_trainable(classifier, config.backbone, ft)
    unfreeze(classifier, first, ft.bn)
    params = counts(classifier, first, ft.bn)
    cut = split(classifier, first)
    views = config.aug_views if config.data.augment.enabled else 0
    plan = boundary_plan(cut, len(dataset.items), len(splits["train"]), views)
    mixed = mixed_precision() if mixed is None else mixed
    # Each worker opened its own data and parent, and decided these alone (its budget, its GPUs).
    if distribute.multi_worker(distribute.current()):
        setup = f"data {dataset.fingerprint[:16]}, parent weights {weights_digest(classifier)}"
        distribute.agree(f"{setup}, {plan['mode']} boundary, mixed precision {mixed}", "their fine-tune setup")
    features: dict = {}
    if plan["mode"] == "cached":
        try:
            cached_data = cached_batches(config, cut, dataset, splits, y, spec, views, report, stop)
        except BoundaryOverflow as exc:
            plan = {**plan, "mode": "full", "why": f"{exc}, so every step runs the whole model on image batches"}
        else:
            features, train_data, val_data, predict = cached_data
            fitted = cut.upper
    if plan["mode"] == "full":
        keep = len(dataset.items) * config.data.image_size**2 * 3 <= boundary_budget_bytes()
        fitted = keras.Model(classifier.input, classifier.output, name="trainer")  # shares the layers
        fetch = _image_fetch(dataset, splits["train"], config, spec, True, keep)
        train_data = fit.index_batches(len(y["train"]), 1, y["train"], config.batch_size, config.seed, fetch)

        def images(split_name: str):
            ds = make_tf_dataset(
                dataset,
                splits[split_name],
                config.data.image_size,
                resize=config.data.resize,
                batch_size=config.batch_size,
            )
            return ds.map(lambda a, b: (spec.preprocess(a), b))

        val_data = images("validation") if len(y["validation"]) else None

        def predict(split_name: str) -> np.ndarray:
            return np.asarray(classifier.predict(images(split_name), verbose=0))

    if mixed:
        fitted = mixed_copy(fitted)
    return Setup(
        classifier, fitted, first, cut, plan, params, train_data, val_data, predict, y, dataset, splits, features, mixed
    )


def mixed_precision() -> bool:
    """Fit in mixed precision (float16 compute, float32 weights): on a GPU, or when CONVSCOPE_MIXED_PRECISION=1."""
    flag = os.environ.get("CONVSCOPE_MIXED_PRECISION", "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def mixed_copy(model):
    """`model` rebuilt with the mixed_float16 policy (logits kept float32 for a stable loss), same weights.

    A loaded model keeps each layer's saved float32 policy, so setting the global policy would not
    reach it; its layers are rebuilt instead. The copy does not share variables with `model`:
    copy_weights() brings the trained weights back.
    """
    import keras

    def clone(layer):
        config = layer.get_config()
        if layer.name != "logits":
            config["dtype"] = keras.DTypePolicy("mixed_float16")
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy_weights(model, copy)
    return copy


def copy_weights(source, target) -> None:
    """Weights of every layer of `source` into the layer of the same name in `target`."""
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())


def run_finetune(config, run, stop, report, resume, start_epoch, history, info) -> tuple[str, str]:
    """The fine-tune behind fit.train(): same arguments and outcome as fit._train."""
    import keras

    ft: FinetuneConfig = config.finetune
    parent = parent_of(ft.parent)
    dataset, splits = open_data(config, parent, report, stop)
    if resume:
        if run.config().get("fingerprint") != dataset.fingerprint:
            raise fit.TrainingError(f"{run.name}: the data changed since this run started, so it cannot be resumed")
    else:
        runs.write_json(
            run.path / "config.json",
            {
                **config.to_json(),
                "parent": parent.name,
                "split_seed": split_seed(parent.config()),
                "labels": dataset.classes,
                "fingerprint": dataset.fingerprint,
                "split_sizes": {k: len(v) for k, v in splits.items()},
                "created": time.time(),
            },
        )
        runs.write_json(run.path / "labels.json", dataset.classes)
        # The fine-tune's history starts with its parent's: epochs continue the count.
        parent_history = parent.history()
        for k in fit.HISTORY_KEYS:
            if k in parent_history:
                history[k] = list(parent_history[k][: ft.parent_epochs])
        start_epoch = len(history.get("loss", []))
        run.write_history(history)
    keras.utils.set_random_seed(config.seed)
    # A resumed run keeps the precision its checkpoint (and its optimizer's loss scaling) was saved with.
    setup = prepare(config, parent, dataset, splits, report, stop, run.config().get("mixed_precision"))
    if not resume:
        runs.write_json(run.path / "config.json", {**run.config(), "mixed_precision": setup.mixed})
    info.update(params=setup.params, parent=parent.name, boundary=setup.boundary, features=setup.features)
    info["boundary"] = {**setup.boundary, "mixed_precision": setup.mixed}
    y = setup.labels
    weights = fit.class_weights(y["train"], len(dataset.classes)) if config.class_weights else None
    total_epochs = config.total_epochs
    steps = len(setup.train_data)
    multipliers = decay_multipliers(setup.classifier, config.backbone, setup.first, ft.layer_decay)
    fitted = setup.fitted
    mixed = setup.mixed
    optimizer = make_optimizer(config, steps * config.epochs, multipliers)
    if mixed:  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    fitted.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if resume and run.checkpoint.is_file():
        _restore(fitted, keras.models.load_model(run.checkpoint, safe_mode=True))
        if mixed:
            copy_weights(fitted, setup.classifier)
    info["classifier"] = setup.classifier
    report(
        stage="training",
        epoch=start_epoch,
        epochs=total_epochs,
        batch=0,
        batches=steps,
        history={k: list(v) for k, v in history.items()},
    )
    val_steps = math.ceil(len(y["validation"]) / config.batch_size)
    shown = replace(config, epochs=total_epochs)  # the count continues the parent's
    callbacks = fit._callbacks(run, fitted, shown, history, stop, report, steps, val_steps, info.get("seconds"))
    if mixed:  # the classifier (what is saved, also on Stop) follows the copy after every epoch
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: copy_weights(fitted, setup.classifier)))
    # predict() after the fit goes through the classifier or the cut's upper part: fixed for the strategy too.
    with distribute.fitting(fitted, setup.train_data, setup.classifier, setup.cut.upper):
        if start_epoch < total_epochs:
            fitted.fit(
                setup.train_data,
                validation_data=setup.val_data,
                epochs=total_epochs,
                initial_epoch=start_epoch,
                class_weight=weights,
                shuffle=False,  # the batches shuffle themselves, seeded
                callbacks=callbacks,
                verbose=0,
            )
    if mixed:
        copy_weights(fitted, setup.classifier)  # after EarlyStopping put the best weights back
    return fit.finish(run, dataset, y, setup.predict, callbacks, shown, history, val_steps, report, setup.classifier)


def _restore(fitted, saved) -> None:
    """Put a checkpoint's weights and optimizer state into `fitted` (which shares the classifier's layers)."""
    copy_weights(saved, fitted)
    fitted.optimizer.build(fitted.trainable_variables)
    for mine, theirs in zip(fitted.optimizer.variables, saved.optimizer.variables, strict=True):
        mine.assign(theirs)
