"""Feature visualisation, the channels behind a prediction, before/after a fine-tune, and the CLI."""

import json

import numpy as np
import pytest

from conftest import TINY
from engine.explain import Explainable, ExplainError, channels, featurevis, top_examples

FAST = featurevis.Settings(steps=24, size=48)


def small_model(seed: int = 0):
    """A small random ReLU CNN at 64 px: conv -> relu -> conv (stride 2) -> relu -> GAP -> 3 logits."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="c1")(inputs)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="c2")(x)
    x = keras.layers.ReLU(name="r2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, out)


def explainable(model, name: str = "small") -> Explainable:
    return Explainable(model, lambda x: x / 127.5 - 1.0, ["circle", "square", "triangle"], name)


@pytest.fixture(scope="module")
def small():
    return explainable(small_model())


@pytest.mark.slow
def test_pictures_excite_their_channel_far_more_than_natural_images():
    """The issue's figure on a small setting: Lite0's last layer, 16 random channels, 96 px pictures of 96 steps,
    against the channel's mean over the images of a dataset: >= 5x for every channel."""
    model = Explainable.from_backbone("efficientnet_lite0")
    model.cache_folder, model.identity = None, ""
    natural = top_examples.top_examples(model, TINY, ["top_activation"], k=1)["top_activation"].natural_mean
    chosen = sorted(np.random.default_rng(0).choice(len(natural), 16, replace=False).tolist())
    pictures = featurevis.visualize(model, "top_activation", chosen, featurevis.Settings(steps=96, size=96))
    ratios = np.array([p.activation / natural[c] for p, c in zip(pictures, chosen, strict=True)])
    assert (ratios >= 5).all(), ratios.round(1)
    assert all(p.image.shape == (96, 96, 3) and p.image.dtype == np.uint8 for p in pictures)
    # the activation reported is the layer's own output on the picture, as the natural images are measured
    images = np.stack([p.image for p in pictures[:2]]).astype(np.float32)
    measured = featurevis.activation_on(model, "top_activation", images, chosen[:2])
    np.testing.assert_allclose(np.diag(measured), [p.activation for p in pictures[:2]], rtol=1e-3, atol=1e-3)


def test_seeded_and_independent_of_batch_mates(small):
    a = featurevis.visualize(small, "r1", [3], FAST)[0]
    small.memo = type(small.memo)()  # forget it: the same seed must make the same picture again
    b = featurevis.visualize(small, "r1", [3], FAST)[0]
    assert not b.cached
    np.testing.assert_array_equal(a.image, b.image)
    other = featurevis.visualize(small, "r1", [3], featurevis.Settings(steps=24, size=48, seed=1))[0]
    assert np.abs(other.image.astype(int) - a.image).mean() > 5  # another seed, another start
    small.memo = type(small.memo)()
    together = featurevis.visualize(small, "r1", [0, 3, 5], FAST)
    np.testing.assert_array_equal(together[1].image, a.image)  # alone or in a batch: the same picture
    odd = featurevis.visualize(small, "r1", [3], featurevis.Settings(steps=4, size=49))[0]
    assert odd.image.shape == (49, 49, 3)  # an odd size keeps its last column


