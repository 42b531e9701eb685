"""Explanations: one contract over every method on tiny models, a hand-computed
Grad-CAM, nested backbones, models reloaded from disk, the trust checks."""

import json

import keras
import numpy as np
import pytest

from engine.explain import METHODS, Explainable, ExplainError, checks, explain_image, make, peak_in_original
from engine.explain import activations as acts_mod
from engine.explain.grad_cam import GradCAM
from engine.explain.overlay import COLORMAPS, overlay

LABELS = ["a", "b", "c"]


def scale(x):
    return x / 255.0


def tiny_flat(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inp, out)


def tiny_nested(flat: keras.Model) -> keras.Model:
    """The same network as `flat`, with its convolutions inside a nested backbone."""
    b_in = keras.Input((8, 8, 3))
    y = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(b_in)
    y = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv2")(y)
    base = keras.Model(b_in, y, name="base")
    inp = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D(name="gap")(base(inp))
    model = keras.Model(inp, keras.layers.Dense(3, name="head")(x))
    for name in ("conv1", "conv2"):
        base.get_layer(name).set_weights(flat.get_layer(name).get_weights())
    model.get_layer("head").set_weights(flat.get_layer("head").get_weights())
    return model


@pytest.fixture(scope="module")
def tiny():
    return Explainable(tiny_flat(), scale, LABELS, "tiny")


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_keeps_the_contract(tiny, images, method):
    maps = make(method, tiny)(images, [0, 2])
    assert maps.shape == (2, 8, 8) and maps.dtype == np.float32
    assert not np.isnan(maps).any()
    assert maps.min() >= 0 and maps.max() <= 1


def test_grad_cam_weights_by_hand(tiny, images):
    # With global average pooling into a Dense layer, dScore_c/dA[i, j, k] = W[k, c] / (h * w)
    # at every position, so Grad-CAM's weights are the Dense kernel's column over h * w.
    cam = GradCAM(tiny, "conv2")
    a, g, _ = cam.activations_and_grads(images, [1, 2])
    kernel = tiny.model.get_layer("head").get_weights()[0]
    expected = kernel[:, [1, 2]].T / (8 * 8)
    np.testing.assert_allclose(cam.weights(a, g, [1, 2], images), expected, rtol=1e-5, atol=1e-7)
    # ...which makes Grad-CAM equal to CAM for such heads.
    np.testing.assert_allclose(cam(images, [1, 2]), make("cam", tiny, "conv2")(images, [1, 2]), atol=1e-5)


def test_layers_and_default(tiny):
    names = [i.name for i in tiny.layers()]
    assert names == ["conv1", "conv2", "gap", "head"]
    assert tiny.default_layer() == "conv2"
    with pytest.raises(ExplainError, match="not a feature map"):
        make("gradcam", tiny, "gap")
    with pytest.raises(ExplainError, match="no layer 'conv9'"):
        make("gradcam", tiny, "conv9")
    with pytest.raises(ExplainError, match="unknown method"):
        make("magic", tiny)


def test_nested_backbone_gives_the_same_maps_as_the_flat_graph(images):
    flat = tiny_flat(3)
    nested = Explainable(tiny_nested(flat), scale, LABELS, "nested")
    plain = Explainable(flat, scale, LABELS, "flat")
    assert "base/conv2" in [i.name for i in nested.layers()] and nested.default_layer() == "base/conv2"
    for method in ("gradcam", "layercam", "eigencam", "saliency"):
        layer = "base/conv1" if method == "layercam" else None
        flat_layer = "conv1" if method == "layercam" else None
        np.testing.assert_allclose(
            make(method, nested, layer)(images, [0, 1]), make(method, plain, flat_layer)(images, [0, 1]), atol=1e-5
        )
    np.testing.assert_allclose(nested.activations(images, "base/conv1"), plain.activations(images, "conv1"), atol=1e-6)


def save_run(model: keras.Model, folder, labels=LABELS, backbone=None):
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / "model.keras")
    (folder / "labels.json").write_text(json.dumps(labels))
    (folder / "config.json").write_text(json.dumps({"backbone": backbone} if backbone else {}))
    return folder


