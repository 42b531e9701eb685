"""Import a model file as a run: labels, preprocessing (chosen by accuracy when data is given), the run folder."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import runs
from engine.backbones.conventions import CONVENTIONS, RGB_ONLY, TITLES, convention
from engine.config import DataConfig, ImportConfig, TrainConfig
from engine.data import sources
from engine.data.ingest import Dataset
from engine.data.pipeline import DecodedImages
from engine.data.report import balanced_sample
from engine.errors import ConfigError, ImportModelError
from engine.imaging import RESIZE_POLICIES
from engine.importing import files
from engine.importing.model import Inspected, inspect, load_keras
from engine.importing.savedmodel import inspect_savedmodel, unpack
from engine.model.compiled import CompiledModel
from engine.model.explainable import layer_infos
from engine.model.savedmodel import OPAQUE_REASON, SCORES_NOTE

PREPROCESS_CHOICES = ("auto", *CONVENTIONS)
NEEDS_PREPROCESS = "needs_preprocess"  # ImportModelError.reason: no rescaling inside and no data to choose by
SAMPLE_IMAGES = 128  # labelled images the conventions are compared on (balanced over classes)
CLEARLY_WRONG = 0.15  # a convention this far below the best one's accuracy is flagged
Progress = Callable[[str, float], None]  # (stage, fraction done)


def _noop(stage: str, fraction: float) -> None:
    pass


@dataclass(frozen=True)
class Choice:
    """The preprocessing chosen, why, and each convention's accuracy on the sample (empty without data)."""

    name: str
    reason: str
    accuracy: dict[str, float]
    flagged: dict[str, str]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "title": TITLES[self.name],
            "reason": self.reason,
            "accuracy": {k: round(v, 4) for k, v in self.accuracy.items()},
            "flagged": self.flagged,
        }


def read_labels(path: str | Path) -> list[str]:
    """Class names from a labels.txt (one per line, as ConvScope's exports write) or a JSON list."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportModelError(f"{path.name}: cannot read the labels ({exc})") from exc
    if path.suffix.lower() == ".json" or text.lstrip().startswith("["):
        try:
            names = json.loads(text)
        except ValueError as exc:
            raise ImportModelError(f"{path.name} is not valid JSON ({exc})") from exc
        if not isinstance(names, list) or not all(isinstance(n, str | int) for n in names):
            raise ImportModelError(f"{path.name} must hold a JSON list of class names")
        names = [str(n) for n in names]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(set(names)) != len(names):
        raise ImportModelError(f"{path.name} names a class twice")
    return names


def labels_for(classes: int, given: list[str] | None, dataset: Dataset | None) -> tuple[list[str], str, str]:
    """(class names, where they came from, a warning or "") for a model with `classes` outputs."""
    if given is not None:
        names, origin = given, "the labels file"
    elif dataset is not None:
        names, origin = list(dataset.classes), f"the class folders of {dataset.source}"
    else:
        names = [f"class {k}" for k in range(classes)]
        return names, "none given", f"no labels given: the classes are called class 0..{classes - 1}"
    if len(names) != classes:
        raise ImportModelError(f"{origin} names {len(names)} classes, but the model scores {classes}")
    return names, origin, ""


def _sample(dataset: Dataset, labels: list[str], size: int, policy: str) -> tuple[np.ndarray, np.ndarray]:
    """A balanced sample of `dataset` as ((n, S, S, 3) float32 in [0, 255], (n,) indices into `labels`)."""
    index = {name: k for k, name in enumerate(labels)}
    unknown = dataset.unknown_to(labels)
    if unknown:
        raise ImportModelError(
            f"{dataset.source!r} has classes the model's labels do not name: {', '.join(unknown)} "
            f"(its labels are {', '.join(labels)})"
        )
    per_class = max(1, SAMPLE_IMAGES // max(1, len(dataset.classes)))
    items = balanced_sample(dataset.items, per_class)[:SAMPLE_IMAGES]
    if not items:
        raise ImportModelError(f"{dataset.source!r} has no images to compare the preprocessing on")
    decoded = DecodedImages([str(dataset.path(i)) for i in items], size, policy)
    images = decoded.batch(np.arange(len(items))).astype(np.float32)
    return images, np.array([index[dataset.classes[i.label]] for i in items])


def accuracy_by_convention(
    found: Inspected, images: np.ndarray, truth: np.ndarray, progress: Progress = _noop
) -> dict[str, float]:
    """Top-1 accuracy of the model on `images` under each convention that fits its channels."""
    names = [n for n in CONVENTIONS if found.channels == 3 or n not in RGB_ONLY]
    out = {}
    for k, name in enumerate(names):
        compiled = CompiledModel(found.model, convention(name, found.channels))
        out[name] = float(np.mean(np.argmax(compiled.logits(images), axis=1) == truth))
        progress("Comparing preprocessing conventions", (k + 1) / len(names))
    return out


def choose(found: Inspected, asked: str, accuracy: dict[str, float]) -> Choice:
    """The convention to use: asked for, else the model's own rescaling, else the most accurate one on data."""
    if asked not in PREPROCESS_CHOICES:
        raise ConfigError(f"preprocessing must be one of {', '.join(PREPROCESS_CHOICES)}, got {asked!r}")
    best = max(accuracy, key=accuracy.get) if accuracy else ""
    flagged = {}
    for name, acc in accuracy.items():
        if best and acc < accuracy[best] - CLEARLY_WRONG:
            flagged[name] = f"clearly wrong: {acc:.0%} against {accuracy[best]:.0%} with {best}"
    if asked != "auto":
        name, reason = asked, "chosen by you"
        convention(name, found.channels)  # a colour convention for a grayscale model is refused here
    elif found.takes_raw and "raw" not in flagged:
        name, reason = "raw", found.takes_raw
    elif found.takes_raw:  # the guess from its layers is contradicted by the data: the data wins
        name = best
        reason = (
            f"the most accurate on a labelled sample ({accuracy[best]:.0%} top-1), although {found.takes_raw}: "
            f"raw pixels were {flagged['raw']}"
        )
    elif accuracy:
        name = best
        reason = f"the most accurate on a labelled sample: {accuracy[best]:.0%} top-1"
    else:
        why = (
            "a SavedModel is opaque (its layers cannot be read)"
            if found.opaque
            else "the model has no Rescaling or Normalization layer"
        )
        raise ImportModelError(
            f"{why}, so ConvScope cannot tell which pixel range it expects: pick one "
            f"({', '.join(CONVENTIONS)}), or give labelled images to choose it by accuracy",
            NEEDS_PREPROCESS,
        )
    if name in flagged:
        reason += f"; warning: {flagged[name]}"
    return Choice(name, reason, accuracy, flagged)


