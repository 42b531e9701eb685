"""Shared fixtures. The backbone cache lives in a per-session temp folder so
tests never read a cache left by a developer, and the first load in the
session really converts."""

import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CONVSCOPE_CACHE_DIR"] = tempfile.mkdtemp(prefix="convscope-test-cache-")
for name in ("TF_CONFIG", "CONVSCOPE_CPU_REPLICAS"):  # the tests train on one device unless they say otherwise
    os.environ.pop(name, None)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_strategy_left_over():
    """A CLI command run in-process picks the process's tf.distribute strategy: the next test starts afresh."""
    yield
    from engine.training import distribute

    distribute._started = None


@pytest.fixture(scope="session")
def lite0_classifier():
    from engine.model.classifier import ImageNetClassifier

    return ImageNetClassifier("efficientnet_lite0")


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """An empty backbone cache for one test."""
    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def open_page():
    """Open a dashboard page through app.py's router, as AppTest."""
    from pathlib import Path

    from streamlit.testing.v1 import AppTest

    app = str(Path(__file__).resolve().parents[1] / "app.py")

    def _open(page: str, timeout: int = 300) -> AppTest:
        at = AppTest.from_file(app, default_timeout=timeout)
        at.run()
        at.switch_page(page).run()
        assert not at.exception, at.exception
        return at

    return _open


TINY = "shapes:per_class=12,classes=3,size=64"  # 36 images, 3 classes: the tests' small real dataset


def train_tiny_run(root, name: str, epochs: int = 3, image_size: int = 96, **config):
    """Train a feature-mode run on TINY into `root/name` (CONVSCOPE_RUNS_DIR set to `root` meanwhile).

    For module-scoped fixtures, which cannot use monkeypatch. Returns the run folder.
    """
    from engine import runs
    from engine.config import DataConfig, TrainConfig
    from engine.training import fit

    old = os.environ.get("CONVSCOPE_RUNS_DIR")
    os.environ["CONVSCOPE_RUNS_DIR"] = str(root)
    try:
        train = TrainConfig(data=DataConfig(source=TINY, image_size=image_size), epochs=epochs, **config)
        run = runs.create(name, backbone=train.backbone, mode=train.mode)
        result = fit.train(train, run)
        assert result["status"] == "finished", result["reason"]
    finally:
        if old is None:
            del os.environ["CONVSCOPE_RUNS_DIR"]
        else:
            os.environ["CONVSCOPE_RUNS_DIR"] = old
    return run.path


def poison_from_epoch(monkeypatch, first: int) -> None:
    """Feature-mode batches that turn to NaN from epoch `first` (0-based) on: a loss that blows up."""
    import keras
    import numpy as np

    from engine.training import fit

    real = fit._feature_batches

    class Poisoned(keras.utils.PyDataset):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.epoch = inner, 0

        def __len__(self):
            return len(self.inner)

        def on_epoch_end(self):
            self.epoch += 1
            self.inner.on_epoch_end()

        def __getitem__(self, k):
            x, y = self.inner[k]
            return (x * np.nan if self.epoch >= first else x), y

    monkeypatch.setattr(fit, "_feature_batches", lambda *a: Poisoned(real(*a)))
