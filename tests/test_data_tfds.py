"""TFDS sources, offline: tfds.testing.mock_data, and clear errors without network (case 21)."""

import time

import pytest
import tensorflow_datasets as tfds

from engine.data import tfds_source
from engine.data.report import inspect_report
from engine.data.sources import open_dataset
from engine.errors import DatasetError


@pytest.fixture
def tfds_dir(tmp_path, monkeypatch, cache_dir):
    monkeypatch.setenv("CONVSCOPE_TFDS_DIR", str(tmp_path / "tfds"))
    return tmp_path / "tfds"


def test_mock_beans_with_its_own_splits(tfds_dir, monkeypatch, cache_dir):
    monkeypatch.setattr(tfds_source, "network_ok", lambda *a, **k: True)  # mock_data never downloads
    with tfds.testing.mock_data(num_examples=8):
        ds = open_dataset("tfds:beans")
    assert ds.classes == ["angular_leaf_spot", "bean_rust", "healthy"]
    assert ds.has_splits and ds.root.is_relative_to(cache_dir)
    assert len(ds.items) > 0
    report = inspect_report(ds)
    assert set(report["splits"]) == {"train", "validation", "test"}
    # every exported file is a real encoded image that went through ingest
    assert all(s.reason == "duplicate" for s in ds.skipped)  # the mock repeats examples across splits


def test_mock_single_split_is_a_plain_class_tree(tfds_dir, monkeypatch, cache_dir):
    monkeypatch.setattr(tfds_source, "network_ok", lambda *a, **k: True)
    with tfds.testing.mock_data(num_examples=10):
        ds = open_dataset("tfds:rock_paper_scissors:test")
    assert ds.classes == ["paper", "rock", "scissors"] and not ds.has_splits
    assert sum(ds.counts().values()) + len(ds.skipped) == 10


def test_offline_and_not_downloaded_fails_fast_and_clearly(tfds_dir, monkeypatch, cache_dir):
    monkeypatch.setattr(tfds_source, "network_ok", lambda *a, **k: False)
    t0 = time.monotonic()
    with pytest.raises(DatasetError, match="no network to download it.*CONVSCOPE_TFDS_DIR"):
        open_dataset("tfds:tf_flowers")
    assert time.monotonic() - t0 < 30
    assert not list((cache_dir / "datasets").glob("tfds-*"))  # no partial data kept


def test_failed_download_keeps_nothing(tfds_dir, monkeypatch, cache_dir):
    monkeypatch.setattr(tfds_source, "network_ok", lambda *a, **k: True)

    def broken(*a, **k):
        raise OSError("checksum mismatch for beans.zip")

    monkeypatch.setattr(tfds, "load", broken)
    with pytest.raises(DatasetError, match="could not load or download it.*checksum mismatch.*Nothing partial"):
        open_dataset("tfds:beans")
    leftovers = [p for p in (cache_dir / "datasets").iterdir() if p.is_dir()]
    assert leftovers == []


def test_bad_names(tfds_dir):
    with pytest.raises(DatasetError, match="not a TensorFlow Datasets name"):
        open_dataset("tfds:no_such_dataset_xyz")
    with pytest.raises(DatasetError, match="give a TFDS dataset name"):
        open_dataset("tfds:")
    with pytest.raises(DatasetError, match="not an image-classification set"):
        open_dataset("tfds:glue")


def test_an_unknown_name_is_a_short_error_with_close_names(tfds_dir, capsys):
    from engine.cli import main as cli

    assert cli.main(["inspect-data", "tfds:tf_flower"]) == 2
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if "cuInit" not in line]
    assert len(lines) <= 2 and len(err) < 400, err[:2000]
    assert "not a TensorFlow Datasets name" in err and "tf_flowers" in err, err
