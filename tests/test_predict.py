"""The bundled backbones classify scikit-image's photos correctly."""

import numpy as np
import pytest
from skimage import data

from engine.imagenet import imagenet_labels, short_label
from engine.model.classifier import ImageNetClassifier
from engine.numerics import softmax

CATS = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


def test_imagenet_names_ship_with_tfds():
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert labels[285] == "Egyptian cat"
    assert short_label(labels[281]) == "tabby"


def _check(classifier):
    chelsea, coffee = classifier.predict([("chelsea", data.chelsea()), ("coffee", data.coffee())], top_k=5)
    assert chelsea.top[0].index in CATS and chelsea.top[0].probability > 0.5, chelsea.top[:3]
    assert coffee.top[0].index == ESPRESSO and coffee.top[0].probability > 0.5, coffee.top[:3]
    assert coffee.top[0].label == "espresso"
    assert len(chelsea.top) == 5
    size = classifier.input_size
    assert chelsea.model_input.shape == (size, size, 3) and chelsea.model_input.dtype == np.uint8


@pytest.mark.slow
def test_lite0_chelsea_is_a_cat_and_coffee_is_espresso(lite0_classifier):
    _check(lite0_classifier)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite1", "efficientnet_lite2"])
def test_bigger_lites_agree(name):
    _check(ImageNetClassifier(name))


@pytest.mark.slow
def test_probabilities_sum_to_one_and_are_sorted(lite0_classifier):
    (p,) = lite0_classifier.predict([("rocket", data.rocket())], top_k=1000)
    probs = [t.probability for t in p.top]
    assert abs(sum(probs) - 1) < 1e-6 and probs == sorted(probs, reverse=True)


@pytest.mark.slow
def test_bad_top_k(lite0_classifier):
    with pytest.raises(ValueError, match="top_k"):
        lite0_classifier.predict([("x", data.chelsea())], top_k=0)


@pytest.mark.slow
def test_concurrent_predictions_on_one_shared_model(lite0_classifier):
    from concurrent.futures import ThreadPoolExecutor

    images = [("chelsea", data.chelsea()), ("coffee", data.coffee())] * 3
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda item: lite0_classifier.predict([item], top_k=1)[0], images))
    for (name, _), r in zip(images, results, strict=True):
        assert (r.top[0].index in CATS) if name == "chelsea" else (r.top[0].index == ESPRESSO)


def test_softmax_is_stable():
    p = softmax(np.array([[1000.0, 1000.0, -1000.0]]))
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0]])
