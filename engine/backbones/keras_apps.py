"""keras.applications backbones with ImageNet weights (downloaded on first use).

Weights land in $KERAS_HOME/models (default ~/.keras/models). Without network
the download fails; that becomes a BackboneUnavailable naming the bundled
backbones, never a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.errors import BackboneUnavailable

# name -> (keras.applications attribute, ImageNet weight file with the top)
APPS = {
    "mobilenet_v2": ("MobileNetV2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"),
    "inception_v3": ("InceptionV3", "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"),
    "vgg16": ("VGG16", "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
    "resnet50_v2": ("ResNet50V2", "resnet50v2_weights_tf_dim_ordering_tf_kernels.h5"),
    "efficientnet_b0": ("EfficientNetB0", "efficientnetb0.h5"),
}


def keras_models_dir() -> Path:
    home = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(home) / "models"


def weights_cached(name: str) -> bool:
    """True when the ImageNet weights (with or without the top) are already on disk."""
    top = APPS[name][1]
    stem = top.removesuffix(".h5").removesuffix("_1.0_224")
    folder = keras_models_dir()
    return folder.is_dir() and any(p.name.startswith(stem) for p in folder.iterdir())


def build(name: str, image_size: int, include_top: bool, weights: bool, bundled_names: list[str]):
    """keras.applications model as a flat graph; logits when include_top."""
    import keras

    ctor = getattr(keras.applications, APPS[name][0])
    kwargs = {"weights": "imagenet" if weights else None, "include_top": include_top}
    if include_top:
        # ImageNet heads exist only at the training resolution; we return logits.
        kwargs["classifier_activation"] = None
    else:
        kwargs["input_shape"] = (image_size, image_size, 3)
    try:
        return ctor(**kwargs)
    except Exception as exc:  # urllib/http/OS errors all mean "no weights here"
        if not weights:
            raise
        raise BackboneUnavailable(
            f"{name}: could not get its ImageNet weights ({type(exc).__name__}: {exc}). "
            f"They download once from storage.googleapis.com into {keras_models_dir()}; this machine "
            f"seems to have no network. Backbones that work offline: {', '.join(bundled_names)}."
        ) from exc
