"""A fine-tune ready to fit: a private copy of the parent's classifier, unfrozen, and its batches."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from engine import runs
from engine.backbones import preprocess_of
from engine.config import FinetuneConfig, TrainConfig
from engine.data.pipeline import DecodedImages, augmenter, make_tf_dataset
from engine.runs import Run
from engine.training import distribute
from engine.training.batches import index_batches, labels_of
from engine.training.callbacks import HISTORY_KEYS, noop
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
from engine.training.finetune.parent import open_data, parent_of
from engine.training.finetune.schedule import decay_multipliers, make_optimizer
from engine.training.loop import Prepared, Recipe


def _image_fetch(dataset, items, config: TrainConfig, preprocess, train: bool, keep: bool):
    """fetch(view, indices) -> preprocessed image batch (augmented when `train`) for full forward passes."""
    decoded = DecodedImages([str(dataset.path(i)) for i in items], config.data.image_size, config.data.resize, keep)
    aug = augmenter(config.data.augment, config.seed) if train and config.data.augment.enabled else None

    def fetch(_view, indices):
        x = decoded.batch(indices).astype(np.float32)
        if aug is not None:
            x = np.asarray(aug(x, training=True))
        return np.asarray(preprocess(x), dtype=np.float32)

    return fetch


@dataclass
class Setup:
    """A fine-tune ready to fit: the model to fit, its batches, and how to predict a split."""

    classifier: object  # the whole classifier (a private copy of the parent's), flags set
    fitted: object  # what fit() trains: the part above the boundary, or a model sharing all layers
    first: int
    cut: Split | None  # None for an imported model (always full forward passes)
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
    config: TrainConfig, parent: Run, dataset, splits, report=noop, stop=None, mixed: bool | None = None
) -> Setup:
    """Load a private copy of the parent's classifier, unfreeze it, and serve its data (cached boundary or images).

    `mixed`: fit a mixed-precision copy (default: mixed_precision(), i.e. on a GPU).
    """
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    ft: FinetuneConfig = config.finetune
    preprocess = preprocess_of(config.to_json())
    y = {k: labels_of(v) for k, v in splits.items()}
    classifier = keras.models.load_model(parent.model_file, safe_mode=True)  # the parent's file is only read
    first = first_trainable(classifier, config.backbone, ft)
    unfreeze(classifier, first, ft.bn)
    params = counts(classifier, first, ft.bn)
    views = config.aug_views if config.data.augment.enabled else 0
    if config.imported is None:
        cut = split(classifier, first)
        plan = boundary_plan(cut, len(dataset.items), len(splits["train"]), views)
        mixed = mixed_precision() if mixed is None else mixed
    else:
        cut, plan = None, imported_plan(first)
        mixed = False  # its layers keep the dtype policies they were saved with (mixed_copy would rebuild them)
    # Each worker opened its own data and parent, and decided these alone (its budget, its GPUs).
    if distribute.multi_worker(distribute.current()):
        setup = f"data {dataset.fingerprint[:16]}, parent weights {weights_digest(classifier)}"
        distribute.agree(f"{setup}, {plan['mode']} boundary, mixed precision {mixed}", "their fine-tune setup")
    features: dict = {}
    if plan["mode"] == "cached":
        try:
            cached_data = cached_batches(config, cut, dataset, splits, y, preprocess, views, report, stop)
        except BoundaryOverflow as exc:
            plan = {**plan, "mode": "full", "why": f"{exc}, so every step runs the whole model on image batches"}
        else:
            features, train_data, val_data, predict = cached_data
            fitted = cut.upper
    if plan["mode"] == "full":
        keep = len(dataset.items) * config.data.image_size**2 * 3 <= boundary_budget_bytes()
        fitted = keras.Model(classifier.input, classifier.output, name="trainer")  # shares the layers
        fetch = _image_fetch(dataset, splits["train"], config, preprocess, True, keep)
        train_data = index_batches(len(y["train"]), 1, y["train"], config.batch_size, config.seed, fetch)

        def images(split_name: str):
            ds = make_tf_dataset(
                dataset,
                splits[split_name],
                config.data.image_size,
                resize=config.data.resize,
                batch_size=config.batch_size,
            )
            return ds.map(lambda a, b: (preprocess(a), b))

        val_data = images("validation") if len(y["validation"]) else None

        def predict(split_name: str) -> np.ndarray:
            return np.asarray(classifier.predict(images(split_name), verbose=0))

    if mixed:
        fitted = mixed_copy(fitted)
    return Setup(
        classifier, fitted, first, cut, plan, params, train_data, val_data, predict, y, dataset, splits, features, mixed
    )


def imported_plan(first: int) -> dict:
    """The boundary plan of an imported model: full forward passes, and why."""
    why = (
        "an imported model: its own layers (augmentation, a nested base model) are not cut at a boundary, "
        "so every step runs the whole model on image batches"
    )
    return {"mode": "full", "why": why, "bytes": 0, "budget": boundary_budget_bytes(), "layers": []}


def mixed_precision() -> bool:
    """Fit in mixed precision (float16 compute, float32 weights): on a GPU, or when CONVSCOPE_MIXED_PRECISION=1."""
    flag = os.environ.get("CONVSCOPE_MIXED_PRECISION", "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

    return bool(tf.config.list_logical_devices("GPU"))


def mixed_copy(model):
    """`model` rebuilt with the mixed_float16 policy (logits kept float32 for a stable loss), same weights.

    A loaded model keeps each layer's saved float32 policy, so setting the global policy would not
    reach it; its layers are rebuilt instead. The copy does not share variables with `model`:
    copy_weights() brings the trained weights back.
    """
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

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


class Finetune(Recipe):
    """A fine-tune, as the training loop runs it: the parent's data and split, its classifier unfrozen, its schedule."""

    parent: Run
    ft: FinetuneConfig
    seed: int

    def open_data(self, config: TrainConfig, report, stop):
        self.ft = config.finetune
        self.seed = config.seed
        self.parent = parent_of(self.ft.parent)
        return open_data(config, self.parent, report, stop)

    def config_fields(self) -> dict:
        # an imported parent was split by nothing: the fine-tune's own seed splits its data, and its children keep it
        seed = self.seed if runs.is_imported(self.parent.config()) else self.parent.split_seed
        return {"parent": self.parent.name, "split_seed": seed}

    def begin(self, run: Run, history: dict) -> None:
        # The fine-tune's history starts with its parent's: epochs continue the count.
        parent_history = self.parent.history()
        for k in HISTORY_KEYS:
            if k in parent_history:
                history[k] = list(parent_history[k][: self.ft.parent_epochs])
        run.write_history(history)

    def prepare(self, config, run, dataset, splits, y, report, stop, resume, info) -> Prepared:
        import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

        ft: FinetuneConfig = config.finetune
        # A resumed run keeps the precision its checkpoint (and its optimizer's loss scaling) was saved with.
        saved = run.config()
        setup = prepare(config, self.parent, dataset, splits, report, stop, saved.get("mixed_precision"))
        if not resume:
            runs.write_json(run.path / "config.json", {**saved, "mixed_precision": setup.mixed})
        info.update(params=setup.params, parent=self.parent.name, features=setup.features)
        info["boundary"] = {**setup.boundary, "mixed_precision": setup.mixed}
        fitted, mixed = setup.fitted, setup.mixed

        def optimizer(steps: int):
            multipliers = decay_multipliers(setup.classifier, config.backbone, setup.first, ft.layer_decay)
            out = make_optimizer(config, steps * config.epochs, multipliers)
            # float16 gradients underflow without loss scaling
            return keras.optimizers.LossScaleOptimizer(out) if mixed else out

        def restore() -> None:
            _restore(fitted, keras.models.load_model(run.checkpoint, safe_mode=True))
            if mixed:
                copy_weights(fitted, setup.classifier)

        def follow() -> None:  # the classifier (what is saved, also on Stop) follows the mixed copy
            copy_weights(fitted, setup.classifier)

        return Prepared(
            fitted,
            setup.classifier,
            setup.train_data,
            setup.val_data,
            setup.predict,
            optimizer,
            restore if resume and run.checkpoint.is_file() else None,
            # predict() after the fit goes through the classifier or the cut's upper part: fixed for the strategy too
            predicts_later=(setup.classifier,) + ((setup.cut.upper,) if setup.cut is not None else ()),
            callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: follow())] if mixed else [],
            after_fit=follow if mixed else None,  # after EarlyStopping put the best weights back
            # below a one-tensor boundary nothing trains: the timeline keeps its activations there
            frozen_below=setup.cut.crossing[0] if setup.cut is not None and len(setup.cut.crossing) == 1 else None,
            # the cached boundary is float16 (its logits differ from the model's by up to about 1e-3): the
            # worker scores the fine-tuned model afterwards instead
            scores_exact=False,
        )


def _restore(fitted, saved) -> None:
    """Put a checkpoint's weights and optimizer state into `fitted` (which shares the classifier's layers)."""
    copy_weights(saved, fitted)
    fitted.optimizer.build(fitted.trainable_variables)
    for mine, theirs in zip(fitted.optimizer.variables, saved.optimizer.variables, strict=True):
        mine.assign(theirs)