def test_maps_from_a_model_reloaded_from_disk(tmp_path, images):
    model = tiny_flat(5)
    run = save_run(model, tmp_path / "run")
    reloaded = Explainable.from_run(run)
    reloaded.preprocess = scale  # a run without a registry backbone has no preprocessing of its own
    original = Explainable(model, scale, LABELS, "tiny")
    for method in ("gradcam", "scorecam", "integrated_gradients"):
        np.testing.assert_allclose(
            make(method, reloaded)(images, [2, 0]), make(method, original)(images, [2, 0]), atol=1e-5
        )


def test_bad_run_folders_give_clear_errors(tmp_path):
    with pytest.raises(ExplainError, match="no model.keras"):
        Explainable.from_run(tmp_path)
    (tmp_path / "model.keras").write_text("not a zip")
    with pytest.raises(ExplainError, match="model.keras is corrupted or not a Keras archive"):
        Explainable.from_run(tmp_path)


def test_lambda_layers_are_refused(tmp_path):
    inp = keras.Input((8, 8, 3))
    out = keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Lambda(lambda t: t * 2)(inp)))
    save_run(keras.Model(inp, out), tmp_path / "run")
    with pytest.raises(ExplainError, match="cannot be loaded safely"):
        Explainable.from_run(tmp_path / "run")


def test_only_keras_files_are_loaded_and_always_in_safe_mode(tmp_path):
    import ast
    from pathlib import Path

    run = tmp_path / "legacy"
    run.mkdir()
    tiny_flat().save(run / "model.h5")  # a legacy HDF5 model (no safe mode exists for it) is never picked up
    (run / "labels.json").write_text(json.dumps(LABELS))
    with pytest.raises(ExplainError, match="no model.keras"):
        Explainable.from_run(run)
    # Every model load in the code asks for safe mode, and nothing turns unsafe deserialization on.
    root = Path(__file__).resolve().parents[1]
    files = [root / "app.py", *(p for d in ("engine", "ui", "pages", "bench") for p in (root / d).rglob("*.py"))]
    loads = 0
    for path in files:
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else ""
            assert name != "enable_unsafe_deserialization", f"{path}:{node.lineno}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load_model":
                loads += 1
                safe = [k.value for k in node.keywords if k.arg == "safe_mode"]
                assert len(safe) == 1 and isinstance(safe[0], ast.Constant) and safe[0].value is True, (
                    f"{path.relative_to(root)}:{node.lineno} loads a model without safe_mode=True"
                )
    assert loads >= 3  # the scan does see the loaders


