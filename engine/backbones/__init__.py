"""Backbones: the registry of specs and the one `load` that builds them."""

from engine.backbones.conventions import CONVENTIONS, convention, preprocess_of
from engine.backbones.registry import (
    DEFAULT_BACKBONE,
    BackboneSpec,
    all_specs,
    availability,
    get_spec,
    load,
)

__all__ = [
    "CONVENTIONS",
    "DEFAULT_BACKBONE",
    "BackboneSpec",
    "all_specs",
    "availability",
    "convention",
    "get_spec",
    "load",
    "preprocess_of",
]
