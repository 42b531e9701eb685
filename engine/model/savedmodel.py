"""An imported SavedModel: opaque, its serving function wrapped as a Keras model that ends in logits.

ConvScope cannot see a SavedModel's layers, only call it: `keras.layers.TFSMLayer` on its `serve`
endpoint (what Keras's `model.export` writes) or `serving_default` (what `tf.saved_model.save`
writes). What its output is cannot be read from a last layer either: `output_kind` tells it from
the values on probe images. The wrapper turns them into logits with standard Keras ops:

- softmax: log p. softmax(log p) = p, so predictions are the model's own, but for an opaque model
  these scores are log-probabilities, not the pre-softmax logits (which the SavedModel hides).
- logits: as they are.
- sigmoid: the logit z = log(p / (1 - p)), then as binary_logit.
- binary_logit: two logits [-z/2, z/2], as for .keras imports (engine.importing.model).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.errors import ImportModelError

ENDPOINTS = ("serve", "serving_default")  # tried in this order
TINY = 1e-30  # a probability of 0 becomes log(1e-30) = -69, not -inf
SIGMOID_EPS = 1e-7  # a sigmoid's p kept in [eps, 1 - eps] (float32 can tell 1 - 1e-7 from 1): |z| <= 16
OPAQUE_REASON = (  # said where CAMs or layers are asked for; callers add which input attributions apply
    "an imported SavedModel is opaque: ConvScope cannot see its layers, so feature maps and CAMs are not offered"
)
SCORES_NOTE = (
    "the SavedModel is opaque: its class scores are log-probabilities (softmax of them gives its probabilities), "
    "not the pre-softmax logits it hides"
)


def serving_layer(folder: str | Path):
    """A keras.layers.TFSMLayer on the first of ENDPOINTS the SavedModel at `folder` has.

    Raises:
        ImportModelError: the SavedModel cannot be loaded, or has neither endpoint.
    """
    import keras  # heavy: TensorFlow loads in seconds; only an opaque model pays

    last = ""
    for endpoint in ENDPOINTS:
        try:
            return keras.layers.TFSMLayer(str(folder), call_endpoint=endpoint, trainable=False, name="savedmodel")
        except ValueError as exc:  # this endpoint is not there: try the next one
            last = (str(exc).strip().splitlines() or [""])[0][:300]
        except Exception as exc:  # noqa: BLE001 - TensorFlow raises many kinds for a SavedModel it cannot read
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            raise ImportModelError(f"the SavedModel cannot be loaded ({type(exc).__name__}: {first})") from exc
    raise ImportModelError(f"the SavedModel has no {' or '.join(ENDPOINTS)} signature to call ({last})")


def input_specs(layer) -> list:
    """The tf.TensorSpecs the layer's endpoint takes (flattened)."""
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only an opaque model pays

    fn = layer.call_endpoint_fn
    concrete = fn if hasattr(fn, "structured_input_signature") else (list(fn.concrete_functions) or [None])[0]
    if concrete is None:
        raise ImportModelError("the SavedModel's serving function has no traced input signature")
    return [s for s in tf.nest.flatten(concrete.structured_input_signature) if isinstance(s, tf.TensorSpec)]


def single_output(outputs):
    """The one tensor of a serving function's outputs (a tensor, or a dict/list of one)."""
    if isinstance(outputs, dict):
        values = list(outputs.values())
        shown = ", ".join(f"{k} {tuple(v.shape)}" for k, v in outputs.items())
    elif isinstance(outputs, list | tuple):
        values = list(outputs)
        shown = ", ".join(str(tuple(v.shape)) for v in values)
    else:
        return outputs
    if len(values) != 1:
        raise ImportModelError(
            f"the SavedModel has {len(values)} outputs ({shown}); ConvScope takes one of class scores"
        )
    return values[0]


def output_kind(scores: np.ndarray) -> str:
    """What (N, K) scores are, from their values (engine.config.OUTPUT_KINDS).

    Rows in [0, 1] summing to 1: softmax; one column in [0, 1]: sigmoid; one column otherwise:
    binary_logit; anything else: logits.
    """
    scores = np.asarray(scores, np.float64)
    unit = bool(np.all(scores >= 0.0) and np.all(scores <= 1.0))
    if scores.shape[1] == 1:
        return "sigmoid" if unit else "binary_logit"
    if unit and np.allclose(scores.sum(axis=1), 1.0, atol=1e-4):
        return "softmax"
    return "logits"


def opaque_model(folder: str | Path, size: int, channels: int, output: str, layer=None):
    """keras.Model (N, size, size, channels) model input -> (N, K) logits (K >= 2) around the SavedModel.

    Args:
        layer: the TFSMLayer when the caller made one already (serving_layer), else one is made.
        output: what the SavedModel gives (engine.config.OUTPUT_KINDS), converted as the module says.
    """
    import keras  # heavy: TensorFlow loads in seconds; only an opaque model pays

    ops = keras.ops
    layer = layer or serving_layer(folder)
    inputs = keras.Input((size, size, channels), name="image")
    x = single_output(layer(inputs))
    if output == "softmax":
        x = ops.log(ops.maximum(x, TINY))
    elif output == "sigmoid":
        p = ops.clip(x, SIGMOID_EPS, 1.0 - SIGMOID_EPS)
        x = ops.log(p) - ops.log(1.0 - p)
    if output in ("sigmoid", "binary_logit"):
        x = ops.concatenate([-0.5 * x, 0.5 * x], axis=-1)
    return keras.Model(inputs, x, name=Path(folder).name or "savedmodel")
