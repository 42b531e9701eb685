"""EfficientNet-Lite as a flat Keras 3 functional graph, from PyTorch weights.

`convert_state_dict` turns a PyTorch state dict into a plan (one dict per
MBConv block) and per-layer weights already in Keras layout; `build` makes
the model from those. The cache stores exactly the plan and the weights, so
a cached load skips the pickle, the re-layout and any random initialisation.

The architecture is read off the state dict (block count, expansion, kernel
size, channels); only the per-stage strides come from the paper. Layer names
follow keras.applications' EfficientNet (`block2a_expand_conv`, `top_conv`),
so fine-tune boundaries and CAM layers read the same. Lite differs from B0:
ReLU6, no squeeze-excite, stem and head not scaled.
"""

from __future__ import annotations

import string

import keras
import numpy as np
from keras import layers

# Stride of the first block in each of the seven stages (Tan & Le, 2019).
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)
BN_EPSILON = 1e-3  # the TensorFlow reference implementation's value
DROPOUT = 0.2

Weights = dict[str, list[np.ndarray]]


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    """OIHW (PyTorch) -> HWIO (Keras Conv2D)."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 1, 0)))


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    """(C, 1, H, W) (PyTorch) -> (H, W, C, 1) (Keras DepthwiseConv2D)."""
    return np.ascontiguousarray(np.transpose(w, (2, 3, 0, 1)))


def _bn(sd: dict[str, np.ndarray], prefix: str) -> list[np.ndarray]:
    return [sd[f"{prefix}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")]


def convert_state_dict(sd: dict[str, np.ndarray]) -> tuple[list[dict], Weights]:
    """PyTorch state dict -> (block plan, Keras-layout weights by layer name)."""
    w: Weights = {
        "stem_conv": [_conv_kernel(sd["_conv_stem.weight"])],
        "stem_bn": _bn(sd, "_bn0"),
    }
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    plan: list[dict] = []
    stage, letter = -1, 0
    prev_out = int(sd["_conv_stem.weight"].shape[0])
    for i in range(n_blocks):
        p = f"_blocks.{i}."
        out_ch = int(sd[p + "_project_conv.weight"].shape[0])
        first_of_stage = stage < 0 or out_ch != prev_out
        stage, letter = (stage + 1, 0) if first_of_stage else (stage, letter + 1)
        name = f"block{stage + 1}{string.ascii_lowercase[letter]}"
        expand = (p + "_expand_conv.weight") in sd
        if expand:
            w[f"{name}_expand_conv"] = [_conv_kernel(sd[p + "_expand_conv.weight"])]
            w[f"{name}_expand_bn"] = _bn(sd, p + "_bn0")
        w[f"{name}_dwconv"] = [_depthwise_kernel(sd[p + "_depthwise_conv.weight"])]
        w[f"{name}_bn"] = _bn(sd, p + "_bn1")
        w[f"{name}_project_conv"] = [_conv_kernel(sd[p + "_project_conv.weight"])]
        w[f"{name}_project_bn"] = _bn(sd, p + "_bn2")
        plan.append(
            {
                "name": name,
                "expand": expand,
                "kernel": int(sd[p + "_depthwise_conv.weight"].shape[-1]),
                "stride": STAGE_STRIDES[stage] if first_of_stage else 1,
                "in": prev_out,
                "out": out_ch,
            }
        )
        prev_out = out_ch
    w["top_conv"] = [_conv_kernel(sd["_conv_head.weight"])]
    w["top_bn"] = _bn(sd, "_bn1")
    w["predictions"] = [np.ascontiguousarray(sd["_fc.weight"].T), sd["_fc.bias"]]
    return plan, w


def build(plan: list[dict], weights: Weights, input_size: int, include_top: bool, name: str) -> keras.Model:
    """Build EfficientNet-Lite with the given weights.

    Args:
        plan: block descriptions from convert_state_dict.
        weights: Keras-layout weights by layer name.
        input_size: square input side in pixels (any multiple of 32 works best).
        include_top: keep the 1000-class ImageNet head.
        name: the Keras model name.

    Returns:
        A model from (N, S, S, 3) preprocessed images (see `preprocess`) to
        ImageNet logits (N, 1000) with the top, else to the last feature map
        (N, S/32, S/32, 1280), the output of `top_activation`.
    """

    # Layers get the standard initializers and their weights are set once the
    # graph exists: custom initializer functions would make the model
    # impossible to reload from a .keras file.
    def conv(x, filters, kernel, stride, lname):
        return layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=lname)(x)

    def bn(x, lname):
        return layers.BatchNormalization(epsilon=BN_EPSILON, name=lname)(x)

    inputs = keras.Input((input_size, input_size, 3), name="input_image")
    x = conv(inputs, weights["stem_conv"][0].shape[-1], 3, 2, "stem_conv")
    x = bn(x, "stem_bn")
    x = layers.ReLU(6.0, name="stem_activation")(x)
    for b in plan:
        n, shortcut = b["name"], x
        if b["expand"]:
            x = conv(x, weights[f"{n}_expand_conv"][0].shape[-1], 1, 1, f"{n}_expand_conv")
            x = bn(x, f"{n}_expand_bn")
            x = layers.ReLU(6.0, name=f"{n}_expand_activation")(x)
        x = layers.DepthwiseConv2D(
            b["kernel"], strides=b["stride"], padding="same", use_bias=False, name=f"{n}_dwconv"
        )(x)
        x = bn(x, f"{n}_bn")
        x = layers.ReLU(6.0, name=f"{n}_activation")(x)
        x = conv(x, b["out"], 1, 1, f"{n}_project_conv")
        x = bn(x, f"{n}_project_bn")
        if b["stride"] == 1 and b["in"] == b["out"]:
            x = layers.Add(name=f"{n}_add")([x, shortcut])
    x = conv(x, weights["top_conv"][0].shape[-1], 1, 1, "top_conv")
    x = bn(x, "top_bn")
    x = layers.ReLU(6.0, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(DROPOUT, name="top_dropout")(x)
        x = layers.Dense(weights["predictions"][0].shape[1], name="predictions")(x)
    model = keras.Model(inputs, x, name=name)
    for layer in model.layers:
        if layer.weights:
            try:
                layer.set_weights(list(weights[layer.name]))
            except ValueError as exc:
                raise ValueError(f"cached weights do not fit layer {layer.name}: {exc}") from exc
    return model


def preprocess(images):
    """[0, 255] RGB (N, H, W, 3) -> the Lite models' input scale, (x - 127) / 128."""
    return (images - 127.0) / 128.0


def block_names(plan: list[dict]) -> tuple[str, ...]:
    """Stage prefixes usable as fine-tune boundaries: ('block1', 'block2', ...)."""
    return tuple(dict.fromkeys(b["name"][:-1] for b in plan))
