"""TF Hub backbones, offline: a SavedModel exported here and loaded by local path."""

import numpy as np
import pytest
import tensorflow as tf

from engine import backbones
from engine.backbones import hub
from engine.errors import BackboneUnavailable, ConfigError


@pytest.fixture(scope="module")
def saved_model_dir(tmp_path_factory):
    """A tiny image feature vector: (N, H, W, 3) in [0, 1] -> (N, 8)."""

    class FeatureVector(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal((3, 3, 3, 8), seed=(1, 2)))

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
        def __call__(self, images):
            x = tf.nn.relu(tf.nn.conv2d(images, self.kernel, strides=2, padding="SAME"))
            return tf.reduce_mean(x, axis=[1, 2])

    path = tmp_path_factory.mktemp("hub") / "feature_vector"
    tf.saved_model.save(FeatureVector(), str(path))
    return str(path)


def test_operator_allowed_local_savedmodel_loads(saved_model_dir, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_HUB_MODELS", f"tiny_fv={saved_model_dir}@64")
    spec = backbones.get_spec("tiny_fv")
    assert spec.source == "hub" and spec.input_size == 64
    assert backbones.availability(spec) == (True, "")
    model = backbones.load("tiny_fv")
    assert model.input_shape == (None, 64, 64, 3) and model.output_shape == (None, 8)
    x = np.random.default_rng(0).uniform(0, 1, (2, 64, 64, 3)).astype("float32")
    features = np.asarray(model(x))
    assert features.shape == (2, 8) and np.isfinite(features).all()
    assert model.layers[-1].trainable is False


def test_builtin_hub_handles_are_registered():
    spec = backbones.get_spec("hub_mobilenet_v2")
    assert spec.handle.endswith("tf2-preview/mobilenet_v2/feature_vector/4")
    assert (spec.input_size, spec.feature_dim) == (224, 1280)
    spec = backbones.get_spec("hub_inception_v3")
    assert (spec.input_size, spec.feature_dim) == (299, 2048)


def test_remote_handle_without_network_is_a_clear_error(monkeypatch):
    import tensorflow_hub

    def offline(handle, **kwargs):
        raise OSError(f"<urlopen error [Errno -2] Name or service not known> fetching {handle}")

    monkeypatch.setattr(tensorflow_hub, "load", offline)
    monkeypatch.setenv("TFHUB_CACHE_DIR", "/nonexistent-tfhub-cache")
    ok, reason = backbones.availability(backbones.get_spec("hub_mobilenet_v2"))
    assert not ok and "network" in reason
    with pytest.raises(BackboneUnavailable) as info:
        backbones.load("hub_mobilenet_v2")
    assert "efficientnet_lite0" in str(info.value) and "network" in str(info.value)


def test_missing_local_savedmodel(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_HUB_MODELS", f"gone={tmp_path / 'nothing'}")
    assert not backbones.availability(backbones.get_spec("gone"))[0]
    with pytest.raises(BackboneUnavailable, match="does not exist"):
        backbones.load("gone")


@pytest.mark.parametrize("bad", ["noequals", "x=/p@big", "efficientnet_lite0=/p"])
def test_bad_operator_config_is_explained(bad, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_HUB_MODELS", bad)
    with pytest.raises(ConfigError, match="CONVSCOPE_HUB_MODELS"):
        backbones.all_specs()


def test_only_configured_handles_exist():
    assert hub.is_local("/some/path") and not hub.is_local("https://tfhub.dev/x")
    with pytest.raises(Exception, match="unknown backbone"):
        backbones.get_spec("https://tfhub.dev/google/some/other/model")


def test_a_model_file_cannot_smuggle_in_an_unlisted_handle(monkeypatch):
    import tensorflow_hub

    monkeypatch.setattr(tensorflow_hub, "load", lambda h, **k: pytest.fail(f"loaded {h}"))
    # Keras wraps errors raised during deserialisation in a TypeError that keeps our message.
    with pytest.raises((BackboneUnavailable, TypeError), match="not allowed here"):
        hub.HubFeatures.from_config({"handle": "https://example.com/evil", "output_dim": 8, "name": "h"})


@pytest.mark.slow
def test_train_on_a_hub_backbone_then_explain_the_run(saved_model_dir, monkeypatch, tmp_path):
    """The hub-course recipe's path, offline: frozen hub features, a Dense head, a run that reloads."""
    from engine import runs
    from engine.config import DataConfig, TrainConfig
    from engine.explain import Explainable, ExplainError, explain_image
    from engine.samples import sample_photo
    from engine.training import fit

    monkeypatch.setenv("CONVSCOPE_HUB_MODELS", f"tiny_fv={saved_model_dir}@64")
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    config = TrainConfig(
        data=DataConfig(source="shapes:per_class=12,classes=3,size=64", image_size=64), backbone="tiny_fv", epochs=2
    )
    run = runs.create(backbone="tiny_fv", mode="feature")
    out = fit.train(config, run)
    assert out["status"] == "finished" and out["features"]["computed"] == 36
    assert out["params"]["trainable"] == 8 * 3 + 3

    model = Explainable.from_run(run.path)
    result = explain_image(model, sample_photo("chelsea"), "saliency")  # input attributions work
    assert result.heatmap.shape == (64, 64)
    with pytest.raises(ExplainError, match="opaque TF Hub module.*saliency"):
        explain_image(model, sample_photo("chelsea"), "gradcam")  # no feature maps inside a hub module
