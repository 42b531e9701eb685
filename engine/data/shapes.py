"""The built-in `shapes` dataset: coloured shapes on natural-photo backgrounds.

Each image holds one shape of its class (random position, scale, rotation
and colour) over a crop of a scikit-image photo, plus distractor strokes and
dots, so that the task is not trivial and the object's box is known (for
checking where class activation maps look). Image i of class c depends only
on (seed, c, i), so a larger `per_class` keeps the earlier images.

With `mark=K` every image of class K also carries a small watermark in its
bottom-right corner (the other classes are drawn exactly as without it): a
model trained on that data can learn the mark instead of the shape, which a
concept test (engine.explain.concepts) finds. `concept_images` draws sets for
such tests: the mark, one shape, or random photo crops.
"""

from __future__ import annotations

import colorsys
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from engine.samples import skimage_photo

SHAPE_CLASSES = ("circle", "square", "triangle", "star", "cross", "hexagon", "ring", "arrow")
_BACKGROUNDS = (
    "astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry",
    "hubble_deep_field", "retina", "brick", "grass", "gravel", "camera",
)  # fmt: skip
_SUPERSAMPLE = 4  # draw masks 4x larger, then downsample: smooth edges


@dataclass(frozen=True)
class ShapesConfig:
    """Options of the generated set; `shapes:per_class=60,seed=0,size=160,classes=5`."""

    per_class: int = 60
    classes: int = 5
    seed: int = 0
    size: int = 160
    mark: int = -1  # the class (0-based) whose images carry the watermark; -1: none

    def __post_init__(self) -> None:
        if not 2 <= self.classes <= len(SHAPE_CLASSES):
            raise ValueError(f"shapes: classes must be 2..{len(SHAPE_CLASSES)}, got {self.classes}")
        if not 1 <= self.per_class <= 5000:
            raise ValueError(f"shapes: per_class must be 1..5000, got {self.per_class}")
        if not 32 <= self.size <= 1024:
            raise ValueError(f"shapes: size must be 32..1024 pixels, got {self.size}")
        if not -1 <= self.mark < self.classes:
            raise ValueError(f"shapes: mark must be a class index 0..{self.classes - 1} or -1 (none), got {self.mark}")

    @property
    def class_names(self) -> tuple[str, ...]:
        return SHAPE_CLASSES[: self.classes]

    @property
    def key(self) -> str:
        """A folder name that identifies this exact set (bump v when drawing changes)."""
        marked = f"-mark{self.mark}" if self.mark >= 0 else ""
        return f"shapes-v1-c{self.classes}-n{self.per_class}-s{self.size}-seed{self.seed}{marked}"


_photo = cache(skimage_photo)  # each background decoded once per process; only read, never changed


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    photo = _photo(_BACKGROUNDS[rng.integers(len(_BACKGROUNDS))])
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop


def _outline(kind: str) -> list[list[tuple[float, float]]]:
    """Polygons (in a unit box centred on 0) whose union, minus holes, is the shape.

    Returns a list of polygons; for `ring` the second one is a hole.
    """

    def regular(n: int, r: float = 1.0, phase: float = 0.0) -> list[tuple[float, float]]:
        return [
            (r * math.cos(phase + 2 * math.pi * k / n), r * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)
        ]

    if kind == "circle":
        return [regular(96)]
    if kind == "square":
        return [regular(4, math.sqrt(2), math.pi / 4)]
    if kind == "triangle":
        return [regular(3, 1.15, -math.pi / 2)]
    if kind == "star":
        outer, inner = regular(5, 1.0, -math.pi / 2), regular(5, 0.42, -math.pi / 2 + math.pi / 5)
        return [[p for pair in zip(outer, inner, strict=True) for p in pair]]
    if kind == "cross":
        a = 0.33
        return [
            [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
        ]
    if kind == "hexagon":
        return [regular(6)]
    if kind == "ring":
        return [regular(96), regular(96, 0.55)]
    if kind == "arrow":
        return [[(-1, -0.3), (0.1, -0.3), (0.1, -0.75), (1, 0), (0.1, 0.75), (0.1, 0.3), (-1, 0.3)]]
    raise ValueError(f"unknown shape {kind!r}")


def _bright_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.6, 1.0))
    return int(r * 255), int(g * 255), int(b * 255)


