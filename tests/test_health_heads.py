"""The out-of-fold heads of engine.health.analysis: fitted on standardised features, kept for raw ones."""

import numpy as np
import pytest

from engine.health.analysis import out_of_fold


@pytest.mark.parametrize("classes", [2, 3])
def test_kept_heads_on_raw_features_give_the_out_of_fold_probabilities(classes):
    # features of very different scales, as pooled backbone features are: the heads standardise them
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(classes), 20)
    features = (rng.normal(size=(len(labels), 16)) + labels[:, None]) * np.geomspace(0.01, 100, 16)
    features = features.astype(np.float32)
    probs, heads = out_of_fold(features, labels, classes, 4)
    assert probs.shape == (len(labels), classes) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (probs.argmax(1) == labels).mean() > 0.8
    # what engine.health.explain computes: the raw features through the head that held each image out
    fold = heads["fold"]
    logits = np.einsum("nd,ndc->nc", features, heads["kernels"][fold]) + heads["biases"][fold]
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(softmax, probs, atol=1e-4)
    assert sorted(set(fold.tolist())) == [0, 1, 2, 3]
