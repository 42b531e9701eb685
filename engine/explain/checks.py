"""Are the explanations right? Model randomisation, deletion/insertion, localisation.

- Sanity check (Adebayo et al. 2018): the map for the trained model against
  the same architecture with its top layers randomised; a faithful method's
  map changes (low rank correlation), an edge detector's does not.
- Deletion / insertion (Petsiuk et al. 2018): the class probability as the
  most important pixels are removed (should fall fast: low area) or added to
  a blurred image (should rise fast: high area).
- Localisation: how often the map's peak falls inside the object's box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from engine.data.ingest import load_item
from engine.errors import ExplainError
from engine.explain.maps import image_digest, make, peak_in_original
from engine.model.explainable import TWO_LOGITS, Explainable

SANITY_THRESHOLD = 0.5  # rank correlation at or above this: the map ignores the model's weights
# engine.importing's fixed Dense turning an imported model's single logit z into [-z/2, z/2]: not a layer the
# model learned, so randomising it tests nothing (it would only flip or scale the score)
ADAPTERS = (TWO_LOGITS,)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Rank correlation of two maps (ties broken by position; fine for continuous maps)."""
    ra = np.argsort(np.argsort(a.ravel(), kind="stable"), kind="stable").astype(np.float64)
    rb = np.argsort(np.argsort(b.ravel(), kind="stable"), kind="stable").astype(np.float64)
    if ra.std() == 0 or rb.std() == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.corrcoef(ra, rb)[0, 1])


def randomised_layers(model: Explainable, top_layers: int = 3) -> list[str]:
    """Names of the last `top_layers` layers with weights: the ones the sanity check randomises."""
    return [layer.name for layer in _learned_layers(model.model)][-top_layers:]


def randomised_copy(model: Explainable, top_layers: int = 3, seed: int = 0) -> Explainable:
    """A copy of the model whose last `top_layers` weighted layers get random weights.

    The shared model is never touched. Random weights keep each tensor's scale
    (normal with the original's standard deviation).
    """
    import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays

    if model.opaque_reason:  # a Hub module or an imported SavedModel: its weights cannot be reached
        raise ExplainError(
            f"the sanity check randomises the model's top layers, which it cannot do here: {model.opaque_reason}"
        )
    clone = keras.models.clone_model(model.model)
    clone.set_weights(model.model.get_weights())
    rng = np.random.default_rng(seed)
    weighted = _learned_layers(clone)
    for layer in weighted[-top_layers:]:
        new = []
        for w in layer.get_weights():
            std = float(w.std()) or 0.05
            new.append(rng.normal(0, std, w.shape).astype(w.dtype) if w.ndim > 1 else w)
        layer.set_weights(new)
    return Explainable(
        clone, model.preprocess, model.labels, f"{model.name} (top {top_layers} randomised)", model._default_layer
    )


def _learned_layers(model) -> list:
    """The layers with weights, nested ones included, in order; without ConvScope's own ADAPTERS."""
    return [layer for layer in _all_layers(model) if layer.weights and layer.name not in ADAPTERS]


def _all_layers(model) -> list:
    import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays

    out = []
    for layer in model.layers:
        out.extend(_all_layers(layer) if isinstance(layer, keras.Model) else [layer])
    return out


@dataclass(frozen=True)
class SanityResult:
    correlation: float
    passed: bool
    randomised_map: np.ndarray  # (S, S)


def sanity_check(
    model: Explainable,
    method: str,
    image: np.ndarray,
    class_index: int,
    layer: str | None = None,
    randomised: Explainable | None = None,
) -> SanityResult:
    """Compare the method's map on (S, S, 3) `image` for the trained and a randomised model."""
    randomised = randomised or randomised_copy(model)
    trained = make(method, model, layer)(image[None], [class_index])[0]
    random_map = make(method, randomised, layer)(image[None], [class_index])[0]
    rho = spearman(trained, random_map)
    return SanityResult(rho, rho < SANITY_THRESHOLD, random_map)


@dataclass(frozen=True)
class Curves:
    fractions: np.ndarray  # (steps + 1,) share of pixels removed / inserted
    deletion: np.ndarray  # class probability after removing the top pixels
    insertion: np.ndarray  # class probability after inserting the top pixels into a blurred image
    deletion_auc: float  # lower is better
    insertion_auc: float  # higher is better