def _distractors(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size: int) -> None:
    # Thin strokes and small dots: clutter that is never one of the classes.
    for _ in range(rng.integers(2, 6)):
        pts = [tuple(rng.uniform(0, size, 2)) for _ in range(rng.integers(2, 4))]
        draw.line(pts, fill=_bright_colour(rng), width=int(rng.integers(1, max(2, size // 60) + 1)))
    for _ in range(rng.integers(0, 4)):
        cx, cy = rng.uniform(0, size, 2)
        r = rng.uniform(0.01, 0.03) * size
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=_bright_colour(rng))


def mark_box(size: int) -> list[int]:
    """Where the watermark sits: [x0, y0, x1, y1], a square of 18% of the side in the bottom-right corner."""
    side = max(6, round(0.18 * size))
    x1 = y1 = size - max(1, round(0.04 * size))
    return [x1 - side, y1 - side, x1, y1]


def stamp_mark(img: Image.Image) -> Image.Image:
    """Draw the watermark: a white tile with a black border and a black X (drawn without randomness)."""
    x0, y0, x1, y1 = mark_box(img.size[0])
    draw = ImageDraw.Draw(img)
    width = max(1, (x1 - x0) // 8)
    draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=(255, 255, 255), outline=(0, 0, 0), width=width)
    inset = 2 * width
    draw.line([x0 + inset, y0 + inset, x1 - 1 - inset, y1 - 1 - inset], fill=(0, 0, 0), width=width)
    draw.line([x0 + inset, y1 - 1 - inset, x1 - 1 - inset, y0 + inset], fill=(0, 0, 0), width=width)
    return img


def render(kind: str, rng: np.random.Generator, size: int, marked: bool = False) -> tuple[np.ndarray, list[int]]:
    """Draw one image (`kind` "" draws no shape: a photo crop with distractors only).

    Returns:
        (image (size, size, 3) uint8, box [x0, y0, x1, y1] in pixels, inclusive-exclusive).
    """
    img = _background(rng, size)
    _distractors(ImageDraw.Draw(img), rng, size)
    if not kind:
        return np.asarray(stamp_mark(img) if marked else img), [0, 0, size, size]
    radius = rng.uniform(0.16, 0.32) * size
    angle = rng.uniform(0, 2 * math.pi)
    cos, sin = math.cos(angle), math.sin(angle)
    polys = [[(x * cos - y * sin, x * sin + y * cos) for x, y in poly] for poly in _outline(kind)]
    xs = [x for x, _ in polys[0]]
    ys = [y for _, y in polys[0]]
    margin = 2
    # Place the shape fully inside the image.
    cx = rng.uniform(margin - min(xs) * radius, size - margin - max(xs) * radius)
    cy = rng.uniform(margin - min(ys) * radius, size - margin - max(ys) * radius)
    big = size * _SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    mdraw = ImageDraw.Draw(mask)
    for k, poly in enumerate(polys):
        pts = [((cx + x * radius) * _SUPERSAMPLE, (cy + y * radius) * _SUPERSAMPLE) for x, y in poly]
        mdraw.polygon(pts, fill=0 if k else 255)
    mask = mask.resize((size, size), Image.Resampling.LANCZOS)
    colour = Image.new("RGB", (size, size), _bright_colour(rng))
    img.paste(colour, (0, 0), mask)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    x0, y0, x1, y1 = mask.getbbox() or (0, 0, size, size)
    if marked:  # after the blur: a watermark is stamped on the finished photo
        stamp_mark(img)
    return np.asarray(img), [int(x0), int(y0), int(x1), int(y1)]


def generate(
    out_dir: str | Path, config: ShapesConfig, progress: Callable[[int, int], None] | None = None
) -> dict[str, list[int]]:
    """Write the set as `out_dir/<class>/<class>_<i>.png` plus `boxes.json`.

    Returns:
        The boxes: {"class/class_0000.png": [x0, y0, x1, y1]} in pixels.
    """
    out = Path(out_dir)
    total = config.classes * config.per_class
    boxes: dict[str, list[int]] = {}
    done = 0
    for c, kind in enumerate(config.class_names):
        (out / kind).mkdir(parents=True, exist_ok=True)
        for i in range(config.per_class):
            rng = np.random.default_rng([config.seed, c, i])
            rgb, box = render(kind, rng, config.size, marked=c == config.mark)
            rel = f"{kind}/{kind}_{i:04d}.png"
            Image.fromarray(rgb).save(out / rel, optimize=False, compress_level=1)
            boxes[rel] = box
            done += 1
            if progress and (done % 20 == 0 or done == total):
                progress(done, total)
    (out / "boxes.json").write_text(json.dumps(boxes, indent=0, sort_keys=True))
    return boxes


CONCEPTS = ("mark", "random", *SHAPE_CLASSES)  # the built-in concept sets


def concept_images(name: str, count: int, size: int, seed: int = 0) -> np.ndarray:
    """`count` images of a built-in concept: (count, size, size, 3) uint8.

    "mark": the watermark on photo crops with distractors; "random": such crops alone (the
    counterexamples of a concept test); a shape name: that shape, without the mark. Image i
    depends only on (seed, name, i), and never equals an image of the dataset (another stream).
    """
    if name not in CONCEPTS:
        raise ValueError(f"no built-in concept {name!r}; choose one of {', '.join(CONCEPTS)}")
    stream = 1000 + CONCEPTS.index(name)  # the dataset's streams are its class indices 0..7
    kind = name if name in SHAPE_CLASSES else ""
    out = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        out[i] = render(kind, np.random.default_rng([seed, stream, i]), size, marked=name == "mark")[0]
    return out
