"""Which fine-tuning strategy fits a dataset: the four classic regimes.

Two questions decide it (RECIPES.md, "The four regimes"): is the dataset
small or large, and does it look like ImageNet? Size is images per class;
likeness is how sure the bundled ImageNet classifier is of what it sees.
The answer is a preset for a fine-tune: how many of the backbone's blocks to
unfreeze from the top and the learning rate as a factor of the parent's.
BatchNormalization always stays frozen (inference mode), as the Keras guide
advises for fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from engine.errors import FinetuneError
from engine.model.classifier import ImageNetClassifier

REGIMES = ("small-similar", "small-different", "large-different", "large-similar")

# A dataset is large with MORE than this many images per class. The Keras
# fine-tuning tutorial (cats_and_dogs_filtered: 1000 training images per class)
# is the canonical small case, and it only unfreezes the top third of
# MobileNetV2; tf_flowers (~590 training images per class at 80/20) is small
# too. CIFAR-10 (5000 per class) and the full cats_vs_dogs (~9300 per class at
# 80/20) are large, where training most or all layers pays.
LARGE_PER_CLASS = 1000

# Mean top-1 softmax confidence of the bundled ImageNet classifier
# (EfficientNet-Lite0, 224 px) from which data looks like ImageNet. Measured:
# - the built-in shapes (300 images, 5 classes, 160 px): mean 0.26, median
#   0.18; random samples of 32 images: 0.16 to 0.34 (200 draws);
# - scikit-image's natural photos: chelsea 0.79 (Egyptian cat), coffee 0.90
#   (espresso), rocket 0.42, astronaut 0.29; mean 0.60; with their centre crops
#   and mirror images (8 images) 0.50.
# 0.4 sits between: above every 32-image sample of shapes, below the photos.
SIMILAR_CONFIDENCE = 0.4

TITLES = {
    "small-similar": "Small dataset, similar to ImageNet: keep the backbone frozen, train the head",
    "small-different": "Small, different: freeze the first k layers, retrain the rest",
    "large-different": "Large, different: train most or all layers (pretrained weights as a start)",
    "large-similar": "Large, similar: fine-tune the whole network with a low learning rate",
}


@dataclass(frozen=True)
class Advice:
    """A fine-tuning preset for one dataset.

    Attributes:
        regime: one of REGIMES.
        title: the regime in RECIPES.md's words.
        reason: one plain sentence with the figures that led here.
        unfreeze_top: backbone blocks to unfreeze, counted from the top (of spec.finetune_blocks).
        lr_factor: the fine-tune's learning rate is the parent's times this.
        bn: BatchNormalization during the fine-tune; always "frozen" (inference mode).
    """

    regime: str
    title: str
    reason: str
    unfreeze_top: int
    lr_factor: float
    bn: str = "frozen"

    def to_json(self) -> dict:
        return asdict(self)


def imagenet_similarity(images_uint8: np.ndarray | Sequence[np.ndarray], classifier=None) -> float:
    """How much a sample of images looks like ImageNet: the classifier's mean top-1 confidence.

    This is a proxy, not a distance between distributions: a network trained
    on ImageNet is confident on images like the ones it learnt from and
    spreads its probability over many classes on unfamiliar ones (the max
    softmax probability is the classic out-of-distribution baseline, Hendrycks
    & Gimpel 2017). It cannot tell "unlike ImageNet" from "ImageNet-like photos
    of objects outside its 1000 classes", and it needs no labels.

    Args:
        images_uint8: (N, H, W, 3) uint8 RGB, or a sequence of (H, W, 3) arrays of
            any sizes (resized as the classifier's predict does); a random sample
            of a few dozen images is enough.
        classifier: an `engine.model.classifier.ImageNetClassifier` to reuse (the
            dashboard's cached one); default: load the bundled EfficientNet-Lite0.

    Returns:
        Mean top-1 softmax probability in [0, 1].
    """
    if len(images_uint8) == 0:
        raise FinetuneError("imagenet_similarity needs at least one image")
    if classifier is None:
        classifier = ImageNetClassifier("efficientnet_lite0")
    predictions = classifier.predict([(str(i), np.asarray(img)) for i, img in enumerate(images_uint8)], top_k=1)
    return float(np.mean([p.top[0].probability for p in predictions]))


def _count(x: float) -> str:
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def _percent(p: float) -> str:
    # Rounded down, so 0.399 (different) never reads as the 40% threshold (similar).
    return f"{math.floor(p * 100 + 1e-9)}%"


def advise(images_per_class: float, similarity: float, spec) -> Advice:
    """The fine-tuning regime and its preset for a dataset.

    Args:
        images_per_class: training images per class (the mean over classes);
            more than LARGE_PER_CLASS is large.
        similarity: `imagenet_similarity` of a sample; SIMILAR_CONFIDENCE or
            more is similar to ImageNet.
        spec: the backbone's BackboneSpec; its finetune_blocks are what
            unfreeze_top counts.

    Returns:
        An Advice.
    """
    if not (math.isfinite(images_per_class) and images_per_class > 0):
        raise FinetuneError(f"images per class must be a positive number, got {images_per_class}")
    if not 0.0 <= similarity <= 1.0:
        raise ValueError(f"similarity is a mean softmax probability in [0, 1], got {similarity}")
    n = len(spec.finetune_blocks)
    if n == 0:
        raise FinetuneError(
            f"{spec.name} has no named blocks to unfreeze (an opaque model): fine-tune a bundled or keras backbone"
        )
    large = images_per_class > LARGE_PER_CLASS
    similar = similarity >= SIMILAR_CONFIDENCE
    size = (
        f"{_count(images_per_class)} images per class is "
        + ("large" if large else "small")
        + f" (large means more than {LARGE_PER_CLASS})"
    )
    sure = f"the ImageNet classifier is {'' if similar else 'only '}{_percent(similarity)} sure on average"
    looks = f"{sure} of what it sees, so the data looks {'like' if similar else 'unlike'} ImageNet"
    if not large and similar:
        regime, top, lr = "small-similar", 1, 0.1
        then = "the pretrained features already fit, so a fine-tune may not help much: at most the top block"
    elif not large:
        regime, top, lr = "small-different", math.ceil(n / 2), 0.1
        then = f"retrain the top {math.ceil(n / 2)} of {n} blocks and keep the generic early ones frozen"
    elif not similar:
        regime, top, lr = "large-different", max(1, n - 1), 0.1
        then = f"there is enough data to retrain {max(1, n - 1)} of {n} blocks, starting from the pretrained weights"
    else:
        regime, top, lr = "large-similar", n, 0.01
        then = f"fine-tune all {n} blocks at a low rate so the good pretrained weights are only nudged"
    rate = "a tenth" if lr == 0.1 else "a hundredth"
    reason = f"{size}, and {looks}: {then}, at {rate} of the training rate."
    return Advice(regime, TITLES[regime], reason, top, lr)
