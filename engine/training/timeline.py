"""Where the model looked, epoch by epoch: Grad-CAM of a few fixed validation images after every epoch.

When a feature, scratch or fine-tune run starts, one or two validation images per class are chosen
(seeded by the run's split seed; a resumed run keeps the ones its timeline names). After every
epoch the model being trained (in memory, never reloaded) gives, in one compiled batched call,
Grad-CAM at its predicted class for each image, that class and its probability; engine.runs.timeline
writes them. The traced functions are built once per run: they read the weights as variables.

Grad-CAM here is what engine.explain.grad_cam computes (channel weights = spatially averaged
gradients of the class's logit, ReLU of the weighted sum), written out because the layers keep
training and explain apart; the tests check the two give the same maps.

In feature mode the backbone is frozen, so the layer's activations never change: they are computed
once, and each epoch only runs the part of the classifier after the layer (the backbone's last
layers, pooling and the head) with its gradient. The maps are the same; the cost is a few
milliseconds instead of a backward pass through the whole backbone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from engine import imaging
from engine.backbones import get_spec, preprocess_of
from engine.backbones.registry import identity
from engine.config import TrainConfig
from engine.data.ingest import Dataset, Item, load_item
from engine.errors import ConvScopeError
from engine.model.compiled import OUTPUTS, CompiledModel
from engine.numerics import softmax
from engine.runs import Run, resize_policy_of
from engine.runs import timeline as store

CUT = "timeline_cut"  # the identity layer standing for the chosen layer in feature mode (CamPass)
PER_CLASS = 2  # images per class: enough to see a pattern, few enough for one small batch
MAX_IMAGES = 16  # in all: 100 classes must not cost 200 backward passes an epoch, nor a 200-tile grid


def choose(splits: dict[str, list[Item]], seed: int, per_class: int = PER_CLASS) -> list[Item]:
    """Up to `per_class` images of each class from the validation split (else test, else train), seeded.

    With many classes, one image per class, and at most MAX_IMAGES in all (the first classes).
    Returns the items ordered by class, then by the seeded draw.
    """
    pool = splits.get("validation") or splits.get("test") or splits.get("train") or []
    if len({item.label for item in pool}) * per_class > MAX_IMAGES:
        per_class = 1
    order = np.random.default_rng(seed).permutation(len(pool))
    picked: dict[int, list[Item]] = {}
    for i in order:
        item = pool[int(i)]
        if len(picked.setdefault(item.label, [])) < per_class:
            picked[item.label].append(item)
    return [item for label in sorted(picked) for item in picked[label]][:MAX_IMAGES]


def spatial_layer(model, backbone: str) -> str | None:
    """The backbone's last convolutional layer when the model has it, else its last spatial layer; None if none."""
    try:
        spec = get_spec(backbone) if backbone else None
    except ConvScopeError:  # an imported model's name, say
        spec = None
    names = [layer.name for layer in model.layers]
    if spec is not None and spec.last_conv_layer in names:
        return spec.last_conv_layer
    spatial = [layer.name for layer in model.layers if _is_spatial(layer)]
    return spatial[-1] if spatial else None


def _is_spatial(layer) -> bool:
    try:
        shape = layer.output.shape
    except (AttributeError, ValueError):
        return False
    return len(shape) == 4 and type(layer).__name__ != "InputLayer"


class CamPass:
    """Grad-CAM at the predicted class for fixed images, from a model whose weights keep changing.

    Args:
        classifier: the keras.Model being trained (or sharing the trained layers), logits out.
        preprocess: [0, 255] RGB -> the model's input (TensorFlow ops).
        layer: a layer of `classifier` (flat graph) with an (N, h, w, C) output.
        images: (N, S, S, 3) float32 in [0, 255].
        frozen_below: the layers up to a layer never change: True for `layer` itself (feature mode), or the
            name of a layer at or below it (a fine-tune's boundary). Their activations are kept, and each
            call runs only the rest, from a model whose input is that layer's output.
        activations: those activations (N, h, w, C) when the caller has them (feature mode: from the feature
            cache or the pass that computed the features), so no new pass over the frozen layers is traced.
    """

    def __init__(
        self,
        classifier,
        preprocess,
        layer: str,
        images: np.ndarray,
        frozen_below: bool | str,
        activations: np.ndarray | None = None,
    ) -> None:
        import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

        self.compiled, self.layer, self.inputs = CompiledModel(classifier, preprocess), layer, images
        frozen = layer if frozen_below is True else frozen_below or None
        names = [one.name for one in classifier.layers]
        if frozen and not (frozen in names and layer in names and names.index(frozen) <= names.index(layer)):
            frozen = None  # above the maps' layer (only the head trains), or not in this graph: the whole pass
        if frozen:
            import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

            below = classifier.get_layer(frozen).output
            try:
                if frozen == layer:
                    rest = keras.Model(below, classifier.output)
                else:  # the maps' layer and the logits, from the frozen layer's output
                    rest = keras.Model(below, [classifier.get_layer(layer).output, classifier.output])
            except ValueError:  # the layers after it also use earlier tensors: the whole pass it is
                rest = None
            if rest is not None:
                if activations is None:
                    activations = self.compiled.activations(images, frozen)
                start = keras.Input(activations.shape[1:])
                if frozen == layer:  # the kept activations are the maps' layer: behind an identity layer
                    after, self.layer = keras.Model(start, rest(keras.layers.Identity(name=CUT)(start))), CUT
                else:
                    after, self.layer = keras.Model(start, rest(start)), OUTPUTS
                self.compiled = CompiledModel(after, identity, input_shape=activations.shape[1:])
                self.inputs = activations
        self.kept = tf.constant(self.inputs)  # copied once, not every epoch

    def __call__(self) -> tuple[np.ndarray, np.ndarray]:
        """(raw Grad-CAM (N, h, w) float32 >= 0 at the layer's size, logits (N, K)), in one compiled call."""
        return self.compiled.grad_cam(self.kept, self.layer, [-1] * len(self.inputs))  # -1: the predicted class


