"""A trained run on a labelled source: scores for every image, metrics, calibration and mistakes.

Scoring is the slow part (one forward pass per image), so its logits are kept
on disk in the run folder (`evaluations/<key>.npz`), keyed by the model file,
the data's fingerprint, the split and the image size: asking again, from the
dashboard or the CLI, reads them back. Everything else is computed from the
logits in milliseconds.
"""

from __future__ import annotations

import csv
import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import runs
from engine.data import sources
from engine.data.ingest import Dataset, Item
from engine.data.pipeline import decoded_batches
from engine.errors import ConvScopeError, EvaluationError
from engine.evaluate import calibration, metrics
from engine.model.classifier import CALIBRATION_FILE
from engine.model.explainable import require_model, run_model
from engine.numerics import softmax
from engine.runs import Run, is_imported

SPLITS = ("test", "validation", "train", "all")
BATCH = 32
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LabelledSet:
    """The images to score: the source's files, with labels as the run's class indices."""

    source: str
    split: str
    root: Path
    rels: list[str]  # posix paths under root
    labels: np.ndarray  # (N,) int64, indices into the run's labels
    fingerprint: str  # of the whole source

    @property
    def paths(self) -> list[str]:
        return [str(self.root / rel) for rel in self.rels]


def labelled_set(run: Run, source: str | None = None, split: str | None = None, progress=None) -> LabelledSet:
    """The images of `split` of `source` (default: the run's own data and its test split), labelled for the run.

    The run's own source is split as it was in training (same seed and fractions), and must
    not have changed since. Another source's class folders must carry the run's class names
    (a subset is fine); its default split is "all": none of it was trained on. An imported run
    (a model trained elsewhere) defaults to "all" on any source, the one given at import too:
    ConvScope cannot tell which images it was trained on.
    """
    config = run.config()
    if not config:
        raise EvaluationError(f"{run.name} has no config.json: not a finished run")
    imported = is_imported(config)
    own = config["data"]["source"]
    source = source or own
    if not source:  # an imported run given no labelled data at import
        raise EvaluationError(
            f"{run.name} was imported without labelled data, so there are no images to score: give a labelled "
            "source (--source: a folder with one subfolder per class, named as the model's classes)"
        )
    is_own = source == own and not imported
    split = split or ("test" if is_own else "all")
    if split not in SPLITS:
        raise EvaluationError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    dataset: Dataset = sources.open_dataset(source, progress)
    # relabelled or excluded since (engine.data.corrections) is not changed: the split is the same
    changed = config.get("fingerprint") and not runs.same_files(config, dataset)
    if is_own and changed and split != "all":
        raise EvaluationError(
            f"the data of {source!r} changed since {run.name} was trained, so its {split} split is gone; "
            "evaluate with --split all, or on another labelled source"
        )
    names = run.labels() or config.get("labels", [])
    index = {name: k for k, name in enumerate(names)}
    unknown = dataset.unknown_to(names)
    if unknown:
        raise EvaluationError(
            f"{source!r} has classes the run does not know: {', '.join(unknown)}; "
            f"the run's classes are {', '.join(names)} (name the class folders the same)"
        )
    items: list[Item] = dataset.items
    if split != "all":
        items = runs.splits_of(config, dataset)[split]
    if not items:
        raise EvaluationError(f"the {split} split of {source!r} has no images; pick another split")
    labels = np.array([index[dataset.classes[i.label]] for i in items], dtype=np.int64)
    return LabelledSet(source, split, dataset.root, [i.rel for i in items], labels, dataset.fingerprint)


def score(model, paths: list[str], size: int, policy: str = "stretch", progress: Progress | None = None) -> np.ndarray:
    """Logits of every image file: (N, classes) float32.

    Files are decoded one batch ahead in a worker thread while the compiled model runs on
    the current batch (decoding and resizing in Pillow release the GIL), so a pass over
    thousands of files costs little more than the forward passes themselves.
    """
    if not paths:
        return np.zeros((0, len(model.labels)), np.float32)
    out = []
    done = 0
    for images in decoded_batches(paths, size, policy, BATCH):
        out.append(model.compiled.logits(images))
        done += len(images)
        if progress:
            progress(done, len(paths))
    return np.concatenate(out).astype(np.float32)


_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()


def cached_logits(run: Run, data: LabelledSet, model=None, progress: Progress | None = None) -> tuple[np.ndarray, bool]:
    """(logits (N, classes), True when read from the run's cache) for a labelled set.

    A run's own validation and test splits are kept by its training, from the pass that computed them.
    """
    config = run.config()
    size = int(config["data"]["image_size"])
    policy = runs.resize_policy_of(config)
    try:
        path = run.scores_file(data.fingerprint, data.source, data.split, size, policy)
    except FileNotFoundError:  # removed since it was checked
        require_model(run)
        raise
    with _LOCKS_LOCK:
        lock = _LOCKS.setdefault(str(path), threading.Lock())
    with lock:  # two sessions asking at once score it once
        kept = run.read_scores(path, data.rels)
        if kept is not None:
            return kept, True
        model = model or run_model(run)
        logits = score(model, data.paths, size, policy, progress)
        run.keep_scores(path, data.rels, logits)
    return logits, False


