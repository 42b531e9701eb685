"""TF Hub feature-vector backbones, wrapped as a Keras 3 layer.

`hub.KerasLayer` is a tf-keras (Keras 2) layer and cannot sit in a Keras 3
model, so `HubFeatures` holds `hub.load(handle)` and calls it. `hub.load`
accepts a local SavedModel directory, which is how tests run offline. The
model is opaque to Keras: no inner layers, so Grad-CAM needs a flat backbone.

The hub entries of the registry are made here (`BUILT_IN`, and `operator_specs()` from
CONVSCOPE_HUB_MODELS): a model file may name only their handles, which `HubFeatures` checks
when it is deserialised.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import keras
import numpy as np

from engine import settings
from engine.backbones import bundled
from engine.backbones.spec import BackboneSpec, scale_0_1
from engine.errors import BackboneUnavailable


def _hub_cache_dir() -> Path:
    return Path(os.environ.get("TFHUB_CACHE_DIR") or Path(tempfile.gettempdir()) / "tfhub_modules")


def is_local(handle: str) -> bool:
    return "://" not in handle


def handle_ready(handle: str) -> bool:
    """True when the SavedModel is on disk: a local path, or already in the hub cache."""
    folder = Path(handle) if is_local(handle) else _hub_cache_dir() / hashlib.sha1(handle.encode()).hexdigest()
    return (folder / "saved_model.pb").is_file()


def load_module(handle: str, bundled_names: list[str]):
    """hub.load with errors turned into a clear BackboneUnavailable."""
    if is_local(handle) and not Path(handle).is_dir():
        raise BackboneUnavailable(f"TF Hub SavedModel folder {handle} does not exist.")
    try:
        import tensorflow_hub as hub  # heavy: loads tf-keras too; only TF Hub backbones need it

        return hub.load(handle)
    except Exception as exc:  # network, HTTP, bad SavedModel: all unusable here
        raise BackboneUnavailable(
            f"could not load the TF Hub model {handle} ({type(exc).__name__}: {str(exc)[:300]}). "
            f"Remote handles need network on first use; backbones that work offline: "
            f"{', '.join(bundled_names)}."
        ) from exc


def _check_allowed(handle: str) -> None:
    """Refuse handles that are neither built in nor allowed by the operator."""
    if handle not in {s.handle for s in (*BUILT_IN, *operator_specs())}:
        raise BackboneUnavailable(
            f"TF Hub handle {handle!r} is not allowed here; the operator can allow it in CONVSCOPE_HUB_MODELS."
        )


@keras.saving.register_keras_serializable(package="convscope")
class HubFeatures(keras.layers.Layer):
    """A frozen TF Hub feature vector: (N, H, W, 3) in [0, 1] -> (N, D)."""

    def __init__(self, handle: str, output_dim: int, module=None, **kwargs) -> None:
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.handle = handle
        self.output_dim = int(output_dim)
        if module is None:  # deserialised from a model file: the handle must be allowed
            _check_allowed(handle)
            module = load_module(handle, [])
        self._module = module

    def call(self, images):
        return self._module(images)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self) -> dict:
        return {**super().get_config(), "handle": self.handle, "output_dim": self.output_dim}


def build(name: str, handle: str, image_size: int, bundled_names: list[str]) -> keras.Model:
    """Model (N, S, S, 3) in [0, 1] -> features (N, D)."""
    module = load_module(handle, bundled_names)
    probe = np.zeros((1, image_size, image_size, 3), np.float32)
    try:
        dim = int(module(probe).shape[-1])
    except Exception as exc:
        raise BackboneUnavailable(
            f"TF Hub model {handle} is not an image feature vector taking (N, {image_size}, {image_size}, 3) "
            f"images: {str(exc)[:300]}"
        ) from exc
    inputs = keras.Input((image_size, image_size, 3), name="input_image")
    outputs = HubFeatures(handle, dim, module=module, name="hub_features")(inputs)
    return keras.Model(inputs, outputs, name=name)


@dataclass(frozen=True)
class Hub:
    """Loader of a TF Hub feature vector, from its spec's handle (engine.backbones.spec.Loader)."""

    source: ClassVar[str] = "hub"

    def build(self, spec: BackboneSpec, image_size: int, include_top: bool, weights: bool) -> keras.Model:
        return build(spec.name, spec.handle, image_size, bundled.installed_names())

    def availability(self, spec: BackboneSpec, paths: bool) -> tuple[bool, str]:
        if handle_ready(spec.handle):
            return True, ""
        if is_local(spec.handle):
            missing = f"at {spec.handle}" if paths else "in its server folder"
            return False, f"no SavedModel {missing}"
        return False, "not downloaded yet from TF Hub (needs network)"


# TF Hub models are opaque SavedModels: no inner layers, no ImageNet head, [0, 1] input.
hub_spec = partial(
    BackboneSpec, last_conv_layer=None, finetune_blocks=(), imagenet_head=False, preprocess=scale_0_1, loader=Hub()
)

BUILT_IN = (
    hub_spec(
        name="hub_mobilenet_v2",
        title="MobileNetV2 feature vector (TF Hub)",
        input_size=224,
        feature_dim=1280,
        params=2_257_984,
        handle="https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4",
    ),
    hub_spec(
        name="hub_inception_v3",
        title="InceptionV3 feature vector (TF Hub)",
        input_size=299,
        feature_dim=2048,
        params=21_802_784,
        handle="https://tfhub.dev/google/tf2-preview/inception_v3/feature_vector/4",
    ),
)


def operator_specs() -> list[BackboneSpec]:
    """Hub handles the operator allowed in CONVSCOPE_HUB_MODELS (feature size found at load)."""
    return [
        hub_spec(
            name=e.name,
            title=f"{e.name} (TF Hub, operator-allowed)",
            input_size=e.input_size,
            feature_dim=0,
            params=0,
            handle=e.handle,
        )
        for e in settings.hub_models()
    ]