def scaled(raw: np.ndarray) -> np.ndarray:
    """(N, h, w) -> float16 with each map's maximum at 1 (a zero map stays zero): small, and nothing lost."""
    top = raw.max(axis=(1, 2), keepdims=True)
    return np.where(top > 0, raw / np.maximum(top, 1e-30), 0).astype(np.float16)


def recorder(
    run: Run,
    config: TrainConfig,
    dataset: Dataset,
    splits: dict[str, list[Item]],
    classifier,
    start_epoch: int,
    frozen_below: bool | str | None = None,
    frozen_maps: Callable[[str, list[Item], np.ndarray], np.ndarray | None] | None = None,
):
    """The Keras callback recording the timeline of `run` (None when the model has no spatial layer).

    A resumed run keeps its images and drops epochs after `start_epoch`; when the epoch it resumes
    from is missing (a kill between the checkpoint and the timeline), the restored model records it.
    `frozen_below`: a layer up to which nothing changes while it trains (CamPass); `frozen_maps(layer, items,
    images)`: the activations there when the caller has them (None: not at that layer).
    """
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    saved = run.config()
    layer = spatial_layer(classifier, saved.get("backbone") or config.backbone)
    if layer is None:
        logging.getLogger(__name__).info("%s: no spatial layer, so no timeline", run.name)
        return None
    meta = store.read_meta(run.path)
    by_rel = {item.rel: item for item in dataset.items}
    if meta is not None and all(rel in by_rel for rel in meta["images"]):
        items = [by_rel[rel] for rel in meta["images"]]
        store.cut_after(run.path, start_epoch)
    else:
        items = choose(splits, run.split_seed)
        meta = None
    if not items:
        return None
    size = int(classifier.input_shape[1])
    policy = resize_policy_of(saved)
    rgbs = [load_item(dataset, item) for item in items]
    images = np.stack([imaging.resize(rgb, size, policy).astype(np.float32) for rgb in rgbs])
    if meta is None:
        boxes = dataset.boxes or {}
        meta = {
            "images": [item.rel for item in items],
            "labels": [int(item.label) for item in items],
            "classes": list(dataset.classes),
            "layer": layer,
            "input_size": size,
            "resize": policy,
            "sizes": [list(rgb.shape[:2]) for rgb in rgbs],
            "boxes": [boxes.get(item.rel) for item in items],
            "mode": config.mode,
        }
        store.cut_after(run.path, 0)
        store.write_images(run.path, np.clip(np.rint(images), 0, 255).astype(np.uint8))
        store.write_meta(run.path, meta)
    try:
        frozen = layer if frozen_below is True else frozen_below
        kept = frozen_maps(frozen, items, images) if frozen and frozen_maps is not None else None
        cams = CamPass(classifier, preprocess_of(saved or config.to_json()), layer, images, frozen or False, kept)
        cams()  # traced here, once per run, so no epoch pays for it
    except Exception as exc:  # noqa: BLE001 - a model the maps cannot be taken of still trains
        logging.getLogger(__name__).warning("%s: no timeline (%s: %s)", run.name, type(exc).__name__, exc)
        return None

    def record(epoch: int, epoch_seconds: tuple[float, float]) -> None:
        t0, cpu0 = time.perf_counter(), time.process_time()
        raw, logits = cams()
        predicted = logits.argmax(axis=1)
        probability = softmax(logits)[np.arange(len(predicted)), predicted]
        store.write_epoch(
            run.path,
            epoch,
            maps=scaled(raw),
            predicted=predicted.astype(np.int16),
            probability=probability.astype(np.float32),
            # the maps' cost, wall and CPU (all of the process's threads); the small write after it is not in it
            seconds=np.float64(time.perf_counter() - t0),
            cpu_seconds=np.float64(time.process_time() - cpu0),
            epoch_seconds=np.float64(epoch_seconds[0]),
            epoch_cpu_seconds=np.float64(epoch_seconds[1]),
        )

    class Record(keras.callbacks.Callback):
        """Records after every epoch; a failure stops the recording with a warning, never the run."""

        def __init__(self) -> None:
            super().__init__()
            self.failed = False
            self.began = (time.perf_counter(), time.process_time())

        def _safely(self, epoch: int, epoch_seconds: tuple[float, float]) -> None:
            if self.failed:
                return
            try:
                record(epoch, epoch_seconds)
            except Exception as exc:  # noqa: BLE001 - a map that fails must not fail the training
                self.failed = True
                logging.getLogger(__name__).warning(
                    "%s: timeline stopped at epoch %d (%s: %s)", run.name, epoch, type(exc).__name__, exc
                )

        def on_train_begin(self, logs=None) -> None:
            if start_epoch > 0 and start_epoch not in store.recorded_epochs(run.path):
                self._safely(start_epoch, (0.0, 0.0))  # the model as the run starts from: a parent, or a checkpoint

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.began = (time.perf_counter(), time.process_time())

        def on_epoch_end(self, epoch, logs=None) -> None:
            wall, cpu = self.began
            self._safely(epoch + 1, (time.perf_counter() - wall, time.process_time() - cpu))

    return Record()
