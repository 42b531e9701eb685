"""Session-state keys shared between pages, with typed getters and setters.

The Dataset Explorer stores the chosen data, split settings and augmentation
here so that the Train page starts from the same choices.
"""

from __future__ import annotations

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


def set_display_name(source: str, name: str) -> None:
    st.session_state.setdefault(DISPLAY_NAMES, {})[source] = name


TRAIN_JOB = "train_job"  # the id (run name) of the job this session last started or opened


def train_job() -> str | None:
    return st.session_state.get(TRAIN_JOB)


def set_train_job(job_id: str | None) -> None:
    st.session_state[TRAIN_JOB] = job_id
