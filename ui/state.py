"""Session-state keys shared between pages, with typed getters and setters.

The Dataset Explorer stores the chosen data, split settings and augmentation
here so that the Train page starts from the same choices.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from engine.config import AugmentConfig, DataConfig

DATA_CONFIG = "data_config"
DATASETS = "opened_datasets"  # {source: Dataset}, this session's opened datasets
DISPLAY_NAMES = "source_names"  # {source: what the user calls it (an upload's file name)}


def data_config() -> DataConfig:
    return st.session_state.get(DATA_CONFIG, DataConfig())


def set_data_config(config: DataConfig) -> None:
    st.session_state[DATA_CONFIG] = config


def augment_config() -> AugmentConfig:
    return data_config().augment


def display_name(source: str) -> str:
    return st.session_state.get(DISPLAY_NAMES, {}).get(source, source)


def display_names() -> dict[str, str]:
    """{source: the name this session's user gave it (an upload's file name)}."""
    return st.session_state.get(DISPLAY_NAMES, {})


def set_display_name(source: str, name: str) -> None:
    st.session_state.setdefault(DISPLAY_NAMES, {})[source] = name


TRAIN_JOB = "train_job"  # the id (run name) of the job this session last started or opened


def train_job() -> str | None:
    return st.session_state.get(TRAIN_JOB)


def set_train_job(job_id: str | None) -> None:
    st.session_state[TRAIN_JOB] = job_id


# The backbone last chosen on any page: the default of every backbone picker in this session.
CHOSEN_BACKBONE = "chosen_backbone"


def chosen_backbone() -> str | None:
    return st.session_state.get(CHOSEN_BACKBONE)


def set_chosen_backbone(name: str | None) -> None:
    st.session_state[CHOSEN_BACKBONE] = name


# An image handed to Inside the network (Predict's "Explain this prediction").
# The serial grows with every handoff, so the image picker can preselect a new one
# once and otherwise leave the user's own choice alone.
INSPECT_IMAGE = "inspect_image"  # (name, (H, W, 3) uint8)
INSPECT_SERIAL = "inspect_image_serial"


def inspect_image() -> tuple[str, np.ndarray] | None:
    return st.session_state.get(INSPECT_IMAGE)


def inspect_serial() -> int:
    return st.session_state.get(INSPECT_SERIAL, 0)


def set_inspect_image(name: str, rgb: np.ndarray) -> None:
    st.session_state[INSPECT_IMAGE] = (name, rgb)
    st.session_state[INSPECT_SERIAL] = inspect_serial() + 1


# The augmentation last previewed in the Dataset Explorer. Training uses
# data_config().augment, which the Explorer changes only when the user ticks
# "Use this augmentation when training".
AUGMENT_PREVIEW = "augment_preview"


def augment_preview() -> AugmentConfig:
    return st.session_state.get(AUGMENT_PREVIEW, augment_config())


def set_augment_preview(config: AugmentConfig) -> None:
    st.session_state[AUGMENT_PREVIEW] = config
