"""Inside the network on imported runs: Grad-CAM against an independent GradientTape, inactive
augmentation, a grayscale model, nested layers, every method and the trust checks through the CLI.

The models are built in plain Keras (tests/keras_models.py) and imported once per module.
"""

from __future__ import annotations

import json

import keras_models
import numpy as np
import pytest
from PIL import Image

from conftest import TINY, runs_dir_set

pytestmark = pytest.mark.slow  # every test loads Keras models

METHODS = (
    "gradcam",
    "gradcam++",
    "layercam",
    "scorecam",
    "eigencam",
    "cam",
    "saliency",
    "smoothgrad",
    "integrated_gradients",
    "occlusion",
)


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict:
    """{name: (the original .keras file, the imported run folder)} for the softmax, tutorial and grayscale models."""
    from engine.importing import import_model

    root = tmp_path_factory.mktemp("imported")
    files = {
        "softmax": keras_models.softmax_rescaling(root / "softmax.keras"),
        "tutorial": keras_models.tutorial(root / "tutorial.keras"),
        "gray": keras_models.grayscale(root / "gray.keras"),
    }
    out = {}
    with runs_dir_set(root / "runs"):
        for name, path in files.items():
            found = import_model(path, out=root / "runs" / name)
            assert found["preprocess"]["name"] == "raw", found["preprocess"]  # each rescales its input itself
            out[name] = (path, found["run_dir"])
    return out


@pytest.fixture(scope="module")
def models(imported) -> dict:
    from engine.model.explainable import Explainable

    return {name: Explainable.from_run(run) for name, (_, run) in imported.items()}


