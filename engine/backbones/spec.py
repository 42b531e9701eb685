"""What a backbone is before it is loaded: a BackboneSpec, and the loader it carries.

A loader (one class per kind of backbone, in the module of that kind: bundled, keras_apps, hub,
scratch) builds the Keras model and says whether it can be built right now, so the registry is
one table of specs and nothing else needs to know the kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import keras

SOURCES = ("bundled", "keras", "hub", "scratch")


def scale_minus1_1(images):
    """[0, 255] -> [-1, 1] (MobileNetV2, InceptionV3, ResNetV2: 'tf' mode)."""
    return images / 127.5 - 1.0


def scale_0_1(images):
    """[0, 255] -> [0, 1] (TF Hub image modules, scratch CNNs)."""
    return images / 255.0


def caffe_bgr(images):
    """[0, 255] RGB -> BGR minus the ImageNet channel means (VGG16: 'caffe' mode)."""
    return images[..., ::-1] - [103.939, 116.779, 123.68]


def identity(images):
    """[0, 255] as is (EfficientNetB0 normalises inside the model)."""
    return images


class Loader(Protocol):
    """How one kind of backbone is built, and whether it can be now; `source` is one of SOURCES."""

    source: str

    def build(self, spec: BackboneSpec, image_size: int, include_top: bool, weights: bool) -> keras.Model:
        """The backbone as a Keras model taking preprocessed (N, S, S, 3) images, S = image_size."""
        ...

    def availability(self, spec: BackboneSpec, paths: bool) -> tuple[bool, str]:
        """(usable right now without network, reason when not); loads nothing."""
        ...


@dataclass(frozen=True)
class BackboneSpec:
    """What ConvScope knows about a backbone before loading it.

    Attributes:
        name: registry key, also the CLI's --backbone value.
        title: a human-readable name for pickers.
        input_size: default square input side in pixels.
        feature_dim: channels of the last feature map (feature vector size).
        last_conv_layer: layer whose output is the last spatial feature map,
            or None where the model is opaque (TF Hub).
        finetune_blocks: layer-name prefixes, input to output, usable as
            fine-tune boundaries.
        imagenet_head: whether a 1000-class ImageNet head is available.
        params: parameter count with the ImageNet head where there is one,
            else of the feature extractor, at the default input size.
        preprocess: [0, 255] RGB float (N, H, W, 3) -> the model's input.
        loader: builds it and tells whether it is available (its `source`
            is the spec's).
        handle: TF Hub handle or local SavedModel path (hub only).
        blocks_end: the prefixes name each block's LAST layer (InceptionV3's
            `mixedK` concatenations close their modules) instead of its first.
    """

    name: str
    title: str
    input_size: int
    feature_dim: int
    last_conv_layer: str | None
    finetune_blocks: tuple[str, ...]
    imagenet_head: bool
    params: int
    preprocess: Callable = field(repr=False)
    loader: Loader = field(repr=False)
    handle: str | None = None
    blocks_end: bool = False

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.input_size < 32:
            raise ValueError(f"input_size must be at least 32, got {self.input_size}")

    @property
    def source(self) -> str:
        """One of SOURCES: where the weights come from (its loader's kind)."""
        return self.loader.source
