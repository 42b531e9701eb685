"""keras.applications backbones with ImageNet weights (downloaded on first use).

Weights land in $KERAS_HOME/models (default ~/.keras/models). Without network
the download fails; that becomes a BackboneUnavailable naming the bundled
backbones, never a traceback.

A registry entry names its keras.applications model and weight file in its loader,
`KerasApp(app, weights_file)`: adding such a backbone is that one entry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import keras

from engine.backbones import bundled
from engine.backbones.spec import BackboneSpec
from engine.errors import BackboneUnavailable


def keras_models_dir() -> Path:
    home = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(home) / "models"


def weights_cached(weights_file: str) -> bool:
    """True when the ImageNet weights (with or without the top) are already on disk.

    weights_file: the file with the top; the one without shares its stem.
    """
    stem = weights_file.removesuffix(".h5").removesuffix("_1.0_224")
    folder = keras_models_dir()
    return folder.is_dir() and any(p.name.startswith(stem) for p in folder.iterdir())


@dataclass(frozen=True)
class KerasApp:
    """Loader of a keras.applications model (engine.backbones.spec.Loader).

    Attributes:
        app: its keras.applications attribute, e.g. "MobileNetV2".
        weights_file: its ImageNet weight file with the top, as Keras names it in $KERAS_HOME/models.
    """

    app: str
    weights_file: str
    source: ClassVar[str] = "keras"

    def build(self, spec: BackboneSpec, image_size: int, include_top: bool, weights: bool) -> keras.Model:
        """The keras.applications model as a flat graph; logits when include_top."""
        ctor = getattr(keras.applications, self.app)  # looked up now: tests replace it to go offline
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
                f"{spec.name}: could not get its ImageNet weights ({type(exc).__name__}: {exc}). "
                f"They download once from storage.googleapis.com into {keras_models_dir()}; this machine "
                f"seems to have no network. Backbones that work offline: {', '.join(bundled.installed_names())}."
            ) from exc

    def availability(self, spec: BackboneSpec, paths: bool) -> tuple[bool, str]:
        if weights_cached(self.weights_file):
            return True, ""
        where = f"saved to {keras_models_dir()}" if paths else "the server's operator can fetch them once"
        return False, f"ImageNet weights not downloaded yet (needs network; {where})"
