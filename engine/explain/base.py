"""The shared base of every CAM method: gradients, upsampling, ReLU, normalisation.

A method only says how it weights the layer's activations (after
jacobgil/pytorch-grad-cam's BaseCAM). Maps are float32 (N, S, S) in [0, 1]
at the model's input size; drawing overlays is engine.explain.overlay's job.
"""

from __future__ import annotations

import numpy as np

from engine.model.compiled import Progress
from engine.model.explainable import Explainable


def normalise(maps: np.ndarray) -> np.ndarray:
    """Per-map min-max to [0, 1]; a constant map becomes all zeros. (N, H, W) -> same."""
    maps = np.nan_to_num(np.asarray(maps, dtype=np.float32))
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    return np.where(span > 1e-12, (maps - lo) / np.maximum(span, 1e-12), 0.0).astype(np.float32)


def upsample(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) -> (N, size, size), bilinear."""
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

    return tf.image.resize(maps[..., None], (size, size), method="bilinear").numpy()[..., 0]


def predicted_where_negative(classes: list[int], logits: np.ndarray) -> list[int]:
    """The classes with each -1 replaced by the arg-max of its image's (N, K) logits (as the compiled passes do)."""
    return [int(np.argmax(y)) if c < 0 else int(c) for c, y in zip(classes, logits, strict=True)]


class Explainer:
    """Anything that turns images and target classes into heatmaps."""

    name = ""
    title = ""
    uses_layer = True  # False: an input attribution, works on opaque models too
    display_percentile = 100.0  # see for_display
    # True: the method's pass runs the images as they are (not noisy or masked copies only), so it also gives
    # their logits and takes a class of -1 for the predicted one (engine.explain.maps.explain_image uses both)
    predicts = False

    def __init__(self, model: Explainable, layer: str | None = None) -> None:
        self.model = model
        if self.uses_layer:
            self.layer = model.check_layer(layer) if layer else model.default_layer()
        else:
            self.layer = None

    def __call__(self, images: np.ndarray, classes: list[int], progress: Progress | None = None) -> np.ndarray:
        """Heatmaps for (N, S, S, 3) images in [0, 255] and one class index per image.

        Returns:
            float32 (N, S, S) in [0, 1], each map scaled to its own range.
        """
        return normalise(self.unscaled(images, classes, progress))

    def unscaled(self, images: np.ndarray, classes: list[int], progress: Progress | None = None) -> np.ndarray:
        """The maps before per-map scaling, at the input size: (N, S, S) float32, >= 0.

        Their values compare across classes of one image (for "relative to the prediction").
        """
        return self.unscaled_and_logits(images, classes, progress)[0]

    def unscaled_and_logits(
        self, images: np.ndarray, classes: list[int], progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """`unscaled`'s maps (N, S, S) and the images' (N, K) logits from the same pass (None unless `predicts`).

        Where the method `predicts`, a class of -1 stands for the predicted one, found inside that pass:
        one forward-and-backward pass gives both the prediction and its map.
        """
        images = np.asarray(images, dtype=np.float32)
        if len(classes) != len(images):
            raise ValueError(f"one class per image: got {len(classes)} classes for {len(images)} images")
        classes = [int(c) for c in classes]
        if not self.predicts and any(c < 0 for c in classes):
            raise ValueError(f"{self.name} does not see the images as they are: give the class, not -1")
        raw, logits = self.raw_maps_and_logits(images, classes, progress)
        if raw.shape[1] != images.shape[1]:
            raw = upsample(raw, images.shape[1])
        return np.maximum(np.nan_to_num(np.asarray(raw, np.float32)), 0), logits

    def raw_maps_and_logits(
        self, images: np.ndarray, classes: list[int], progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:  # pragma: no cover - abstract
        """(raw maps (N, h, w) at any size, the images' logits (N, K) when the method `predicts`, else None)."""
        raise NotImplementedError

    def passes(self, size: int) -> tuple[int, int]:
        """(forward passes, input-gradient passes) per image: what the method costs, for time estimates."""
        return 1, 0

    def expected_seconds(self, images: int = 1) -> float:
        """How long the method should take for `images` images, from this model's measured pass times."""
        forward, gradient = self.passes(self.model.input_size)
        t = self.model.compiled.timing()
        return images * (forward * t["forward"] + gradient * t["gradient"])

    def for_display(self, maps: np.ndarray) -> np.ndarray:
        """Maps clipped at `display_percentile` and rescaled, for drawing only.

        Peaks and faithfulness scores use the maps as they are: clipping makes ties.
        """
        if self.display_percentile >= 100:
            return maps
        top = np.percentile(maps, self.display_percentile, axis=(1, 2), keepdims=True)
        return normalise(np.minimum(maps, top))


class BaseCAM(Explainer):
    """Weighted sums of a layer's activation maps; subclasses give the weights."""

    needs_gradients = True
    predicts = True

    def activations_and_grads(self, images: np.ndarray, classes: list[int]):
        """(A (N, h, w, C), dScore/dA (N, h, w, C) or None, logits (N, K)) as NumPy, from one compiled pass.

        A class of -1 takes the gradient of the predicted class (the logits' arg-max, inside the pass).
        """
        compiled = self.model.compiled
        if not self.needs_gradients:
            a, y = compiled.layer_and_logits(images, self.layer)
            return a, None, y
        return compiled.layer_gradients(images, self.layer, classes)

    def weights(self, activations: np.ndarray, grads: np.ndarray | None, classes: list[int], images: np.ndarray):
        """(N, C) channel weights, or (N, h, w, C) per-position weights."""
        raise NotImplementedError

    def raw_maps_and_logits(
        self, images: np.ndarray, classes: list[int], progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        a, g, y = self.activations_and_grads(images, classes)
        w = self.weights(a, g, predicted_where_negative(classes, y), images)
        cam = (w[:, None, None, :] * a).sum(-1) if w.ndim == 2 else (w * a).sum(-1)
        return np.maximum(cam, 0), y  # only what speaks for the class


class BaseAttribution(Explainer):
    """Input-space attribution: needs only the model's input and output."""

    uses_layer = False
    display_percentile = 99.0  # a few extreme pixels would otherwise hide the rest

    def input_gradients(self, images: np.ndarray, classes: list[int], progress: Progress | None = None) -> np.ndarray:
        """dScore/dInput in [0, 255] pixel units, (N, S, S, 3), batched through the compiled path."""
        return self.model.compiled.input_gradients(images, classes, progress)[0]

    def passes(self, size: int) -> tuple[int, int]:
        return 0, 1
