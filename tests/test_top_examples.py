"""Top examples: the running top-k against NumPy, receptive-field boxes, the disk cache, errors."""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import TINY, train_tiny_run
from engine.data.pipeline import load_resized
from engine.errors import ConvScopeError
from engine.explain import Explainable, ExplainError
from engine.explain.top_examples import TopExamples, scan, top_examples

L = keras.layers
S = 32


def _tiny_model() -> keras.Model:
    """ "color": channel 0 = red minus the others, channel 1 = darkness; then a pool and a strided conv."""
    x = keras.Input((S, S, 3))
    color = L.Conv2D(2, 1, name="color")
    y = color(x)  # 32
    color.set_weights([np.array([[[[1.0, -1 / 3], [-0.5, -1 / 3], [-0.5, -1 / 3]]]], np.float32), np.array([0, 1.0])])
    y = L.MaxPooling2D(2, name="pool")(y)  # 16
    init = keras.initializers.RandomNormal(seed=3)
    y = L.Conv2D(3, 3, strides=2, padding="same", kernel_initializer=init, name="conv2")(y)  # 8
    y = L.GlobalAveragePooling2D(name="gap")(y)
    return keras.Model(x, L.Dense(2, kernel_initializer=init, name="logits")(y))


def _explainable(model=None) -> Explainable:
    return Explainable(model or _tiny_model(), preprocess=lambda x: x / 255.0, labels=["a", "b"], name="tiny")


