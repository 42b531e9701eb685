"""Ingest of folders: RELIABILITY.md cases 4-11 on generated files, class checks, the verdict cache."""

from pathlib import Path

import numpy as np
import pytest

import datafactory as f
from engine import imaging
from engine.data import ingest as ingest_mod
from engine.data.layout import DUPLICATE, HIDDEN, OUTSIDE_CLASS
from engine.data.sources import open_dataset
from engine.errors import DatasetError


@pytest.fixture
def messy(tmp_path):
    root = tmp_path / "messy"
    return root, f.messy_folder(root)


def _reason_of(dataset, rel: str) -> str | None:
    for s in dataset.skipped:
        if s.path == rel or (s.path.endswith("/") and rel.startswith(s.path)):
            return s.reason
    return None


def test_every_bad_file_is_skipped_with_its_reason(messy, cache_dir):
    root, expect = messy
    ds = open_dataset(str(root))
    kept = {i.rel for i in ds.items}
    for rel, reason in expect.items():
        if reason:
            assert rel not in kept, rel
            assert _reason_of(ds, rel) == reason, (rel, _reason_of(ds, rel))
        else:
            assert rel in kept, (rel, _reason_of(ds, rel))
    assert ds.classes == ["cats", "dogs"]  # __MACOSX, .ipynb_checkpoints never a class (case 5)


def test_reasons_are_counted_per_class(messy, cache_dir):
    ds = open_dataset(str(messy[0]))
    by_class = ds.skipped_by_class()
    assert by_class["dogs"]["not an image"] == 2  # text and PDF named .jpg (case 4)
    assert by_class["cats"]["not an image"] == 1  # HTML named .jpg
    assert by_class["cats"]["truncated or corrupt"] == 1
    assert by_class["dogs"]["too many pixels"] == 1
    assert by_class["cats"][DUPLICATE] == 1 and by_class["dogs"][DUPLICATE] == 1


def test_duplicate_across_classes_names_the_conflict(messy, cache_dir):
    ds = open_dataset(str(messy[0]))
    (dup,) = [s for s in ds.skipped if s.path == "dogs/dog_or_cat.png"]
    assert dup.duplicate_of == "cats/cat1.png" and "conflicting labels" in dup.detail


def test_kept_images_decode_to_rgb_uint8_with_exif_applied(messy, cache_dir):
    ds = open_dataset(str(messy[0]))
    by_rel = {i.rel: i for i in ds.items}
    rotated = by_rel["dogs/rotated.jpg"]
    assert (rotated.width, rotated.height) == (20, 40)  # stored 40x20, EXIF orientation 6 (case 9)
    for rel in ("cats/cmyk.jpg", "cats/gray16.png", "cats/palette.png", "cats/rgba.png", "dogs/animated.gif"):
        rgb = ingest_mod.load_item(ds, by_rel[rel])
        assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3, rel
    gif = ingest_mod.load_item(ds, by_rel["dogs/animated.gif"])
    assert tuple(gif[0, 0]) == (255, 0, 0)  # first frame (case 10)


