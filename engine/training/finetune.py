"""Fine-tuning a finished run: unfreeze the backbone from a block boundary and train on.

A fine-tune starts from its parent run's saved classifier (a feature-mode
run or an earlier fine-tune): the same head and weights. Layers from the
unfreeze point up train; everything below stays frozen, and
BatchNormalization stays in inference mode unless asked (`bn="train"`).

Boundary cache: what is below the unfreeze point is frozen and deterministic,
so its output at the boundary (the tensors that cross from the frozen part to
the trainable part; one tensor at a block boundary) is computed once per image
and per augmented view, kept on disk in float16 beside the feature cache, and
only the part above it is fitted. When those tensors would need more memory
than `boundary_budget_bytes()`, training falls back to full forward passes on
image batches and says so.

The learning rate warms up from 0 over the first `warmup` fraction of the
steps, then follows a cosine decay to 0; with `layer_decay` < 1 each block
below the head trains at that factor of the rate of the block above.
Epochs continue the parent's count, and the run's history starts with the
parent's, so one chart shows both phases.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import PurePath

import numpy as np

from engine import backbones, runs
from engine.config import FinetuneConfig, TrainConfig
from engine.data import sources
from engine.data.pipeline import DecodedImages, augmenter, make_tf_dataset
from engine.data.splits import split_items
from engine.errors import FinetuneError
from engine.runs import Run
from engine.training import blocks as blocks_mod
from engine.training import distribute, feature_cache, fit

_CACHE_VERSION = 1
DEFAULT_BOUNDARY_BUDGET_MB = 2048  # float16 boundary tensors of every image and view kept in memory


def boundary_budget_bytes() -> int:
    """The memory the boundary cache may use (CONVSCOPE_BOUNDARY_BUDGET_MB, default 2048 MB)."""
    raw = os.environ.get("CONVSCOPE_BOUNDARY_BUDGET_MB", "")
    try:
        mb = float(raw) if raw.strip() else DEFAULT_BOUNDARY_BUDGET_MB
    except ValueError:
        mb = DEFAULT_BOUNDARY_BUDGET_MB
    return int(mb * 1024 * 1024)


class BoundaryOverflow(Exception):
    """Boundary tensors too large for float16: the fine-tune runs whole-model passes instead."""


# ---- the parent ------------------------------------------------------------------


def parent_of(name_or_path: str) -> Run:
    """The parent run, checked: finished, with a saved classifier on a backbone that can be unfrozen."""
    run = runs.open_run(name_or_path)
    config = run.config()
    if not config:
        raise FinetuneError(f"{run.name} has no config.json; is it a run folder?")
    status = run.status().get("status")
    if status != "finished" or not run.model_file.is_file():
        raise FinetuneError(f"{run.name} is {status}; fine-tune a finished run (it has a model.keras)")
    mode = config.get("mode", "feature")
    if mode == "scratch":
        raise FinetuneError(
            f"{run.name} trained a CNN from scratch: every layer already trained, so there is nothing to unfreeze"
        )
    spec = backbones.get_spec(config.get("backbone", ""))
    if not spec.finetune_blocks:
        raise FinetuneError(
            f"{spec.title} is an opaque TF Hub model: its layers cannot be unfrozen one block at a time. "
            "Use a bundled or keras.applications backbone to fine-tune."
        )
    return run


def load_classifier(run: Run):
    """A run's saved classifier (keras.Model, safe_mode): for layer maps and counts, which never change it."""
    import keras

    return keras.models.load_model(run.model_file, safe_mode=True)


def block_rows(rows: list[dict]) -> list[dict]:
    """layer_map() rows summed per block, in order: {"block", "layers", "trainable", "frozen"} parameters."""
    out: list[dict] = []
    for row in rows:
        if not out or out[-1]["block"] != row["block"]:
            out.append({"block": row["block"], "layers": 0, "trainable": 0, "frozen": 0})
        out[-1]["layers"] += 1
        out[-1]["trainable" if row["trainable"] else "frozen"] += row["params"]
    return out


