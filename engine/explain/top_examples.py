"""Top examples: the images of a dataset on which each channel of a layer fires hardest.

One pass over the dataset's files (decoded one batch ahead in a worker thread, as
engine.evaluate.evaluation.score does) runs the compiled model up to the deepest
requested layer and keeps only each channel's spatial max, its position and its
spatial mean per image (CompiledModel.channel_peaks), merged into a running top-k
per channel with NumPy. The position of the max, through the layer's receptive field
(engine.explain.receptive), gives the patch of the image the channel responded to.

Results are kept on disk in the model's cache folder (`top-<key>.npz`, keyed by the
model's identity, the data's fingerprint, the layer, k, the limit, the image size and
the resize policy), so asking again, from the dashboard or the CLI, reads them back.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import runs
from engine.data import sources
from engine.data.pipeline import decoded_batches, load_resized
from engine.data.report import draw_box
from engine.errors import ConvScopeError
from engine.explain.receptive import Field, receptive_field
from engine.model.explainable import ExplainError

BATCH = 32
Progress = Callable[[int, int], None]  # (images done, images in all)


@dataclass
class TopExamples:
    """The k images (and the patch in each) that most excite every channel of one layer."""

    layer: str
    k: int
    root: str  # dataset root folder
    rels: list[str]  # the images scanned (posix paths under root), in scan order
    index: np.ndarray  # (C, k) int32 indices into rels, highest activation first; -1 where fewer than k images
    activation: np.ndarray  # (C, k) float32: the channel's spatial max on that image; NaN where index is -1
    position: np.ndarray  # (C, k, 2) int32 (row, col) of that max in the layer's (h, w) grid; -1 where index is -1
    natural_mean: np.ndarray  # (C,) float32: the channel's spatial mean averaged over all scanned images
    grid: tuple[int, int]  # the layer's (h, w)
    field: Field
    image_size: int
    policy: str  # resize policy the images were scanned with
    seconds: float
    cached: bool

    @property
    def channels(self) -> int:
        return int(self.index.shape[0])

    def _check(self, channel: int) -> int:
        if not 0 <= channel < self.channels:
            raise ExplainError(f"layer {self.layer!r} has channels 0..{self.channels - 1}, got {channel}")
        return int(channel)

    def examples(self, channel: int) -> list[dict]:
        """The channel's top images, highest first, with the patch that fired in input-image pixels.

        Only images where the channel's peak is above zero: a channel silent on all of the data has none.

        Returns:
            [{"path", "rel", "activation", "position": [row, col], "box": [top, left, bottom, right]}];
            the box (bottom/right exclusive) is in the pixels of the image resized to
            `image_size` with `policy`, as it was scanned.
        """
        channel = self._check(channel)
        out = []
        for rank in range(self.k):
            i = int(self.index[channel, rank])
            if i < 0 or not self.activation[channel, rank] > 0:
                break  # fewer images than k (padding), or the channel never fires on the rest
            row, col = (int(v) for v in self.position[channel, rank])
            out.append(
                {
                    "path": str(Path(self.root) / self.rels[i]),
                    "rel": self.rels[i],
                    "activation": float(self.activation[channel, rank]),
                    "position": [row, col],
                    "box": list(self.field.box(row, col, self.image_size)),
                }
            )
        return out

    def crop(self, channel: int, rank: int) -> np.ndarray:
        """(h', w', 3) uint8: the receptive field of the `rank`-th example, cut out of the image as scanned."""
        example = self._example(channel, rank)
        top, left, bottom, right = example["box"]
        return load_resized(example["path"], self.image_size, self.policy)[top:bottom, left:right]

    def _example(self, channel: int, rank: int) -> dict:
        found = self.examples(channel)
        if not 0 <= rank < len(found):
            raise ExplainError(f"channel {channel} of {self.layer!r} has examples 0..{len(found) - 1}, got rank {rank}")
        return found[rank]

    def view(self, channel: int, rank: int, most: float = 0.6) -> np.ndarray:
        """(h', w', 3) uint8: what to show for one example.

        The receptive-field crop, unless the field covers more than `most` of the image's side
        (deep layers: Lite0's last layer sees 851 px); then the whole image with the position
        that fired outlined, a square of the layer's stride around its centre.
        """
        example = self._example(channel, rank)
        top, left, bottom, right = example["box"]
        if max(bottom - top, right - left) <= most * self.image_size:
            return self.crop(channel, rank)
        image = load_resized(example["path"], self.image_size, self.policy)
        cy, cx = self.field.centre(*example["position"])
        half = max(self.field.jump, 4.0) / 2
        box = [int(max(0, cx - half)), int(max(0, cy - half))]
        box += [int(min(self.image_size, cx + half + 1)), int(min(self.image_size, cy + half + 1))]
        return draw_box(image, box, (255, 215, 0))

    def to_json(self, channels: list[int] | None = None) -> dict:
        """The result as JSON; `channels` limits the listing (default: every channel)."""
        chosen = range(self.channels) if channels is None else [self._check(c) for c in channels]
        return {
            "layer": self.layer,
            "k": self.k,
            "images": len(self.rels),
            "image_size": self.image_size,
            "policy": self.policy,
            "grid": list(self.grid),
            "field": self.field.to_json(),
            "seconds": round(self.seconds, 3),
            "cached": self.cached,
            "channels": [
                {
                    "channel": int(c),
                    "natural_mean_activation": round(float(self.natural_mean[c]), 6),
                    "examples": [dict(e, activation=round(e["activation"], 6)) for e in self.examples(c)],
                }
                for c in chosen
            ],
        }


# ---- the pass over the files -----------------------------------------------
class _RunningTop:
    """The k highest (N, C) maxima seen so far per channel, with their image and position."""

    def __init__(self, channels: int, k: int, width: int) -> None:
        self.k = k
        self.width = width
        self.activation = np.full((channels, k), -np.inf, np.float32)
        self.index = np.full((channels, k), -1, np.int64)
        self.flat = np.full((channels, k), -1, np.int64)
        self.image_mean = np.full((channels, k), -np.inf, np.float32)  # the tie-break
        self.mean_sum = np.zeros(channels, np.float64)
        self.count = 0

    def add(self, offset: int, maxima: np.ndarray, argmax: np.ndarray, means: np.ndarray) -> None:
        """Merge one batch: maxima, argmax and means (N, C) of images offset..offset+N-1."""
        n = len(maxima)
        act = np.concatenate([self.activation, maxima.T.astype(np.float32)], axis=1)  # (C, k + N)
        idx = np.concatenate([self.index, np.broadcast_to(np.arange(offset, offset + n), act[:, self.k :].shape)], 1)
        flat = np.concatenate([self.flat, argmax.T.astype(np.int64)], axis=1)
        image_mean = np.concatenate([self.image_mean, means.T.astype(np.float32)], axis=1)
        # Highest maximum first; saturating units (ReLU6 stops at 6) tie often, so a tie goes to the
        # image where the channel is active over more of the map (its mean), then to the earlier image.
        order = np.lexsort((-image_mean, -act), axis=1)[:, : self.k]
        self.activation = np.take_along_axis(act, order, 1)
        self.index = np.take_along_axis(idx, order, 1)
        self.flat = np.take_along_axis(flat, order, 1)
        self.image_mean = np.take_along_axis(image_mean, order, 1)
        self.mean_sum += means.astype(np.float64).sum(axis=0)
        self.count += n

    def result(self, grid: tuple[int, int]) -> dict:
        empty = self.index < 0
        position = np.stack([self.flat // self.width, self.flat % self.width], axis=-1).astype(np.int32)
        position[empty] = -1
        activation = self.activation.copy()
        activation[empty] = np.nan
        return {
            "index": self.index.astype(np.int32),
            "activation": activation,
            "position": position,
            "natural_mean": (self.mean_sum / max(self.count, 1)).astype(np.float32),
            "grid": grid,
        }


def _grids(model, layers: list[str]) -> dict[str, tuple[int, int]]:
    shapes = {info.name: info.output_shape for info in model.layers()}
    return {layer: (int(shapes[layer][1]), int(shapes[layer][2])) for layer in layers}


def _check_layers(model, layers: list[str] | str) -> list[str]:
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ExplainError("no layer given: name one or more spatial layers (Explainable.spatial_layers())")
    if model.opaque_reason:
        raise ExplainError(model.opaque_reason)
    return [model.check_layer(name) for name in dict.fromkeys(names)]  # once each, in the order given


def scan(model, paths: list[str], layers: list[str], k: int = 9, progress: Progress | None = None) -> dict[str, dict]:
    """One pass over image files keeping, per layer and channel, the k images with the highest spatial max.

    Args:
        model: an engine.explain.Explainable; files are resized to its input size with its resize policy.
        paths: image files, scanned in this order.
        layers: spatial layers, flat or nested ("base/x"); one forward pass per batch per part of the model.
        k: examples kept per channel.
        progress: progress(done, total) after each batch.

    Returns:
        Per layer: {"index": (C, k) int32 into paths (-1 padding), "activation": (C, k) float32
        (NaN padding), "position": (C, k, 2) int32 (row, col) in the layer's grid (-1 padding),
        "natural_mean": (C,) float32, "grid": (h, w)}.
    """
    layers = _check_layers(model, layers)
    if k < 1:
        raise ExplainError(f"k (examples per channel) must be at least 1, got {k}")
    if not paths:
        raise ConvScopeError("no image files to scan: give at least one")
    grids = _grids(model, layers)
    groups: dict[str, list[str]] = {}
    for layer in layers:  # channel_peaks runs one part of a model at a time (flat, or one nested backbone)
        groups.setdefault(layer.rpartition("/")[0], []).append(layer)
    size, policy = model.input_size, model.resize_policy
    tops: dict[str, _RunningTop] = {}
    done = 0
    for images in decoded_batches(paths, size, policy, BATCH):  # the next batch decodes while this one runs
        for group in groups.values():
            for layer, (maxima, argmax, means) in zip(group, model.compiled.channel_peaks(images, group), strict=True):
                if layer not in tops:
                    tops[layer] = _RunningTop(maxima.shape[1], k, grids[layer][1])
                tops[layer].add(done, maxima, argmax, means)
        done += len(images)
        if progress:
            progress(done, len(paths))
    return {layer: tops[layer].result(grids[layer]) for layer in layers}


# ---- the cache ---------------------------------------------------------------
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_LOCK = threading.Lock()
_MEMORY: OrderedDict[str, dict] = OrderedDict()  # results of models without a cache folder
_MEMORY_ENTRIES = 32


def _on_disk(model) -> bool:
    # A model without an identity cannot be told from another one on disk: keep its results in memory.
    return model.cache_folder is not None and bool(model.identity)


def _cache_key(model, fingerprint: str, layer: str, k: int, limit: int | None) -> str:
    # v2: ties broken by the image's mean activation
    identity = model.identity if _on_disk(model) else f"memory:{id(model)}"
    payload = f"v2|{identity}|{fingerprint}|{layer}|{k}|{limit}|{model.input_size}|{model.resize_policy}"
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _load(model, key: str, rels: list[str]) -> dict | None:
    if not _on_disk(model):
        with _LOCKS_LOCK:
            found = _MEMORY.get(key)
        # The key holds id(model), which a new model may reuse once the old one is gone.
        fresh = found is not None and found["model"]() is model and found["rels"] == rels
        return found if fresh else None
    path = Path(model.cache_folder) / f"top-{key}.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            if list(saved["rels"]) != rels:
                return None
            return {
                "index": saved["index"].astype(np.int32),
                "activation": saved["activation"].astype(np.float32),
                "position": saved["position"].astype(np.int32),
                "natural_mean": saved["natural_mean"].astype(np.float32),
                "grid": tuple(int(v) for v in saved["grid"]),
            }
    except (OSError, ValueError, KeyError):
        return None  # unreadable: scan again and replace it


def _save(model, key: str, rels: list[str], raw: dict) -> None:
    if not _on_disk(model):
        with _LOCKS_LOCK:
            _MEMORY[key] = dict(raw, rels=list(rels), model=weakref.ref(model))
            while len(_MEMORY) > _MEMORY_ENTRIES:
                _MEMORY.popitem(last=False)
        return
    arrays = {name: raw[name] for name in ("index", "activation", "position", "natural_mean")}

    def write(tmp: Path) -> None:
        np.savez(tmp, rels=np.array(rels), grid=np.array(raw["grid"]), **arrays)

    runs.atomic_write(Path(model.cache_folder) / f"top-{key}.npz", write)


def _spread(items: list, limit: int | None) -> list:
    """At most `limit` items, every n-th: items come grouped by class, so each class keeps its share."""
    if limit is None or limit >= len(items):
        return list(items)
    picks = (np.arange(limit) * len(items)) // limit
    return [items[int(i)] for i in picks]


def top_examples(
    model,
    source: str,
    layers: list[str] | str,
    k: int = 9,
    limit: int | None = None,
    progress: Progress | None = None,
) -> dict[str, TopExamples]:
    """The k images of a dataset that most excite each channel of one or more layers.

    Layers already in the cache are read back; the others are scanned together in one pass.

    Args:
        model: an engine.explain.Explainable (its `cache_folder` and `identity` key the disk cache).
        source: a dataset source string (a folder of class folders, "shapes", an archive, "tfds:...").
        layers: one spatial layer name or several.
        k: examples kept per channel.
        limit: scan at most this many images, spread evenly over the dataset (a big dataset stays quick).
        progress: progress(done, total) after each batch of the scan.

    Returns:
        {layer: TopExamples}, in the order the layers were given.
    """
    t0 = time.perf_counter()
    layers = _check_layers(model, layers)
    if k < 1:
        raise ExplainError(f"k (examples per channel) must be at least 1, got {k}")
    if limit is not None and limit < 1:
        raise ExplainError(f"limit must be at least 1 image (or None for all), got {limit}")
    fields = {layer: receptive_field(model.model, layer) for layer in layers}  # fails before a long scan, not after
    dataset = sources.open_dataset(source)
    items = _spread(dataset.items, limit)
    if not items:
        raise ConvScopeError(f"{source!r} has no usable images; give a folder with one subfolder of images per class")
    rels = [item.rel for item in items]
    keys = {layer: _cache_key(model, dataset.fingerprint, layer, k, limit) for layer in layers}
    with _LOCKS_LOCK:
        locks = [_LOCKS.setdefault(key, threading.Lock()) for key in sorted(set(keys.values()))]
    raw: dict[str, dict] = {}
    with ExitStack() as held:
        for lock in locks:  # sorted: two calls sharing some layers cannot deadlock
            held.enter_context(lock)
        for layer in layers:
            found = _load(model, keys[layer], rels)
            if found is not None:
                raw[layer] = found
        cached = set(raw)
        missing = [layer for layer in layers if layer not in cached]
        if missing:
            paths = [str(dataset.root / rel) for rel in rels]
            for layer, result in scan(model, paths, missing, k, progress).items():
                _save(model, keys[layer], rels, result)
                raw[layer] = result
    seconds = time.perf_counter() - t0
    return {
        layer: TopExamples(
            layer=layer,
            k=k,
            root=str(dataset.root),
            rels=rels,
            index=raw[layer]["index"],
            activation=raw[layer]["activation"],
            position=raw[layer]["position"],
            natural_mean=raw[layer]["natural_mean"],
            grid=tuple(raw[layer]["grid"]),
            field=fields[layer],
            image_size=model.input_size,
            policy=model.resize_policy,
            seconds=seconds,
            cached=layer in cached,
        )
        for layer in layers
    }
