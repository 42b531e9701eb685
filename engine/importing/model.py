"""A user's Keras model: loaded safely, checked to be an image classifier, its output made logits.

What ConvScope needs of a model: one image input (N, S, S, 1 or 3) and one output of class
scores (N, K). Its last layer tells what the scores are (OUTPUT_KINDS); `inspect` rebuilds the
same layers so the model ends in logits, the score CAMs and attributions differentiate (the
pre-softmax score, as in the Grad-CAM paper and tf-keras-vis's ReplaceToLinear):

- softmax: the softmax is dropped (a Dense's activation made linear, or the graph cut before a
  Softmax/Activation layer); softmax(logits) gives the file's probabilities back.
- logits: as it is.
- binary_logit / sigmoid: one logit z (a sigmoid is dropped first) becomes two logits
  [-z/2, z/2] through a frozen Dense `two_logits`: softmax of them is sigmoid(z), class 1's
  score is proportional to z and class 0's to -z.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.errors import ImportModelError
from engine.model.explainable import TWO_LOGITS
from engine.numerics import softmax

AUGMENTATION = (
    "RandomFlip",
    "RandomRotation",
    "RandomZoom",
    "RandomTranslation",
    "RandomContrast",
    "RandomBrightness",
    "RandomCrop",
    "RandomHeight",
    "RandomWidth",
    "RandomGrayscale",
    "RandomHue",
    "RandomSaturation",
    "RandomColorJitter",
    "RandomSharpness",
    "RandomShear",
    "RandomPerspective",
    "RandAugment",
    "AugMix",
    "MixUp",
    "CutMix",
    "RandomErasing",
    "RandomGaussianBlur",
    "RandomElasticTransform",
    "RandomInvert",
    "RandomPosterization",
    "Solarization",
    "GaussianNoise",
    "GaussianDropout",
)
NEEDS_SIZE = "needs_size"  # ImportModelError.reason: the model takes any image size, one must be chosen
RESCALERS = ("Rescaling", "Normalization")  # layers that mean the model takes raw pixels
SCALING_OPS = ("TrueDivide", "Divide", "Subtract", "Multiply", "Add")  # keras.ops arithmetic on the input


def scan_config(config: dict, file_name: str) -> None:
    """Refuse, before anything is built, what safe mode would refuse or not find (Lambda, unknown classes)."""
    import keras  # heavy: TensorFlow loads in seconds; only an import pays

    for node in _configs(config):
        name = (node.get("config") or {}).get("name", "?") if isinstance(node.get("config"), dict) else "?"
        if node["class_name"] in ("Lambda", "__lambda__"):  # a Lambda layer, or a lambda given as an activation
            raise ImportModelError(
                f"{file_name} has a Lambda layer ({name!r}). A Lambda holds Python code, which loading would run "
                "(arbitrary code), so ConvScope refuses it. Rebuild the model with a standard Keras layer in its "
                "place (Rescaling, Normalization, Activation ...) or a registered custom layer, and save it again."
            )
        module = str(node.get("module") or "")
        if module == "keras" or module.startswith("keras.") or node["class_name"].startswith("__"):
            continue
        registered = node.get("registered_name") or node["class_name"]
        if keras.saving.get_registered_object(registered) is None:
            raise ImportModelError(
                f"{file_name} uses the custom class {node['class_name']!r} (layer {name!r}, registered as "
                f"{registered!r}), which is not available here. ConvScope loads standard Keras layers only; "
                "rebuild the model without it, or with standard layers that do the same."
            )


def _configs(tree) -> list[dict]:
    """Every serialized object ({"class_name", "config", ...}) in a Keras config tree."""
    out, stack = [], [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("class_name"), str) and "config" in node:
                out.append(node)
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return out


def load_keras(path: Path, kind: str):
    """The model in a .keras archive (safe_mode=True, not compiled), or in an allowed legacy .h5 file."""
    import keras  # heavy: TensorFlow loads in seconds; only an import pays

    if kind == "keras":
        try:
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
        except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
            raise ImportModelError(f"{path.name}: its config.json cannot be read ({exc})") from exc
        scan_config(config, path.name)
    try:
        return keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds for files it cannot rebuild
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ImportModelError(f"{path.name} cannot be loaded safely ({type(exc).__name__}: {first})") from exc


@dataclass
class Inspected:
    """What an imported model is, and the same model ending in logits.

    Attributes:
        model: keras.Model (N, S, S, C) model input -> (N, K) logits (K >= 2).
        output: one of engine.config.OUTPUT_KINDS: what the file's model ended in.
        input_size: S; channels: C (1 or 3).
        takes_raw: why the model takes raw pixels (a Rescaling layer ...), "" when it cannot tell.
        augmentation: its augmentation layers (inactive outside training).
        max_diff: (a SavedModel) the largest gap between its outputs and those of `model` on probe images; a
            .keras rebuild is exact by construction (tests/test_importing.py checks every kind of head).
        opaque: an imported SavedModel: its layers cannot be seen (engine.model.savedmodel).
    """

    model: object
    output: str
    input_size: int
    channels: int
    takes_raw: str
    augmentation: list[str] = field(default_factory=list)
    max_diff: float = 0.0
    opaque: bool = False

    @property
    def classes(self) -> int:
        return int(self.model.output_shape[-1])


def inspect(model, image_size: int | None = None) -> Inspected:
    """Check `model` is an image classifier and make it end in logits (see the module docstring).

    Args:
        image_size: the side S for a model that accepts any size (input (None, None, C)); must match
            a fixed one if given.
    Raises:
        ImportModelError: not one image input and one (N, K) output, or a size that does not fit.
    """
    import keras  # heavy: TensorFlow loads in seconds; only an import pays

    inputs, outputs = list(getattr(model, "inputs", None) or []), list(getattr(model, "outputs", None) or [])
    if not inputs or not outputs:
        raise ImportModelError("the model was never built (no input shape): build or call it once before saving it")
    if len(inputs) != 1:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise ImportModelError(f"the model has {len(inputs)} inputs ({shapes}); ConvScope takes one image input")
    shape = tuple(inputs[0].shape)
    if len(shape) != 4 or shape[-1] not in (1, 3):
        raise ImportModelError(f"the model's input is {shape}: not an image batch (N, H, W, 1 or 3)")
    height, width, channels = shape[1], shape[2], int(shape[3])
    size = image_side(height, width, image_size)
    if len(outputs) != 1:
        shapes = ", ".join(str(tuple(t.shape)) for t in outputs)
        raise ImportModelError(f"the model has {len(outputs)} outputs ({shapes}); ConvScope takes one of class scores")
    out_shape = tuple(outputs[0].shape)
    if len(out_shape) != 2 or not out_shape[1]:
        raise ImportModelError(f"the model's output is {out_shape}, not class scores (N, K)")
    if height is None or width is None:
        model = _fixed_size(model, size, channels)
    # A head that is itself a nested model is rebuilt through layers shared with it: checked on probe images
    # (what a last Dense, Activation or Softmax becomes is exact by construction and needs no pass).
    last = model.outputs[0]._keras_history[0]
    probe = np.random.default_rng(0).uniform(0, 255, (2, size, size, channels)).astype(np.float32)
    before = np.asarray(model(probe, training=False), np.float64) if hasattr(last, "layers") else None
    output, logits = _logits_tensor(model, int(out_shape[1]))
    if output in ("binary_logit", "sigmoid"):
        pair = keras.layers.Dense(2, use_bias=False, trainable=False, name=TWO_LOGITS)
        logits = pair(logits)
        pair.set_weights([np.array([[-0.5, 0.5]], np.float32)])
    # No forward pass here: an eager one costs as much as the loading (tests/test_importing.py checks the
    # rebuilt model gives the file's probabilities back, for every kind of head).
    rebuilt = keras.Model(model.inputs[0], logits, name=model.name)  # one input, not a list of one
    diff = 0.0 if before is None else output_gap(output, before, np.asarray(rebuilt(probe, training=False)))
    if diff > MAX_DIFF:
        raise ImportModelError(f"ConvScope could not reproduce the model's {output} output (off by {diff:.2g})")
    return Inspected(rebuilt, output, size, channels, takes_raw(model), augmentation_layers(model), diff)


def image_side(height: int | None, width: int | None, image_size: int | None) -> int:
    """The side S images are given at: the model's fixed one, else `image_size` (a None size asks for one)."""
    if height is not None and width is not None and height != width:
        raise ImportModelError(f"the model takes {height}x{width} images; ConvScope works with square inputs (H = W)")
    fixed = height or width
    if fixed is None and image_size is None:
        raise ImportModelError(
            "the model accepts images of any size: say which one to use (--image-size, e.g. 224)", NEEDS_SIZE
        )
    if fixed is not None and image_size is not None and int(image_size) != int(fixed):
        raise ImportModelError(f"the model takes {fixed}x{fixed} images, not {image_size}x{image_size}")
    size = int(fixed or image_size)
    if not 16 <= size <= 1024:
        raise ImportModelError(f"image size must be 16..1024 pixels, got {size}")
    return size