def finetune_config(
    parent: Run,
    *,
    unfreeze_from: str = "",
    unfreeze_top: int = 0,
    epochs: int | None = None,
    learning_rate: float | None = None,
    optimizer: str | None = None,
    bn: str = "frozen",
    layer_decay: float = 1.0,
    warmup: float = 0.1,
    batch_size: int | None = None,
    early_stopping: int = 0,
    preset: str = "",
) -> TrainConfig:
    """The TrainConfig of a fine-tune of `parent`: its data, backbone and head; the rate / 10 by default."""
    saved = parent.config()
    base = TrainConfig.from_json(saved)
    ft = FinetuneConfig(
        parent=str(parent.path),
        unfreeze_from=str(unfreeze_from),
        unfreeze_top=int(unfreeze_top),
        bn=bn,
        layer_decay=layer_decay,
        warmup=warmup,
        parent_epochs=len(parent.history().get("loss", [])),
    )
    return replace(
        base,
        mode="finetune",
        finetune=ft,
        epochs=epochs or 10,
        learning_rate=learning_rate or base.learning_rate / 10,
        optimizer=optimizer or base.optimizer,
        batch_size=batch_size or base.batch_size,
        early_stopping=early_stopping,
        preset=preset,
    )


def settings_of(config: dict) -> dict[str, str]:
    """The settings a fine-tune runs with, from its config.json, as users read them (setting -> value)."""
    ft = config.get("finetune") or {}
    parent_epochs = int(ft.get("parent_epochs") or 0)
    epochs = int(config.get("epochs") or 0)
    where = f"the top {ft['unfreeze_top']} block(s)" if ft.get("unfreeze_top") else str(ft.get("unfreeze_from", ""))
    out = {
        "parent run": str(config.get("parent") or PurePath(str(ft.get("parent", ""))).name),
        "trains from": where,
        "epochs": f"{epochs} (epochs {parent_epochs + 1}-{parent_epochs + epochs}, after the parent's {parent_epochs})",
        "learning rate (peak)": f"{float(config.get('learning_rate') or 0):.1e}",
        "optimizer": str(config.get("optimizer", "")),
        "batch size": str(config.get("batch_size", "")),
        "BatchNorm statistics": "trained" if ft.get("bn") == "train" else "frozen",
        "layer-wise rate decay": "off" if float(ft.get("layer_decay", 1.0)) == 1.0 else f"{ft['layer_decay']:g}",
        "warm-up": f"{float(ft.get('warmup', 0.0)):.0%} of the steps",
    }
    if config.get("early_stopping"):
        out["early stopping"] = f"after {config['early_stopping']} epochs without a better validation loss"
    if config.get("preset"):
        out["recipe"] = str(config["preset"])
    if "mixed_precision" in config:
        out["precision"] = "mixed (float16)" if config["mixed_precision"] else "float32"
    return out


# ---- what trains -----------------------------------------------------------------


def model_blocks(model, backbone: str) -> list[blocks_mod.Block]:
    """The classifier's layers grouped: stem, the backbone's blocks, head."""
    spec = backbones.get_spec(backbone)
    return blocks_mod.for_spec(model, spec)


def first_trainable(model, backbone: str, ft: FinetuneConfig) -> int:
    """Index into model.layers of the first layer that trains.

    Raises:
        FinetuneError: an unknown block or layer, or more blocks than the backbone has.
    """
    groups = model_blocks(model, backbone)
    backbone_blocks = [b for b in groups if b.name not in (blocks_mod.STEM, blocks_mod.HEAD)]
    head = next(b for b in groups if b.name == blocks_mod.HEAD)
    names = ", ".join(b.name for b in backbone_blocks)
    if ft.unfreeze_top:
        if ft.unfreeze_top > len(backbone_blocks):
            raise FinetuneError(
                f"{backbone} has {len(backbone_blocks)} blocks ({names}); cannot unfreeze the top {ft.unfreeze_top}"
            )
        return backbone_blocks[-ft.unfreeze_top].first
    where = ft.unfreeze_from.strip()
    if where == blocks_mod.HEAD:
        return head.first
    if where.removeprefix("-").isdecimal():  # a layer index as the recipes count it; negative: from the backbone's end
        index = int(where) if not where.startswith("-") else head.first + int(where)
        if not 1 <= index <= head.first:
            raise FinetuneError(f"layer index {index} is outside the backbone (1..{head.first - 1})")
        return index
    for block in backbone_blocks:
        if block.name == where:
            return block.first
    for i, layer in enumerate(model.layers):
        if layer.name == where:
            if i >= head.first:
                raise FinetuneError(f"{where} is in the head, which trains anyway; name a backbone block or layer")
            return max(i, 1)
    raise FinetuneError(f"no block or layer named {where!r} in {backbone}; its blocks are {names}")


