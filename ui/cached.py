"""The only place with st.cache_resource / st.cache_data, wrapping engine loaders.

Cached resources are shared by every session: never mutate what they return.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from engine import backbones
from engine.data import report, sources
from engine.explain import Explainable, checks, concepts
from engine.health.explain import head_model
from engine.model.classifier import ImageNetClassifier
from engine.samples import sample_photo
from engine.training.features import FeatureExtractor


@st.cache_resource(show_spinner=False, max_entries=3)
def imagenet_classifier(name: str) -> ImageNetClassifier:
    """One classifier per backbone per process (read-only, thread-safe)."""
    return ImageNetClassifier(name)


@st.cache_data(show_spinner=False, ttl=60)
def backbone_rows() -> list[dict]:
    """Registry entries with availability; re-checked every minute."""
    rows = []
    for spec in backbones.all_specs():
        ok, reason = backbones.availability(spec, paths=False)  # the dashboard shows no server paths
        rows.append(
            {
                "name": spec.name,
                "title": spec.title,
                "source": spec.source,
                "imagenet_head": spec.imagenet_head,
                "input_size": spec.input_size,
                "params": spec.params,
                "available": ok,
                "reason": reason,
            }
        )
    return rows


@st.cache_data(show_spinner=False)
def sample(name: str) -> np.ndarray:
    return sample_photo(name)


@st.cache_resource(show_spinner=False, max_entries=2)
def feature_extractor(name: str) -> FeatureExtractor:
    """One pooled feature extractor per backbone per process (read-only, thread-safe)."""
    return FeatureExtractor(name)


@st.cache_data(show_spinner=False, max_entries=2000)
def preview(path: str, box: tuple[int, ...] | None = None, px: int = 256) -> np.ndarray:
    """Shrunk images for grids: big photos are decoded once, not on every rerun."""
    return report.preview(path, px, list(box) if box else None)


@st.cache_resource(show_spinner=False, max_entries=3)
def explainable_backbone(name: str) -> Explainable:
    """An ImageNet classifier prepared for explanations (read-only, shared), its passes already traced."""
    return Explainable.from_backbone(name).warm_up()


@st.cache_resource(show_spinner=False, max_entries=3)
def explainable_run(path: str, mtime: float) -> Explainable:
    """A trained run's model, its passes already traced; `mtime` makes a rewritten model.keras load again."""
    return Explainable.from_run(path).warm_up()


@st.cache_resource(show_spinner=False, max_entries=2)
def health_model(head_file: str, _report: dict):
    """The health report's backbone with its held-out heads, for the maps (keyed by its heads' file)."""
    return head_model(_report)


@st.cache_resource(show_spinner=False, max_entries=2)
def randomised(_model: Explainable, key: str, top_layers: int = 3) -> Explainable:
    """The model with its top layers randomised, for the sanity check (a copy: the shared model is untouched)."""
    return checks.randomised_copy(_model, top_layers)


@st.cache_data(show_spinner=False, max_entries=4)
def probe_images(size: int) -> np.ndarray:
    """(16, size, size, 3) float32: the sample photos and 12 built-in shapes images, resized.

    A fixed batch over which "dead channels" are counted (a unit silent on one image may not be dead).
    """
    from engine import imaging
    from engine.data.ingest import load_item
    from engine.data.report import balanced_sample
    from engine.samples import SAMPLE_PHOTOS

    photos = [sample_photo(name) for name in SAMPLE_PHOTOS]
    shapes = builtin_shapes()
    items = balanced_sample(shapes.items, max(1, 12 // len(shapes.classes)))[:12]
    photos += [load_item(shapes, item) for item in items]
    return np.stack([imaging.resize(rgb, size) for rgb in photos]).astype(np.float32)


@st.cache_data(show_spinner=False, max_entries=16)
def concept_strip(source: str, size: int, policy: str, count: int = 8) -> tuple[np.ndarray, int, int]:
    """The first `count` images of a concept set, (k, size, size, 3) uint8; the set's size; its unreadable files."""
    found = concepts.load_set(source, size, policy)
    return found.images[:count].astype(np.uint8), len(found.images), found.skipped


@st.cache_resource(show_spinner=False)
def builtin_shapes(source: str = sources.DEFAULT_SOURCE):
    """A shapes set (the default one, or a run's), generated once per cache folder, for picking test images."""
    return sources.open_dataset(source)


@st.cache_data(show_spinner=False, max_entries=32)
def model_summary(config_json: str, num_classes: int) -> dict:
    """Parameter counts and layer rows of the model a TrainConfig would build (built once per config)."""
    import json

    from engine.config import TrainConfig
    from engine.training import models

    built = models.build(TrainConfig.from_json(json.loads(config_json)), num_classes)
    return models.summarise(built.classifier).to_json()


# ---- fine-tuning ------------------------------------------------------------------------


@st.cache_resource(show_spinner=False, max_entries=3)
def run_classifier(path: str, mtime: float):
    """A run's saved classifier for its layer map and counts (shared, read-only: nothing here trains it)."""
    from engine import runs
    from engine.training import finetune

    return finetune.load_classifier(runs.Run(Path(path)))


@st.cache_data(show_spinner="Looking at how ImageNet-like the data is…", max_entries=16)
def finetune_advice(path: str, mtime: float) -> dict:
    """The strategy advice for fine-tuning a run: its data's images per class and ImageNet-likeness."""
    from engine import backbones, runs
    from engine.errors import FinetuneError
    from engine.training import advice, finetune

    run = runs.Run(Path(path))
    config = run.config()
    if not config.get("backbone"):  # an imported model (and its fine-tunes): no spec whose blocks the advice counts
        raise FinetuneError(
            "the advice counts the blocks of one of ConvScope's backbones, and this model was imported: "
            "pick the layer to unfreeze from yourself"
        )
    images, _ = finetune.probe_set(config, 32)
    similarity = advice.imagenet_similarity(images.astype(np.uint8), imagenet_classifier("efficientnet_lite0"))
    per_class = config.get("split_sizes", {}).get("train", 0) / max(len(run.labels()), 1)
    return advice.advise(per_class, similarity, backbones.get_spec(config["backbone"])).to_json()


@st.cache_data(show_spinner=False, max_entries=8)
def probe_images_of(path: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """`n` fixed validation images of a run's data, one class after another: (n, S, S, 3) uint8 and labels."""
    from engine import runs
    from engine.training import finetune

    images, labels = finetune.probe_set(runs.Run(Path(path)).config(), n)
    return images.astype(np.uint8), labels


@st.cache_resource(show_spinner=False, max_entries=2)
def shapes_test_items(path: str):
    """A shapes run's dataset (with its boxes) and its test images, for the pointing game."""
    from engine import runs

    run = runs.Run(Path(path))
    dataset = sources.open_dataset(run.train_config.data.source)
    splits = run.splits(dataset)
    return dataset, splits["test"] or splits["validation"]


@st.cache_data(show_spinner="Checking the run's data…", max_entries=16, ttl=300)
def parent_data_problem(path: str, mtime: float) -> str | None:
    """Why a run's data cannot serve a fine-tune (gone, or changed since it trained), or None."""
    from engine import runs
    from engine.errors import ConvScopeError
    from engine.training import finetune

    try:
        finetune.check_data(runs.Run(Path(path)))
    except ConvScopeError as exc:
        return str(exc)
    return None