MAX_DIFF = 1e-4  # a wrapped SavedModel's probabilities against its own outputs, on probe images


def output_gap(output: str, before: np.ndarray, after: np.ndarray) -> float:
    """The file's outputs against the rebuilt logits', in the file's terms."""
    if output in ("softmax", "logits"):
        again = softmax(after) if output == "softmax" else after
    else:  # two logits [-z/2, z/2]: z back, or sigmoid(z) (as tanh, which never overflows)
        z = (after[:, 1] - after[:, 0])[:, None]
        again = z if output == "binary_logit" else 0.5 * (1.0 + np.tanh(z / 2))
    return float(np.max(np.abs(again - before))) if before.size else 0.0


def _activation_name(op) -> str:
    fn = getattr(op, "activation", None)
    return str(getattr(fn, "__name__", "") or "")


def _logits_tensor(model, k: int) -> tuple[str, object]:
    """(output kind, the tensor of the scores before any softmax/sigmoid) of a built model."""
    tensor = model.outputs[0]
    op, node_index, _ = tensor._keras_history
    if hasattr(op, "layers") and getattr(op, "outputs", None):  # the last layer is a nested model (a head)
        return _nested_head(op, k, tensor)
    kind = type(op).__name__
    squash = ""  # "softmax" or "sigmoid": what the last operation applies
    if kind in ("Softmax", "Sigmoid"):
        squash = kind.lower()
    elif kind == "Activation" and _activation_name(op) in ("softmax", "sigmoid"):
        squash = _activation_name(op)
    if squash:  # a separate layer or op: the scores are its input
        logits = op._inbound_nodes[node_index].input_tensors[0]
    else:
        logits = tensor
        squash = _activation_name(op) if _activation_name(op) in ("softmax", "sigmoid") else ""
        if squash:  # a Dense/Conv's own activation: make it linear (this loaded copy is ConvScope's own)
            import keras  # heavy: TensorFlow loads in seconds; only an import pays

            op.activation = keras.activations.get("linear")
    if squash == "softmax":
        if k < 2:
            raise ImportModelError("the model ends in a softmax over one class, which is always 1: nothing to classify")
        return "softmax", logits
    if squash == "sigmoid":
        if k > 1:
            raise ImportModelError(
                f"the model ends in {k} sigmoids: a multi-label model; ConvScope classifies one class per image"
            )
        return "sigmoid", logits
    return ("binary_logit" if k == 1 else "logits"), logits