def _is_bn(layer) -> bool:
    import keras

    return isinstance(layer, keras.layers.BatchNormalization)


def _would_train(layer, index: int, first: int, bn: str) -> bool:
    return index >= first and not (bn == "frozen" and _is_bn(layer))


def _potential(layer) -> tuple[int, int]:
    """(trainable-if-unfrozen, always non-trainable) parameter counts of one layer."""
    # Layer._trainable_variables lists the variables that train when the layer does, whatever its
    # flag now (a loaded backbone is frozen); BatchNorm's moving statistics are never among them.
    train = sum(math.prod(v.shape) for v in layer._trainable_variables)
    total = sum(math.prod(v.shape) for v in layer.weights)
    return int(train), int(total - train)


def counts(model, first: int, bn: str = "frozen") -> dict:
    """{"trainable", "non_trainable", "total"} parameters if the layers from `first` up trained (no mutation)."""
    trainable = non_trainable = 0
    for i, layer in enumerate(model.layers):
        train, fixed = _potential(layer)
        if _would_train(layer, i, first, bn):
            trainable += train
            non_trainable += fixed
        else:
            non_trainable += train + fixed
    return {"trainable": trainable, "non_trainable": non_trainable, "total": trainable + non_trainable}


def layer_map(model, backbone: str, first: int, bn: str = "frozen") -> list[dict]:
    """Every layer with its block, type, output shape, parameters and whether it would train (no mutation)."""
    spec = backbones.get_spec(backbone)
    names = blocks_mod.block_names(model, spec.finetune_blocks, spec.last_conv_layer, spec.blocks_end)
    rows = []
    for i, layer in enumerate(model.layers):
        train, fixed = _potential(layer)
        rows.append(
            {
                "index": i,
                "layer": layer.name,
                "block": names[i],
                "type": type(layer).__name__,
                "output_shape": str(tuple(layer.output.shape)),
                "params": train + fixed,
                "trainable": bool(_would_train(layer, i, first, bn) and train),
            }
        )
    return rows


def unfreeze(model, first: int, bn: str = "frozen") -> None:
    """Set the trainable flags of `model` (a private copy): layers from `first` up train, BN per `bn`."""
    for i, layer in enumerate(model.layers):
        layer.trainable = _would_train(layer, i, first, bn)


# ---- the boundary ----------------------------------------------------------------


@dataclass
class Split:
    """The classifier cut at the unfreeze point.

    lower: (N, S, S, 3) preprocessed images -> the crossing tensors (frozen).
    upper: the crossing tensors -> (N, classes) logits; its layers ARE the classifier's.
    """

    lower: object
    upper: object
    crossing: list[str]  # the layers whose outputs cross the boundary
    shapes: list[tuple[int, ...]]  # each crossing tensor's shape without the batch axis

    @property
    def elements(self) -> int:
        """Numbers per image at the boundary."""
        return int(sum(math.prod(s) for s in self.shapes))


def split(model, first: int) -> Split:
    """Cut `model` between layer `first - 1` and layer `first`: every tensor made below and used above."""
    import keras

    index = {id(layer): i for i, layer in enumerate(model.layers)}
    crossing, seen = [], set()
    for layer in model.layers[first:]:
        for node in layer._inbound_nodes:
            for tensor in node.input_tensors:
                producer = tensor._keras_history.operation
                if index.get(id(producer), first) < first and id(tensor) not in seen:
                    seen.add(id(tensor))
                    crossing.append(tensor)
    lower = keras.Model(model.input, crossing, name="below_boundary")
    upper = keras.Model(crossing if len(crossing) > 1 else crossing[0], model.output, name="above_boundary")
    return Split(
        lower,
        upper,
        [t._keras_history.operation.name for t in crossing],
        [tuple(int(d) for d in t.shape[1:]) for t in crossing],
    )


