"""Concept tests (TCAV, Kim et al., ICML 2018): does a class's score rise along a concept's direction?

A concept is a set of example images (a watermark, stripes, a background). At a layer, its concept
activation vector (CAV) is the normal of a linear classifier (scikit-learn) between the concept's
and random images' flattened activations, pointing to the concept. The TCAV score of a class is
the share of the class's images whose pre-softmax class score increases along the CAV: the sign
of the directional derivative dScore/dA . v, from the same compiled, batched gradient pass as
Grad-CAM. One CAV can be luck, so, as in the paper and tensorflow/tcav, CAVs are trained against
`runs` different random sets, and the same number of random-vs-random CAVs give the scores of
meaningless directions; a two-sided t-test (SciPy) tells the two apart, Bonferroni-corrected over
the layers tested.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from engine.errors import ExplainError

# The image sets, re-exported (`X as X`): callers need one import for a concept test.
from engine.explain.concept_sets import BUILTIN as BUILTIN
from engine.explain.concept_sets import MAX_IMAGES as MAX_IMAGES
from engine.explain.concept_sets import MIN_IMAGES as MIN_IMAGES
from engine.explain.concept_sets import ImageSet as ImageSet
from engine.explain.concept_sets import class_set as class_set
from engine.explain.concept_sets import load_set as load_set
from engine.explain.concept_sets import random_sets as random_sets
from engine.model.explainable import Explainable
from engine.model.memo import Memo

RUNS = 10  # CAVs per layer against different random sets (the paper's minimum)
ALPHA = 0.05
SEPARABLE = 0.7  # a CAV whose held-out accuracy is below this does not tell the concept from random images

Progress = Callable[[float], None]


def default_layers(model: Explainable, count: int = 3) -> list[str]:
    """`count` layers spread over the second half of the network, the last the CAM layer.

    Concepts a class can depend on (a mark, a texture, a part) form in the second half; an early
    layer sees edges and colours, which most concepts share with many classes (in the watermark
    demonstration, a layer a third of the way in also found the mark's edges in triangles).
    """
    last = model.default_layer()
    names = model.spatial_layers()
    names = names[: names.index(last) + 1] if last in names else names
    if len(names) <= count:
        return names
    half = len(names) // 2
    picks = sorted({half + round((len(names) - 1 - half) * k / (count - 1)) for k in range(count)})
    return [names[i] for i in picks]


# ---- the pieces of a test --------------------------------------------------
# Activations and gradients of image sets are large (100 images x 14x14x480 floats: 38 MB), so they are kept
# apart from the model's map cache, per model, bounded in bytes: a test reuses them across layers and the
# next test of the same model (another class or concept) reuses the random sets'.
_KEPT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
KEPT_BYTES = 1 << 30


def _kept(model: Explainable) -> Memo:
    memo = _KEPT.get(model)
    if memo is None:
        memo = _KEPT[model] = Memo(max_entries=1000, max_bytes=KEPT_BYTES)
    return memo


def activations(model: Explainable, images: ImageSet, layer: str) -> np.ndarray:
    """(N, h*w*C) float32 flattened activations, kept per (model, layer, image set)."""

    def compute() -> np.ndarray:
        return model.activations(images.images, layer).reshape(len(images.images), -1)

    return _kept(model)(("activations", layer, images.key), compute)


def gradients(model: Explainable, images: ImageSet, layer: str, class_index: int) -> np.ndarray:
    """(N, h*w*C) float32: dScore[class]/dA at `layer` (the pre-softmax score, as Grad-CAM), one compiled pass."""

    def compute() -> np.ndarray:
        model.check_layer(layer)
        _, grads, _ = model.compiled.layer_gradients(images.images, layer, [class_index] * len(images.images))
        return grads.reshape(len(images.images), -1).astype(np.float32)

    return _kept(model)(("gradients", layer, images.key, class_index), compute)


def train_cav(positive: np.ndarray, negative: np.ndarray, seed: int = 0) -> tuple[np.ndarray, float]:
    """A concept activation vector: the unit normal of a logistic regression, pointing to `positive`.

    Args:
        positive: (n, D) activations of the concept; negative: (m, D) of random images.

    Returns:
        (the CAV (D,) float32 of norm 1, its accuracy on a held-out third of the images).
    """
    from sklearn.linear_model import LogisticRegression  # heavy: scikit-learn takes a second to import
    from sklearn.model_selection import train_test_split  # heavy: as above

    x = np.concatenate([positive, negative]).astype(np.float32, copy=False)
    y = np.r_[np.ones(len(positive)), np.zeros(len(negative))]
    fit, held = train_test_split(np.arange(len(y)), test_size=1 / 3, stratify=y, random_state=seed)
    rows = x[fit]
    # A few hundred images against up to ~10^5 activations: an L2-penalised solution lies in the span of
    # the training rows (the representer theorem), so the fit runs in the n coordinates of that span and
    # the vector is mapped back: the same CAV as fitting all D coordinates, 10-50x faster. Everything
    # needed is the images' dot products with the training rows, K (n, n_fit); the Gram matrix
    # K[fit] gives the span's orthonormal coordinates (an SVD of the wide rows took seconds).
    # Scaled by the overall spread only, one number: a per-feature standardisation would tilt the
    # direction away from the activation space the gradients live in.
    k = (x @ rows.T).astype(np.float64) / max(float(rows.std()) ** 2, 1e-24)
    values, vectors = np.linalg.eigh(k[fit])
    if values.max() <= 0:  # every activation zero (a dead layer): no direction to find
        return np.zeros(x.shape[1], np.float32), 0.5
    keep = values > values.max() * 1e-6  # float32 dot products: smaller eigenvalues are rounding noise
    project = vectors[:, keep] / np.sqrt(values[keep])  # (n_fit, r): K @ project = coordinates in the span
    z = k @ project
    head = LogisticRegression(C=1.0, max_iter=2000).fit(z[fit], y[fit])
    cav = (project @ head.coef_[0]).astype(np.float32) @ rows  # (D,): the normal, back in activation space
    return cav / max(float(np.linalg.norm(cav)), 1e-12), float(head.score(z[held], y[held]))


def directional_derivatives(grads: np.ndarray, cavs: np.ndarray) -> np.ndarray:
    """(N, D) gradients and (R, D) CAVs -> (R, N) derivatives of the class score along each CAV."""
    return (np.asarray(cavs, np.float32) @ np.asarray(grads, np.float32).T).astype(np.float64)


def tcav_scores(derivatives: np.ndarray) -> np.ndarray:
    """(R, N) -> (R,) the share of images whose score rises along each CAV."""
    return (np.asarray(derivatives) > 0).mean(axis=1)


def significance(scores: np.ndarray, baseline: np.ndarray, tests: int, alpha: float = ALPHA) -> dict:
    """Two-sided t-test of concept scores against random-vs-random ones, Bonferroni over `tests` layers."""
    from scipy import stats  # heavy: SciPy loads in about a second

    scores, baseline = np.asarray(scores, np.float64), np.asarray(baseline, np.float64)
    if np.ptp(np.r_[scores, baseline]) == 0:
        p = 1.0  # every score equal: nothing tells them apart (SciPy would return NaN)
    else:
        with warnings.catch_warnings():  # nearly equal scores: SciPy warns of precision, the p-value stands
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_ind(scores, baseline).pvalue)
    corrected = min(1.0, p * tests)
    return {"p_value": p, "p_corrected": corrected, "significant": bool(corrected < alpha), "alpha": alpha}


# ---- the test ----------------------------------------------------------------
@dataclass
class LayerResult:
    layer: str
    cav_accuracy: float  # mean held-out accuracy of the concept's CAVs
    cav_accuracies: list[float]
    scores: list[float]  # TCAV score of each concept CAV
    random_scores: list[float]  # the same for random-vs-random CAVs
    score_mean: float
    score_std: float
    random_mean: float
    random_std: float
    p_value: float
    p_corrected: float
    significant: bool
    separable: bool
    direction: str = "none"  # "raises": significant and over half the class's images score higher; "lowers"
    meaning: str = ""


@dataclass
class ConceptTest:
    model: str
    concept: str
    class_name: str
    class_index: int
    images: dict  # images used: concept, class, random (per set), runs
    layers: list[LayerResult] = field(default_factory=list)
    alpha: float = ALPHA

    def to_json(self) -> dict:
        return asdict(self)


def p_text(p: float) -> str:
    """A p-value as a student reads it: "p < 0.001", else two decimals (three under 0.01)."""
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.01 else f"p = {p:.2f}"


def meaning(r: LayerResult, concept: str, class_name: str, tests: int) -> str:
    """One sentence for a student: what the layer's result says."""
    share = f"{r.score_mean:.0%} of {class_name!r} images score higher along {concept!r}"
    against = f"random directions give {r.random_mean:.0%} ± {r.random_std:.0%}"
    p = f"{p_text(r.p_corrected)}, corrected for {tests} layer{'s' if tests != 1 else ''}"
    if not r.separable:
        return (
            f"At {r.layer} the layer cannot tell {concept!r} from random images (CAV accuracy {r.cav_accuracy:.0%}), "
            "so this layer says nothing about the concept."
        )
    if r.direction == "raises":
        return f"At {r.layer}: {share}, while {against} ({p}): the class relies on the concept here."
    if r.direction == "lowers":
        return f"At {r.layer}: only {share}, while {against} ({p}): the concept lowers the class score here."
    if r.significant:
        return f"At {r.layer}: {share}; {against} ({p}): different from random, but no clear direction."
    return f"At {r.layer}: {share}, and {against} ({p}): too close to random to say the class relies on the concept."


def summary(result: dict) -> str:
    """The whole test in a sentence (at how many layers the class relies on the concept), then any layers where
    the concept lowers the score, and any that cannot tell it from random images."""
    layers, concept, name = result["layers"], repr(result["concept"]), repr(result["class_name"])
    n = len(layers)
    of = f"of {n} layer{'s' if n != 1 else ''}"
    raises = [r["layer"] for r in layers if r["direction"] == "raises"]
    lowers = [r["layer"] for r in layers if r["direction"] == "lowers"]
    blind = [r["layer"] for r in layers if not r["separable"]]
    if raises:
        where = "" if len(raises) == n else f" ({', '.join(raises)})"
        parts = [f"The model relies on {concept} for {name} at {len(raises)} {of}{where}."]
    else:
        tested = "the layer tested" if n == 1 else f"any of the {n} layers tested"
        parts = [f"No evidence that the model relies on {concept} for {name} at {tested}."]
    if lowers:
        parts.append(f"{concept} lowers its score at {len(lowers)} {of} ({', '.join(lowers)}).")
    if blind:
        parts.append(f"{len(blind)} {of} cannot tell {concept} from random images ({', '.join(blind)}).")
    return " ".join(parts)


def direction(significant: bool, score: float, random_mean: float) -> str:
    """ "raises" (most of the class's images score higher, more than along random directions), "lowers", or "none"."""
    if significant and score > max(0.5, random_mean):
        return "raises"
    if significant and score < min(0.5, random_mean):
        return "lowers"
    return "none"


def concept_test(
    model: Explainable,
    concept: ImageSet,
    class_index: int,
    class_images: ImageSet,
    randoms: list[ImageSet],
    layers: list[str],
    alpha: float = ALPHA,
    progress: Progress | None = None,
) -> ConceptTest:
    """TCAV of one concept for one class at each layer, with the paper's significance test.

    Args:
        concept: the concept's images; class_images: images of the class (N >= 1).
        randoms: R + 1 random sets: CAVs are trained concept-vs-randoms[1..R] and randoms[0]-vs-randoms[1..R].
        layers: spatial layers of `model`; the p-values are corrected for their number.
    """
    if len(randoms) < 3:
        raise ExplainError(f"a concept test needs at least 3 random sets (2 CAVs each way), got {len(randoms)}")
    if not 0 <= class_index < len(model.labels):
        raise ExplainError(f"class index {class_index} is outside 0..{len(model.labels) - 1}")
    layers = [model.check_layer(layer) for layer in layers]
    if not layers:
        raise ExplainError("no layer to test")
    class_name = model.labels[class_index]
    runs = len(randoms) - 1
    out = ConceptTest(
        model=model.name,
        concept=concept.name,
        class_name=class_name,
        class_index=class_index,
        images={
            "concept": len(concept.images),
            "class": len(class_images.images),
            "random": len(randoms[0].images),
            "runs": runs,
            "skipped": concept.skipped,
        },  # fmt: skip
        alpha=alpha,
    )
    steps, done = len(layers) * (2 * runs + 1), 0
    for layer in layers:
        grads = gradients(model, class_images, layer, class_index)
        reference = activations(model, randoms[0], layer)
        positive = activations(model, concept, layer)
        cavs, accuracies, random_cavs = [], [], []
        for k in range(1, runs + 1):
            negative = activations(model, randoms[k], layer)
            cav, accuracy = train_cav(positive, negative, seed=k)
            cavs.append(cav)
            accuracies.append(accuracy)
            random_cavs.append(train_cav(reference, negative, seed=k)[0])
            done += 2
            if progress:
                progress(done / steps)
        scores = tcav_scores(directional_derivatives(grads, np.stack(cavs)))
        baseline = tcav_scores(directional_derivatives(grads, np.stack(random_cavs)))
        test = significance(scores, baseline, len(layers), alpha)
        result = LayerResult(
            layer=layer,
            cav_accuracy=float(np.mean(accuracies)),
            cav_accuracies=[round(a, 4) for a in accuracies],
            scores=[round(float(s), 4) for s in scores],
            random_scores=[round(float(s), 4) for s in baseline],
            score_mean=float(scores.mean()),
            score_std=float(scores.std()),
            random_mean=float(baseline.mean()),
            random_std=float(baseline.std()),
            p_value=test["p_value"],
            p_corrected=test["p_corrected"],
            significant=test["significant"],
            separable=float(np.mean(accuracies)) >= SEPARABLE,
        )
        result.significant = result.significant and result.separable  # an unseparable concept has no direction
        result.direction = direction(result.significant, result.score_mean, result.random_mean)
        result.meaning = meaning(result, concept.name, class_name, len(layers))
        out.layers.append(result)
        done += 1
        if progress:
            progress(done / steps)
    return out


def class_index(model: Explainable, name_or_index: str) -> int:
    """A class given by name (as the model's labels) or by index."""
    text = str(name_or_index).strip()
    if text in model.labels:
        return model.labels.index(text)
    if text.lstrip("-").isdigit() and 0 <= int(text) < len(model.labels):
        return int(text)
    close = [label for label in model.labels if text.lower() in label.lower()][:5]
    hint = f"; did you mean {', '.join(close)}" if close else ""
    raise ExplainError(f"{model.name} has no class {text!r}{hint}")


def tcav(
    model: Explainable,
    concept: str,
    class_name: str,
    images: str,
    layers: list[str] | None = None,
    runs: int = RUNS,
    random: str = "",
    alpha: float = ALPHA,
    progress: Progress | None = None,
) -> ConceptTest:
    """The whole test from sources: what the CLI's `tcav` and the Concepts tab run.

    Args:
        concept: the concept's images (`builtin:mark`, a folder or an archive, 20 to 200 images).
        class_name: the class, by name or index.
        images: the class's images: a labelled dataset (its folder of that class) or a folder of them.
        layers: default three depths (default_layers).
        runs: CAVs each way (concept vs random, random vs random); at least 2.
        random: a folder of random counterexamples (default: built-in photo crops).
    """
    if not images:
        raise ExplainError("give the class's images: a labelled dataset or a folder (a run uses its own data)")
    if runs < 2:
        raise ExplainError(f"runs must be at least 2 (the t-test needs two scores each way), got {runs}")
    index = class_index(model, class_name)
    layers = layers or default_layers(model)
    concept_set = load_set(concept, model.input_size, model.resize_policy)
    per_set = int(np.clip(len(concept_set.images), MIN_IMAGES, 100))  # as many random images as concept ones
    randoms = random_sets(runs + 1, per_set, model.input_size, model.resize_policy, random)
    class_images = class_set(model, index, images)
    return concept_test(model, concept_set, index, class_images, randoms, layers, alpha, progress)
