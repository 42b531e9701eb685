"""Archives: RELIABILITY.md cases 1-3 and 5-6 (zip slip, links, bombs, limits, clutter, wrapping folder)."""

import os

import pytest

import datafactory as f
from engine.data import archive
from engine.data.sources import open_dataset, save_upload
from engine.errors import ArchiveError, DatasetError


def _files_under(path):
    return {p for p in path.rglob("*")}


def test_zip_slip_members_are_rejected_and_nothing_escapes(tmp_path):
    zpath = f.evil_zip(tmp_path / "evil.zip")
    dest = tmp_path / "jobs" / "job1" / "data"
    before = _files_under(tmp_path)
    skipped = archive.extract(zpath, dest)
    new = {p for p in _files_under(tmp_path) - before if not p.is_dir()}
    assert all(p.resolve().is_relative_to(dest.resolve()) for p in new), new
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "jobs" / "evil.png").exists()
    reasons = {s.path: s.reason for s in skipped}
    for name in ("../evil.png", "data/../../evil2.png", "/tmp/abs_evil.png", "C:\\windows\\evil.png"):
        assert reasons[name].startswith("unsafe archive member: path leaves"), name
    assert reasons["data/a/link.png"] == "unsafe archive member: symbolic link"
    assert reasons["__MACOSX/data/a/._a0.png"] == "hidden or system file"
    assert not (dest / "data" / "a" / "link.png").exists()
    assert sorted(p.name for p in (dest / "data" / "a").iterdir()) == ["a0.png", "a1.png", "a2.png"]


def test_tar_links_devices_and_parent_paths_are_rejected(tmp_path):
    tpath = f.evil_tar(tmp_path / "evil.tar.gz")
    dest = tmp_path / "out"
    skipped = {s.path: s.reason for s in archive.extract(tpath, dest)}
    assert skipped["a/sym.png"].endswith("symbolic link")
    assert skipped["a/hard.png"].endswith("hard link")
    assert skipped["b/dev.png"].endswith("device or special file")
    assert skipped["../../escape.png"].endswith("path leaves the archive folder")
    assert not (tmp_path / "escape.png").exists()
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*.png")) == [
        "a/0.png",
        "a/1.png",
        "b/0.png",
        "b/1.png",
    ]


@pytest.mark.parametrize(
    "make, message",
    [
        (f.ratio_bomb_zip, "zip bomb"),
        (f.overlapping_zip, "overlap"),
        (f.lying_zip, "damaged|larger than its header"),
    ],
)
def test_bombs_are_refused_and_leave_nothing(tmp_path, make, message):
    zpath = make(tmp_path / "bomb.zip")
    dest = tmp_path / "out" / "data"
    with pytest.raises(ArchiveError, match=message):
        archive.extract(zpath, dest)
    assert not dest.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no half-extracted temp folder either


def test_entry_count_and_total_size_limits(tmp_path):
    zpath = f.many_entries_zip(tmp_path / "many.zip", 60)
    with pytest.raises(ArchiveError, match="60 entries, over the limit of 50"):
        archive.extract(zpath, tmp_path / "a", archive.Limits(max_entries=50, max_bytes=10 << 20))
    f.messy_folder(tmp_path / "src")
    big = f.zip_folder(tmp_path / "src", tmp_path / "big.zip")
    with pytest.raises(ArchiveError, match="would expand to .* over the limit"):
        archive.extract(big, tmp_path / "b", archive.Limits(max_entries=1000, max_bytes=1000))


def test_limits_come_from_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_MAX_ARCHIVE_ENTRIES", "10")
    zpath = f.many_entries_zip(tmp_path / "many.zip", 11)
    with pytest.raises(ArchiveError, match="CONVSCOPE_MAX_ARCHIVE_ENTRIES"):
        archive.extract(zpath, tmp_path / "out")


def test_not_a_zip_named_zip(tmp_path, cache_dir):
    fake = f.write(tmp_path / "data.zip", b"PK but not really a zip file")
    with pytest.raises(ArchiveError, match="not a readable zip archive"):
        open_dataset(str(fake))


def test_zip_with_wrapping_folder_matches_the_folder(tmp_path, cache_dir):
    src = tmp_path / "src"
    f.messy_folder(src / "pets")
    zpath = f.zip_folder(src, tmp_path / "pets.zip")
    from_zip = open_dataset(str(zpath))
    from_folder = open_dataset(str(src))
    assert from_zip.classes == from_folder.classes == ["cats", "dogs"]
    assert from_zip.counts() == from_folder.counts()
    assert from_zip.fingerprint == from_folder.fingerprint  # same content, same key
    assert from_zip.root.is_relative_to(cache_dir)


def test_second_open_of_an_archive_reuses_the_extraction(tmp_path, cache_dir, monkeypatch):
    zpath = f.evil_zip(tmp_path / "evil.zip")
    first = open_dataset(str(zpath))
    monkeypatch.setattr(archive, "extract", lambda *a, **k: pytest.fail("extracted twice"))
    second = open_dataset(str(zpath))
    assert second.root == first.root
    assert [s.reason for s in second.skipped] == [s.reason for s in first.skipped]


def test_upload_limit_and_names(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_MAX_ARCHIVE_MB", "1")
    with pytest.raises(DatasetError, match="over the 1 MB archive limit"):
        save_upload("big.zip", b"\0" * (2 << 20))
    with pytest.raises(DatasetError, match="upload a .zip"):
        save_upload("photo.jpg", b"x")
    data = f.evil_zip(tmp_path / "e.zip").read_bytes()
    path = save_upload("e.zip", data)
    assert path.read_bytes() == data and path.suffix == ".zip" and save_upload("again.zip", data) == path
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".upload-")]


def test_safe_relative():
    assert archive.safe_relative("a/./b//c.png") == "a/b/c.png"
    for bad in ("../x", "a/../../x", "/etc/passwd", "C:/x", "\\\\server\\x", "..", ""):
        assert archive.safe_relative(bad) is None, bad
    assert os.sep not in archive.safe_relative("a\\b.png") or os.sep == "/"