class _Boundary:
    """A compiled call of the frozen part: (B, S, S, 3) [0, 255] images -> (B, F) float16, tensors flattened."""

    def __init__(self, cut: Split, preprocess) -> None:
        import tensorflow as tf

        self.preprocess = preprocess
        size = cut.lower.input_shape[1:]
        lower = cut.lower

        def forward(x):
            out = lower(x, training=False)
            out = out if isinstance(out, list | tuple) else [out]
            flat = [tf.reshape(o, (tf.shape(o)[0], -1)) for o in out]
            return tf.cast(tf.concat(flat, axis=1), tf.float16)

        strategy = distribute.current()
        if strategy.num_replicas_in_sync > 1:  # each batch split over every replica of every worker
            self._forward = distribute.spread(forward, strategy)
        else:
            self._forward = tf.function(forward, input_signature=[tf.TensorSpec((None, *size), tf.float32)])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        x = np.asarray(self.preprocess(np.asarray(images, dtype=np.float32)), dtype=np.float32)
        out = np.asarray(self._forward(x))
        if not np.isfinite(out).all():
            raise BoundaryOverflow("the boundary tensors exceed float16's range (65504)")
        return out


def unflatten(flat: np.ndarray, shapes: list[tuple[int, ...]]):
    """(B, F) float16 -> the crossing tensors as float32 (one array, or a list for several)."""
    out, start = [], 0
    for shape in shapes:
        size = math.prod(shape)
        out.append(flat[:, start : start + size].astype(np.float32).reshape(-1, *shape))
        start += size
    return out[0] if len(out) == 1 else out


def _weights_digest(model) -> str:
    """A digest of the frozen part's weights: a fine-tune of a fine-tune has other lower weights."""
    h = hashlib.sha256()
    for w in model.weights:
        h.update(np.ascontiguousarray(np.asarray(w)).tobytes())
    return h.hexdigest()[:16]


def boundary_plan(cut: Split, n_images: int, train_images: int, views: int) -> dict:
    """Whether the boundary tensors fit the memory budget: {"mode", "why", "bytes", "budget", "layers"}."""
    rows = n_images + (train_images * views)
    need = 2 * rows * cut.elements * 2  # float16, twice: the cache and the per-split copies served from it
    budget = boundary_budget_bytes()
    layers = cut.crossing
    if need <= budget:
        mode = "cached"
        why = (
            f"the frozen part, up to {', '.join(layers)}, runs once per image"
            + (f" and per augmented view ({views} views)" if views else "")
            + f": {need / 2**20:.0f} MB of float16 boundary tensors, within the {budget / 2**20:.0f} MB budget"
        )
    else:
        mode = "full"
        why = (
            f"the boundary tensors would need {need / 2**20:.0f} MB, more than the {budget / 2**20:.0f} MB budget "
            "(CONVSCOPE_BOUNDARY_BUDGET_MB), so every step runs the whole model on image batches"
        )
    return {"mode": mode, "why": why, "bytes": int(need), "budget": budget, "layers": layers}


# ---- the optimizer -----------------------------------------------------------------


