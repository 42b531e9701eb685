"""The image sets of a concept test: a concept's examples, random counterexamples, a class's images.

At a model's input size, with a content key, so engine.explain.concepts keeps their activations per set.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import imaging
from engine.data import archive, shapes, sources
from engine.data.layout import is_hidden_name
from engine.data.pipeline import decoded_batches
from engine.errors import ConvScopeError, ExplainError
from engine.model.explainable import Explainable

MIN_IMAGES, MAX_IMAGES = 20, 200  # per concept: fewer gives CAVs that change with every random set
CONCEPT_SEED = 10_000
BUILTIN = "builtin:"  # "builtin:mark", "builtin:random", "builtin:circle": drawn by engine.data.shapes


@dataclass(frozen=True)
class ImageSet:
    """Images at a model's input size, named, with a content key for the activation cache."""

    name: str
    images: np.ndarray  # (N, S, S, 3) float32 in [0, 255]
    key: str = ""
    skipped: int = 0  # files that could not be read

    @classmethod
    def of(cls, name: str, images: np.ndarray, skipped: int = 0) -> ImageSet:
        images = np.ascontiguousarray(images, dtype=np.float32)
        return cls(name, images, hashlib.sha256(images.tobytes()).hexdigest()[:20], skipped)


def _files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(is_hidden_name(part) for part in p.relative_to(folder).parts)
    )


def _decode(paths: list[Path], size: int, policy: str) -> tuple[list[np.ndarray], int]:
    images, skipped = [], 0
    for path in paths:
        try:
            images.append(imaging.resize(imaging.load_rgb(path), size, policy))
        except ConvScopeError:
            skipped += 1  # not an image, or damaged: a concept folder often holds a stray text file
    return images, skipped


def load_set(
    source: str,
    size: int,
    policy: str = "stretch",
    count: int | None = None,
    seed: int = 0,
    minimum: int = MIN_IMAGES,
    limit: int = MAX_IMAGES,
    what: str = "a concept",
) -> ImageSet:
    """A concept's images: `builtin:NAME` (engine.data.shapes.CONCEPTS), a folder (searched through) or an archive.

    Args:
        source: where the images are.
        size: the model's input size; policy: its resize policy.
        count: images wanted (a built-in set draws this many, default 50; a folder with more gives a seeded
            sample of this many; default all), at most `limit`.
        minimum: fewer usable images is an error; `what` names the set in that message.
    """
    if source.startswith(BUILTIN):
        name = source[len(BUILTIN) :]
        try:  # seeds far from the random sets' 0..runs: a built-in concept never is one of them
            drawn = shapes.concept_images(name, count or 50, size, CONCEPT_SEED + seed)
        except ValueError as exc:
            raise ExplainError(str(exc)) from exc
        return ImageSet.of(name, drawn)
    wanted = min(count or limit, limit)
    path = Path(source).expanduser()
    with tempfile.TemporaryDirectory(prefix="convscope-concept-") as tmp:
        if archive.is_archive(path) and path.is_file():
            archive.extract(path, Path(tmp) / "x")
            files = _files(Path(tmp) / "x")
        elif path.is_dir():
            files = _files(path)
        else:
            raise ExplainError(f"{source}: no such folder or archive")
        # A seeded sample of the files, with room for unreadable ones, is all that is decoded: a folder of
        # 10,000 images must not be read whole to draw 100.
        if len(files) > 2 * wanted:
            files = [files[int(i)] for i in np.sort(np.random.default_rng(seed).choice(len(files), 2 * wanted, False))]
        images, skipped = _decode(files, size, policy)
    name = Path(sources.source_title(str(path))).name.removesuffix(".zip")  # an upload: its file name, not its hash
    if len(images) < minimum:
        raise ExplainError(
            f"{source}: {len(images)} readable images ({skipped} unreadable); at least {minimum} are needed for {what}"
        )
    if len(images) > wanted:
        picks = np.sort(np.random.default_rng(seed).choice(len(images), wanted, replace=False))
        images = [images[int(i)] for i in picks]
    return ImageSet.of(name, np.stack(images), skipped)


def random_sets(count: int, per_set: int, size: int, policy: str = "stretch", folder: str = "") -> list[ImageSet]:
    """`count` different random sets of `per_set` images: built-in photo crops, or draws from `folder`.

    Built-in set k is drawn with seed k, so set 0 is the same in every test (the random-vs-random baseline's
    reference) and the sets are the same from run to run. From a folder, the sets share no image while the
    folder has enough (count x per_set); beyond that they overlap as little as it allows.
    """
    if not folder:
        drawn = (shapes.concept_images("random", per_set, size, seed=k) for k in range(count))
        return [ImageSet.of(f"random {k}", images) for k, images in enumerate(drawn)]
    pool = load_set(folder, size, policy, limit=count * per_set, minimum=per_set + 1, what="the random sets")
    order = np.random.default_rng(0).permutation(len(pool.images))
    out = []
    for k in range(count):
        picks = np.take(order, np.arange(k * per_set, (k + 1) * per_set), mode="wrap")  # disjoint while they fit
        out.append(ImageSet.of(f"random {k}", pool.images[np.sort(picks)]))
    return out


def class_set(model: Explainable, class_index: int, source: str, count: int = 100) -> ImageSet:
    """Images of the model's class `class_index`, at most `count` spread evenly.

    From a labelled dataset (its class folder with the class's name, or its only folder), else all of
    `source` (a folder or archive of that class's images, or a built-in set).
    """
    name = model.labels[class_index]
    dataset = None
    if not source.startswith(BUILTIN):
        try:
            dataset = sources.open_dataset(source)
        except ConvScopeError:
            dataset = None  # not a labelled dataset: a folder holding only the class's images
    if dataset is None:
        found = load_set(source, model.input_size, model.resize_policy, count=count, minimum=1)
        return ImageSet.of(name, found.images, found.skipped)
    if len(dataset.classes) == 1:
        label = 0  # one folder: the class's images, whatever the folder is called
    elif name not in dataset.classes:
        raise ExplainError(f"{source} has no class {name!r}; its classes: {', '.join(dataset.classes)}")
    else:
        label = dataset.classes.index(name)
    items = [item for item in dataset.items if item.label == label]
    if len(items) > count:
        items = [items[int(i)] for i in (np.arange(count) * len(items)) // count]
    paths = [str(dataset.root / item.rel) for item in items]
    images = np.concatenate(list(decoded_batches(paths, model.input_size, model.resize_policy)))
    return ImageSet.of(name, images)