def test_truncated_in_the_middle_is_found_at_ingest(tmp_path, cache_dir):
    # Case 8: the header is fine, the data stops half way: only a full decode finds it.
    full = f.jpeg_bytes(3, size=128)
    for cls in ("a", "b"):
        for i in range(2):
            f.write(tmp_path / cls / f"{i}.png", f.png_bytes(hash((cls, i)) % 997))
    f.write(tmp_path / "a" / "half.jpg", full[: len(full) // 2])
    ds = open_dataset(str(tmp_path))
    assert _reason_of(ds, "a/half.jpg") == imaging.TRUNCATED
    assert "a/half.jpg" not in {i.rel for i in ds.items}


def test_single_wrapping_folder_is_descended(tmp_path, cache_dir):
    for cls in ("x", "y"):
        for i in range(2):
            f.write(tmp_path / "outer" / "inner" / cls / f"{i}.png", f.png_bytes(i + (10 if cls == "y" else 0)))
    f.write(tmp_path / "outer" / ".DS_Store", b"x")
    ds = open_dataset(str(tmp_path))
    assert ds.classes == ["x", "y"] and ds.root == tmp_path / "outer" / "inner"
    assert not ds.problems()


def test_one_class_is_refused_with_a_precise_message(tmp_path, cache_dir):
    for i in range(3):
        f.write(tmp_path / "only" / "cats" / f"{i}.png", f.png_bytes(i))
    ds = open_dataset(str(tmp_path / "only"))
    assert ds.classes == ["cats"]
    with pytest.raises(DatasetError, match=r"found 1 class folder\(s\) \('cats'\).*at least 2 classes"):
        ds.check()


def test_empty_class_and_single_image_class_are_named(tmp_path, cache_dir):
    for i in range(3):
        f.write(tmp_path / "good" / f"{i}.png", f.png_bytes(i))
    f.write(tmp_path / "lonely" / "0.png", f.png_bytes(50))
    f.write(tmp_path / "broken" / "0.jpg", b"not an image at all")
    (tmp_path / "empty").mkdir()
    ds = open_dataset(str(tmp_path))
    problems = " | ".join(ds.problems())
    assert "class 'empty' has no usable images;" in problems
    assert "class 'broken' has no usable images (1 skipped: 1 not an image)" in problems
    assert "class 'lonely' has only 1 usable image" in problems
    assert "'good'" not in problems
    with pytest.raises(DatasetError, match="cannot be used for training"):
        ds.check()


def test_no_class_folders(tmp_path, cache_dir):
    f.write(tmp_path / "a.png", f.png_bytes(1))
    with pytest.raises(DatasetError, match="found no class folders"):
        open_dataset(str(tmp_path))
    with pytest.raises(DatasetError, match="no such folder"):
        open_dataset(str(tmp_path / "missing"))


def test_loose_files_are_reported_not_guessed(messy, cache_dir):
    ds = open_dataset(str(messy[0]))
    assert _reason_of(ds, "README.txt") == OUTSIDE_CLASS
    assert _reason_of(ds, "cats/.DS_Store") == HIDDEN


def test_symlink_to_outside_is_not_followed(tmp_path, cache_dir):
    outside = f.write(tmp_path / "secret.png", f.png_bytes(9))
    data = tmp_path / "data"
    for cls in ("a", "b"):
        for i in range(2):
            f.write(data / cls / f"{i}.png", f.png_bytes(i + (5 if cls == "b" else 0)))
    (data / "a" / "link.png").symlink_to(outside)
    ds = open_dataset(str(data))
    assert _reason_of(ds, "a/link.png") == "link to a file outside the dataset"


def test_second_look_decodes_nothing(messy, cache_dir, monkeypatch):
    root = messy[0]
    first = open_dataset(str(root))

    def fail(*a, **k):
        raise AssertionError("decoded again although the verdict was cached")

    monkeypatch.setattr(ingest_mod.imaging, "load_rgb", fail)
    second = open_dataset(str(root))
    assert [i.rel for i in second.items] == [i.rel for i in first.items]
    assert [s.reason for s in second.skipped] == [s.reason for s in first.skipped]
    assert second.fingerprint == first.fingerprint


def test_fingerprint_follows_content(tmp_path, cache_dir):
    for cls in ("a", "b"):
        for i in range(2):
            f.write(tmp_path / cls / f"{i}.png", f.png_bytes(i + (5 if cls == "b" else 0)))
    before = open_dataset(str(tmp_path)).fingerprint
    f.write(tmp_path / "a" / "0.png", f.png_bytes(77))
    assert open_dataset(str(tmp_path)).fingerprint != before


def test_source_splits_are_detected(tmp_path, cache_dir):
    for split in ("train", "val"):
        for cls in ("a", "b"):
            for i in range(2):
                seed = hash((split, cls, i)) % 10_000
                f.write(tmp_path / split / cls / f"{i}.png", f.png_bytes(seed))
    ds = open_dataset(str(tmp_path))
    assert ds.has_splits and ds.classes == ["a", "b"]
    assert {i.split for i in ds.items} == {"train", "validation"}


def test_file_over_the_size_limit_is_skipped(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_MAX_UPLOAD_MB", "1")
    for cls in ("a", "b"):
        for i in range(2):
            f.write(tmp_path / cls / f"{i}.png", f.png_bytes(i + (5 if cls == "b" else 0)))
    f.write(tmp_path / "a" / "huge.png", f.png_bytes(1) + b"\0" * (2 << 20))
    ds = open_dataset(str(tmp_path))
    assert _reason_of(ds, "a/huge.png") == imaging.TOO_LARGE


def test_nothing_bad_reaches_the_training_pipeline(messy, cache_dir):
    from engine.data.pipeline import make_tf_dataset

    ds = open_dataset(str(messy[0]))
    batches = list(make_tf_dataset(ds, ds.items, 32, batch_size=8))
    assert sum(len(y) for _, y in batches) == len(ds.items)
    assert all(x.shape[1:] == (32, 32, 3) for x, _ in batches)


def test_paths_in_items_stay_inside_the_root(messy, cache_dir):
    ds = open_dataset(str(messy[0]))
    root = Path(ds.root).resolve()
    assert all(ds.path(i).resolve().is_relative_to(root) for i in ds.items)
