"""Backbones: the registry of specs and the one `load` that builds them."""

from engine.backbones.registry import (
    DEFAULT_BACKBONE,
    BackboneSpec,
    all_specs,
    availability,
    get_spec,
    load,
)

__all__ = ["DEFAULT_BACKBONE", "BackboneSpec", "all_specs", "availability", "get_spec", "load"]
