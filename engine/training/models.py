"""Classifier models: heads on frozen backbones, scratch CNNs, and their summaries.

Every model takes preprocessed images (the backbone spec's `preprocess`) and
returns logits; softmax happens at prediction time. A feature-mode classifier
is one flat graph (backbone layers, then `avg_pool` and the head's layers),
so Grad-CAM and activations reach every layer. Its head layers are the very
layers of the small head model that training fits on cached features: the
weights are shared, so the trained head is the classifier's head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
from keras import layers

from engine import backbones
from engine.backbones import scratch
from engine.config import HeadConfig, TrainConfig
from engine.errors import TrainingError


def build_head(feature_dim: int, num_classes: int, config: HeadConfig) -> keras.Model:
    """(N, D) pooled features -> (N, num_classes) logits."""
    inputs = keras.Input((feature_dim,), name="features")
    x = inputs
    for i, units in enumerate(config.hidden, start=1):
        x = layers.Dense(units, activation="relu", name=f"head_dense{i}")(x)
        if config.dropout:
            x = layers.Dropout(config.dropout, name=f"head_dropout{i}")(x)
    if config.dropout and not config.hidden:
        x = layers.Dropout(config.dropout, name="head_dropout")(x)
    x = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, x, name="head")


def frozen_backbone(name: str, image_size: int) -> keras.Model:
    """The pretrained feature extractor (N, S, S, 3) -> (N, h, w, D), frozen.

    `trainable = False` also keeps BatchNormalization in inference mode
    (Keras 3), so its moving statistics never change.
    """
    base = backbones.load(name, include_top=False, image_size=image_size)
    base.trainable = False
    return base


def feature_classifier(base: keras.Model, head: keras.Model) -> keras.Model:
    """Backbone -> GAP -> the head's own layers (shared weights): one flat graph of logits."""
    x = base.output
    if len(x.shape) == 4:  # a feature map (bundled, keras.applications); hub models already pool
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    for layer in head.layers[1:]:
        x = layer(x)
    return keras.Model(base.input, x, name=f"{base.name}_classifier")


def scratch_classifier(name: str, image_size: int, num_classes: int) -> keras.Model:
    """AlexNet or the small CNN with logits, random (He) initial weights."""
    builders = {"alexnet": scratch.alexnet, "small_cnn": scratch.small_cnn}
    if name not in builders:
        raise TrainingError(f"scratch mode trains {' or '.join(builders)}, not {name!r}")
    return builders[name](image_size, num_classes)


@dataclass(frozen=True)
class Built:
    """What training needs: the classifier, and in feature mode its frozen base and its head."""

    classifier: keras.Model
    base: keras.Model | None = None  # (N, S, S, 3) -> feature map, frozen
    head: keras.Model | None = None  # (N, D) pooled features -> logits; its layers are the classifier's


def build(config: TrainConfig, num_classes: int) -> Built:
    """The model for `config`: a frozen backbone with a new head, or a scratch CNN."""
    size = config.data.image_size
    spec = backbones.get_spec(config.backbone)
    if config.mode == "scratch":
        if spec.source != "scratch":
            raise TrainingError(
                f"scratch mode trains alexnet or small_cnn; {config.backbone} is pretrained (use feature mode)"
            )
        return Built(scratch_classifier(config.backbone, size, num_classes))
    if spec.source == "scratch":
        raise TrainingError(f"{config.backbone} has random weights; train it in scratch mode, not feature mode")
    base = frozen_backbone(config.backbone, size)
    head = build_head(pooled_dim(base), num_classes, config.head)
    return Built(feature_classifier(base, head), base, head)


def pooled_dim(base: keras.Model) -> int:
    return int(base.output.shape[-1])


@dataclass(frozen=True)
class Summary:
    """Parameter counts and a layer table, shown before training starts."""

    total: int
    trainable: int
    non_trainable: int
    layers: list[dict]

    def to_json(self) -> dict:
        return {
            "total": self.total,
            "trainable": self.trainable,
            "non_trainable": self.non_trainable,
            "layers": self.layers,
        }


def _count(weights) -> int:
    return int(sum(math.prod(w.shape) for w in weights))  # from shapes: no copies of the values


def summarise(model: keras.Model, frozen_prefix_groups: bool = True) -> Summary:
    """Counts and rows; the frozen backbone's layers collapse into one row per frozen run of layers."""
    rows: list[dict] = []
    frozen_run: list = []

    def flush() -> None:
        if frozen_run:
            rows.append(
                {
                    "layer": f"{frozen_run[0].name} … {frozen_run[-1].name}"
                    if len(frozen_run) > 1
                    else frozen_run[0].name,
                    "type": f"frozen backbone ({len(frozen_run)} layers)",
                    "output_shape": str(tuple(frozen_run[-1].output.shape)),
                    "params": _count(w for layer in frozen_run for w in layer.weights),
                    "trainable": False,
                }
            )
            frozen_run.clear()

    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if frozen_prefix_groups and not layer.trainable:
            frozen_run.append(layer)
            continue
        flush()
        rows.append(
            {
                "layer": layer.name,
                "type": type(layer).__name__,
                "output_shape": str(tuple(layer.output.shape)),
                "params": _count(layer.weights),
                "trainable": bool(layer.trainable and layer.trainable_weights),
            }
        )
    flush()
    trainable = _count(model.trainable_weights)
    non_trainable = _count(model.non_trainable_weights)
    return Summary(trainable + non_trainable, trainable, non_trainable, rows)