@dataclass
class Evaluation:
    """A run's scores on a labelled set and everything derived from them."""

    run: str
    data: LabelledSet
    class_names: list[str]
    logits: np.ndarray  # (N, C)
    top_k: int = 3
    temperature: float | None = None  # fitted on the run's validation split; None without one
    seconds: float = 0.0
    cached: bool = False
    metrics: dict = field(init=False)

    def __post_init__(self) -> None:
        self.probs = softmax(self.logits)
        self.predicted = self.probs.argmax(axis=1)
        self.confidence = self.probs.max(axis=1)
        self.metrics = metrics.classification_metrics(self.data.labels, self.probs, self.class_names, self.top_k)
        self.reliability = calibration.reliability(self.probs, self.data.labels)
        t = self.temperature or 1.0
        self.calibrated_probs = softmax(self.logits, t)
        self.reliability_calibrated = calibration.reliability(self.calibrated_probs, self.data.labels)

    @property
    def labels(self) -> np.ndarray:
        return self.data.labels

    @property
    def ece(self) -> float:
        return self.reliability["ece"]

    @property
    def ece_calibrated(self) -> float:
        return self.reliability_calibrated["ece"]

    def cell(self, true: int, predicted: int) -> np.ndarray:
        """Indices of the images of one confusion-matrix cell, most confident first."""
        k = np.flatnonzero((self.labels == true) & (self.predicted == predicted))
        return k[np.argsort(-self.confidence[k], kind="stable")]

    def mistake_indices(self) -> np.ndarray:
        """Every wrong prediction, most confident first."""
        k = np.flatnonzero(self.labels != self.predicted)
        return k[np.argsort(-self.confidence[k], kind="stable")]

    def unsure_correct(self) -> np.ndarray:
        """Every right prediction, least confident first."""
        k = np.flatnonzero(self.labels == self.predicted)
        return k[np.argsort(self.confidence[k], kind="stable")]

    def row(self, k: int, paths: str = "absolute") -> dict:
        """One image's result; `paths="relative"` names it under the source's root (for the dashboard)."""
        image = self.data.rels[k] if paths == "relative" else self.data.paths[k]
        return {
            "image": image,
            "true": self.class_names[int(self.labels[k])],
            "predicted": self.class_names[int(self.predicted[k])],
            "probability": round(float(self.confidence[k]), 6),
        }

    def mistakes(self, paths: str = "absolute") -> list[dict]:
        return [self.row(int(k), paths) for k in self.mistake_indices()]

    def mistakes_csv(self) -> str:
        """path,true,predicted,confidence, most confident mistake first (paths relative to the source)."""
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["path", "true", "predicted", "confidence"])
        for m in self.mistakes("relative"):
            writer.writerow([m["image"], m["true"], m["predicted"], f"{m['probability']:.4f}"])
        return out.getvalue()

    def to_json(self) -> dict:
        m = self.metrics
        return {
            "run": self.run,
            "source": self.data.source,
            "split": self.data.split,
            "count": m["count"],
            "accuracy": m["accuracy"],
            "top_k": m["top_k"],
            "top_k_accuracy": m["top_k_accuracy"],
            "labels": self.class_names,
            "confusion_matrix": m["confusion_matrix"],
            "per_class": m["per_class"],
            "ece": round(self.ece, 6),
            "ece_calibrated": round(self.ece_calibrated, 6),
            "temperature": None if self.temperature is None else round(self.temperature, 6),
            "mistakes": self.mistakes(),
            "seconds": round(self.seconds, 3),
            "cached": self.cached,
        }


def fit_run_temperature(
    run: Run, model=None, progress: Progress | None = None, source: str | None = None
) -> float | None:
    """The temperature that calibrates the run on its own validation split (None when it has none).

    An imported run has no validation split of its own: its temperature is fitted on the validation
    split ConvScope makes of `source` (the data being evaluated; the run's seed and fractions), which
    the model may have seen in training elsewhere.
    """
    try:
        val = labelled_set(run, source if is_imported(run.config()) else None, "validation")
    except ConvScopeError:  # no validation split, or the run's own data is gone or changed
        return None
    logits, _ = cached_logits(run, val, model, progress)
    if len(val.labels) < 2:
        return None
    return calibration.fit_temperature(logits, val.labels)


def evaluate(
    run: Run,
    source: str | None = None,
    split: str | None = None,
    *,
    top_k: int = 3,
    model=None,
    progress: Callable[[str, int, int], None] | None = None,
) -> Evaluation:
    """Score a run on a labelled source (default: its own test split) and derive metrics and calibration.

    Args:
        model: the run's Explainable, when the caller already holds it (the dashboard's shared copy).
        progress: progress(stage, done, total) with stage "data", "scoring" or "calibrating".
    """
    t0 = time.perf_counter()

    def stage(name: str) -> Progress | None:
        return (lambda done, total: progress(name, done, total)) if progress else None

    if model is None:
        require_model(run)  # before the data is opened: a run killed before its model was written says so
    try:
        data = labelled_set(run, source, split, (lambda s, d, t: progress("data", d, t)) if progress else None)
        logits, cached = cached_logits(run, data, model, stage("scoring"))
        temperature = fit_run_temperature(run, model, stage("calibrating"), data.source)
        names = run.labels() or run.config().get("labels", [])
        result = Evaluation(run.name, data, list(names), logits, top_k, temperature, cached=cached)
    except Exception as exc:
        if not run.path.is_dir():  # whatever failed, the cause is that the run was deleted meanwhile
            raise runs.gone_error(run.path, "it was evaluated") from exc
        raise
    result.seconds = time.perf_counter() - t0
    return result


def save_temperature(run: Run, temperature: float, **facts) -> None:
    """Keep a fitted temperature with the run: Predict divides the run's logits by it."""
    if not temperature > 0:
        raise EvaluationError(f"a temperature must be positive, got {temperature}")
    facts = {"temperature": float(temperature), "saved": time.time(), **facts}
    runs.write_json(run.path / CALIBRATION_FILE, facts, inside=run.path)
