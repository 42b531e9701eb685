"""Receptive fields: which input pixels can influence one position of a layer's feature map.

Computed analytically from the graph with the arithmetic of Dumoulin & Visin ("A guide to
convolution arithmetic for deep learning", 2016): walking from the input, each layer maps
the field of position 0 of its input, and the step between neighbouring positions (the
jump, the product of the strides so far), to those of its output. A position (row, col)
of a layer's (h, w) grid then covers the input pixels `first + row * jump .. last + row * jump`
(and the same along the width).

Along each axis the walk keeps (jump, first, last): the first and last input pixel (inclusive)
that position 0 can see. They may lie outside the image (padding); `Field.box` clips them.
A position sees every pixel in that range only when no dilation leaves holes; the range is
the field's envelope, which is what a picture of it needs.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass

from engine.model.compiled import locate_layer
from engine.model.explainable import ExplainError

# Layers that merge several feature maps position by position: their field is the union.
_MERGING = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate"}
# Layers that reduce a map to one vector: what follows is global context, not a local field.
_GLOBAL = {
    "GlobalAveragePooling2D",
    "GlobalMaxPooling2D",
    "GlobalAvgPool2D",
    "GlobalMaxPool2D",
    "Flatten",
}


@dataclass(frozen=True)
class Field:
    """The receptive field of every position of one layer, in the model's input-image pixels.

    Along the height (and the width too, unless `width` says otherwise) position `i` of the
    layer's grid is centred on input pixel `start + i * jump` and sees a `size`-pixel span.

    Attributes:
        size: side of the field in input pixels (r).
        jump: input pixels between neighbouring positions of the layer (j, the product of strides).
        start: input-pixel coordinate of the centre of position 0 (fractional for even spans,
            negative where padding puts it outside the image).
        width: (size, jump, start) along the width when it differs from the height (a 1x7 kernel,
            asymmetric padding); None when the field is square.
    """

    size: float
    jump: float
    start: float
    width: tuple[float, float, float] | None = None

    def _axes(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        rows = (self.size, self.jump, self.start)
        return rows, self.width or rows

    def centre(self, row: int, col: int) -> tuple[float, float]:
        """(y, x) input-pixel coordinate of the centre of position (row, col)."""
        (_, jr, sr), (_, jc, sc) = self._axes()
        return sr + row * jr, sc + col * jc

    def box(self, row: int, col: int, image_size: int) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) input pixels seen by position (row, col).

        bottom/right are exclusive; every value is clipped to [0, image_size].
        """
        out = []
        for (size, jump, start), index in zip(self._axes(), (row, col), strict=True):
            first = round(start + index * jump - (size - 1) / 2)  # an integer by construction
            out.append((min(max(first, 0), image_size), min(max(first + round(size), 0), image_size)))
        (top, bottom), (left, right) = out
        return top, left, bottom, right

    def to_json(self) -> dict:
        out = {"size": self.size, "jump": self.jump, "start": self.start}
        if self.width is not None:
            out["width"] = dict(zip(("size", "jump", "start"), self.width, strict=True))
        return out


# ---- one axis --------------------------------------------------------------
@dataclass(frozen=True)
class _Axis:
    """Along one axis: position i of a map sees input pixels first + i*jump .. last + i*jump."""

    jump: float
    first: float
    last: float

    def window(self, kernel: int, stride: int, dilation: int, pad_before: int) -> _Axis:
        """After a sliding window: output position 0 reads input positions -pad .. -pad + k_eff - 1."""
        k_eff = dilation * (kernel - 1) + 1
        return _Axis(
            self.jump * stride,
            self.first - pad_before * self.jump,
            self.last + (k_eff - 1 - pad_before) * self.jump,
        )

    def shift(self, positions: int) -> _Axis:
        """Output position i is input position i + positions (a crop; negative: padding)."""
        return _Axis(self.jump, self.first + positions * self.jump, self.last + positions * self.jump)


_IDENTITY = (_Axis(1.0, 0.0, 0.0), _Axis(1.0, 0.0, 0.0))  # a pixel of the input sees itself


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = tuple(value)
    return int(a), int(b)


