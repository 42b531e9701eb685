"""A fine-tune's config and its parent run: checked, its data reopened unchanged, its split kept.

An imported parent (engine.importing) came without data: the fine-tune takes a labelled source whose
class folders carry the model's class names (any order: relabelled to the model's label indices) and
splits it with its own seed and fractions.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import PurePath

import numpy as np

from engine import backbones, runs
from engine.config import FinetuneConfig, TrainConfig
from engine.data import sources
from engine.data.pipeline import DecodedImages
from engine.data.report import balanced_sample
from engine.errors import FinetuneError
from engine.runs import Run
from engine.training.batches import labels_of
from engine.training.callbacks import noop
from engine.training.loop import TrainingError, open_checked


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
    imported = config.get("imported") or {}
    if imported.get("format", "keras") != "keras":
        raise FinetuneError(
            f"{run.name} is an imported SavedModel: ConvScope runs it as an opaque function, with no layers to "
            "unfreeze. Import the model as a .keras file to fine-tune it."
        )
    if imported:
        return run  # a Keras model of the user's (or a fine-tune of one): unfrozen by layer, not by block
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
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    return keras.models.load_model(run.model_file, safe_mode=True)


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
    source: str = "",
) -> TrainConfig:
    """The TrainConfig of a fine-tune of `parent`: its data, backbone and head; the rate / 10 by default.

    `source`: the labelled data to fine-tune an imported run on (default: the source given at import).

    Raises:
        FinetuneError: an imported run without data, another source for a trained parent, or blocks
            (unfreeze_top, layer_decay) asked of an imported model.
    """
    saved = parent.config()
    base = TrainConfig.from_json(saved)
    if base.imported is not None and (unfreeze_top or layer_decay != 1.0):
        raise FinetuneError(
            "an imported model has no backbone blocks, so unfreezing the top N blocks and layer-wise rate decay "
            "do not apply: unfreeze it from a layer name, a layer index, or head"
        )
    if source and source != base.data.source:
        if not runs.is_imported(saved):
            raise FinetuneError(
                f"{parent.name} trained on {base.data.source!r}: a fine-tune continues on its parent's data"
            )
        base = replace(base, data=replace(base.data, source=source))
    if not base.data.source:
        raise FinetuneError(
            f"{parent.name} was imported without data: give a labelled dataset whose class folders are named "
            f"as its classes ({', '.join(parent.labels())}) to fine-tune it on"
        )
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
    if config.get("imported"):
        out["data"] = str((config.get("data") or {}).get("source", ""))  # chosen for a model that came without
    if config.get("early_stopping"):
        out["early stopping"] = f"after {config['early_stopping']} epochs without a better validation loss"
    if config.get("preset"):
        out["recipe"] = str(config["preset"])
    if "mixed_precision" in config:
        out["precision"] = "mixed (float16)" if config["mixed_precision"] else "float32"
    return out


def open_data(config: TrainConfig, parent: Run, report=noop, stop=None):
    """The parent's data, checked unchanged since the parent trained, and its splits (labels as the parent's).

    An imported parent trained on nothing here: the fine-tune's source is split with its own seed and
    fractions, and no fingerprint is compared.
    """
    dataset = open_checked(config, report, stop)
    if runs.is_imported(parent.config()):
        splits = runs.splits_of(config.to_json(), dataset)
    else:
        if not runs.same_files(parent.config(), dataset):  # corrections since are fine: the split is the same
            raise TrainingError(
                f"the data of {config.data.source!r} changed since {parent.name} was trained; "
                "fine-tune on the same data, or train a new run first"
            )
        # The parent's own split, whatever seed shuffles the fine-tune: no validation or test image leaks into
        # training.
        splits = parent.splits(dataset)
    return relabel(dataset, splits, parent.labels(), parent.name)


def relabel(dataset, splits: dict, labels: list[str], who: str):
    """(dataset, splits) with labels as indices into `labels` (a run's classes, in its model's output order).

    The split is made on the data as it opens (so every later reader splits it the same way); only the
    labels change. A dataset already in that order comes back as it is.

    Raises:
        FinetuneError: the class folders are not the run's class names.
    """
    if not labels or list(dataset.classes) == list(labels):
        return dataset, splits
    if set(dataset.classes) != set(labels):
        raise FinetuneError(
            f"{dataset.source!r} has the classes {', '.join(dataset.classes)}, but {who} scores "
            f"{', '.join(labels)}: fine-tune on class folders named as the model's classes (any order)"
        )
    index = [labels.index(name) for name in dataset.classes]
    items = {i.rel: replace(i, label=index[i.label]) for i in dataset.items}
    # the fingerprint stays the data's own: a fine-tune of this fine-tune compares it with the data as it opens
    out = replace(
        dataset,
        classes=list(labels),
        items=list(items.values()),
        _fingerprint=dataset.fingerprint,
        _files_fingerprint=dataset.files_fingerprint,
    )
    return out, {name: [items[i.rel] for i in part] for name, part in splits.items()}


def check_data(parent: Run, source: str = "") -> None:
    """Raises TrainingError (or a ConvScopeError) when the parent's data cannot be opened or changed since.

    `source`: for an imported parent, the labelled data to check (its class names); default the import's.
    """
    open_data(finetune_config(parent, unfreeze_from="head", source=source), parent)


PROBE_IMAGES = 64  # validation images (or test, or train) both models see for CKA and the projection


def probe_set(config: dict, n: int = PROBE_IMAGES):
    """A fixed set of labelled images of a run's data: (images (n, S, S, 3) float32 in [0, 255], labels (n,))."""
    train_config = TrainConfig.from_json(config)
    dataset = sources.open_dataset(train_config.data.source)
    dataset, splits = relabel(dataset, runs.splits_of(config, dataset), config.get("labels") or [], "the run")
    pool = splits["validation"] or splits["test"] or splits["train"]
    classes = max(len({i.label for i in pool}), 1)
    items = balanced_sample(pool, max(1, n // classes))[:n]
    decoded = DecodedImages(
        [str(dataset.path(i)) for i in items], train_config.data.image_size, train_config.data.resize
    )
    return decoded.batch(np.arange(len(items))).astype(np.float32), labels_of(items)
