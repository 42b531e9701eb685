"""What a fine-tune changed (weights, CKA, head features) and the strategy advice."""

import json
import math
from types import SimpleNamespace

import keras
import numpy as np
import pytest

from engine.backbones import get_spec
from engine.errors import FinetuneError
from engine.training.advice import LARGE_PER_CLASS, REGIMES, SIMILAR_CONFIDENCE, TITLES, advise, imagenet_similarity
from engine.training.blocks import group
from engine.training.changes import (
    block_similarity,
    compare,
    linear_cka,
    penultimate,
    to_json,
    weight_changes,
)

# A tiny flat classifier named like a backbone: stem, block1 (conv + BN), block2, top, then the head.
TINY = SimpleNamespace(
    name="tiny", finetune_blocks=("block1", "block2", "top"), last_conv_layer="top_relu", blocks_end=False
)
SIZE = 16


def tiny_classifier(seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input((SIZE, SIZE, 3), name="input")
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem_conv")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="block1_conv")(x)
    x = keras.layers.BatchNormalization(name="block1_bn")(x)
    x = keras.layers.ReLU(name="block1_relu")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="block2_conv")(x)
    x = keras.layers.ReLU(name="block2_relu")(x)
    x = keras.layers.Conv2D(8, 1, name="top_conv")(x)
    x = keras.layers.ReLU(name="top_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dense(3, name="logits")(x)
    model = keras.Model(inputs, x, name="tiny")
    bn = model.get_layer("block1_bn")  # non-trivial moving statistics, so BN is not the identity
    rng = np.random.default_rng(seed)
    bn.set_weights([w + rng.uniform(0.1, 0.5, w.shape).astype(np.float32) for w in bn.get_weights()])
    return model


def clone(model: keras.Model) -> keras.Model:
    child = keras.models.clone_model(model)
    child.set_weights(model.get_weights())
    return child


def images(n: int = 16, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    return tiny_classifier()


# ---- linear CKA --------------------------------------------------------------
def test_cka_of_identical_rotated_scaled_and_shifted_features_is_one():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, x @ q) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.7 * x) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 0.01 * x @ q + 5.0) == pytest.approx(1.0, abs=1e-12)  # centring removes the shift


def test_cka_is_not_invariant_to_anisotropic_scaling():
    x = np.random.default_rng(1).normal(size=(200, 3))
    assert linear_cka(x, x * [1.0, 10.0, 100.0]) < 0.9


def test_cka_of_independent_features_is_small():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 5))
    assert linear_cka(x, y) < 0.02


def test_cka_hand_computed():
    # 1-D: centred x = (-1, 0, 1), y = (0, -1, 1): (y.x)^2 / (|x|^2 |y|^2) = 1 / (2 * 2), the squared correlation.
    assert linear_cka(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [0.0], [2.0]])) == pytest.approx(0.25)
    # Already centred: Y^T X = [2, 1] -> 5; X^T X = [[2, 1], [1, 2]] -> sqrt(10); Y^T Y = 2.
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    y = np.array([[1.0], [0.0], [-1.0]])
    assert linear_cka(x, y) == pytest.approx(5 / (2 * math.sqrt(10)))
    assert linear_cka(y, x) == pytest.approx(5 / (2 * math.sqrt(10)))


def test_cka_of_constant_features_is_nan_and_bad_shapes_raise():
    x = np.random.default_rng(3).normal(size=(10, 3))
    assert math.isnan(linear_cka(np.full((10, 3), 0.1), x))  # 0.1 is not exact in binary: rounding, not variance
    assert math.isnan(linear_cka(x, np.zeros((10, 2))))
    with pytest.raises(ValueError, match="same n"):
        linear_cka(x, x[:5])
    with pytest.raises(ValueError, match=r"\(n, p\)"):
        linear_cka(x.ravel(), x)


# ---- weights -----------------------------------------------------------------
def test_blocks_of_the_tiny_classifier(tiny):
    assert [b.name for b in group(tiny, TINY.finetune_blocks, TINY.last_conv_layer)] == [
        "stem",
        "block1",
        "block2",
        "top",
        "head",
    ]


def test_weight_changes_of_a_clone_are_exactly_zero(tiny):
    blocks = group(tiny, TINY.finetune_blocks, TINY.last_conv_layer)
    rows = weight_changes(tiny, clone(tiny), blocks)
    assert [r["block"] for r in rows] == ["stem", "block1", "block2", "top", "head"]
    assert all(r["change"] == 0.0 for r in rows)
    # stem 3*3*3*4 + 4; block1 3*3*4*4 + BN's 4 x (gamma, beta, mean, variance); top 4*8 + 8; head 8*3 + 3
    assert [r["params"] for r in rows] == [112, 160, 148, 40, 27]