def _pad_before(padding: str, n: int | None, kernel: int, stride: int, dilation: int, layer) -> int:
    """Padding before the first input position, as TensorFlow's "valid" / "same" do it."""
    if padding == "valid":
        return 0
    if padding != "same":
        raise ExplainError(f"layer {layer.name!r} ({type(layer).__name__}) has padding {padding!r}: not supported")
    if n is None:
        raise ExplainError(f"layer {layer.name!r} has an input of unknown spatial size: its 'same' padding is unknown")
    k_eff = dilation * (kernel - 1) + 1
    total = max((math.ceil(n / stride) - 1) * stride + k_eff - n, 0)
    return total // 2  # TF puts the odd pixel after: a stride-2 'same' conv starts at pixel 0


def _spatial(tensor) -> tuple | None:
    """(h, w) of a (N, h, w, C) tensor; None for any other rank."""
    shape = tuple(tensor.shape)
    return shape[1:3] if len(shape) == 4 else None


def _union(fields: list[tuple[_Axis, _Axis]], layer) -> tuple[_Axis, _Axis]:
    """The field covering every input's field (branches of a residual or inception block)."""
    out = []
    for axis in range(2):
        parts = [f[axis] for f in fields]
        jumps = {p.jump for p in parts}
        if len(jumps) > 1:
            raise ExplainError(
                f"layer {layer.name!r} ({type(layer).__name__}) merges maps with different strides "
                f"({sorted(jumps)} input pixels apart): their positions do not line up"
            )
        out.append(_Axis(parts[0].jump, min(p.first for p in parts), max(p.last for p in parts)))
    return out[0], out[1]


def _through(layer, inputs: list, in_fields: list, output) -> tuple[_Axis, _Axis] | None:
    """The field of `layer`'s output from those of its inputs (None: no spatial field)."""
    name = type(layer).__name__
    out_hw = _spatial(output)
    # Inputs that are not feature maps (a squeeze-excite vector, a class embedding) and maps
    # broadcast over space (1x1 against h x w) scale channels with global context: the
    # convention is to leave them out, else every field after the first such block would be
    # the whole image and tell nothing about where a unit looks.
    spatial = [(t, f) for t, f in zip(inputs, in_fields, strict=True) if f is not None and _spatial(t) is not None]
    if len(spatial) > 1:
        spatial = [(t, f) for t, f in spatial if _spatial(t) == out_hw]
    if out_hw is None or name in _GLOBAL or not spatial:
        return None
    if "Transpose" in name:
        raise ExplainError(
            f"layer {layer.name!r} ({name}) upsamples: receptive fields through transposed convolutions "
            "are not supported; pick a layer before it"
        )
    if len(spatial) > 1 or name in _MERGING:
        if name == "Concatenate" and getattr(layer, "axis", -1) not in (-1, 3):
            raise ExplainError(f"layer {layer.name!r} concatenates maps along a spatial axis: no receptive field")
        return _union([f for _, f in spatial], layer)
    tensor, (rows, cols) = spatial[0]
    in_hw = _spatial(tensor)
    if hasattr(layer, "pool_size") or hasattr(layer, "kernel_size"):
        # Conv2D, DepthwiseConv2D, SeparableConv2D (depthwise k x k then pointwise 1x1),
        # MaxPooling2D, AveragePooling2D: a sliding window.
        kernel = _pair(getattr(layer, "pool_size", None) or layer.kernel_size)
        strides = _pair(layer.strides if layer.strides is not None else kernel)
        dilation = _pair(getattr(layer, "dilation_rate", 1))
        padding = str(getattr(layer, "padding", "valid")).lower()
        axes = []
        for axis, field in enumerate((rows, cols)):
            pad = _pad_before(padding, in_hw[axis], kernel[axis], strides[axis], dilation[axis], layer)
            axes.append(field.window(kernel[axis], strides[axis], dilation[axis], pad))
        return axes[0], axes[1]
    if name == "ZeroPadding2D":
        (top, _), (left, _) = layer.padding
        return rows.shift(-int(top)), cols.shift(-int(left))
    if name == "Cropping2D":
        (top, _), (left, _) = layer.cropping
        return rows.shift(int(top)), cols.shift(int(left))
    if in_hw != out_hw:
        raise ExplainError(
            f"layer {layer.name!r} ({name}) changes the map from {in_hw} to {out_hw} in a way the receptive-field "
            "arithmetic does not know; pick a layer before it"
        )
    return rows, cols  # BatchNormalization, activations, Dropout, Rescaling, 1x1-free reshapes of channels...


