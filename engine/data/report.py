"""What the CLI and the Dataset Explorer show about a dataset: the JSON report,
thumbnails, and the sample of images used for the feature-space view."""

from __future__ import annotations

import base64
import io
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw

from engine import imaging
from engine.data.ingest import Dataset, Item
from engine.data.layout import Skipped
from engine.data.splits import SPLITS, split_dataset


def inspect_report(dataset: Dataset, seed: int = 0, val_frac: float = 0.15, test_frac: float = 0.15) -> dict:
    """The `inspect-data --json` object: classes, counts, splits, skipped files, problems."""
    splits = split_dataset(dataset, seed, val_frac, test_frac)
    return {
        "source": dataset.source,
        "root": str(dataset.root),
        "classes": dataset.classes,
        "counts": dataset.counts(),
        "num_images": len(dataset.items),
        "splits": {s: len(splits[s]) for s in SPLITS},
        "source_splits": dataset.has_splits,
        "skipped": [s.to_json() for s in dataset.skipped],
        "skipped_by_reason": dict(Counter(s.reason for s in dataset.skipped)),
        "problems": dataset.problems(),
        "warnings": dataset.warnings(),
        "fingerprint": dataset.fingerprint,
        "has_boxes": dataset.boxes is not None,
        "corrections": dataset.corrections.to_json() if dataset.corrections else None,
    }


def split_of(dataset: Dataset, seed: int = 0, val_frac: float = 0.15, test_frac: float = 0.15) -> dict[str, str]:
    """item.rel -> split name."""
    return {i.rel: s for s, items in split_dataset(dataset, seed, val_frac, test_frac).items() for i in items}


def thumbnail(rgb: np.ndarray, px: int = 64) -> str:
    """A small JPEG as a data URL, for tables and chart tooltips."""
    img = Image.fromarray(rgb)
    img.thumbnail((px, px), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def _no_preview(px: int) -> np.ndarray:
    """A grey tile with a cross: the stand-in for files that cannot be shown."""
    img = Image.new("RGB", (px, px), (235, 235, 235))
    draw = ImageDraw.Draw(img)
    m = px // 4
    draw.line([(m, m), (px - m, px - m)], fill=(170, 170, 170), width=max(1, px // 20))
    draw.line([(m, px - m), (px - m, m)], fill=(170, 170, 170), width=max(1, px // 20))
    return np.asarray(img)


def file_thumbnail(path, px: int = 64) -> str:
    """Thumbnail of a file if it decodes safely, else a grey crossed tile (skipped files often do not)."""
    try:
        return thumbnail(imaging.load_rgb(path), px)
    except (imaging.ImageLoadError, OSError):
        return thumbnail(_no_preview(px), px)


def balanced_sample(items: list[Item], per_class: int, seed: int = 0) -> list[Item]:
    """Up to `per_class` items of each class, chosen with a seed, in a stable order."""
    rng = np.random.default_rng(seed)
    out = []
    for label in sorted({i.label for i in items}):
        group = [i for i in items if i.label == label]
        pick = rng.permutation(len(group))[:per_class]
        out.extend(group[k] for k in sorted(pick))
    return out


def draw_box(rgb: np.ndarray, box: list[int], colour: tuple[int, int, int] = (255, 0, 0)) -> np.ndarray:
    """A copy of (H, W, 3) uint8 with the [x0, y0, x1, y1] box outlined."""
    img = Image.fromarray(rgb)
    x0, y0, x1, y1 = box
    width = max(1, min(img.size) // 80)
    ImageDraw.Draw(img).rectangle([x0, y0, x1 - 1, y1 - 1], outline=colour, width=width)
    return np.asarray(img)


def skipped_thumbnail(dataset: Dataset, skipped: Skipped, px: int = 64) -> str:
    """Preview of a skipped file, only if it is a regular file inside the dataset folder."""
    root = dataset.root.resolve()
    path = (dataset.root / skipped.path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return thumbnail(_no_preview(px), px)  # rejected archive members, links out, folders
    return file_thumbnail(path, px)


def preview(path, px: int = 256, box: list[int] | None = None) -> np.ndarray:
    """A decoded image shrunk to fit px x px, with its object box drawn if given: (h, w, 3) uint8."""
    rgb = imaging.load_rgb(path)
    if box:
        rgb = draw_box(rgb, box)
    img = Image.fromarray(rgb)
    img.thumbnail((px, px), Image.Resampling.BILINEAR)
    return np.asarray(img)
