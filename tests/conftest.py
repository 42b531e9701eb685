"""Shared fixtures. The backbone cache lives in a per-session temp folder so
tests never read a cache left by a developer, and the first load in the
session really converts."""

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["CONVSCOPE_CACHE_DIR"] = tempfile.mkdtemp(prefix="convscope-test-cache-")
# The dashboard's registry keeps a spare worker process (TensorFlow imported) ready: not in tests, where each
# would import TensorFlow beside the test and keep an earlier test's folders; test_worker.py tests it.
os.environ["CONVSCOPE_SPARE_WORKERS"] = "0"
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


APP = str(Path(__file__).resolve().parents[1] / "app.py")
TINY = "shapes:per_class=12,classes=3,size=64"  # 36 images, 3 classes: the tests' small real dataset


@pytest.fixture
def open_page():
    """Open a dashboard page through app.py's router, as AppTest.

    `open_page("pages/x.py", run="r")` sets the URL's query parameters and `state` the session state
    before the first run; `open_page("app.py")` stays on the home page.
    """
    from streamlit.testing.v1 import AppTest

    def _open(page: str, timeout: int = 300, state: dict | None = None, **query) -> AppTest:
        at = AppTest.from_file(APP, default_timeout=timeout)
        for key, value in (state or {}).items():
            at.session_state[key] = value
        for key, value in query.items():
            at.query_params[key] = value
        at.run()
        if page != "app.py":
            at.switch_page(page).run()
        assert not at.exception, at.exception
        return at

    return _open


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """An empty runs folder for one test (CONVSCOPE_RUNS_DIR)."""
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


@contextmanager
def runs_dir_set(root):
    """CONVSCOPE_RUNS_DIR is `root` inside the block: for module-scoped fixtures, which cannot use monkeypatch."""
    old = os.environ.get("CONVSCOPE_RUNS_DIR")
    os.environ["CONVSCOPE_RUNS_DIR"] = str(root)
    try:
        yield
    finally:
        if old is None:
            del os.environ["CONVSCOPE_RUNS_DIR"]
        else:
            os.environ["CONVSCOPE_RUNS_DIR"] = old


def train_tiny_run(root, name: str, epochs: int = 3, image_size: int = 96, **config):
    """Train a feature-mode run on TINY into `root/name` (CONVSCOPE_RUNS_DIR set to `root` meanwhile).

    For module-scoped fixtures, which cannot use monkeypatch. Returns the run folder.
    """
    from engine import runs
    from engine.config import DataConfig, TrainConfig
    from engine.training import fit

    with runs_dir_set(root):
        train = TrainConfig(data=DataConfig(source=TINY, image_size=image_size), epochs=epochs, **config)
        run = runs.create(name, backbone=train.backbone, mode=train.mode)
        result = fit.train(train, run)
        assert result["status"] == "finished", result["reason"]
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