def _layerwise(base):
    """`base` (a Keras optimizer class) whose rate is scaled per variable by `multipliers` (variable path -> factor).

    Keras 3 has no MultiOptimizer; scaling the rate inside update_step keeps one optimizer, one
    state and one checkpoint, and works for Adam too (scaling gradients would not: Adam
    divides their scale away).
    """
    import keras

    @keras.saving.register_keras_serializable(package="convscope", name=f"Layerwise{base.__name__}")
    class Layerwise(base):
        def __init__(self, *args, multipliers: dict | None = None, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.multipliers = dict(multipliers or {})

        def build(self, variables) -> None:
            super().build(variables)
            self._factors = [float(self.multipliers.get(v.path, 1.0)) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            factor = self._factors[self._get_variable_index(variable)]
            return super().update_step(gradient, variable, learning_rate * factor)

        def get_config(self) -> dict:
            return {**super().get_config(), "multipliers": self.multipliers}

    Layerwise.__name__ = Layerwise.__qualname__ = f"Layerwise{base.__name__}"
    return Layerwise


_LAYERWISE: dict[str, type] = {}


def make_optimizer(config: TrainConfig, steps: int, multipliers: dict[str, float] | None = None):
    """The fine-tune's optimizer: warm-up then cosine decay over `steps`; per-variable factors if given."""
    import keras

    ft = config.finetune
    warmup = int(round(steps * ft.warmup))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(steps - warmup, 1),
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    base = type(fit.make_optimizer(config.optimizer, 1e-3))
    if not multipliers:
        return fit.make_optimizer(config.optimizer, schedule)
    if base.__name__ not in _LAYERWISE:
        _LAYERWISE[base.__name__] = _layerwise(base)
    kwargs = {"momentum": 0.9} if config.optimizer == "sgd" else {}
    return _LAYERWISE[base.__name__](learning_rate=schedule, multipliers=multipliers, **kwargs)


def decay_multipliers(model, backbone: str, first: int, decay: float) -> dict[str, float]:
    """Variable path -> rate factor: 1 for the head, `decay` for the top block, `decay**2` below it, ..."""
    if decay >= 1.0:
        return {}
    groups = [b for b in model_blocks(model, backbone) if b.last >= first]  # the head last
    out: dict[str, float] = {}
    for depth, block in enumerate(reversed(groups)):
        factor = decay**depth
        for name in block.layer_names:
            for v in model.get_layer(name).trainable_weights:
                out[v.path] = factor
    return out


# ---- the fit -----------------------------------------------------------------------


def _image_fetch(dataset, items, config: TrainConfig, spec, train: bool, keep: bool):
    """fetch(view, indices) -> preprocessed image batch (augmented when `train`) for full forward passes."""
    decoded = DecodedImages([str(dataset.path(i)) for i in items], config.data.image_size, config.data.resize, keep)
    aug = augmenter(config.data.augment, config.seed) if train and config.data.augment.enabled else None

    def fetch(_view, indices):
        x = decoded.batch(indices).astype(np.float32)
        if aug is not None:
            x = np.asarray(aug(x, training=True))
        return np.asarray(spec.preprocess(x), dtype=np.float32)

    return fetch


@dataclass
class Setup:
    """A fine-tune ready to fit: the model to fit, its batches, and how to predict a split."""

    classifier: object  # the whole classifier (a private copy of the parent's), flags set
    fitted: object  # what fit() trains: the part above the boundary, or a model sharing all layers
    first: int
    cut: Split
    boundary: dict  # boundary_plan(): cached or full, and why
    params: dict
    train_data: object  # a PyDataset of shuffled batches
    val_data: object  # (x, y) or a tf.data.Dataset, None without a validation split
    predict: object  # predict(split) -> (n, classes) logits
    labels: dict  # split -> (n,) int32
    dataset: object
    splits: dict
    features: dict
    mixed: bool = False  # `fitted` is a mixed-precision copy, not sharing the classifier's variables


def open_data(config: TrainConfig, parent: Run, report=fit._noop, stop=None):
    """The parent's data, checked unchanged since the parent trained, and its splits."""

    def data_progress(stage: str, done: int, total: int) -> None:
        report(stage="data", message=stage, done=done, total=total)
        if stop is not None and stop.is_set():
            raise fit.Stopped("by the user while the data was opened")

    dataset = sources.open_dataset(config.data.source, data_progress)
    dataset.check()
    if parent.config().get("fingerprint") != dataset.fingerprint:
        raise fit.TrainingError(
            f"the data of {config.data.source!r} changed since {parent.name} was trained; "
            "fine-tune on the same data, or train a new run first"
        )
    # The parent's own split, whatever seed shuffles the fine-tune: no validation or test image leaks into training.
    return dataset, split_items(dataset.items, split_seed(parent.config()), config.data.val_frac, config.data.test_frac)


def check_data(parent: Run) -> None:
    """Raises TrainingError (or a ConvScopeError) when the parent's data cannot be opened or changed since."""
    open_data(TrainConfig.from_json(parent.config()), parent)


def split_seed(config: dict) -> int:
    """The seed a run split its data with (a fine-tune keeps its parent's)."""
    return int(config.get("split_seed", config.get("seed", 0)))


def prepare(
    config: TrainConfig, parent: Run, dataset, splits, report=fit._noop, stop=None, mixed: bool | None = None
) -> Setup:
    """Load a private copy of the parent's classifier, unfreeze it, and serve its data (cached boundary or images).

    `mixed`: fit a mixed-precision copy (default: mixed_precision(), i.e. on a GPU).
    """
    import keras

    ft: FinetuneConfig = config.finetune
    spec = backbones.get_spec(config.backbone)
    y = {k: fit._labels(v) for k, v in splits.items()}
    classifier = keras.models.load_model(parent.model_file, safe_mode=True)  # the parent's file is only read
    first = first_trainable(classifier, config.backbone, ft)
    unfreeze(classifier, first, ft.bn)
    params = counts(classifier, first, ft.bn)
    cut = split(classifier, first)
    views = config.aug_views if config.data.augment.enabled else 0
    plan = boundary_plan(cut, len(dataset.items), len(splits["train"]), views)
    mixed = mixed_precision() if mixed is None else mixed
    # Each worker opened its own data and parent, and decided these alone (its budget, its GPUs).
    if distribute.multi_worker(distribute.current()):
        setup = f"data {dataset.fingerprint[:16]}, parent weights {_weights_digest(classifier)}"
        distribute.agree(f"{setup}, {plan['mode']} boundary, mixed precision {mixed}", "their fine-tune setup")
    features: dict = {}
    if plan["mode"] == "cached":
        try:
            cached_data = _cached_batches(config, cut, dataset, splits, y, spec, views, report, stop)
        except BoundaryOverflow as exc:
            plan = {**plan, "mode": "full", "why": f"{exc}, so every step runs the whole model on image batches"}
        else:
            features, train_data, val_data, predict = cached_data
            fitted = cut.upper
    if plan["mode"] == "full":
        keep = len(dataset.items) * config.data.image_size**2 * 3 <= boundary_budget_bytes()
        fitted = keras.Model(classifier.input, classifier.output, name="trainer")  # shares the layers
        fetch = _image_fetch(dataset, splits["train"], config, spec, True, keep)
        train_data = fit.index_batches(len(y["train"]), 1, y["train"], config.batch_size, config.seed, fetch)

        def images(split_name: str):
            ds = make_tf_dataset(
                dataset,
                splits[split_name],
                config.data.image_size,
                resize=config.data.resize,
                batch_size=config.batch_size,
            )
            return ds.map(lambda a, b: (spec.preprocess(a), b))

        val_data = images("validation") if len(y["validation"]) else None

        def predict(split_name: str) -> np.ndarray:
            return np.asarray(classifier.predict(images(split_name), verbose=0))

    if mixed:
        fitted = mixed_copy(fitted)
    return Setup(
        classifier, fitted, first, cut, plan, params, train_data, val_data, predict, y, dataset, splits, features, mixed
    )


def _cached_batches(config: TrainConfig, cut: Split, dataset, splits, y, spec, views: int, report, stop):
    """The boundary tensors of every image (and augmented view), cached, served as batches for `cut.upper`.

    Returns:
        (features facts, training batches, validation (x, y) or None, predict(split) -> logits).

    Raises:
        BoundaryOverflow: a value does not fit float16.
    """
    boundary = _Boundary(cut, spec.preprocess)
    key = feature_cache.FeatureKey(config.backbone, config.data.image_size, config.data.resize)
    tag = json.dumps([_CACHE_VERSION, dataset.fingerprint, cut.crossing, _weights_digest(cut.lower)])
    name = hashlib.sha256(tag.encode()).hexdigest()[:32]
    progress = fit.features_progress(report, stop, "Computing the boundary tensors")
    n = len(dataset.items)
    clean, hit = feature_cache.cached_array(
        key.folder / f"boundary-{name}.npy",
        (n,),
        lambda: feature_cache.compute_batches(
            boundary, dataset, dataset.items, key, config.batch_size, None, 0, progress, 0, n
        ),
        progress,
    )
    features = {"computed": 0 if hit else n, "cached": n if hit else 0}
    row = {item.rel: k for k, item in enumerate(dataset.items)}
    x = {s: clean[[row[i.rel] for i in items]] for s, items in splits.items()}
    stack = x["train"][None]
    if views:
        aug, hit = feature_cache.augmented_features(
            boundary,
            dataset,
            splits["train"],
            key,
            config.data.augment,
            views,
            config.seed,
            config.batch_size,
            progress,
            prefix=f"boundary-{name}-",
        )
        stack = np.concatenate([stack, aug])
        features["augmented_views"] = views

    def fetch(view, indices):
        return unflatten(stack[view, indices], cut.shapes)

    n_train = len(y["train"])
    train_data = fit.index_batches(n_train, len(stack), y["train"], config.batch_size, config.seed, fetch)
    val_data = (unflatten(x["validation"], cut.shapes), y["validation"]) if len(y["validation"]) else None

    def predict(split_name: str) -> np.ndarray:
        return np.asarray(cut.upper.predict(unflatten(x[split_name], cut.shapes), verbose=0))

    return features, train_data, val_data, predict


def mixed_precision() -> bool:
    """Fit in mixed precision (float16 compute, float32 weights): on a GPU, or when CONVSCOPE_MIXED_PRECISION=1."""
    flag = os.environ.get("CONVSCOPE_MIXED_PRECISION", "").strip()
    if flag in ("0", "1"):
        return flag == "1"
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def mixed_copy(model):
    """`model` rebuilt with the mixed_float16 policy (logits kept float32 for a stable loss), same weights.

    A loaded model keeps each layer's saved float32 policy, so setting the global policy would not
    reach it; its layers are rebuilt instead. The copy does not share variables with `model`:
    copy_weights() brings the trained weights back.
    """
    import keras

    def clone(layer):
        config = layer.get_config()
        if layer.name != "logits":
            config["dtype"] = keras.DTypePolicy("mixed_float16")
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy_weights(model, copy)
    return copy


def copy_weights(source, target) -> None:
    """Weights of every layer of `source` into the layer of the same name in `target`."""
    for layer in source.layers:
        if layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())


def run_finetune(config, run, stop, report, resume, start_epoch, history, info) -> tuple[str, str]:
    """The fine-tune behind fit.train(): same arguments and outcome as fit._train."""
    import keras

    ft: FinetuneConfig = config.finetune
    parent = parent_of(ft.parent)
    dataset, splits = open_data(config, parent, report, stop)
    if resume:
        if run.config().get("fingerprint") != dataset.fingerprint:
            raise fit.TrainingError(f"{run.name}: the data changed since this run started, so it cannot be resumed")
    else:
        runs.write_json(
            run.path / "config.json",
            {
                **config.to_json(),
                "parent": parent.name,
                "split_seed": split_seed(parent.config()),
                "labels": dataset.classes,
                "fingerprint": dataset.fingerprint,
                "split_sizes": {k: len(v) for k, v in splits.items()},
                "created": time.time(),
            },
        )
        runs.write_json(run.path / "labels.json", dataset.classes)
        # The fine-tune's history starts with its parent's: epochs continue the count.
        parent_history = parent.history()
        for k in fit.HISTORY_KEYS:
            if k in parent_history:
                history[k] = list(parent_history[k][: ft.parent_epochs])
        start_epoch = len(history.get("loss", []))
        run.write_history(history)
    keras.utils.set_random_seed(config.seed)
    # A resumed run keeps the precision its checkpoint (and its optimizer's loss scaling) was saved with.
    setup = prepare(config, parent, dataset, splits, report, stop, run.config().get("mixed_precision"))
    if not resume:
        runs.write_json(run.path / "config.json", {**run.config(), "mixed_precision": setup.mixed})
    info.update(params=setup.params, parent=parent.name, boundary=setup.boundary, features=setup.features)
    info["boundary"] = {**setup.boundary, "mixed_precision": setup.mixed}
    y = setup.labels
    weights = fit.class_weights(y["train"], len(dataset.classes)) if config.class_weights else None
    total_epochs = config.total_epochs
    steps = len(setup.train_data)
    multipliers = decay_multipliers(setup.classifier, config.backbone, setup.first, ft.layer_decay)
    fitted = setup.fitted
    mixed = setup.mixed
    optimizer = make_optimizer(config, steps * config.epochs, multipliers)
    if mixed:  # float16 gradients underflow without loss scaling
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    fitted.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if resume and run.checkpoint.is_file():
        _restore(fitted, keras.models.load_model(run.checkpoint, safe_mode=True))
        if mixed:
            copy_weights(fitted, setup.classifier)
    info["classifier"] = setup.classifier
    report(
        stage="training",
        epoch=start_epoch,
        epochs=total_epochs,
        batch=0,
        batches=steps,
        history={k: list(v) for k, v in history.items()},
    )
    val_steps = math.ceil(len(y["validation"]) / config.batch_size)
    shown = replace(config, epochs=total_epochs)  # the count continues the parent's
    callbacks = fit._callbacks(run, fitted, shown, history, stop, report, steps, val_steps, info.get("seconds"))
    if mixed:  # the classifier (what is saved, also on Stop) follows the copy after every epoch
        callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: copy_weights(fitted, setup.classifier)))
    # predict() after the fit goes through the classifier or the cut's upper part: fixed for the strategy too.
    with distribute.fitting(fitted, setup.train_data, setup.classifier, setup.cut.upper):
        if start_epoch < total_epochs:
            fitted.fit(
                setup.train_data,
                validation_data=setup.val_data,
                epochs=total_epochs,
                initial_epoch=start_epoch,
                class_weight=weights,
                shuffle=False,  # the batches shuffle themselves, seeded
                callbacks=callbacks,
                verbose=0,
            )
    if mixed:
        copy_weights(fitted, setup.classifier)  # after EarlyStopping put the best weights back
    return fit.finish(run, dataset, y, setup.predict, callbacks, shown, history, val_steps, report, setup.classifier)


