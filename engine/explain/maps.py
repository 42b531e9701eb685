"""One image explained: the method registry (`METHODS`, `make`), its heatmaps and their cache keys."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace

import numpy as np

from engine.errors import ExplainError
from engine.explain.base import BaseCAM, Explainer, normalise
from engine.explain.cam import CAM
from engine.explain.eigen_cam import EigenCAM
from engine.explain.grad_cam import GradCAM
from engine.explain.grad_cam_pp import GradCAMPlusPlus
from engine.explain.integrated_gradients import IntegratedGradients
from engine.explain.layer_cam import LayerCAM
from engine.explain.occlusion import Occlusion
from engine.explain.saliency import VanillaGradients
from engine.explain.score_cam import ScoreCAM
from engine.explain.smoothgrad import SmoothGrad
from engine.model.compiled import Progress
from engine.model.explainable import Explainable
from engine.numerics import softmax

METHODS: dict[str, type[Explainer]] = {
    m.name: m
    for m in (
        GradCAM,
        GradCAMPlusPlus,
        LayerCAM,
        ScoreCAM,
        EigenCAM,
        CAM,
        VanillaGradients,
        SmoothGrad,
        IntegratedGradients,
        Occlusion,
    )
}
CAM_METHODS = [name for name, m in METHODS.items() if issubclass(m, BaseCAM)]
INPUT_METHODS = [name for name, m in METHODS.items() if not issubclass(m, BaseCAM)]


def make(method: str, model: Explainable, layer: str | None = None) -> Explainer:
    """An explainer by registry name; a clear error for unknown names and opaque models."""
    if method not in METHODS:
        raise ExplainError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    cls = METHODS[method]
    if cls.uses_layer and model.opaque_reason:
        raise ExplainError(f"{model.opaque_reason}; use an input attribution: {', '.join(INPUT_METHODS)}")
    return cls(model, layer)


@dataclass(frozen=True)
class Explanation:
    """One heatmap for one image and class."""

    method: str
    class_index: int
    label: str
    probability: float
    layer: str | None
    heatmap: np.ndarray  # (S, S) float32 in [0, 1], over the resized input
    unscaled: np.ndarray  # (S, S) float32 >= 0: the same map before scaling, comparable across classes
    display: np.ndarray  # the same, contrast-adjusted for drawing (pixel attributions are spiky)
    model_input: np.ndarray  # (S, S, 3) uint8
    peak: tuple[int, int]  # (row, col) of the maximum, in the original image's pixels
    seconds: float
    cached: bool = False  # True: taken from the map cache, not computed now

    def to_json(self) -> dict:
        return {
            "method": self.method,
            "class_index": self.class_index,
            "label": self.label,
            "probability": round(self.probability, 6),
            "layer": self.layer,
            "peak": list(self.peak),
            "seconds": round(self.seconds, 4),
            "cached": self.cached,
        }


def peak_in_original(heatmap: np.ndarray, height: int, width: int) -> tuple[int, int]:
    """The heatmap's maximum, mapped from the (S, S) model input back to (height, width) pixels."""
    r, c = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return to_original(int(r), int(c), heatmap.shape, height, width)


def to_original(row: int, col: int, shape: tuple, height: int, width: int) -> tuple[int, int]:
    """A pixel (row, col) of a map of `shape` (the model input), mapped to (height, width) pixels."""
    return min(height - 1, int((row + 0.5) * height / shape[0])), min(width - 1, int((col + 0.5) * width / shape[1]))


def image_digest(x: np.ndarray) -> str:
    """A short content hash of a prepared image: the map cache's key, so a new image never shows old maps."""
    x = np.ascontiguousarray(x)
    return hashlib.blake2b(x.tobytes() + str(x.shape).encode(), digest_size=12).hexdigest()


