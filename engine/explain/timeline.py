"""Reading a run's timeline (engine.training.timeline records it): entries, the pointing game, the grid.

The pointing game scores the map the timeline keeps, at the class the model predicted at that epoch:
a hit when the map's peak, mapped back to the original image, lies in the object's box (as
engine.explain.checks scores localisation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.explain.base import normalise
from engine.explain.checks import in_box
from engine.explain.maps import to_original
from engine.explain.overlay import overlay
from engine.runs import timeline as store
from engine.runs.timeline import NoTimeline, Timeline, load

__all__ = ["NoTimeline", "Timeline", "cost", "entries", "grid", "hits", "load", "pointing_game", "summary", "tiles"]


def hits(tl: Timeline) -> np.ndarray | None:
    """(E, N) float: 1 where the peak is in the box, 0 where not, NaN for an image without a box; None: no boxes."""
    boxes = tl.meta.get("boxes") or []
    if not any(boxes):
        return None
    size = int(tl.meta["input_size"])
    out = np.full(tl.predicted.shape, np.nan)
    for n, (box, (height, width)) in enumerate(zip(boxes, tl.meta["sizes"], strict=True)):
        if box:
            for e in range(len(tl.epochs)):
                row, col = (int(v) for v in tl.peaks[e, n])
                out[e, n] = in_box(to_original(row, col, (size, size), height, width), box)
    return out


def pointing_game(tl: Timeline) -> list[float] | None:
    """Per epoch, the share of the boxed images whose peak is in the box; None without boxes."""
    h = hits(tl)
    return None if h is None else [float(np.nanmean(row)) for row in h]


def entries(tl: Timeline) -> list[dict]:
    """One row per (epoch, image): epoch, image, label, predicted, probability, peak (row, col) in input pixels, hit."""
    classes = tl.meta["classes"]
    h = hits(tl)
    out = []
    for e, epoch in enumerate(tl.epochs):
        for n, rel in enumerate(tl.meta["images"]):
            row = {
                "epoch": int(epoch),
                "image": rel,
                "label": classes[tl.meta["labels"][n]],
                "predicted": classes[int(tl.predicted[e, n])],
                "probability": round(float(tl.probability[e, n]), 4),
                "peak": [int(v) for v in tl.peaks[e, n]],
            }
            if h is not None and not np.isnan(h[e, n]):
                row["hit"] = bool(h[e, n])
            out.append(row)
    return out


def cost(tl: Timeline) -> dict:
    """What recording cost: per epoch "timeline_seconds" and "epoch_seconds" (wall), and over the epochs,
    "share" (the recording's wall time over the epochs' own) and "cpu_share" (the same in the process's CPU time,
    which other programs on a shared machine do not inflate)."""
    timed = tl.epoch_seconds > 0  # epochs recorded at a start or resume have no epoch of their own

    def share(part: np.ndarray, whole: np.ndarray) -> float | None:
        return round(float(part[timed].sum() / whole[timed].sum()), 4) if timed.any() and whole[timed].sum() else None

    return {
        "timeline_seconds": [round(float(s), 4) for s in tl.seconds],
        "epoch_seconds": [round(float(s), 4) for s in tl.epoch_seconds],
        "share": share(tl.seconds, tl.epoch_seconds),
        "cpu_share": share(tl.cpu_seconds, tl.epoch_cpu_seconds),
    }


def summary(run_dir: str | Path) -> dict:
    """What `python -m engine timeline RUN --json` prints.

    Raises:
        NoTimeline: the run recorded none.
    """
    tl = load(Path(run_dir))
    return {
        "run": Path(run_dir).name,
        "layer": tl.meta["layer"],
        "input_size": tl.meta["input_size"],
        "map_size": list(tl.maps.shape[2:]),
        "images": tl.meta["images"],
        "epochs": [int(e) for e in tl.epochs],
        "entries": entries(tl),
        "pointing_game": pointing_game(tl),
        "cost": cost(tl),
    }


def tiles(run_dir: str | Path, tl: Timeline, index: int, opacity: float = 0.5) -> list[np.ndarray]:
    """The images with their maps at the timeline's `index`-th epoch: (S, S, 3) uint8 each."""
    images = store.read_images(Path(run_dir))
    maps = normalise(tl.maps[index].astype(np.float32))  # (N, h, w); overlay resizes them to the image
    return [overlay(rgb, heat, opacity) for rgb, heat in zip(images, maps, strict=True)]


def grid(tl: Timeline, index: int) -> list[dict]:
    """What each tile's caption says at the `index`-th epoch: label, predicted, probability, right, hit."""
    classes = tl.meta["classes"]
    h = hits(tl)
    out = []
    for n, label in enumerate(tl.meta["labels"]):
        predicted = int(tl.predicted[index, n])
        out.append(
            {
                "image": tl.meta["images"][n],
                "label": classes[label],
                "predicted": classes[predicted],
                "probability": float(tl.probability[index, n]),
                "right": predicted == label,
                "hit": None if h is None or np.isnan(h[index, n]) else bool(h[index, n]),
            }
        )
    return out