def _nested_head(head, k: int, tensor) -> tuple[str, object]:
    """(output kind, logits tensor) of a model whose last layer is a nested model `head`.

    A Dense/Conv activation inside it is made linear (the layer object is shared, so the outer graph
    changes with it); a separate softmax/sigmoid layer inside cannot be cut from outside: refused.
    """
    import keras  # heavy: TensorFlow loads in seconds; only an import pays

    op = head
    while hasattr(op, "layers") and getattr(op, "outputs", None):
        op = op.outputs[0]._keras_history[0]
    kind, activation = type(op).__name__, _activation_name(op)
    if kind in ("Softmax", "Sigmoid") or (kind == "Activation" and activation in ("softmax", "sigmoid")):
        raise ImportModelError(
            f"the model ends in a nested model {head.name!r} whose last layer is a separate {kind} layer; "
            "ConvScope needs the scores before it: save the model with that layer outside the nested model"
        )
    if activation in ("softmax", "sigmoid"):
        op.activation = keras.activations.get("linear")
    squash = activation if activation in ("softmax", "sigmoid") else ""
    if squash == "softmax" and k < 2:
        raise ImportModelError("the model ends in a softmax over one class, which is always 1: nothing to classify")
    if squash == "sigmoid" and k > 1:
        raise ImportModelError(f"the model ends in {k} sigmoids: a multi-label model; ConvScope classifies one class")
    kind_out = squash or ("binary_logit" if k == 1 else "logits")
    return kind_out, tensor