def test_a_model_file_with_escaping_members_writes_nothing_outside_and_a_cut_file_is_refused(tmp_path):
    import zipfile

    run = save_run(tiny_flat(), tmp_path / "runs" / "run")
    good = (run / "model.keras").read_bytes()
    with zipfile.ZipFile(run / "model.keras", "a") as zf:
        for name in ("../../escaped.txt", "assets/../../../escaped.txt", f"{tmp_path}/absolute.txt"):
            zf.writestr(name, "written by a hostile model file")
    before = set(tmp_path.rglob("*"))
    try:
        Explainable.from_run(run)  # Keras reads only the members it expects
    except ExplainError:
        pass  # refusing the file is fine too
    assert set(tmp_path.rglob("*")) == before, "the model file wrote outside its run"
    for cut in (good[: len(good) // 2], b"PK\x03\x04" + b"\0" * 40, b"not a zip at all"):
        (run / "model.keras").write_bytes(cut)
        with pytest.raises(ExplainError, match="corrupted or not a Keras archive"):
            Explainable.from_run(run)


def test_opaque_models_offer_input_attributions(images):
    opaque = Explainable(tiny_flat(), scale, LABELS, "hub-like", opaque_reason="hub-like is an opaque TF Hub module")
    with pytest.raises(ExplainError, match="opaque TF Hub module.*occlusion"):
        make("gradcam", opaque)
    assert make("occlusion", opaque)(images, [0, 1]).shape == (2, 8, 8)


def test_peak_maps_back_to_original_pixels():
    heat = np.zeros((4, 4), np.float32)
    heat[3, 0] = 1
    assert peak_in_original(heat, 400, 800) == (350, 100)


def test_activation_views(tiny, images):
    acts = tiny.activations(images[:1], "conv1")[0]
    order = acts_mod.channel_order(acts)
    assert sorted(order) == [0, 1, 2, 3] and acts[..., order[0]].mean() >= acts[..., order[-1]].mean()
    grid = acts_mod.channel_grid(acts, order, tile=8, columns=2)
    assert grid.shape == (2 * (8 + 14), 2 * (8 + 2), 3) and grid.dtype == np.uint8  # 8x8 maps, a label strip each
    stats = acts_mod.layer_stats(acts)
    assert 0 <= stats["dead_fraction"] <= 1 and stats["channels"] == 4 and stats["images"] == 1
    name, tiles = acts_mod.first_layer_filters(tiny)
    assert name == "conv1" and len(tiles) == 4 and tiles[0].shape == (32, 32, 3)
    assert acts_mod.depth_layers(tiny, 5) == ["conv1", "conv2"]


def test_feature_maps_are_drawn_at_their_true_resolution_with_their_channel_number():
    acts = np.zeros((2, 2, 3), np.float32)
    acts[0, 0, 2] = 1.0  # channel 2: one hot cell in a 2x2 map
    grid = acts_mod.channel_grid(acts, np.array([2]), tile=8, columns=1)
    assert grid.shape == (8 + 14, 8 + 2, 3)
    tile = grid[13 : 13 + 8, 1 : 1 + 8]  # below the 12-px label strip
    assert (tile[:4, :4] == tile[0, 0]).all() and (tile[4:, 4:] == tile[7, 7]).all()  # blocks, not a blur
    assert not np.array_equal(tile[0, 0], tile[7, 7])
    strip = grid[1:13, 1:9]
    assert (strip < 200).any()  # the channel number is written there
    assert np.array_equal(acts_mod.nearest(np.eye(2)[None], 3)[0, :3, :3], np.ones((3, 3)))


def test_dead_channels_are_counted_over_a_batch():
    acts = np.zeros((2, 4, 4, 3), np.float32)
    acts[0, ..., 0] = 1  # channel 0 fires on image 0 only
    acts[1, ..., 1] = 1  # channel 1 fires on image 1 only; channel 2 never: dead
    assert acts_mod.layer_stats(acts[0])["dead_fraction"] == pytest.approx(2 / 3)
    stats = acts_mod.layer_stats(acts)
    assert stats["dead_fraction"] == pytest.approx(1 / 3) and stats["images"] == 2


def test_colour_bar():
    from engine.explain.overlay import colour_bar

    bar = colour_bar("Viridis", 100)
    assert bar.shape == (34, 100, 3) and bar.dtype == np.uint8
    assert not np.array_equal(bar[5, 0], bar[5, 99])


def test_maps_are_cached_by_image_content_method_layer_and_class(tiny):
    rgb = np.random.default_rng(3).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    other = np.random.default_rng(4).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    model = Explainable(tiny.model, scale, LABELS, "memo")
    first = explain_image(model, rgb, "gradcam", 1)
    again = explain_image(model, rgb.copy(), "gradcam", 1)
    assert not first.cached and again.cached
    np.testing.assert_array_equal(first.heatmap, again.heatmap)
    assert not explain_image(model, rgb, "gradcam", 2).cached  # another class
    assert not explain_image(model, rgb, "gradcam", 1, "conv1").cached  # another layer
    new = explain_image(model, other, "gradcam", 1)  # another image: its own map, never the old one
    assert not new.cached and not np.array_equal(new.heatmap, first.heatmap)
    curves = checks.faithfulness(model, first)
    assert checks.faithfulness(model, again) is curves


@pytest.mark.parametrize("colormap", COLORMAPS)
def test_overlay(colormap):
    rgb = np.full((10, 20, 3), 100, np.uint8)
    heat = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    out = overlay(rgb, heat, 0.5, colormap)
    assert out.shape == (10, 20, 3) and out.dtype == np.uint8
    assert np.array_equal(overlay(rgb, heat, 0.0, colormap), rgb)


def test_spearman():
    a = np.arange(16.0).reshape(4, 4)
    assert checks.spearman(a, a * 3 + 1) == pytest.approx(1.0)
    assert checks.spearman(a, -a) == pytest.approx(-1.0)


@pytest.fixture(scope="module")
def lite0():
    return Explainable.from_backbone("efficientnet_lite0")


@pytest.mark.slow
def test_imagenet_cat_grad_cam_and_faithfulness(lite0):
    from engine.samples import sample_photo

    rgb = sample_photo("chelsea")
    result = explain_image(lite0, rgb, "gradcam")
    assert result.label == "Egyptian cat" and result.layer == "top_activation"
    row, col = result.peak
    assert 0 <= row < rgb.shape[0] and 0 <= col < rgb.shape[1]
    x = lite0.prepare(rgb)
    curves = checks.deletion_insertion(lite0, x, result.heatmap, result.class_index, steps=8)
    assert curves.deletion[0] == pytest.approx(curves.insertion[-1], abs=1e-5)  # both are the intact image
    assert curves.deletion_auc < curves.insertion_auc  # removing what the map marks hurts most


@pytest.mark.slow
def test_sanity_check_separates_grad_cam_from_an_edge_detector(lite0):
    from engine.samples import sample_photo

    x = lite0.prepare(sample_photo("chelsea"))
    randomised = checks.randomised_copy(lite0)
    assert lite0.model.get_layer("predictions").get_weights()[0].std() > 0  # the shared model is untouched
    grad = checks.sanity_check(lite0, "gradcam", x, 285, randomised=randomised)
    assert grad.passed and grad.correlation < checks.SANITY_THRESHOLD
    # Eigen-CAM ignores the head entirely: its map cannot change with the head's weights.
    eig = checks.sanity_check(lite0, "eigencam", x, 285, randomised=checks.randomised_copy(lite0, top_layers=1))
    assert not eig.passed and eig.correlation > 0.99


@pytest.mark.slow
def test_localisation_on_a_trained_shapes_run_is_well_above_chance(tmp_path, cache_dir):
    """Train a head on frozen Lite0 features of the shapes set, save it as a run, reload, localise."""
    from engine.backbones import load
    from engine.data.pipeline import load_resized
    from engine.data.sources import open_dataset
    from engine.training.features import FeatureExtractor

    ds = open_dataset("shapes:per_class=20,classes=3,size=160")
    size = 224  # a 7x7 last feature map: 128 px gives 4x4, too coarse to place a peak
    fx = FeatureExtractor("efficientnet_lite0", image_size=size)
    feats = fx.embed(lambda k: load_resized(str(ds.path(ds.items[k])), size), len(ds.items))
    labels = np.array([i.label for i in ds.items])
    keras.utils.set_random_seed(0)
    head = keras.layers.Dense(len(ds.classes), name="head")
    probe = keras.Sequential([keras.Input((feats.shape[1],)), head])
    probe.compile(keras.optimizers.Adam(1e-2), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    probe.fit(feats, labels, epochs=60, batch_size=16, verbose=0)
    base = load("efficientnet_lite0", image_size=size)
    full_head = keras.layers.Dense(len(ds.classes), name="head")
    model = keras.Model(base.input, full_head(keras.layers.GlobalAveragePooling2D(name="gap")(base.output)))
    full_head.set_weights(head.get_weights())
    run = save_run(model, tmp_path / "shapes-run", labels=ds.classes, backbone="efficientnet_lite0")

    reloaded = Explainable.from_run(run)
    assert reloaded.default_layer() == "top_activation"
    result = checks.localisation(reloaded, ds, ds.items, ["gradcam", "layercam"])
    assert result["n"] == 60
    for method, rate in result["hit_rate"].items():
        assert rate > 2 * result["chance"] and rate >= 0.6, (method, result)


def test_display_contrast_never_moves_the_peak(tiny, images):
    saliency = make("saliency", tiny)
    maps = saliency(images, [0, 1])
    shown = saliency.for_display(maps)
    assert shown.shape == maps.shape and shown.min() >= 0 and shown.max() <= 1
    assert (shown >= maps - 1e-6).all()  # clipping the top brightens the rest
    assert np.array_equal(make("gradcam", tiny).for_display(maps), maps)  # CAMs are drawn as they are


# ---- the compiled paths (engine.model.compiled) ---------------------------------------------------------


def eager_twin(model: Explainable) -> Explainable:
    """The same model whose passes run the same Python functions eagerly, without tf.function."""
    from engine.explain import CompiledModel

    twin = Explainable(model.model, model.preprocess, model.labels, f"{model.name} (eager)", model._default_layer)
    twin.compiled = CompiledModel(model.model, model.preprocess, compiled=False)
    return twin


@pytest.mark.parametrize("method", list(METHODS))
def test_compiled_maps_equal_the_eager_ones(tiny, images, method):
    compiled = make(method, tiny)(images, [0, 2])
    eager = make(method, eager_twin(tiny))(images, [0, 2])
    np.testing.assert_allclose(compiled, eager, atol=1e-5)


@pytest.mark.slow
def test_compiled_grad_cam_equals_a_plain_eager_reference_on_lite0():
    """Grad-CAM written out by hand with eager Keras calls, against the engine's compiled path on Lite0."""
    import tensorflow as tf

    from engine.explain.base import normalise, upsample
    from engine.samples import sample_photo

    model = Explainable.from_backbone("efficientnet_lite0")
    x = model.prepare(sample_photo("chelsea"))[None]
    layer = model.default_layer()
    both = keras.Model(model.model.input, [model.model.get_layer(layer).output, model.model.output])
    inputs = tf.constant(model.preprocess(x))
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        a, y = both(inputs, training=False)
        score = y[:, 285]  # Egyptian cat
    grads = tape.gradient(score, a).numpy()
    cam = np.maximum((grads.mean(axis=(1, 2))[:, None, None, :] * a.numpy()).sum(-1), 0)
    expected = normalise(upsample(cam, model.input_size))
    np.testing.assert_allclose(make("gradcam", model)(x, [285]), expected, atol=1e-5)
    np.testing.assert_allclose(model.logits(x), y.numpy(), rtol=1e-4, atol=1e-4)


def test_each_function_is_traced_once_for_any_batch_size(tiny, images):
    fresh = Explainable(tiny.model, scale, LABELS, "fresh")
    many = np.concatenate([images] * 20)  # 40 images: more than one chunk of 32
    for batch in (images[:1], images, many):
        fresh.logits(batch)
        make("gradcam", fresh, "conv1")(batch, [1] * len(batch))
        make("saliency", fresh)(batch, [0] * len(batch))
    traces = fresh.compiled.traces
    assert traces[("logits",)] == 1
    assert traces[("layer_gradient", "conv1")] == 1
    assert traces[("input_gradient",)] == 1
    assert fresh.logits(many).shape == (40, 3)


def test_a_shared_model_is_right_from_two_threads_at_once(tiny):
    """Two sessions explaining different images on one cached model: each gets its own right answer."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    batches = [rng.uniform(0, 255, (3, 8, 8, 3)).astype(np.float32) for _ in range(2)]
    expected = [(make("gradcam", tiny)(b, [0, 1, 2]), tiny.logits(b)) for b in batches]

    def work(k: int):
        out = []
        for _ in range(25):
            out.append((make("gradcam", tiny)(batches[k], [0, 1, 2]), tiny.logits(batches[k])))
        return out

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(work, [0, 1]))
    for k in range(2):
        for maps, logits in results[k]:
            np.testing.assert_allclose(maps, expected[k][0], atol=1e-6)
            np.testing.assert_allclose(logits, expected[k][1], atol=1e-6)


def test_methods_report_progress_and_their_cost(tiny, images):
    seen = []
    make("occlusion", tiny)(images, [0, 1], progress=seen.append)
    assert seen and seen[-1] == pytest.approx(1.0) and seen == sorted(seen)
    assert make("occlusion", tiny).passes(8) == (1 + 9, 0)  # 4-px patches every 2 px on 8 px: 3 x 3
    assert make("smoothgrad", tiny).passes(8) == (0, 16)
    assert make("gradcam", tiny).expected_seconds() > 0


def test_maps_relative_to_the_prediction_keep_an_unlikely_class_dark(tiny):
    from engine.explain import relative_to

    rgb = np.random.default_rng(5).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    pred = explain_image(tiny, rgb, "gradcam")
    assert relative_to(pred, pred).max() == pytest.approx(1.0)
    for k in range(3):
        other = explain_image(tiny, rgb, "gradcam", k)
        rel = relative_to(other, pred)
        assert rel.min() >= 0 and rel.max() <= 1
        expected = min(1.0, other.unscaled.max() / pred.unscaled.max())
        assert rel.max() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError):
        relative_to(explain_image(tiny, rgb, "layercam"), pred)


def test_warm_up_traces_what_a_first_look_needs(tiny, images):
    fresh = Explainable(tiny.model, scale, LABELS, "warm").warm_up()
    traced = dict(fresh.compiled.traces)
    assert traced == {("logits",): 1, ("input_gradient",): 1, ("layer", "conv2"): 1, ("layer_gradient", "conv2"): 1}
    for method in ("gradcam", "eigencam", "saliency"):
        make(method, fresh)(images, [0, 1])
    fresh.probabilities(images)
    assert dict(fresh.compiled.traces) == traced  # nothing traced again on the first click


# ---- one pass for the prediction and the map (issue 25) ---------------------------------------------------


def image_that_tells_passes_apart(model: Explainable) -> np.ndarray:
    """An (11, 13, 3) uint8 image whose predicted class differs from what the other passes would predict:

    from class 0, from the black image (Integrated Gradients' path starts there) and from at least one of
    SmoothGrad's noisy copies, so a class taken from any pass but the image's own shows in the results.
    """
    from engine.explain.smoothgrad import NOISE, SAMPLES

    black = int(model.logits(np.zeros((1, 8, 8, 3), np.float32)).argmax())
    for seed in range(500):
        rng = np.random.default_rng(seed)  # a random colour with noise: tiny_flat predicts class 0 for most images
        rgb = np.clip(rng.integers(0, 255, (1, 1, 3)) + rng.normal(0, 20, (11, 13, 3)), 0, 255).astype(np.uint8)
        x = model.prepare(rgb)[None]
        noisy = np.repeat(x, SAMPLES, axis=0)
        noisy += np.random.default_rng(0).standard_normal(noisy.shape, dtype=np.float32) * np.float32(NOISE * 255)
        predicted = int(model.logits(x).argmax())
        if predicted not in (0, black) and (model.logits(noisy).argmax(axis=1) != predicted).any():
            return rgb
    raise AssertionError("no image tells the passes apart")


@pytest.mark.parametrize("method", list(METHODS))
def test_explain_image_gives_the_two_pass_results_from_one_pass(tiny, method):
    """explain_image's class, probability and maps equal the old way: a forward pass for the probabilities, then the
    method's own pass for that class (or a given one). Only a method whose pass cannot predict runs a forward pass."""
    from engine.explain.base import normalise

    rgb = image_that_tells_passes_apart(tiny)
    x = tiny.prepare(rgb)[None]
    probs = tiny.probabilities(x)[0]
    predicted = int(np.argmax(probs))
    for class_index in (None, (predicted + 1) % 3):
        model = Explainable(tiny.model, scale, LABELS, "fresh")  # an empty map cache and probability memo
        forward, logits = [], model.compiled.logits

        def counted(images, progress=None, seen=forward, run=logits):
            seen.append(len(images))
            return run(images, progress)

        model.compiled.logits = counted
        result = explain_image(model, rgb, method, class_index)
        index = predicted if class_index is None else class_index
        explainer = make(method, tiny)  # the old way, on the fixture's model: its passes are not counted
        heat = normalise(explainer.unscaled(x, [index]))[0]
        assert result.class_index == index and result.label == LABELS[index]
        assert result.probability == pytest.approx(probs[index], abs=1e-6)
        np.testing.assert_allclose(result.unscaled, explainer.unscaled(x, [index])[0], atol=1e-5)
        np.testing.assert_allclose(result.heatmap, heat, atol=1e-5)
        np.testing.assert_allclose(result.display, explainer.for_display(heat[None])[0], atol=1e-5)
        assert result.peak == peak_in_original(heat, 11, 13)
        memo = model.memo.get(("probabilities", checks.image_digest(x)))
        np.testing.assert_allclose(memo, probs, atol=1e-6)  # what the Inside page reads for this image
        # the image alone through a plain forward pass: only where the method's own pass cannot predict (occlusion's
        # first pass is that one: it runs the image as it is, and its logits give the prediction)
        assert forward.count(1) == (method in ("smoothgrad", "integrated_gradients", "occlusion")), forward
        again = explain_image(model, rgb, method, class_index)
        assert again.cached and again.class_index == index


@pytest.mark.slow
def test_one_pass_explanations_equal_the_two_pass_ones_on_lite0(lite0):
    """On a real model too: the prediction taken from the map's pass is the forward pass's, and so are the maps."""
    from engine.explain.base import normalise
    from engine.model.memo import Memo
    from engine.samples import sample_photo

    rgb = sample_photo("chelsea")
    x = lite0.prepare(rgb)[None]
    probs = lite0.probabilities(x)[0]
    for method in ("gradcam", "saliency"):
        lite0.memo = Memo()  # nothing known of the image: the prediction comes from the map's pass
        result = explain_image(lite0, rgb, method)
        index = int(np.argmax(probs))
        unscaled = make(method, lite0).unscaled(x, [index])
        assert result.class_index == index and result.probability == pytest.approx(probs[index], abs=1e-5)
        np.testing.assert_allclose(result.unscaled, unscaled[0], atol=1e-5)
        np.testing.assert_allclose(result.heatmap, normalise(unscaled)[0], atol=1e-5)