def _blur(image: np.ndarray) -> np.ndarray:
    radius = max(2, image.shape[0] // 20)
    return np.asarray(Image.fromarray(image.astype(np.uint8)).filter(ImageFilter.GaussianBlur(radius)), np.float32)


def deletion_insertion(
    model: Explainable, image: np.ndarray, heat: np.ndarray, class_index: int, steps: int = 16
) -> Curves:
    """Both faithfulness curves for one (S, S, 3) image in [0, 255] and its (S, S) map."""
    order = np.argsort(-heat.ravel(), kind="stable")
    blurred = _blur(image)
    fractions = np.linspace(0, 1, steps + 1)
    flat_img, flat_blur = image.reshape(-1, 3), blurred.reshape(-1, 3)
    deleted, inserted = [], []
    for f in fractions:
        top = order[: int(round(f * len(order)))]
        d = flat_img.copy()
        d[top] = flat_blur[top]
        i = flat_blur.copy()
        i[top] = flat_img[top]
        deleted.append(d.reshape(image.shape))
        inserted.append(i.reshape(image.shape))
    probs = model.probabilities(np.stack(deleted + inserted))[:, class_index]
    dele, ins = probs[: steps + 1], probs[steps + 1 :]
    return Curves(fractions, dele, ins, float(np.trapezoid(dele, fractions)), float(np.trapezoid(ins, fractions)))


SEPARATION = 0.02  # scores closer than this cannot rank maps on one image (eight steps, one image: noise)
INDISTINCT_TEXT = (
    "Deletion and insertion cannot tell these maps apart on this image: their scores lie within {spread:.2f} of "
    "each other. The image is too easy for these tests: the model stays confident whichever pixels go first, "
    "so every map scores alike. Try a harder image, one the model is less sure of, to compare methods."
)


def indistinct(curves: list[Curves], spread: float = SEPARATION) -> bool:
    """Whether deletion / insertion scores say nothing about which map is better on this image.

    Several maps: all their deletion scores, and all their insertion scores, lie within `spread`. One map:
    its deletion and insertion scores do (both curves flat: removing or keeping its top pixels changes nothing).
    """
    if not curves:
        return False
    if len(curves) == 1:
        return abs(curves[0].insertion_auc - curves[0].deletion_auc) < spread
    deletion = [c.deletion_auc for c in curves]
    insertion = [c.insertion_auc for c in curves]
    return max(deletion) - min(deletion) < spread and max(insertion) - min(insertion) < spread


def peak_in_box(heat: np.ndarray, box: list[int], height: int, width: int) -> bool:
    """Whether the (S, S) map's maximum, in original pixels, lies in box [x0, y0, x1, y1]."""
    return in_box(peak_in_original(heat, height, width), box)


def in_box(point: tuple[int, int], box: list[int]) -> bool:
    """Whether (row, col) lies in box [x0, y0, x1, y1] (the pointing game's hit)."""
    row, col = point
    x0, y0, x1, y1 = box
    return x0 <= col < x1 and y0 <= row < y1


def faithfulness(model: Explainable, result, steps: int = 8) -> Curves:
    """Deletion and insertion curves of an Explanation, kept in the model's map cache."""
    key = ("curves", image_digest(result.model_input), result.method, result.layer, result.class_index, steps)
    x = result.model_input.astype(np.float32)
    return model.memo(key, lambda: deletion_insertion(model, x, result.heatmap, result.class_index, steps))


def localisation(
    model: Explainable, dataset, items: list, methods: list[str], layer: str | None = None, progress=None
) -> dict:
    """How often each method's peak falls inside the object's box, for each item's own class.

    Args:
        dataset: an ingested Dataset with `boxes` (the shapes set has them).
        items: the items to score; their class names must be among the model's labels.

    Returns:
        {"chance": mean box area / image area, "n": images, "hit_rate": {method: fraction}}.
    """
    if not dataset.boxes:
        raise ExplainError("localisation needs object boxes (boxes.json), as the shapes set has")
    missing = sorted({dataset.classes[i.label] for i in items} - set(model.labels))
    if missing:
        raise ExplainError(f"the model does not know the classes {missing}; use a model trained on this data")
    explainers = {m: make(m, model, layer) for m in methods}
    hits = dict.fromkeys(methods, 0)
    areas, n = [], 0
    chunk = 16  # images per batched call of each method
    boxed = [item for item in items if dataset.boxes.get(item.rel)]
    for start in range(0, len(boxed), chunk):
        part = boxed[start : start + chunk]
        rgbs = [load_item(dataset, item) for item in part]
        x = np.stack([model.prepare(rgb) for rgb in rgbs])
        targets = [model.labels.index(dataset.classes[item.label]) for item in part]
        for m, explainer in explainers.items():
            for heat, rgb, item in zip(explainer(x, targets), rgbs, part, strict=True):
                hits[m] += peak_in_box(heat, dataset.boxes[item.rel], *rgb.shape[:2])
        for rgb, item in zip(rgbs, part, strict=True):
            box = dataset.boxes[item.rel]
            areas.append((box[2] - box[0]) * (box[3] - box[1]) / (rgb.shape[0] * rgb.shape[1]))
        n += len(part)
        if progress:
            progress(n, len(boxed))
    return {
        "chance": float(np.mean(areas)) if areas else 0.0,
        "n": n,
        "hit_rate": {m: hits[m] / max(n, 1) for m in methods},
    }