def _is_functional(op) -> bool:
    return hasattr(op, "inputs") and hasattr(op, "outputs") and hasattr(op, "layers")


def _walk(target, seeds: dict[int, tuple[_Axis, _Axis] | None]) -> tuple[_Axis, _Axis] | None:
    """The field of KerasTensor `target`, walking its graph back to tensors in `seeds` (by id).

    Iterative (no recursion limit on deep nets); each tensor is computed once.
    """
    known = dict(seeds)
    stack = [target]
    while stack:
        tensor = stack[-1]
        if id(tensor) in known:
            stack.pop()
            continue
        op, node_index, tensor_index = tensor._keras_history
        node = op._inbound_nodes[node_index]
        inputs = list(node.input_tensors)
        missing = [t for t in inputs if id(t) not in known]
        if missing:
            stack.extend(missing)
            continue
        stack.pop()
        in_fields = [known[id(t)] for t in inputs]
        if not inputs:  # an Input the caller did not seed: the model's own input image
            known[id(tensor)] = _IDENTITY if _spatial(tensor) is not None else None
        elif _is_functional(op):  # a model nested in this graph: walk its own graph
            inner = {id(t): f for t, f in zip(op.inputs, in_fields, strict=False)}
            known[id(tensor)] = _walk(op.outputs[tensor_index], inner)
        else:
            known[id(tensor)] = _through(op, inputs, in_fields, tensor)
    return known[id(target)]


def _output(layer):
    try:
        out = layer.output
    except (AttributeError, ValueError):  # a layer used more than once: its first use, as compiled.py does
        out = layer._inbound_nodes[0].output_tensors
    return out[0] if isinstance(out, list | tuple) else out


def _compute(model, layer: str) -> Field:
    try:
        nested, inner = locate_layer(model, layer)
        target = _output((nested or model).get_layer(inner))
    except ValueError as exc:
        raise ExplainError(f"the model has no layer {layer!r}") from exc
    if _spatial(target) is None:
        raise ExplainError(f"layer {layer!r} has output {tuple(target.shape)}, not a feature map (N, h, w, C)")
    seeds = {id(t): _IDENTITY for t in model.inputs}
    if nested is not None:
        # The backbone's input in the outer graph (usually the image itself) seeds its own graph.
        node = nested._inbound_nodes[0]
        outer = [_walk(t, seeds) for t in node.input_tensors]
        seeds = {id(t): f for t, f in zip(nested.inputs, outer, strict=False)}
    axes = _walk(target, seeds)
    if axes is None:
        raise ExplainError(f"layer {layer!r} is computed from a vector, not from the image's pixels by position")
    (r_size, r_jump, r_start), (c_size, c_jump, c_start) = (
        (a.last - a.first + 1, a.jump, (a.first + a.last) / 2) for a in axes
    )
    width = None if (r_size, r_jump, r_start) == (c_size, c_jump, c_start) else (c_size, c_jump, c_start)
    return Field(r_size, r_jump, r_start, width)


_CACHE: dict[tuple[int, str], tuple[weakref.ref, Field]] = {}
_CACHE_LOCK = threading.Lock()


def receptive_field(model, layer: str) -> Field:
    """The receptive field of a spatial layer of a Keras functional model.

    Args:
        model: a keras.Model from (N, S, S, 3) images (an Explainable's `.model`).
        layer: a layer name, or "outer/inner" for a layer inside a nested backbone.

    Returns:
        The Field mapping a position (row, col) of the layer's (h, w) grid to input pixels.

    Raises:
        ExplainError: unknown layer, non-spatial output, or a layer type whose geometry is unknown.
    """
    key = (id(model), layer)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None and hit[0]() is model:
            return hit[1]
    field = _compute(model, layer)
    with _CACHE_LOCK:
        for k in [k for k, (ref, _) in _CACHE.items() if ref() is None]:  # models gone: their ids may be reused
            del _CACHE[k]
        _CACHE[key] = (weakref.ref(model), field)
    return field
