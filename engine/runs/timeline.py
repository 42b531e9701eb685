"""Where a run's model looked, epoch by epoch: the files of the timeline (engine.training.timeline records it).

`<run>/timeline/meta.json` names the fixed validation images (chosen when the run starts, kept on
resume) and the layer; `<run>/timeline/epoch_0001.npz` ... hold one epoch each, so an epoch end
writes a few kilobytes however long the run is, and a kill loses at most the epoch being written.

Maps are Grad-CAM before upsampling and per-map scaling, at the layer's own size (h, w), float16
scaled to a maximum of 1: Grad-CAM at the input size is `normalise(upsample(map))`, which neither
scaling nor float16 changes beyond float16 rounding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import NoTimeline
from engine.numerics import bilinear_matrix
from engine.runs.files import atomic_write, write_json

FOLDER = "timeline"


@dataclass
class Timeline:
    """A run's timeline, every recorded epoch stacked.

    Attributes:
        meta: {"images": [rel], "labels": [class index], "classes": [name], "layer", "input_size",
            "sizes": [[height, width]] of the originals, "boxes": [[x0, y0, x1, y1] or None], "mode"}.
        epochs: (E,) int, 1-based epoch numbers.
        maps: (E, N, h, w) float16 in [0, 1], at the layer's size.
        predicted: (E, N) int class index; probability: (E, N) float32 of that class.
        peaks: (E, N, 2) int (row, col) of each map's maximum in input pixels (the model's S x S input), after
            the bilinear upsampling Grad-CAM does (peaks_of); worked out here, not while training.
        seconds: (E,) float, what recording each epoch cost; epoch_seconds: (E,) the epoch's own time before it
            (0 for an epoch recorded when a run starts or resumes); cpu_seconds, epoch_cpu_seconds: the same in
            CPU time of the whole process, which other programs on a shared machine do not inflate.
    """

    meta: dict
    epochs: np.ndarray
    maps: np.ndarray
    predicted: np.ndarray
    probability: np.ndarray
    peaks: np.ndarray
    seconds: np.ndarray
    epoch_seconds: np.ndarray
    cpu_seconds: np.ndarray
    epoch_cpu_seconds: np.ndarray


def peaks_of(maps: np.ndarray, size: int) -> np.ndarray:
    """(N, h, w) maps -> (N, 2) int (row, col) of each map's maximum once upsampled to (size, size).

    The upsampling is Grad-CAM's (engine.explain.base.upsample: bilinear, half-pixel centres), in NumPy.
    """
    rows, cols = bilinear_matrix(maps.shape[1], size), bilinear_matrix(maps.shape[2], size)
    up = rows @ maps.astype(np.float64) @ cols.T  # (N, size, size)
    flat = up.reshape(len(up), -1).argmax(axis=1)
    return np.stack([flat // size, flat % size], axis=1).astype(np.int32)


def folder(run_dir: Path) -> Path:
    return Path(run_dir) / FOLDER


def _epoch_file(run_dir: Path, epoch: int) -> Path:
    return folder(run_dir) / f"epoch_{epoch:04d}.npz"


def recorded_epochs(run_dir: Path) -> list[int]:
    """The epochs with a file, in order."""
    found = folder(run_dir).glob("epoch_*.npz") if folder(run_dir).is_dir() else []
    return sorted(int(p.stem.split("_")[1]) for p in found)


def read_meta(run_dir: Path) -> dict | None:
    path = folder(run_dir) / "meta.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def write_meta(run_dir: Path, meta: dict) -> None:
    write_json(folder(run_dir) / "meta.json", meta, inside=Path(run_dir))


def write_images(run_dir: Path, images: np.ndarray) -> None:
    """The images as the model saw them, (N, S, S, 3) uint8: pages and reports draw them without the data."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=images)

    atomic_write(folder(run_dir) / "images.npz", save, inside=Path(run_dir))


def read_images(run_dir: Path) -> np.ndarray:
    """(N, S, S, 3) uint8, as write_images wrote them."""
    with np.load(folder(run_dir) / "images.npz") as f:
        return f["images"]


def write_epoch(run_dir: Path, epoch: int, **arrays: np.ndarray) -> None:
    """One epoch's maps, predicted, probability and seconds, atomically."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(_epoch_file(run_dir, epoch), save, inside=Path(run_dir))


def cut_after(run_dir: Path, epoch: int) -> None:
    """Drop the epochs after `epoch` (a resumed run goes on from its checkpoint's epoch)."""
    for e in recorded_epochs(run_dir):
        if e > epoch:
            _epoch_file(run_dir, e).unlink(missing_ok=True)


def has_timeline(run_dir: Path) -> bool:
    return read_meta(run_dir) is not None and bool(recorded_epochs(run_dir))


def load(run_dir: Path) -> Timeline:
    """Every recorded epoch of the run.

    Raises:
        NoTimeline: nothing recorded.
    """
    meta = read_meta(run_dir)
    epochs = recorded_epochs(run_dir)
    if meta is None or not epochs:
        raise NoTimeline(
            f"{Path(run_dir).name} has no timeline: it was trained with --no-timeline, before timelines "
            "existed, or no epoch has finished yet"
        )
    parts, kept = [], []
    for e in epochs:
        try:
            with np.load(_epoch_file(run_dir, e)) as f:
                parts.append({k: f[k] for k in f.files})
            kept.append(e)
        except FileNotFoundError:  # a resume cut it after it was listed: the epochs read are still contiguous
            break
    if not parts:
        raise NoTimeline(f"{Path(run_dir).name}: its timeline is being rewritten (a resume); try again")
    epochs = kept
    return Timeline(
        meta=meta,
        epochs=np.asarray(epochs, dtype=int),
        maps=np.stack([p["maps"] for p in parts]),
        predicted=np.stack([p["predicted"] for p in parts]),
        probability=np.stack([p["probability"] for p in parts]),
        peaks=np.stack([peaks_of(p["maps"], int(meta["input_size"])) for p in parts]),
        seconds=np.asarray([float(p["seconds"]) for p in parts]),
        epoch_seconds=np.asarray([float(p["epoch_seconds"]) for p in parts]),
        cpu_seconds=np.asarray([float(p["cpu_seconds"]) for p in parts]),
        epoch_cpu_seconds=np.asarray([float(p["epoch_cpu_seconds"]) for p in parts]),
    )