def test_weight_change_of_one_perturbed_kernel_is_hand_computed(tiny):
    before = clone(tiny)
    conv = before.get_layer("block2_conv")
    conv.set_weights([np.ones((3, 3, 4, 4), np.float32), np.zeros(4, np.float32)])  # ||W|| = sqrt(144) = 12
    after = clone(before)
    kernel, bias = after.get_layer("block2_conv").get_weights()
    kernel[0, 0, 0, 0] += 0.6
    after.get_layer("block2_conv").set_weights([kernel, bias])
    rows = {
        r["block"]: r["change"]
        for r in weight_changes(before, after, group(before, TINY.finetune_blocks, TINY.last_conv_layer))
    }
    assert rows["block2"] == pytest.approx(0.6 / 12)
    assert all(rows[b] == 0.0 for b in ("stem", "block1", "top", "head"))


def test_weight_changes_leave_out_batchnorm_moving_statistics(tiny):
    """The moving statistics are not weights: moving them alone reads 0; BN's scale counts."""
    after = clone(tiny)
    bn = after.get_layer("block1_bn")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma, beta, mean + 1.0, var])  # non-trainable weights only
    blocks = group(tiny, TINY.finetune_blocks, TINY.last_conv_layer)
    assert {r["block"]: r["change"] for r in weight_changes(tiny, after, blocks)}["block1"] == 0.0
    bn.set_weights([gamma * 2, beta, mean, var])
    rows = {r["block"]: r["change"] for r in weight_changes(tiny, after, blocks)}
    assert rows["block1"] > 0 and rows["block2"] == 0.0


# ---- representations ---------------------------------------------------------
def test_block_similarity_is_one_for_identical_models(tiny):
    blocks = group(tiny, TINY.finetune_blocks, TINY.last_conv_layer)
    rows = block_similarity(tiny, clone(tiny), images(), blocks, batch_size=5)  # 16 = 5 + 5 + 5 + 1
    assert [r["block"] for r in rows] == ["stem", "block1", "block2", "top"]  # no head
    assert all(r["cka"] == pytest.approx(1.0, abs=1e-6) for r in rows)


def test_block_similarity_drops_from_the_perturbed_block_on(tiny):
    after = clone(tiny)
    conv = after.get_layer("block2_conv")
    kernel, bias = conv.get_weights()
    conv.set_weights([kernel + np.random.default_rng(5).normal(0, kernel.std(), kernel.shape), bias])
    rows = {
        r["block"]: r["cka"]
        for r in block_similarity(tiny, after, images(), group(tiny, TINY.finetune_blocks, TINY.last_conv_layer))
    }
    assert rows["stem"] == pytest.approx(1.0, abs=1e-6) and rows["block1"] == pytest.approx(1.0, abs=1e-6)
    assert rows["block2"] < 0.99 and rows["top"] < 0.99


def test_penultimate_shapes_and_knn(tiny):
    labels = np.arange(16) % 3
    out = penultimate(tiny, clone(tiny), images(), labels)
    assert out["layer"] == "avg_pool"
    for side in ("before", "after"):
        assert out[side]["xy"].shape == (16, 2)
        assert 0.0 <= out[side]["knn"] <= 1.0
    np.testing.assert_allclose(out["before"]["xy"], out["after"]["xy"], atol=1e-5)
    with pytest.raises(ValueError, match="labels"):
        penultimate(tiny, tiny, images(), labels[:5])


def test_wrong_image_shape_is_refused(tiny):
    blocks = group(tiny, TINY.finetune_blocks, TINY.last_conv_layer)
    with pytest.raises(ValueError, match="preprocessed images"):
        block_similarity(tiny, tiny, images(size=SIZE + 1), blocks)


def test_what_changed_on_a_tiny_model_is_json_ready(tiny):
    after = clone(tiny)
    layer = after.get_layer("top_conv")
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * 1.5, bias])
    changes = compare(tiny, after, images(), np.arange(16) % 2, TINY)
    rows = {r["block"]: r for r in changes["blocks"]}
    assert list(rows) == ["stem", "block1", "block2", "top", "head"]
    assert rows["head"]["cka"] is None and rows["top"]["weight_change"] > 0 and rows["block2"]["weight_change"] == 0
    out = json.loads(json.dumps(to_json(changes)))
    assert len(out["projection"]["after"]["xy"]) == 16 and out["blocks"][0]["block"] == "stem"
    with pytest.raises(FinetuneError, match="same layers"):
        compare(tiny, tiny_classifier_renamed(), images(), np.zeros(16, int), TINY)