def smooth_image(size: int, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8: blobs with some structure, so maps are not flat."""
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))


def reference_gradcam(activations_of, rest, x: np.ndarray, sign: float = 1.0) -> np.ndarray:
    """Grad-CAM written here, independently of engine.explain: ReLU(sum_c mean(dS/dA_c) * A_c), upsampled
    bilinearly to the input size, ReLU, then min-max scaled to [0, 1] (as engine/explain/grad_cam.py + base.py).

    Args:
        activations_of: prepared (1, S, S, C) -> A (1, h, w, K), eager.
        rest: A -> the score S (1,), eager, differentiable.
        sign: -1 to take the negative of `rest` (class 0 of a single logit).
    """
    import tensorflow as tf

    a = tf.constant(activations_of(x))
    with tf.GradientTape() as tape:
        tape.watch(a)
        score = sign * rest(a)
    g = tape.gradient(score, a).numpy()[0]  # (h, w, K)
    cam = np.maximum((g.mean(axis=(0, 1)) * a.numpy()[0]).sum(-1), 0)
    size = x.shape[1]
    up = tf.image.resize(cam[None, ..., None].astype(np.float32), (size, size), method="bilinear").numpy()[0, ..., 0]
    up = np.maximum(up, 0)
    span = up.max() - up.min()
    return (up - up.min()) / span if span > 1e-12 else np.zeros_like(up)


def engine_gradcam(model, rgb: np.ndarray, class_index: int, layer: str) -> np.ndarray:
    from engine.explain import explain_image

    result = explain_image(model, rgb, "gradcam", class_index, layer)
    assert result.layer == layer and result.class_index == class_index
    return result.heatmap


def test_gradcam_of_a_softmax_head_uses_the_pre_softmax_score(imported, models):
    import keras
    import tensorflow as tf

    original = keras.models.load_model(imported["softmax"][0], compile=False)
    model = models["softmax"]
    rgb = smooth_image(model.input_size)
    x = model.prepare(rgb)[None]
    upto = keras.Model(original.input, original.get_layer("conv2").output)
    dense = original.get_layer("predictions")
    assert dense.get_config()["activation"] == "softmax"  # the file's own head is a softmax
    probs = np.asarray(original(x, training=False))
    np.testing.assert_allclose(model.probabilities(x), probs, atol=1e-5)  # the imported run predicts as the file

    def head(a):  # pool2 -> GAP -> the Dense's kernel and bias: (1, K) logits, no softmax
        pooled = original.get_layer("gap")(original.get_layer("pool2")(a))
        return tf.matmul(pooled, dense.kernel) + dense.bias

    def activations_of(t):
        return upto(t, training=False).numpy()

    for cls in range(probs.shape[1]):
        expected = reference_gradcam(activations_of, lambda a, cls=cls: head(a)[:, cls], x)
        got = engine_gradcam(model, rgb, cls, "conv2")
        assert got.shape == (model.input_size, model.input_size) and expected.max() == pytest.approx(1.0)
        np.testing.assert_allclose(got, expected, atol=1e-5)
        # the score is the logit, not the probability: the softmax's gradient would mix the other classes in
        soft = reference_gradcam(activations_of, lambda a, cls=cls: tf.nn.softmax(head(a))[:, cls], x)
        assert np.abs(soft - expected).max() > 1e-3, "the test could not tell a softmax score from a logit"


def _tutorial_parts(original, cut: str):
    """(activations at base_model/`cut`, the logit z from them) for the tutorial model, eager and by hand."""
    import keras

    base = original.get_layer("base_model")
    augment = original.get_layer("data_augmentation")
    upto = keras.Model(base.input, base.get_layer(cut).output)
    names = [layer.name for layer in base.layers]
    after = names[names.index(cut) + 1 :]

    def activations_of(x):
        prepared = np.asarray(augment(x, training=False)) / 127.5 - 1.0  # mobilenet_v2.preprocess_input
        return upto(prepared, training=False).numpy()

    def logit(a):
        for name in after:
            a = base.get_layer(name)(a, training=False)
        pooled = original.get_layer("global_average_pooling2d")(a)
        return original.get_layer("prediction")(pooled)[:, 0]  # Dropout is inactive outside training

    return activations_of, logit


@pytest.mark.parametrize("cut", ["block2_conv", "block1_conv"])
def test_gradcam_of_both_classes_of_a_single_logit(imported, models, cut):
    """Class 1's score is the logit z, class 0's is -z; at the last conv and at one nested deeper."""
    import keras

    original = keras.models.load_model(imported["tutorial"][0], compile=False)
    model = models["tutorial"]
    rgb = smooth_image(model.input_size, seed=1)
    x = model.prepare(rgb)[None]
    z = float(np.asarray(original(x, training=False))[0, 0])
    np.testing.assert_allclose(model.probabilities(x)[0, 1], 1 / (1 + np.exp(-z)), atol=1e-6)
    activations_of, logit = _tutorial_parts(original, cut)
    maps = {}
    for cls, sign in ((1, 1.0), (0, -1.0)):
        expected = reference_gradcam(activations_of, logit, x, sign)
        maps[cls] = engine_gradcam(model, rgb, cls, f"base_model/{cut}")
        np.testing.assert_allclose(maps[cls], expected, atol=1e-5)
    assert np.abs(maps[1] - maps[0]).max() > 0.1  # the two classes look at different places


def test_augmentation_stays_inactive(imported, models):
    """The tutorial's RandomFlip / RandomRotation would change every call while training; here they never act."""
    import keras

    from engine.explain import make
    from engine.model.explainable import Explainable

    original = keras.models.load_model(imported["tutorial"][0], compile=False)
    model = models["tutorial"]
    x = model.prepare(smooth_image(model.input_size, seed=2))[None]
    assert not np.allclose(original(x, training=True), original(x, training=True)), "augmentation never acts"
    again = Explainable.from_run(imported["tutorial"][1])  # a fresh load too
    logits = [model.logits(x), model.logits(x), again.logits(x)]
    assert all(np.array_equal(logits[0], other) for other in logits[1:])
    for method in ("gradcam", "saliency", "eigencam"):
        maps = [make(method, m)(x, [1]) for m in (model, model, again)]
        assert all(np.array_equal(maps[0], other) for other in maps[1:]), method


def test_grayscale_model_maps_and_feature_maps(imported, models):
    import keras

    from engine.backbones.conventions import LUMA
    from engine.explain import activations, explain_image

    model = models["gray"]
    original = keras.models.load_model(imported["gray"][0], compile=False)
    rgb = smooth_image(model.input_size, seed=3)
    x = model.prepare(rgb)[None]
    luma = x @ np.asarray(LUMA, np.float32)  # (1, S, S, 1): what the one-channel model sees
    np.testing.assert_allclose(model.probabilities(x), np.asarray(original(luma, training=False)), atol=1e-5)
    for method in ("gradcam", "saliency"):
        result = explain_image(model, rgb, method)
        assert result.heatmap.shape == (model.input_size,) * 2 and 0 <= result.heatmap.min() < result.heatmap.max() <= 1
    layer = model.spatial_layers()[0]
    acts = model.activations(x, layer)
    expected = keras.Model(original.input, original.get_layer(layer).output)(luma, training=False)
    np.testing.assert_allclose(acts, np.asarray(expected), atol=1e-5)
    name, tiles = activations.first_layer_filters(model, tile=16)  # one-channel kernels, drawn in gray
    assert name == "conv1" and len(tiles) == 8 and tiles[0].shape == (16, 16, 3)
    assert all(np.array_equal(t[..., 0], t[..., 1]) and np.array_equal(t[..., 0], t[..., 2]) for t in tiles)


def test_nested_layers_are_listed_and_reachable(imported, models):
    import keras

    from engine.explain import activations

    model = models["tutorial"]
    names = model.spatial_layers()
    assert {"base_model/block1_conv", "base_model/block2_conv"} <= set(names)
    assert model.default_layer() == "base_model/block2_conv"
    walk = activations.depth_layers(model, 5)  # the walk through the network skips the (inactive) augmentation
    assert walk[-1] == "base_model/block2_conv" and not any(n.startswith("data_augmentation/") for n in walk), walk
    original = keras.models.load_model(imported["tutorial"][0], compile=False)
    x = model.prepare(smooth_image(model.input_size, seed=4))[None]
    activations_of, _ = _tutorial_parts(original, "block1_conv")
    np.testing.assert_allclose(model.activations(x, "base_model/block1_conv"), activations_of(x), atol=1e-5)


def cli(capsys, *args: str) -> tuple[int, dict]:
    """`python -m engine ARGS --json` in this process: (exit code, the JSON object)."""
    from engine.cli.main import main

    capsys.readouterr()
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_every_method_on_the_tutorial_run_writes_its_map(imported, tmp_path, capsys):
    from engine.explain import peak_in_original

    run = imported["tutorial"][1]
    image = tmp_path / "photo.png"
    Image.fromarray(smooth_image(90, seed=5)[:, :80]).save(image)  # not the input size: 90 rows, 80 columns
    for method in METHODS:
        npy = tmp_path / f"{method}.map"  # no .npy suffix: written to exactly this name
        code, out = cli(capsys, "explain", str(image), "--run", run, "--method", method, "--npy", str(npy))
        assert code == 0, out
        heat = np.load(npy)
        assert out["npy"] == str(npy) and out["size"] == [64, 64] == list(heat.shape), (method, out)
        assert heat.dtype == np.float32 and 0 <= heat.min() and heat.max() <= 1, method
        assert heat.max() == pytest.approx(1.0), f"{method}: a flat map"
        assert list(peak_in_original(heat, 90, 80)) == out["peak"], method
        assert out["method"] == method and out["class_index"] in (0, 1)
        assert (out["layer"] == "base_model/block2_conv") == (method in METHODS[:6]), out
    cam, grad = np.load(tmp_path / "cam.map"), np.load(tmp_path / "gradcam.map")
    np.testing.assert_allclose(cam, grad, atol=1e-5)  # a linear head after GAP: CAM is Grad-CAM


def test_trust_checks_on_an_imported_run(imported, tmp_path, capsys):
    run = imported["tutorial"][1]
    image = tmp_path / "photo.png"
    Image.fromarray(smooth_image(64, seed=6)).save(image)
    for method in ("gradcam", "saliency"):
        code, out = cli(capsys, "explain", str(image), "--run", run, "--method", method, "--checks")
        assert code == 0, out
        checks = out["checks"]
        # the user's own weighted layers, never ConvScope's fixed two_logits adapter
        assert checks["randomised_layers"] == ["block1_bn", "block2_conv", "prediction"], checks
        assert -1 <= checks["sanity_correlation"] <= 1
        assert checks["sanity_passed"] == (checks["sanity_correlation"] < checks["sanity_threshold"])
        assert 0 <= checks["deletion_auc"] <= 1 and 0 <= checks["insertion_auc"] <= 1


def test_activations_top_examples_and_visualize_on_an_imported_run(imported, tmp_path, capsys):
    run = imported["tutorial"][1]
    image = tmp_path / "photo.png"
    Image.fromarray(smooth_image(64, seed=7)).save(image)
    code, out = cli(capsys, "activations", "--run", run, "--layer", "list")
    assert code == 0 and "base_model/block1_conv" in [row["name"] for row in out["layers"]]
    grid = tmp_path / "grid.png"
    code, out = cli(
        capsys, "activations", str(image), "--run", run, "--layer", "base_model/block1_conv", "--out", str(grid)
    )
    assert code == 0 and out["shape"] == [64, 64, 8] and grid.is_file(), out
    # the imported run has no data of its own: top examples need a dataset, and say so
    code, out = cli(capsys, "top-examples", "--run", run, "--layer", "base_model/block2_conv")
    assert code == 2 and "give SOURCE" in out["error"] and "no data of its own" in out["error"], out
    code, out = cli(
        capsys, "top-examples", str(tmp_path / "nowhere"), "--run", run, "--layer", "base_model/block2_conv"
    )
    assert code == 2 and "no such folder" in out["error"], out
    code, out = cli(capsys, "top-examples", TINY, "--run", run, "--layer", "base_model/block2_conv", "--k", "3")
    assert code == 0 and out["images"] == 36 and len(out["channels"]) == 16, out
    assert all(len(ch["examples"]) <= 3 for ch in out["channels"])
    args = ("visualize", "--run", run, "--layer", "base_model/block1_conv", "--channel", "0-1", "--steps", "4")
    code, out = cli(capsys, *args, "--size", "48", "--natural-images", "8")
    assert code == 0 and out["natural_source"] == "shapes" and len(out["natural_mean_activation"]) == 2, out


def test_a_concept_test_on_the_tutorial_run_reaches_nested_layers_and_both_classes_of_one_logit(models):
    """TCAV on an imported model: layers inside its nested base, and class 0 of a single logit is its negative."""
    from engine.explain import concepts

    model = models["tutorial"]
    layers = concepts.default_layers(model)
    assert layers and all(name.startswith("base_model/") for name in layers), layers
    one = concepts.tcav(model, "builtin:mark", "1", "builtin:circle", layers, runs=3)
    zero = concepts.tcav(model, "builtin:mark", "0", "builtin:circle", layers, runs=3)
    for a, b in zip(one.layers, zero.layers, strict=True):
        assert len(a.scores) == len(a.random_scores) == 3 and 0 <= a.p_corrected <= 1
        # score(class 0) = -logit: every derivative flips sign, so each CAV's share is the complement.
        np.testing.assert_allclose(np.add(a.scores, b.scores), 1.0, atol=1e-9)
