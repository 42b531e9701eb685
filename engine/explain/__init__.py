"""Inside the network: activations, class activation maps and input attributions.

One file per method over engine.explain.base; `METHODS` (engine.explain.maps) is the registry.
"""

from engine.errors import ExplainError
from engine.explain.maps import (
    CAM_METHODS,
    INPUT_METHODS,
    METHODS,
    Explanation,
    explain_image,
    heatmaps,
    image_digest,
    make,
    peak_in_original,
    relative_to,
)
from engine.model.compiled import CompiledModel
from engine.model.explainable import Explainable, LayerInfo

__all__ = [
    "CAM_METHODS",
    "INPUT_METHODS",
    "METHODS",
    "CompiledModel",
    "Explainable",
    "ExplainError",
    "Explanation",
    "LayerInfo",
    "explain_image",
    "heatmaps",
    "image_digest",
    "make",
    "peak_in_original",
    "relative_to",
]