def test_the_step_loop_in_the_graph_makes_the_pictures_of_the_python_loop(monkeypatch):
    """Issue 25 runs the steps as traced loops of CHUNK steps; the pictures are those of one step per call.

    The reference numbers were made by the code before (a Python loop calling one traced step);
    on that machine the chunked loop gave them bit for bit.
    """
    model = explainable(small_model())
    settings = featurevis.Settings(steps=24, size=48)
    chunked = featurevis.visualize(model, "r2", [0, 3, 5], settings)
    assert [round(p.activation, 4) for p in chunked] == pytest.approx([0.1167, 0.0188, 0.1184], abs=2e-4)
    np.testing.assert_allclose(chunked[0].curve[[0, 11, 23]], [0.000107, 0.0338, 0.0626], rtol=1e-2, atol=1e-5)
    model.memo = type(model.memo)()
    monkeypatch.setattr(featurevis, "CHUNK", 1)  # one step per call, as the Python loop ran them
    stepped = featurevis.visualize(model, "r2", [0, 3, 5], settings)
    for a, b in zip(chunked, stepped, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_allclose(a.curve, b.curve, rtol=1e-5, atol=1e-7)


def test_pictures_are_cached_in_memory_and_on_disk(tmp_path, monkeypatch):
    model = explainable(small_model(1))
    model.cache_folder, model.identity = tmp_path / "channels", "small:v1"
    first = featurevis.visualize(model, "r2", [1, 2], FAST)
    assert [p.cached for p in first] == [False, False]
    assert len(list((tmp_path / "channels" / "pictures").glob("*.npz"))) == 2

    def no_optimising(*args, **kwargs):
        raise AssertionError("a cached picture was optimised again")

    monkeypatch.setattr(featurevis._Optimiser, "run", no_optimising)
    again = featurevis.visualize(model, "r2", [2, 1], FAST)  # from the memo
    assert [p.cached for p in again] == [True, True]
    np.testing.assert_array_equal(again[1].image, first[0].image)
    fresh = explainable(model.model)  # a new process: same identity and folder, empty memo
    fresh.cache_folder, fresh.identity = model.cache_folder, model.identity
    from_disk = featurevis.visualize(fresh, "r2", [1], FAST)[0]
    assert from_disk.cached and from_disk.activation == pytest.approx(first[0].activation)
    fresh.identity = "small:v2"  # a rewritten model misses
    with pytest.raises(AssertionError, match="optimised again"):
        featurevis.visualize(fresh, "r2", [1], FAST)
    with pytest.raises(AssertionError, match="optimised again"):
        featurevis.visualize(model, "r2", [1], featurevis.Settings(steps=25, size=48))  # other settings miss


def test_a_class_logit_can_be_visualised(small):
    grey = np.full((1, 48, 48, 3), 127.0, np.float32)
    before = featurevis.activation_on(small, featurevis.LOGITS, grey, [2])[0, 0]
    picture = featurevis.visualize(small, featurevis.LOGITS, [2], FAST)[0]
    assert picture.activation > before + 0.03 and picture.curve[-4:].mean() > picture.curve[:4].mean()


def test_clear_errors(small):
    with pytest.raises(ExplainError, match="r2 has 16 channels"):
        featurevis.visualize(small, "r2", [16], FAST)
    with pytest.raises(ExplainError, match="not a feature map"):
        featurevis.visualize(small, "head", [0], FAST)
    with pytest.raises(ExplainError, match="steps must be"):
        featurevis.Settings(steps=0)
    with pytest.raises(ExplainError, match="has 3 classes"):
        featurevis.visualize(small, featurevis.LOGITS, [3], FAST)
    with pytest.raises(ExplainError, match="seed must be"):
        featurevis.Settings(seed=-1)


def test_a_flatten_head_cannot_take_other_sizes_and_says_so():
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="c")(inputs)
    model = explainable(keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten(name="flat")(x))))
    with pytest.raises(ExplainError, match="Flatten layer"):
        featurevis.visualize(model, featurevis.LOGITS, [0], FAST)
    assert featurevis.visualize(model, "c", [0], FAST)[0].image.shape == (48, 48, 3)  # a channel still works


def test_a_replaced_preprocessing_is_not_served_from_old_caches(small, tmp_path):
    model = explainable(small.model)
    model.cache_folder, model.identity = tmp_path, "small:v1"
    featurevis.visualize(model, "r2", [0], FAST)
    model.preprocess = lambda x: x * 0.0  # a black input: every channel sees the same constant
    assert model.identity == ""
    again = featurevis.visualize(model, "r2", [0], FAST)[0]
    assert not again.cached
    measured = featurevis.activation_on(model, "r2", again.image[None].astype(np.float32), [0])[0, 0]
    assert again.activation == pytest.approx(measured, abs=1e-5)