def _folder_name(file_name: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(file_name).stem).strip("-.")[:40] or "model"
    return runs.new_run_name(stem, "imported")


def import_model(
    path: str | Path,
    *,
    labels: str | Path | None = None,
    preprocess: str = "auto",
    source: str | None = None,
    image_size: int | None = None,
    resize: str = "stretch",
    name: str = "",
    out: str | Path | None = None,
    progress: Progress = _noop,
) -> dict:
    """Bring a model file in as a run of mode `imported` (see engine.importing).

    Args:
        path: a .keras file (an .h5 where the operator allows it; a SavedModel folder or zip).
        labels: a labels.txt or JSON list of class names, in the model's output order.
        preprocess: `auto` or an engine.backbones.conventions name.
        source: a labelled dataset (engine.data.sources): its class names when no labels are given,
            and the images the conventions are compared on.
        image_size: the side for a model that takes any size.
        resize: how images are fitted to the input (engine.imaging.RESIZE_POLICIES).
        name: the run's display name (default: the file's name).
        out: the run folder (default: a new folder under the runs root).

    Returns:
        {"run_dir", "name", "file", "sha256", "format", "input_size", "channels", "classes", "labels_from",
         "output", "preprocess", "augmentation", "layers", "conv_layers", "params", "max_diff", "opaque" (why
         an imported SavedModel shows no layers, else ""), "scores" (for an opaque softmax model: its scores are
         log-probabilities, else ""), "warnings", "seconds"}.
    """
    t0 = time.perf_counter()
    path = Path(path).expanduser()
    if resize not in RESIZE_POLICIES:
        raise ConfigError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {resize!r}")
    progress("Checking the file", 0.0)
    kind = files.kind_of(path)
    given = read_labels(labels) if labels else None
    dataset = sources.open_dataset(source) if source else None
    with tempfile.TemporaryDirectory(prefix="convscope-import-") as tmp:  # a zipped SavedModel, unpacked
        found, folder = _load(path, kind, Path(tmp), image_size, progress)
        names, origin, warning = labels_for(found.classes, given, dataset)
        accuracy: dict[str, float] = {}
        if dataset is not None:
            progress("Reading a labelled sample", 0.3)
            images, truth = _sample(dataset, names, found.input_size, resize)
            accuracy = accuracy_by_convention(found, images, truth, lambda s, f: progress(s, 0.3 + 0.6 * f))
        choice = choose(found, preprocess, accuracy)
        warnings = [w for w in (warning,) if w]
        if choice.name in choice.flagged:
            warnings.append(f"the chosen preprocessing ({choice.name}) is {choice.flagged[choice.name]}")
        progress("Writing the run", 0.9)
        imported = ImportConfig(
            file=path.name,
            sha256=files.sha256_of(path),
            format="savedmodel" if found.opaque else "keras",
            output=found.output,
            preprocess=choice.name,
            preprocess_reason=choice.reason,
            channels=found.channels,
        )
        config = TrainConfig(
            data=DataConfig(source=source or "", image_size=found.input_size, resize=resize),
            backbone="",
            mode="imported",
            imported=imported,
        )
        existed = bool(out) and Path(out).expanduser().is_dir()  # an empty folder given as --out stays
        run = runs.create(str(out) if out else _folder_name(path.name))
        try:
            _write_run(run, found, config, names, dataset, name or path.name, choice, folder)
        except Exception as exc:  # noqa: BLE001 - Keras's save raises many kinds; none may leave a half run
            for child in run.path.iterdir() if existed else ():
                shutil.rmtree(child) if child.is_dir() else child.unlink(missing_ok=True)
            if not existed:
                shutil.rmtree(run.path, ignore_errors=True)  # the folder made just now: nothing of the user's
            raise ImportModelError(f"the run folder could not be written: {type(exc).__name__}: {exc}") from exc
    layers = [] if found.opaque else _layers(found.model)
    return {
        "run_dir": str(run.path),
        "name": run.name,
        "file": path.name,
        "sha256": imported.sha256,
        "format": kind,
        "input_size": found.input_size,
        "channels": found.channels,
        "classes": names,
        "labels_from": origin,
        "output": found.output,
        "preprocess": choice.to_json(),
        "augmentation": found.augmentation,
        "layers": layers,
        "conv_layers": [row["name"] for row in layers if "Conv" in row["type"] and row["spatial"]],
        "params": int(found.model.count_params()),
        "max_diff": found.max_diff,
        "opaque": OPAQUE_REASON if found.opaque else "",
        "scores": SCORES_NOTE if found.opaque and found.output == "softmax" else "",
        "warnings": warnings,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _load(path: Path, kind: str, tmp: Path, image_size: int | None, progress: Progress) -> tuple[Inspected, Path]:
    """(the model checked and ending in logits, the SavedModel's folder or `path`) for a file of `kind`."""
    if kind in ("keras", "h5"):
        progress("Loading the model (safe mode)", 0.1)
        return inspect(load_keras(path, kind), image_size), path
    folder = path
    if kind == "savedmodel-zip":
        progress("Unpacking the SavedModel", 0.05)
        folder = unpack(path, tmp / "unpacked")
    progress("Loading the SavedModel", 0.1)
    return inspect_savedmodel(folder, image_size), folder


def _write_run(
    run: runs.Run,
    found: Inspected,
    config: TrainConfig,
    labels: list[str],
    dataset,
    title: str,
    choice: Choice,
    folder: Path,
) -> None:
    extra = {"labels": labels}
    if dataset is not None:
        extra["fingerprint"] = dataset.fingerprint
    if found.opaque:  # kept as given (its regular files only: a link could point anywhere)
        shutil.copytree(folder, run.path / runs.SAVEDMODEL, ignore=_links)
    else:
        runs.atomic_write(run.model_file, lambda tmp: found.model.save(tmp), inside=run.path)
    runs.write_json(run.path / "labels.json", labels, inside=run.path)
    runs.write_json(run.path / "config.json", {**config.to_json(), **extra}, inside=run.path)
    runs.write_json(run.path / "history.json", {}, inside=run.path)
    metrics = {"params": param_counts(found.model), "imported": True}
    if choice.accuracy:
        metrics["preprocess_accuracy"] = choice.accuracy
    runs.write_json(run.path / "metrics.json", metrics, inside=run.path)
    runs.write_json(run.path / "meta.json", {"display_name": title[:80]}, inside=run.path)
    run.set_status("finished", "imported")


def _links(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if (Path(folder) / n).is_symlink()]


def param_counts(model) -> dict[str, int]:
    """{"total", "trainable", "non_trainable"} parameters, as a training run's metrics.json has them."""
    trainable = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    total = int(model.count_params())
    return {"total": total, "trainable": trainable, "non_trainable": total - trainable}


def _layers(model) -> list[dict]:
    """Every layer as the layer browser lists it (those of a nested model as "outer/inner")."""
    return [info.to_json() for info in layer_infos(model)]
