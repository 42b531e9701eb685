"""ImageNet prediction with a backbone's own classification head."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import backbones, imaging, runs
from engine.imagenet import imagenet_labels
from engine.model.compiled import CompiledModel
from engine.model.explainable import run_model
from engine.numerics import softmax

CALIBRATION_FILE = "calibration.json"  # a run's fitted temperature, written by engine.evaluate.save_temperature


@dataclass(frozen=True)
class Top:
    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """One image's result: top-k classes, the image as the network saw it, timing."""

    image: str
    top: list[Top]
    model_input: np.ndarray  # (S, S, 3) uint8, after resizing
    seconds: float

    def to_json(self) -> dict:
        return {"image": self.image, "top": [t.__dict__ for t in self.top], "seconds": round(self.seconds, 4)}


class ImageNetClassifier:
    """A backbone with its ImageNet head. Read-only after construction, so one
    instance can be shared by every session and thread (never train it)."""

    def __init__(self, backbone: str = backbones.DEFAULT_BACKBONE) -> None:
        self.spec = backbones.get_spec(backbone)
        t0 = time.perf_counter()
        self.model = backbones.load(backbone, include_top=True)
        self.input_size = int(self.model.input_shape[1])
        self.labels = imagenet_labels()
        # Compiled and batched (one trace for any batch size); safe to share between threads.
        self.compiled = CompiledModel(self.model, self.spec.preprocess)
        # Trace now, so loading pays for it and not the first prediction.
        self.compiled.logits(np.zeros((1, self.input_size, self.input_size, 3), np.float32))
        self.load_seconds = time.perf_counter() - t0

    def predict(self, images: list[tuple[str, np.ndarray]], top_k: int = 5) -> list[Prediction]:
        """Classify RGB images: (name, (H, W, 3) uint8) pairs -> one Prediction per image, in order."""
        return classify(self.compiled, self.labels, self.input_size, images, top_k)


def classify(
    compiled,
    labels: list[str],
    input_size: int,
    images: list[tuple[str, np.ndarray]],
    top_k: int = 5,
    *,
    temperature: float = 1.0,
    policy: str = "stretch",
) -> list[Prediction]:
    """Classify RGB images in one compiled, batched pass.

    Args:
        compiled: an engine.model.compiled.CompiledModel (images in [0, 255] -> logits).
        images: (name, (H, W, 3) uint8 array) pairs.
        top_k: how many classes to report per image (1..classes).
        temperature: logits are divided by it before the softmax (a run's saved calibration).
        policy: how images are resized to the input ("stretch", "crop", "pad"): as the model was trained.

    Returns:
        One Prediction per image, in order.
    """
    if not 1 <= top_k <= len(labels):
        raise ValueError(f"top_k must be between 1 and {len(labels)}, got {top_k}")
    if not images:
        return []
    t0 = time.perf_counter()
    resized = np.stack([imaging.resize(rgb, input_size, policy) for _, rgb in images])
    logits = compiled.logits(resized.astype(np.float32))
    probs = softmax(logits, temperature)
    per_image = (time.perf_counter() - t0) / len(images)
    out = []
    for (name, _), p, seen in zip(images, probs, resized, strict=True):
        order = np.argsort(-p)[:top_k]
        top = [Top(int(i), labels[i], float(p[i])) for i in order]
        out.append(Prediction(name, top, seen, per_image))
    return out


class RunClassifier:
    """A trained run's classifier with its labels, resize policy and saved temperature (read-only, shareable).

    An imported run's model.keras ends in logits (engine.importing), so the probabilities are the file's own:
    softmax of a softmax head's scores, sigmoid(z) for a single logit z (two logits [-z/2, z/2]).

    `model` is the run's engine.model.explainable.Explainable when the caller holds one already (the
    dashboard shares one copy for predictions and maps); otherwise it is loaded from the run.
    """

    def __init__(self, run_dir: str | Path, model=None, temperature: float | None = None) -> None:
        run = runs.open_run(run_dir)
        self.run = run.name
        self.model = model or run_model(run)
        self.labels = self.model.labels
        self.input_size = self.model.input_size
        config = run.config()
        self.policy = runs.resize_policy_of(config)
        self.backbone = config.get("backbone", "")  # "" for an imported model
        self.imported = dict(config.get("imported") or {}) if runs.is_imported(config) else {}
        saved = saved_temperature(run.path)
        self.temperature = float(temperature or saved or 1.0)
        self.calibrated = temperature is None and saved is not None

    def predict(self, images: list[tuple[str, np.ndarray]], top_k: int = 5) -> list[Prediction]:
        """Classify RGB images into the run's classes: (name, (H, W, 3) uint8) pairs -> Predictions."""
        top_k = min(top_k, len(self.labels))
        return classify(
            self.model.compiled,
            self.labels,
            self.input_size,
            images,
            top_k,
            temperature=self.temperature,
            policy=self.policy,
        )


def saved_temperature(run_dir: str | Path) -> float | None:
    """The temperature saved with a run (engine.evaluate.save_temperature), or None when there is none."""
    saved = runs.read_json(Path(run_dir) / CALIBRATION_FILE, None)
    return float(saved["temperature"]) if saved and saved.get("temperature") else None