def _fixed_size(model, size: int, channels: int):
    """The same model (same weights) with its any-size input fixed to (size, size, channels)."""
    import keras  # heavy: TensorFlow loads in seconds; only an import pays

    config = model.get_config()
    for node in _configs(config.get("layers", [])):
        if node["class_name"] == "InputLayer":
            inner = node["config"]
            shape = inner.get("batch_shape") or inner.get("batch_input_shape")
            if shape and len(shape) == 4 and (shape[1] is None or shape[2] is None):
                inner["batch_shape"] = [shape[0], size, size, shape[3]]
                inner.pop("batch_input_shape", None)
    try:
        fixed = type(model).from_config(config)
        fixed.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001 - rebuilding a user's graph can fail in many ways
        raise ImportModelError(f"the model's any-size input could not be fixed to {size}x{size} ({exc})") from exc
    if not isinstance(fixed, keras.Model) or tuple(fixed.inputs[0].shape)[1:] != (size, size, channels):
        raise ImportModelError(f"the model's any-size input could not be fixed to {size}x{size}")
    return fixed


def _walk(model):
    """Layers and operations of `model` in graph order, those of nested models (Sequential too) in place."""
    ops = getattr(model, "operations", None) or getattr(model, "layers", [])
    for op in ops:
        if hasattr(op, "layers") and op is not model:  # a nested Functional or Sequential model
            yield from _walk(op)
        else:
            yield op


def takes_raw(model) -> str:
    """Why the model takes raw 0-255 pixels (it rescales them itself before its first weighted layer), or ""."""
    for op in _walk(model):
        kind = type(op).__name__
        if kind in RESCALERS:
            config = op.get_config()
            detail = (
                f"scale={_short(config.get('scale'))}, offset={_short(config.get('offset'))}"
                if kind == "Rescaling"
                else ""
            )
            return f"it starts with a {kind} layer{f' ({detail})' if detail else ''}, so it takes raw pixels 0-255"
        if kind in SCALING_OPS:
            return f"it scales its input itself ({op.name} before its first weighted layer), so it takes raw pixels"
        if getattr(op, "kernel", None) is not None or getattr(op, "depthwise_kernel", None) is not None:
            return ""
    return ""


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else str(value)


def augmentation_layers(model) -> list[str]:
    """Names of the augmentation layers anywhere in the model (they act only while training)."""
    return [op.name for op in _walk(model) if type(op).__name__ in AUGMENTATION]