def explain_image(
    model: Explainable,
    rgb: np.ndarray,
    method: str,
    class_index: int | None = None,
    layer: str | None = None,
    progress: Progress | None = None,
) -> Explanation:
    """Explain one (H, W, 3) uint8 image for a class (default: the predicted one).

    Results are kept in the model's map cache, keyed by (image content, method, layer,
    class): asking again, from any session, costs nothing (`seconds` is then the lookup).
    The image's probabilities are kept too (the Inside page reads the same entry); for a
    new image, a method whose pass runs the image as it is (`Explainer.predicts`: the
    gradient CAMs, vanilla gradients...) gives them and the map in one forward-and-backward
    pass, and the others pay one forward pass more.
    """
    t0 = time.perf_counter()
    explainer = make(method, model, layer)
    if class_index is not None and not 0 <= int(class_index) < len(model.labels):
        raise ExplainError(f"class index must be 0..{len(model.labels) - 1}, got {class_index}")
    x = model.prepare(rgb)[None]
    digest = image_digest(x)

    def key(index: int) -> tuple:
        return ("map", digest, method, explainer.layer, index, rgb.shape[:2])

    def explanation(unscaled: np.ndarray, index: int, probs: np.ndarray) -> Explanation:
        heat = normalise(unscaled)[0]
        return Explanation(
            method=method,
            class_index=index,
            label=model.labels[index],
            probability=float(probs[index]),
            layer=explainer.layer,
            heatmap=heat,
            unscaled=unscaled[0],
            display=explainer.for_display(heat[None])[0],
            model_input=x[0].astype(np.uint8),
            peak=peak_in_original(heat, rgb.shape[0], rgb.shape[1]),
            seconds=time.perf_counter() - t0,
        )

    probs = model.memo.get(("probabilities", digest))
    if probs is None and explainer.predicts:
        # A new image: one pass gives the map and the prediction (class -1: the predicted one, found inside it).
        unscaled, logits = explainer.unscaled_and_logits(x, [-1 if class_index is None else int(class_index)], progress)
        own = softmax(logits)[0]
        probs = model.memo(("probabilities", digest), lambda: own)
        index = int(np.argmax(own)) if class_index is None else int(class_index)  # the class the pass explained
        return model.memo(key(index), lambda: explanation(unscaled, index, probs))
    if probs is None:
        probs = model.memo(("probabilities", digest), lambda: model.probabilities(x)[0])
    index = int(np.argmax(probs)) if class_index is None else int(class_index)
    hit = model.memo.get(key(index))
    if hit is not None:
        return replace(hit, seconds=time.perf_counter() - t0, cached=True)
    return model.memo(key(index), lambda: explanation(explainer.unscaled(x, [index], progress), index, probs))


def relative_to(result: Explanation, reference: Explanation) -> np.ndarray:
    """`result`'s map on the scale of `reference`'s (usually the predicted class's): (S, S) in [0, 1].

    Per-map scaling makes an unlikely class glow as brightly as the prediction; on the
    prediction's scale a class the model barely sees stays dark. Pixel attributions use
    the reference's 99th percentile as full scale, as their display does.
    """
    if (result.method, result.layer) != (reference.method, reference.layer):
        raise ValueError("relative_to compares maps of one method and layer")
    percentile = METHODS[result.method].display_percentile
    top = float(np.percentile(reference.unscaled, percentile)) if percentile < 100 else float(reference.unscaled.max())
    if top <= 0:
        return np.zeros_like(result.unscaled)
    return np.clip(result.unscaled / top, 0, 1).astype(np.float32)


def heatmaps(
    model: Explainable,
    images: np.ndarray,
    classes: list[int],
    method: str = "gradcam",
    layer: str | None = None,
    progress: Progress | None = None,
) -> np.ndarray:
    """Display-ready maps of many prepared images at once: (N, S, S, 3) in [0, 255] -> (N, S, S) in [0, 1].

    Maps already in the model's cache (the same image content, method, layer and class,
    from any session) are reused; the rest are computed in one batched pass. An image may
    appear twice with different classes (a mistake's predicted and true class side by side).
    """
    images = np.asarray(images, dtype=np.float32)
    if len(classes) != len(images):
        raise ValueError(f"one class per image: got {len(classes)} classes for {len(images)} images")
    explainer = make(method, model, layer)
    keys = [
        ("batch_map", image_digest(x), method, explainer.layer, int(c)) for x, c in zip(images, classes, strict=True)
    ]
    out: list[np.ndarray | None] = [model.memo.get(k) for k in keys]
    missing = [i for i, m in enumerate(out) if m is None]
    if missing:
        maps = explainer.for_display(explainer(images[missing], [int(classes[i]) for i in missing], progress))
        for i, m in zip(missing, maps, strict=True):
            out[i] = model.memo(keys[i], lambda m=m: m)
    if not len(images):
        return np.zeros((0, model.input_size, model.input_size), np.float32)
    return np.stack(out)
