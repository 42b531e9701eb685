"""Every registered backbone: shapes, parameter counts and named layers match its spec.

keras.applications entries are built with weights=None (no downloads), as in
keras' own applications_test.py; bundled ones always carry their weights.
"""

import keras
import numpy as np
import pytest

from engine import backbones
from engine.errors import BackboneUnavailable, UnknownBackbone

BUILT_IN = [s for s in backbones.all_specs() if s.source != "hub"]


def _build(spec, include_top):
    if spec.source == "keras":
        return backbones.load(spec.name, include_top=include_top, weights=False)
    return backbones.load(spec.name, include_top=include_top)


@pytest.mark.slow  # builds every backbone: the bundled ones with their ImageNet weights, VGG16 alone takes 10 s
@pytest.mark.parametrize("spec", BUILT_IN, ids=lambda s: s.name)
def test_feature_extractor_shape_and_named_layers(spec):
    model = _build(spec, include_top=False)
    size = spec.input_size
    assert model.input_shape == (None, size, size, 3)
    out = model.output_shape
    assert len(out) == 4 and out[-1] == spec.feature_dim, out
    names = [layer.name for layer in model.layers]
    assert spec.last_conv_layer in names
    conv_out = model.get_layer(spec.last_conv_layer).output.shape
    assert conv_out[-1] == spec.feature_dim
    for prefix in spec.finetune_blocks:
        assert any(n.startswith(prefix) for n in names), f"no layer starts with {prefix!r}"
    # A flat graph: Grad-CAM needs the last conv layer reachable from the input.
    keras.Model(model.inputs, [model.get_layer(spec.last_conv_layer).output, model.output])


@pytest.mark.slow  # builds every ImageNet classifier: the bundled ones with their weights, VGG16 alone takes 10 s
@pytest.mark.parametrize("spec", [s for s in BUILT_IN if s.imagenet_head], ids=lambda s: s.name)
def test_imagenet_classifier_params_and_logits(spec):
    model = _build(spec, include_top=True)
    assert model.output_shape == (None, 1000)
    assert model.count_params() == spec.params
    # Heads give logits: the last layer has no softmax.
    assert model.layers[-1].get_config().get("activation") in (None, "linear")


@pytest.mark.parametrize("spec", [s for s in BUILT_IN if not s.imagenet_head], ids=lambda s: s.name)
def test_scratch_params_and_forward(spec):
    model = _build(spec, include_top=False)
    assert model.count_params() == spec.params
    x = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype("float32")
    small = backbones.load(spec.name, image_size=64)
    assert small(x).shape[0] == 2


def test_small_input_sizes_work_for_scratch_alexnet():
    model = backbones.load("alexnet", image_size=32)
    assert model.output_shape == (None, 1, 1, 256)


def test_unknown_backbone_lists_choices():
    with pytest.raises(UnknownBackbone, match="efficientnet_lite0"):
        backbones.get_spec("resnet9000")


def test_no_imagenet_head_is_a_clear_error():
    with pytest.raises(BackboneUnavailable, match="no ImageNet classification head"):
        backbones.load("small_cnn", include_top=True)


def test_keras_app_without_network_names_bundled_alternatives(monkeypatch):
    def offline(**kwargs):
        raise Exception("URL fetch failure on https://storage.googleapis.com/...: [Errno -2] Name or service not known")

    monkeypatch.setattr(keras.applications, "MobileNetV2", offline)
    with pytest.raises(BackboneUnavailable) as info:
        backbones.load("mobilenet_v2", include_top=True)
    message = str(info.value)
    assert "no network" in message and "efficientnet_lite0" in message


def test_keras_availability_follows_the_weights_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    spec = backbones.get_spec("vgg16")
    ok, reason = backbones.availability(spec)
    assert not ok and "needs network" in reason
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / spec.loader.weights_file).write_bytes(b"x")
    assert backbones.availability(spec) == (True, "")


def test_bundled_lite0_is_available_and_default():
    spec = backbones.get_spec(backbones.DEFAULT_BACKBONE)
    assert spec.source == "bundled" and backbones.availability(spec) == (True, "")
