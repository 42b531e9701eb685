"""Feature extraction and the feature-space summaries shown in the Dataset Explorer."""

import numpy as np

from engine.training.features import FeatureExtractor, knn_accuracy, pca_2d


def test_pca_2d_finds_the_main_axis():
    rng = np.random.default_rng(0)
    x = np.zeros((100, 5))
    x[:, 3] = rng.normal(0, 10, 100)  # the big direction
    x[:, 1] = rng.normal(0, 1, 100)
    xy = pca_2d(x)
    assert xy.shape == (100, 2) and xy.dtype == np.float32
    assert abs(np.corrcoef(xy[:, 0], x[:, 3])[0, 1]) > 0.99
    assert np.array_equal(pca_2d(x), xy)  # deterministic signs


def test_knn_accuracy_separates_clusters_from_noise():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2], 20)
    centres = rng.normal(0, 1, (3, 16)) * 10
    clustered = centres[labels] + rng.normal(0, 0.5, (60, 16))
    assert knn_accuracy(clustered, labels) > 0.95
    assert knn_accuracy(rng.normal(0, 1, (60, 16)), labels) < 0.6


def test_bundled_backbone_embeds_shapes(cache_dir):
    from engine.data.pipeline import load_resized
    from engine.data.report import balanced_sample
    from engine.data.sources import open_dataset

    ds = open_dataset("shapes:per_class=4,classes=3,size=64")
    sample = balanced_sample(ds.items, 2)
    fx = FeatureExtractor("efficientnet_lite0", image_size=96)
    seen = []
    feats = fx.embed(
        lambda k: load_resized(str(ds.path(sample[k])), fx.input_size),
        len(sample),
        batch_size=4,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert feats.shape == (6, 1280) and np.isfinite(feats).all()
    assert seen == [(4, 6), (6, 6)]
