"""CNNs trained from random weights: AlexNet (2012 layout) and a small CNN."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import keras
from keras import layers

from engine.backbones.spec import BackboneSpec


def alexnet(image_size: int, num_classes: int | None = None) -> keras.Model:
    """AlexNet (Krizhevsky et al., 2012) without LRN, He-initialised.

    'same' padding adapts the 2012 layout to any input size: the stride-4 conv
    and three 3x3/2 pools take (N, S, S, 3) to (N, S/32, S/32, 256) at `pool5`.
    With num_classes, adds Flatten, two Dense(4096) with dropout and logits.
    """
    he = "he_normal"
    inputs = keras.Input((image_size, image_size, 3), name="input_image")
    x = layers.Conv2D(96, 11, strides=4, padding="same", activation="relu", kernel_initializer=he, name="conv1")(inputs)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool1")(x)
    x = layers.Conv2D(256, 5, padding="same", activation="relu", kernel_initializer=he, name="conv2")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool2")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", kernel_initializer=he, name="conv3")(x)
    x = layers.Conv2D(384, 3, padding="same", activation="relu", kernel_initializer=he, name="conv4")(x)
    x = layers.Conv2D(256, 3, padding="same", activation="relu", kernel_initializer=he, name="conv5")(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="pool5")(x)
    if num_classes:
        x = layers.Flatten(name="flatten")(x)
        for i in (6, 7):
            x = layers.Dense(4096, activation="relu", kernel_initializer=he, name=f"fc{i}")(x)
            x = layers.Dropout(0.5, name=f"dropout{i}")(x)
        x = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, x, name="alexnet")


def small_cnn(image_size: int, num_classes: int | None = None) -> keras.Model:
    """Three conv-ReLU-pool blocks (32, 64, 128 filters): (N, S, S, 3) -> (N, S/8, S/8, 128).

    With num_classes, adds global average pooling, dropout and logits.
    """
    inputs = keras.Input((image_size, image_size, 3), name="input_image")
    x = inputs
    for i, filters in enumerate((32, 64, 128), start=1):
        x = layers.Conv2D(filters, 3, padding="same", kernel_initializer="he_normal", name=f"block{i}_conv")(x)
        x = layers.ReLU(name=f"block{i}_relu")(x)
        x = layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    if num_classes:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(0.3, name="dropout")(x)
        x = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, x, name="small_cnn")


@dataclass(frozen=True)
class Scratch:
    """Loader of a CNN with random weights: `network(image_size)` (engine.backbones.spec.Loader)."""

    network: Callable[[int], keras.Model]
    source: ClassVar[str] = "scratch"

    def build(self, spec: BackboneSpec, image_size: int, include_top: bool, weights: bool) -> keras.Model:
        return self.network(image_size)

    def availability(self, spec: BackboneSpec, paths: bool) -> tuple[bool, str]:
        return True, ""  # random weights, always there
