"""Feature extraction and the feature-space summaries shown in the Dataset Explorer."""

import numpy as np
import pytest

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


@pytest.mark.slow
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


def test_features_read_from_the_cache_are_not_called_computed(tmp_path, capfd):
    """The CLI printed "Computing backbone features: 300/300" when all 300 came from the cache."""
    import threading

    from engine.cli.train import _TrainProgress
    from engine.training import callbacks, feature_cache

    np.save(tmp_path / "kept.npy", np.ones((300, 4), np.float32))
    reports = []

    def report(**fields):
        reports.append(fields)
        _TrainProgress()(**fields)

    progress = callbacks.features_progress(report, threading.Event(), "Computing backbone features")
    _, hit = feature_cache.cached_array(tmp_path / "kept.npy", (300,), lambda: pytest.fail("computed"), progress)
    err = capfd.readouterr().err
    assert hit and reports[-1]["cached"] is True
    assert "Backbone features: 300 from the cache" in err and "Computing" not in err, err

    def compute():
        progress(300, 300)
        return np.ones((300, 4), np.float32)

    _, hit = feature_cache.cached_array(tmp_path / "new.npy", (300,), compute, progress)
    err = capfd.readouterr().err
    assert not hit and "Computing backbone features: 300/300" in err and "from the cache" not in err, err