def test_relu6_layers_climb_their_input_capped_at_6():
    import keras

    inputs = keras.Input((64, 64, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="c")(inputs)
    x = keras.layers.ReLU(6.0, name="act")(x)
    model = explainable(keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x))))
    assert featurevis._cap(model.model, "act") == 6.0 and featurevis._cap(model.model, "c") is None
    pictures = featurevis.visualize(model, "act", [0, 1, 2, 3], FAST)
    assert all(0 < p.activation <= 6.0 for p in pictures)  # reported after the ReLU6, as the layer outputs it


def test_drivers_match_grad_cam_by_hand(small):
    """With GAP -> Dense, d logit_k / d A_c(i, j) = W[c, k] / (h w): weight x mean activation by hand."""
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 255, (64, 64, 3)).astype(np.float32)
    acts = small.activations(image[None], "r2")[0]  # (32, 32, 16)
    kernel = small.model.get_layer("head").get_weights()[0]  # (16, 3)
    h, w = acts.shape[:2]
    expected = kernel[:, 1] / (h * w) * acts.mean(axis=(0, 1))
    found = channels.drivers(small, image, "r2", 1)
    assert [d.channel for d in found] == list(np.argsort(-expected, kind="stable"))
    got = np.array([d.contribution for d in sorted(found, key=lambda d: d.channel)])
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-7)
    shares = np.array([d.share for d in found])
    assert shares[shares > 0].sum() == pytest.approx(1.0)
    with pytest.raises(ExplainError, match="class index"):
        channels.drivers(small, image, "r2", 3)


def test_weight_change_and_parent_run(tmp_path):
    import keras

    before = explainable(small_model(2))
    clone = keras.models.clone_model(before.model)
    clone.set_weights(before.model.get_weights())
    kernel, bias = clone.get_layer("c2").get_weights()
    old = np.concatenate([kernel[..., 5].ravel(), bias[5:6]])
    kernel[..., 5] *= 1.5
    clone.get_layer("c2").set_weights([kernel, bias])
    after = explainable(clone)
    expected = np.linalg.norm(0.5 * kernel[..., 5].ravel() / 1.5) / np.linalg.norm(old)
    assert channels.weight_change(before, after, "r2", 5) == pytest.approx(expected, rel=1e-5)  # through the ReLU
    assert channels.weight_change(before, after, "r2", 4) == pytest.approx(0.0)
    parent, child = tmp_path / "parent", tmp_path / "child"
    for run in (parent, child):
        run.mkdir()
    (parent / "model.keras").write_bytes(b"x")
    (child / "config.json").write_text(json.dumps({"parent": str(parent)}))
    assert channels.parent_run(child) == parent
    assert channels.parent_run(parent) is None  # no config: not a fine-tune


@pytest.mark.slow
def test_cli_visualize_and_top_examples(tmp_path, capsys):
    from engine.cli.main import main

    out = tmp_path / "pics.png"
    argv = ["visualize", "--layer", "stem_activation", "--channel", "0-1", "--steps", "8", "--size", "64"]
    argv += ["--source", TINY, "--natural-images", "12", "--out", str(out), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"layer", "channels", "activation", "natural_mean_activation", "seconds", "out"}
    assert result["channels"] == [0, 1] and len(result["natural_mean_activation"]) == 2 and out.is_file()
    assert main(["top-examples", TINY, "--layer", "stem_activation", "--k", "3", "--channel", "4", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["layer"] == "stem_activation" and found["images"] == 36
    (channel,) = found["channels"]
    assert channel["channel"] == 4 and len(channel["examples"]) == 3
    assert {"path", "activation", "position", "box"} <= set(channel["examples"][0])
    assert main(["visualize", "--layer", "stem_activation", "--channel", "a-b", "--json"]) == 2
    assert "--channel takes numbers" in json.loads(capsys.readouterr().out)["error"]