def tiny_classifier_renamed() -> keras.Model:
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(keras.layers.Conv2D(4, 3, name="other")(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


@pytest.mark.slow
def test_what_changed_on_efficientnet_lite0():
    """Perturb block5 of a real classifier: weights and CKA change from block5 on, not before."""
    from engine.backbones import load
    from engine.config import HeadConfig
    from engine.training.models import build_head, feature_classifier

    spec = get_spec("efficientnet_lite0")
    base = load("efficientnet_lite0", image_size=64)
    before = feature_classifier(base, build_head(int(base.output.shape[-1]), 2, HeadConfig()))
    after = clone(before)
    rng = np.random.default_rng(0)
    for layer in after.layers:
        if layer.name.startswith("block5") and layer.name.endswith("conv"):
            w = layer.get_weights()
            layer.set_weights([w[0] + rng.normal(0, w[0].std(), w[0].shape).astype(np.float32), *w[1:]])
    from skimage import data

    from engine import imaging

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    pics = np.stack(
        [
            imaging.resize(p[i * 20 : i * 20 + 300, j * 40 : j * 40 + 300], 64)
            for p in photos
            for i in range(2)
            for j in range(2)
        ]
    )
    x = np.asarray(spec.preprocess(pics.astype(np.float32)), np.float32)
    changes = compare(before, after, x, np.arange(16) % 2, spec, batch_size=8)
    rows = {r["block"]: r for r in changes["blocks"]}
    assert list(rows) == ["stem", *[f"block{i}" for i in range(1, 8)], "top", "head"]
    for name in ("stem", "block1", "block2", "block3", "block4"):
        assert rows[name]["weight_change"] == 0.0 and rows[name]["cka"] == pytest.approx(1.0, abs=1e-5), rows[name]
    assert rows["block5"]["weight_change"] > 0.3  # kernels only: noise the size of their spread
    assert all(rows[n]["weight_change"] == 0.0 for n in ("block6", "block7", "top", "head"))
    assert all(rows[n]["cka"] < 0.999 for n in ("block5", "block6", "block7", "top"))
    assert changes["projection"]["before"]["xy"].shape == (16, 2)
    assert 0.0 <= changes["projection"]["after"]["knn"] <= 1.0


# ---- advice ------------------------------------------------------------------
LITE0 = get_spec("efficientnet_lite0")  # 8 blocks: block1..block7, top


@pytest.mark.parametrize(
    ("per_class", "similarity", "regime", "top", "lr"),
    [
        (42, 0.8, "small-similar", 1, 0.1),
        (42, 0.18, "small-different", 4, 0.1),
        (5000, 0.18, "large-different", 7, 0.1),
        (5000, 0.8, "large-similar", 8, 0.01),
    ],
)
def test_the_four_regimes(per_class, similarity, regime, top, lr):
    advice = advise(per_class, similarity, LITE0)
    assert (advice.regime, advice.unfreeze_top, advice.lr_factor, advice.bn) == (regime, top, lr, "frozen")
    assert advice.title == TITLES[regime] and set(TITLES) == set(REGIMES)
    assert str(per_class) in advice.reason and f"{round(similarity * 100)}%" in advice.reason
    assert advice.reason.count(".") == 1 and advice.reason.endswith(".")  # one sentence
    assert json.loads(json.dumps(advice.to_json()))["regime"] == regime


def test_small_similar_says_a_fine_tune_may_not_help():
    assert "may not help" in advise(42, 0.8, LITE0).reason


def test_boundaries():
    assert advise(LARGE_PER_CLASS, 0.1, LITE0).regime == "small-different"  # the Keras tutorial's 1000/class
    assert advise(LARGE_PER_CLASS + 0.5, 0.1, LITE0).regime == "large-different"
    assert advise(10, SIMILAR_CONFIDENCE, LITE0).regime == "small-similar"
    below = advise(10, SIMILAR_CONFIDENCE - 1e-4, LITE0)
    assert below.regime == "small-different" and "39%" in below.reason  # never shown as the threshold itself


def test_unfreeze_counts_follow_the_spec():
    mobilenet = get_spec("mobilenet_v2")  # 17 blocks
    assert advise(42, 0.1, mobilenet).unfreeze_top == 9
    assert advise(5000, 0.1, mobilenet).unfreeze_top == 16
    assert advise(5000, 0.9, mobilenet).unfreeze_top == 17
    one = SimpleNamespace(name="one", finetune_blocks=("block1",))
    assert {advise(n, s, one).unfreeze_top for n in (10, 5000) for s in (0.1, 0.9)} == {1}


def test_bad_advice_inputs():
    with pytest.raises(FinetuneError, match="no named blocks"):
        advise(42, 0.5, get_spec("hub_mobilenet_v2"))
    with pytest.raises(FinetuneError, match="images per class"):
        advise(0, 0.5, LITE0)
    with pytest.raises(ValueError, match="similarity"):
        advise(42, 1.5, LITE0)


@pytest.mark.slow
def test_imagenet_similarity_tells_photos_from_shapes(lite0_classifier):
    from engine.data.ingest import load_item
    from engine.data.sources import open_dataset
    from engine.samples import sample_photo

    photos = [sample_photo(n) for n in ("chelsea", "coffee", "astronaut", "rocket")]  # sizes differ
    ds = open_dataset("shapes:per_class=4,size=96")
    shapes = np.stack([load_item(ds, item) for item in ds.items])
    assert (
        imagenet_similarity(shapes, lite0_classifier)
        < SIMILAR_CONFIDENCE
        < imagenet_similarity(photos, lite0_classifier)
    )
    with pytest.raises(FinetuneError, match="at least one"):
        imagenet_similarity([], lite0_classifier)
