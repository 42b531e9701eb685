"""The backbone registry: one frozen BackboneSpec per backbone, in one table (`BUILT_IN`).

Adding a backbone is adding one entry: the spec carries its loader, which builds it and says
whether it is available (engine.backbones.spec). Tests are parametrized over `all_specs()`.
The TF Hub entries are made in engine.backbones.hub, which checks model files against them.
"""

from __future__ import annotations

from functools import partial

import keras

from engine.backbones import hub, scratch
from engine.backbones.bundled import Bundled
from engine.backbones.efficientnet_lite import preprocess as preprocess_lite
from engine.backbones.keras_apps import KerasApp
from engine.backbones.scratch import Scratch
from engine.backbones.spec import BackboneSpec, caffe_bgr, identity, scale_0_1, scale_minus1_1
from engine.errors import BackboneUnavailable, ConfigError, UnknownBackbone

DEFAULT_BACKBONE = "efficientnet_lite0"

_LITE_BLOCKS = tuple(f"block{i}" for i in range(1, 8)) + ("top",)

_lite = partial(
    BackboneSpec,
    feature_dim=1280,
    last_conv_layer="top_activation",
    finetune_blocks=_LITE_BLOCKS,
    imagenet_head=True,
    preprocess=preprocess_lite,
    loader=Bundled(),
)
_keras_app = partial(BackboneSpec, imagenet_head=True)

BUILT_IN = (
    _lite(name="efficientnet_lite0", title="EfficientNet-Lite0 (bundled)", input_size=224, params=4_694_024),
    _lite(name="efficientnet_lite1", title="EfficientNet-Lite1 (bundled)", input_size=240, params=5_470_344),
    _lite(name="efficientnet_lite2", title="EfficientNet-Lite2 (bundled)", input_size=260, params=6_150_168),
    _keras_app(
        name="mobilenet_v2",
        loader=KerasApp("MobileNetV2", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"),
        title="MobileNetV2 (keras.applications)",
        input_size=224,
        feature_dim=1280,
        last_conv_layer="out_relu",
        params=3_538_984,
        preprocess=scale_minus1_1,
        finetune_blocks=tuple(f"block_{i}_" for i in range(1, 17)) + ("Conv_1",),
    ),
    _keras_app(
        name="inception_v3",
        loader=KerasApp("InceptionV3", "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"),
        title="InceptionV3 (keras.applications)",
        input_size=299,
        feature_dim=2048,
        last_conv_layer="mixed10",
        params=23_851_784,
        preprocess=scale_minus1_1,
        finetune_blocks=tuple(f"mixed{i}" for i in range(11)),
        blocks_end=True,
    ),
    _keras_app(
        name="vgg16",
        loader=KerasApp("VGG16", "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
        title="VGG16 (keras.applications)",
        input_size=224,
        feature_dim=512,
        last_conv_layer="block5_conv3",
        params=138_357_544,
        preprocess=caffe_bgr,
        finetune_blocks=tuple(f"block{i}_" for i in range(1, 6)),
    ),
    _keras_app(
        name="resnet50_v2",
        loader=KerasApp("ResNet50V2", "resnet50v2_weights_tf_dim_ordering_tf_kernels.h5"),
        title="ResNet50V2 (keras.applications)",
        input_size=224,
        feature_dim=2048,
        last_conv_layer="post_relu",
        params=25_613_800,
        preprocess=scale_minus1_1,
        finetune_blocks=("conv1",) + tuple(f"conv{i}_" for i in range(2, 6)) + ("post_",),
    ),
    _keras_app(
        name="efficientnet_b0",
        loader=KerasApp("EfficientNetB0", "efficientnetb0.h5"),
        title="EfficientNetB0 (keras.applications)",
        input_size=224,
        feature_dim=1280,
        last_conv_layer="top_activation",
        params=5_330_571,
        preprocess=identity,
        finetune_blocks=_LITE_BLOCKS,
    ),
    *hub.BUILT_IN,
    BackboneSpec(
        name="alexnet",
        title="AlexNet (from scratch)",
        input_size=224,
        feature_dim=256,
        last_conv_layer="conv5",
        finetune_blocks=("conv1", "conv2", "conv3", "conv4", "conv5"),
        imagenet_head=False,
        params=3_747_200,
        preprocess=scale_0_1,
        loader=Scratch(scratch.alexnet),
    ),
    BackboneSpec(
        name="small_cnn",
        title="Small CNN (from scratch)",
        input_size=128,
        feature_dim=128,
        last_conv_layer="block3_conv",
        finetune_blocks=("block1", "block2", "block3"),
        imagenet_head=False,
        params=93_248,
        preprocess=scale_0_1,
        loader=Scratch(scratch.small_cnn),
    ),
)


def all_specs() -> list[BackboneSpec]:
    """Every registered backbone, built-in first, then operator-allowed hub handles."""
    specs = list(BUILT_IN)
    taken = {s.name for s in specs}
    for extra in hub.operator_specs():
        if extra.name in taken:
            raise ConfigError(f"CONVSCOPE_HUB_MODELS: the name {extra.name!r} is already a built-in backbone")
        specs.append(extra)
    return specs


def get_spec(name: str) -> BackboneSpec:
    for spec in all_specs():
        if spec.name == name:
            return spec
    names = ", ".join(s.name for s in all_specs())
    raise UnknownBackbone(f"unknown backbone {name!r}; choose one of: {names}")


def availability(spec: BackboneSpec, *, paths: bool = True) -> tuple[bool, str]:
    """(usable right now without network, reason when not). Cheap: loads nothing.

    Args:
        spec: the registry entry.
        paths: name server folders in the reason (the CLI, for the operator);
            False for the dashboard, whose users should not see server paths.
    """
    return spec.loader.availability(spec, paths)


def load(name: str, *, include_top: bool = False, image_size: int | None = None, weights: bool = True) -> keras.Model:
    """Build a backbone as a Keras model.

    Args:
        name: registry name.
        include_top: the ImageNet classifier (logits, N x 1000) instead of the
            feature extractor; only where spec.imagenet_head.
        image_size: square input side; defaults to the spec's. With the
            top, keras.applications models use their training size.
        weights: pretrained weights (False: random init, for shape tests).

    Returns:
        A keras.Model taking preprocessed (N, S, S, 3) images (spec.preprocess).
    """
    spec = get_spec(name)
    size = image_size or spec.input_size
    if include_top and not spec.imagenet_head:
        raise BackboneUnavailable(f"{name} has no ImageNet classification head; it is a feature extractor only")
    return spec.loader.build(spec, size, include_top, weights)
