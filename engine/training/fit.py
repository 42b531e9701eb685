"""Training runs: feature extraction on cached features, or a CNN from scratch; `train()` runs any mode.

`train()` runs one TrainConfig into one run folder (engine.runs) and reports progress through a
callback; it never touches a UI. The job worker (engine.jobs) calls it in its process, the CLI
calls it directly. Each mode prepares what it fits; the one training loop (engine.training.loop)
does the rest.

- feature mode: the backbone is frozen, so its pooled features are computed
  once (engine.training.feature_cache) and a small head model is fitted on them. The
  head's layers are shared with the flat classifier (backbone -> GAP -> head),
  which is what gets saved as model.keras.
- scratch mode: the whole CNN is fitted on decoded, augmented image batches.
- finetune mode: engine.training.finetune (a schedule over the same loop).
"""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np

from engine import backbones, runs
from engine.config import TrainConfig
from engine.data.ingest import Dataset, Item
from engine.data.pipeline import make_tf_dataset
from engine.data.splits import split_dataset
from engine.runs import Run
from engine.training import distribute, feature_cache, loop, models
from engine.training.batches import index_batches
from engine.training.callbacks import Report, features_progress
from engine.training.features import FeatureExtractor
from engine.training.finetune.setup import Finetune
from engine.training.loop import Prepared, Recipe, TrainingError, make_optimizer

__all__ = ["TrainingError", "penalise_head", "resume", "resume_config", "scratch_outlook", "train"]


def penalise_head(head, l2: float) -> None:
    """Put an L2 penalty `l2 * sum(w ** 2)` on every Dense kernel of a freshly built head.

    engine.training.models builds the head's layers without a regulariser; setting it on the layer
    (so it is saved with the model's config) and on the kernel variable (which Keras reads
    when it adds the penalty to the loss) gives the same model as building it with one.
    """
    if not l2:
        return
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    penalty = keras.regularizers.L2(l2)
    for layer in head.layers:
        if isinstance(layer, keras.layers.Dense):
            layer.kernel_regularizer = penalty
            layer.kernel.regularizer = penalty


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


# ---- the two modes -----------------------------------------------------------------


class NewModel(Recipe):
    """A new model on the run's own data and split: a head on cached features, or a CNN from scratch."""

    def open_data(self, config: TrainConfig, report: Report, stop) -> tuple[Dataset, dict[str, list[Item]]]:
        dataset = loop.open_checked(config, report, stop)
        distribute.agree(dataset.fingerprint, "their data")
        # A feature or scratch run splits with its own seed (as Run.splits reads it back from config.json).
        return dataset, split_dataset(dataset, config.seed, config.data.val_frac, config.data.test_frac)

    def prepare(self, config, run, dataset, splits, y, report, stop, resume, info) -> Prepared:
        import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

        built = models.build(config, len(dataset.classes))
        classifier = built.classifier
        counts = models.summarise(classifier)
        info["params"] = {"total": counts.total, "trainable": counts.trainable, "non_trainable": counts.non_trainable}
        from_checkpoint = resume and run.checkpoint.is_file()
        fresh = None if from_checkpoint else (lambda _steps: make_optimizer(config.optimizer, config.learning_rate))
        has_val = len(y["validation"]) > 0
        if config.mode == "scratch":
            fitted = classifier
            if from_checkpoint:
                fitted = classifier = keras.models.load_model(run.checkpoint, safe_mode=True)

            def predict(split: str) -> np.ndarray:
                return np.asarray(fitted.predict(_image_batches(dataset, splits[split], config, False), verbose=0))

            train_data = _image_batches(dataset, splits["train"], config, train=True)
            val_data = _image_batches(dataset, splits["validation"], config, train=False) if has_val else None
            return Prepared(fitted, classifier, train_data, val_data, predict, fresh)

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
        if from_checkpoint:
            fitted = keras.models.load_model(run.checkpoint, safe_mode=True)
            classifier = models.feature_classifier(base, fitted)
        else:
            penalise_head(fitted, config.head.l2)

        def predict(split: str) -> np.ndarray:
            return np.asarray(fitted(x[split], training=False))  # a few Dense layers: one eager call

        def frozen_maps(layer: str, items: list[Item], images: np.ndarray) -> np.ndarray | None:
            # the backbone's output is the timeline's usual layer; with several replicas the extractor's pass
            # is a collective the timeline does not join, so the timeline makes its own
            if layer != base.layers[-1].name or distribute.current().num_replicas_in_sync > 1:
                return None
            return feature_cache.frozen_maps(extractor, key, items, images)

        train_data = _feature_batches(views, y["train"], config.batch_size, config.seed)
        val_data = (x["validation"], y["validation"]) if has_val else None
        # the whole backbone is frozen: the timeline keeps its layer's activations and runs only what follows
        return Prepared(
            fitted, classifier, train_data, val_data, predict, fresh, frozen_below=True, frozen_maps=frozen_maps
        )


# ---- the run ---------------------------------------------------------------------


def train(
    config: TrainConfig,
    run: Run,
    *,
    stop: threading.Event | None = None,
    report: Report | None = None,
    resume: bool = False,
    finished=None,
) -> dict:
    """Train `config` into `run` (or continue it from its checkpoint with `resume`): engine.training.loop.train.

    `finished(result)`: called once the run is marked finished, before the work a user does not wait for.
    """
    recipe = Finetune() if config.mode == "finetune" else NewModel()
    return loop.train(config, run, recipe, stop=stop, report=report, resume=resume, finished=finished)


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