def _restore(fitted, saved) -> None:
    """Put a checkpoint's weights and optimizer state into `fitted` (which shares the classifier's layers)."""
    copy_weights(saved, fitted)
    fitted.optimizer.build(fitted.trainable_variables)
    for mine, theirs in zip(fitted.optimizer.variables, saved.optimizer.variables, strict=True):
        mine.assign(theirs)


# ---- the learning-rate finder -----------------------------------------------------


def lr_find(
    config: TrainConfig,
    *,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    report=fit._noop,
    progress=None,
    stop=None,
) -> dict:
    """The learning-rate sweep on the fine-tune setup of `config` (the head alone with `unfreeze_from="head"`).

    It fits a private copy of the parent's classifier (on the boundary cache when it fits), so the
    parent's files never change.

    Returns:
        {"lrs", "losses", "suggestion", "steepest", "min_over_10", "diverged", "parent",
         "trainable_params", "boundary"}.
    """
    import keras

    from engine.training import lr_finder

    parent = parent_of(config.finetune.parent)
    dataset, splits = open_data(config, parent, report, stop)
    keras.utils.set_random_seed(config.seed)
    setup = prepare(config, parent, dataset, splits, report, stop, mixed=False)  # float32: no loss scaling needed
    sweep = lr_finder.sweep(
        setup.fitted,
        setup.train_data,
        optimizer=config.optimizer,
        start_lr=start_lr,
        end_lr=end_lr,
        max_steps=steps,
        stop=stop,
        progress=progress,
    )
    return {
        **sweep.to_json(),
        "parent": parent.name,
        "trainable_params": setup.params["trainable"],
        "boundary": setup.boundary,
    }