def _write_images(root, per_class: int = 6, seed: int = 0) -> dict:
    """64 px PNGs in root/a, root/b: grey noise with a red square and a dark square of random strength.

    Returns {rel: (row, col) of the red square's centre in the 32 px model input}.
    """
    rng = np.random.default_rng(seed)
    reds = iter(rng.permutation(np.arange(160, 256)))  # distinct strengths: no ties to break
    darks = iter(rng.permutation(np.arange(0, 60)))
    red = {}
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(100, 156, (64, 64, 3)).astype(np.uint8)
            r, c = rng.integers(0, 56, 2)
            img[r : r + 8, c : c + 8] = (next(reds), 0, 0)
            d = rng.integers(0, 56, 2)
            img[d[0] : d[0] + 8, d[1] : d[1] + 8] = next(darks)
            Image.fromarray(img).save(root / cls / f"{i:02d}.png")
            red[f"{cls}/{i:02d}.png"] = ((r + 4) // 2, (c + 4) // 2)
    return red


def _expected(model: Explainable, result: TopExamples) -> dict:
    """The same top-k straight from the layer's full activations, in NumPy."""
    images = np.stack([load_resized(f"{result.root}/{rel}", S, "stretch") for rel in result.rels]).astype(np.float32)
    a = model.activations(images, result.layer)  # (N, h, w, C)
    n, h, w, c = a.shape
    flat = a.reshape(n, h * w, c)
    maxima, argmax = flat.max(1), flat.argmax(1)  # (N, C)
    order = np.argsort(-maxima.T, axis=1, kind="stable")[:, : result.k]  # (C, k)
    rows = np.arange(c)[:, None]
    return {
        "index": order,
        "activation": maxima.T[rows, order],
        "position": np.stack([argmax.T[rows, order] // w, argmax.T[rows, order] % w], -1),
        "natural_mean": flat.mean(1).mean(0),
        "grid": (h, w),
    }


@pytest.fixture
def data(tmp_path):
    root = tmp_path / "data"
    red = _write_images(root)
    return root, red


@pytest.mark.parametrize("layer", ["color", "pool", "conv2"])
def test_top_k_matches_numpy(data, layer):
    root, _ = data
    model = _explainable()
    result = top_examples(model, str(root), layer, k=4)[layer]
    want = _expected(model, result)
    assert result.rels == sorted(result.rels) and len(result.rels) == 12
    assert result.grid == want["grid"]
    np.testing.assert_array_equal(result.index, want["index"])
    np.testing.assert_allclose(result.activation, want["activation"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(result.position, want["position"])
    np.testing.assert_allclose(result.natural_mean, want["natural_mean"], rtol=1e-4, atol=1e-6)
    assert result.index.dtype == np.int32 and result.position.dtype == np.int32
    assert not result.cached and result.image_size == S and result.policy == "stretch"


def test_red_channel_finds_the_reddest_square(data):
    root, red = data
    result = top_examples(_explainable(), str(root), "color", k=3)["color"]
    strength = {rel: np.asarray(Image.open(root / rel))[..., 0].max() for rel in red}
    best = result.examples(0)[0]
    assert best["rel"] == max(strength, key=strength.get)
    (r, c), (row, col) = red[best["rel"]], best["position"]
    assert abs(row - r) <= 2 and abs(col - c) <= 2  # inside the 4x4 red square at 32 px
    assert best["box"] == [row, col, row + 1, col + 1]  # a 1x1 conv sees one pixel
    np.testing.assert_array_equal(result.crop(0, 0), load_resized(best["path"], S)[row : row + 1, col : col + 1])


def test_boxes_follow_the_receptive_field(data):
    root, _ = data
    found = top_examples(_explainable(), str(root), ["pool", "conv2"], k=2)
    for ex in found["pool"].examples(1):
        r, c = ex["position"]
        assert ex["box"] == [2 * r, 2 * c, 2 * r + 2, 2 * c + 2]  # 2x2 pool of a 1x1 conv
    result = found["conv2"]
    # 'same' 3x3 stride 2 on 16: pad 0 before, so position p sees pool positions 2p..2p+2, pixels 4p..4p+5.
    assert (result.field.size, result.field.jump, result.field.start) == (6, 4, 2.5)
    for channel in range(3):
        for rank, ex in enumerate(result.examples(channel)):
            r, c = ex["position"]
            assert ex["box"] == [4 * r, 4 * c, min(4 * r + 6, S), min(4 * c + 6, S)]
            assert result.crop(channel, rank).shape == (ex["box"][2] - ex["box"][0], ex["box"][3] - ex["box"][1], 3)
    with pytest.raises(ExplainError, match="channels 0..2"):
        result.examples(3)


def test_fewer_images_than_k_are_padded(data):
    root, _ = data
    result = top_examples(_explainable(), str(root), "color", k=20)["color"]
    assert result.index.shape == (2, 20)
    assert (result.index[:, 12:] == -1).all() and (result.index[:, :12] >= 0).all()
    assert np.isnan(result.activation[:, 12:]).all() and (result.position[:, 12:] == -1).all()
    assert sorted(result.index[0, :12]) == list(range(12))
    assert len(result.examples(0)) == 12
    payload = json.loads(json.dumps(result.to_json([1])))  # no NaN leaks into JSON
    assert payload["images"] == 12 and payload["k"] == 20 and payload["field"]["size"] == 1
    assert [c["channel"] for c in payload["channels"]] == [1]
    assert len(payload["channels"][0]["examples"]) == 12
    with pytest.raises(ExplainError, match="rank 12"):
        result.crop(0, 12)


def test_disk_cache_hit_miss_and_one_pass(data, tmp_path, monkeypatch):
    root, _ = data
    model = _explainable()
    model.cache_folder = tmp_path / "cache"
    model.identity = "test:1"
    calls = []
    real = model.compiled.channel_peaks

    def counting(images, layers):
        calls.append(list(layers))
        return real(images, layers)

    monkeypatch.setattr(model.compiled, "channel_peaks", counting)
    ticks = []
    first = top_examples(model, str(root), ["color", "conv2"], k=3, progress=lambda d, t: ticks.append((d, t)))
    assert calls == [["color", "conv2"]]  # 12 images: one batch, both layers in one forward pass
    assert ticks == [(12, 12)]
    assert len(list(model.cache_folder.glob("top-*.npz"))) == 2
    assert not any(r.cached for r in first.values())

    calls.clear()
    again = top_examples(model, str(root), ["conv2", "color", "pool"], k=3)
    assert calls == [["pool"]]  # only the new layer is scanned
    assert [again[name].cached for name in ("conv2", "color", "pool")] == [True, True, False]
    for name in ("color", "conv2"):
        for field in ("index", "activation", "position", "natural_mean"):
            np.testing.assert_array_equal(getattr(again[name], field), getattr(first[name], field))
        assert again[name].grid == first[name].grid and again[name].rels == first[name].rels

    def refuse(images, layers):
        raise AssertionError("a cached result ran a forward pass")

    monkeypatch.setattr(model.compiled, "channel_peaks", refuse)
    assert top_examples(model, str(root), "color", k=3)["color"].cached
    with pytest.raises(AssertionError, match="forward pass"):  # another k is another key
        top_examples(model, str(root), "color", k=4)
    model.identity = "test:2"  # the model file changed: old results must not be shown
    with pytest.raises(AssertionError, match="forward pass"):
        top_examples(model, str(root), "color", k=3)


def test_stale_or_broken_cache_files_are_scanned_again(data, tmp_path):
    root, _ = data
    model = _explainable()
    model.cache_folder, model.identity = tmp_path / "cache", "test:stale"
    top_examples(model, str(root), ["color", "pool"], k=2)
    reordered, broken = sorted(model.cache_folder.glob("top-*.npz"))
    with np.load(reordered) as saved:
        arrays = dict(saved)
    arrays["rels"] = arrays["rels"][::-1]  # another scan order: its indices mean other images
    np.savez(reordered, **arrays)
    broken.write_bytes(b"not a zip")
    again = top_examples(model, str(root), ["color", "pool"], k=2)
    assert not again["color"].cached and not again["pool"].cached
    assert all(r.cached for r in top_examples(model, str(root), ["color", "pool"], k=2).values())  # rewritten


def test_memory_cache_and_limit(data):
    root, _ = data
    model = _explainable()
    assert model.cache_folder is None
    ticks = []
    some = top_examples(model, str(root), "color", k=2, limit=5, progress=lambda d, t: ticks.append((d, t)))["color"]
    assert len(some.rels) == 5 and {rel.split("/")[0] for rel in some.rels} == {"a", "b"}  # classes mixed
    assert ticks == [(5, 5)]
    assert top_examples(model, str(root), "color", k=2, limit=5)["color"].cached
    assert not top_examples(model, str(root), "color", k=2)["color"].cached  # another limit: scanned
    assert not top_examples(_explainable(), str(root), "color", k=2, limit=5)["color"].cached  # another model


def test_scan_several_batches_and_a_nested_backbone(data):
    root, _ = data
    inner = _tiny_model()
    backbone = keras.Model(inner.input, inner.get_layer("conv2").output, name="base")
    x = keras.Input((S, S, 3))
    nested = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(backbone(x))))
    model = _explainable(nested)
    flat = _explainable(inner)
    paths = sorted(str(p) for p in root.rglob("*.png")) * 3  # 36 images: two batches
    ticks = []
    got = scan(model, paths, ["base/color", "base/conv2"], k=5, progress=lambda d, t: ticks.append((d, t)))
    want = scan(flat, paths, ["color", "conv2"], k=5)
    assert ticks == [(32, 36), (36, 36)]
    for a, b in (("base/color", "color"), ("base/conv2", "conv2")):
        np.testing.assert_array_equal(got[a]["index"], want[b]["index"])
        np.testing.assert_array_equal(got[a]["position"], want[b]["position"])
        np.testing.assert_allclose(got[a]["natural_mean"], want[b]["natural_mean"], rtol=1e-5)
    # Each image appears three times: the top 3 of a channel are one image's copies, earliest first.
    top = got["base/color"]["index"][0, :3]
    assert len({paths[i] for i in top}) == 1 and list(top) == sorted(top)
    result = top_examples(model, str(root), "base/conv2", k=2)["base/conv2"]
    assert (result.field.size, result.field.jump) == (6, 4)


def test_errors_say_what_was_wrong(data, tmp_path):
    root, _ = data
    model = _explainable()
    with pytest.raises(ExplainError, match="not a feature map"):
        top_examples(model, str(root), "gap")
    with pytest.raises(ExplainError, match="no layer 'nope'"):
        top_examples(model, str(root), ["color", "nope"])
    with pytest.raises(ExplainError, match="k .* at least 1"):
        top_examples(model, str(root), "color", k=0)
    with pytest.raises(ExplainError, match="limit"):
        top_examples(model, str(root), "color", limit=0)
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    (empty / "b").mkdir()
    with pytest.raises(ConvScopeError):
        top_examples(model, str(empty), "color")
    with pytest.raises(ConvScopeError, match="no image files"):
        scan(model, [], ["color"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("runs"), "channels", epochs=1)


@pytest.mark.slow
def test_a_trained_run_end_to_end(tiny_run):
    model = Explainable.from_run(tiny_run)
    layers = [model.default_layer(), "stem_activation"]
    found = top_examples(model, TINY, layers, k=3)
    top, stem = found[layers[0]], found["stem_activation"]
    assert len(top.rels) == 36 and top.index.shape == (1280, 3) and stem.index.shape == (32, 3)
    assert (stem.field.size, stem.field.jump) == (3, 2) and stem.grid == (48, 48)
    ex = stem.examples(0)[0]
    r, c = ex["position"]
    assert ex["box"] == [2 * r, 2 * c, min(2 * r + 3, 96), min(2 * c + 3, 96)]  # 'same' stride 2 pads after
    assert stem.crop(0, 0).shape[2] == 3
    assert len(list((tiny_run / "channels").glob("top-*.npz"))) == 2
    again = top_examples(Explainable.from_run(tiny_run), TINY, layers[0], k=3)[layers[0]]
    assert again.cached
    np.testing.assert_array_equal(again.index, top.index)


def test_ties_at_a_saturated_maximum_go_to_the_more_active_image():
    from engine.explain.top_examples import _RunningTop

    top = _RunningTop(channels=1, k=2, width=4)
    maxima = np.array([[6.0], [6.0], [5.0]], np.float32)  # ReLU6: the first two saturate
    means = np.array([[0.5], [2.0], [4.0]], np.float32)
    top.add(0, maxima, np.zeros((3, 1), np.int32), means)
    assert top.result((4, 4))["index"][0].tolist() == [1, 0]  # the same maximum: the higher mean first


def test_a_saturating_relu6_is_ranked_and_located_before_its_cap(data):
    """Every red square saturates a ReLU6 at 6; the reddest image still comes first, at its square."""
    root, red = data
    x = keras.Input((S, S, 3))
    color = L.Conv2D(1, 1, name="color")
    y = L.ReLU(6.0, name="capped")(color(x))
    color.set_weights([np.array([[[[40.0], [-20.0], [-20.0]]]], np.float32), np.zeros(1, np.float32)])
    model = Explainable(keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(y))), lambda v: v / 255.0, ["a", "b"], "c")
    result = top_examples(model, str(root), "capped", k=3)["capped"]
    strength = {rel: np.asarray(Image.open(root / rel))[..., 0].max() for rel in red}
    ranked = [e["rel"] for e in result.examples(0)]
    assert ranked == sorted(strength, key=strength.get, reverse=True)[:3]
    assert result.examples(0)[0]["activation"] > 6.0  # the peak before the cap
    (r, c), (row, col) = red[ranked[0]], result.examples(0)[0]["position"]
    assert abs(row - r) <= 2 and abs(col - c) <= 2
    acts = model.activations(np.stack([load_resized(str(root / rel), S) for rel in result.rels]), "capped")
    np.testing.assert_allclose(result.natural_mean, acts.mean(axis=(0, 1, 2)), rtol=1e-5)  # the mean after it


def test_a_field_as_big_as_the_image_shows_the_whole_image_with_the_position(data):
    root, _ = data
    result = top_examples(_explainable(), str(root), ["color", "conv2"], k=2)
    small, big = result["color"], result["conv2"]
    assert small.view(0, 0).shape == small.crop(0, 0).shape == (1, 1, 3)  # a 1x1 field: the crop
    top, left, bottom, right = big.examples(1)[0]["box"]
    assert big.view(1, 0).shape == (bottom - top, right - left, 3)  # conv2's 6 px field: a crop
    whole = big.view(1, 0, most=0.1)  # as if the field covered most of the image
    assert whole.shape == (S, S, 3)
    plain = load_resized(big.examples(1)[0]["path"], S)
    changed = np.argwhere((whole != plain).any(axis=-1))  # the outline
    cy, cx = big.field.centre(*big.examples(1)[0]["position"])
    assert changed.size and abs(changed[:, 0].mean() - cy) <= 2 and abs(changed[:, 1].mean() - cx) <= 2