# ---- what changed ------------------------------------------------------------------

PROBE_IMAGES = 64  # validation images (or test, or train) both models see for CKA and the projection


def probe_set(config: dict, n: int = PROBE_IMAGES):
    """A fixed set of labelled images of a run's data: (images (n, S, S, 3) float32 in [0, 255], labels (n,))."""
    from engine.data.pipeline import DecodedImages
    from engine.data.report import balanced_sample

    train_config = TrainConfig.from_json(config)
    dataset = sources.open_dataset(train_config.data.source)
    splits = split_items(dataset.items, split_seed(config), train_config.data.val_frac, train_config.data.test_frac)
    pool = splits["validation"] or splits["test"] or splits["train"]
    classes = max(len({i.label for i in pool}), 1)
    items = balanced_sample(pool, max(1, n // classes))[:n]
    decoded = DecodedImages(
        [str(dataset.path(i)) for i in items], train_config.data.image_size, train_config.data.resize
    )
    return decoded.batch(np.arange(len(items))).astype(np.float32), fit._labels(items)


def what_changed(parent: Run, child: Run) -> dict:
    """Per block weight change and CKA, and the penultimate features before and after (kept in changes.json).

    Returns:
        changes.what_changed()'s JSON form for the two runs' classifiers on the child's probe set.
    """
    import keras

    from engine.training import changes

    saved = runs.read_json(child.path / "changes.json")
    if saved and "labels" in saved.get("projection", {}):
        return saved
    config = child.config()
    spec = backbones.get_spec(config["backbone"])
    images, labels = probe_set(config)
    x = np.asarray(spec.preprocess(images), dtype=np.float32)
    before = keras.models.load_model(parent.model_file, safe_mode=True)
    after = keras.models.load_model(child.model_file, safe_mode=True)
    result = changes.to_json(changes.what_changed(before, after, x, labels, spec))
    result["projection"]["labels"] = [int(v) for v in labels]
    runs.write_json(child.path / "changes.json", result)
    return result
