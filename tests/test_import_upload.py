"""Uploaded model files (engine.importing.upload) and the chart of an import's conventions: no Keras model built."""

import pytest

from engine.charts import convention_accuracy
from engine.errors import ImportModelError
from engine.importing.upload import MAX_LABELS_BYTES, discard_upload, safe_name, save_upload, uploads_dir


def test_an_upload_keeps_the_users_name_safely_spelled(cache_dir):
    path = save_upload("My model (v2).keras", b"PK data")
    assert path.name == "My-model-v2.keras"
    assert path.read_bytes() == b"PK data"
    assert path.parent.parent == uploads_dir() and path.is_relative_to(cache_dir)
    assert save_upload("My model (v2).keras", b"PK data") == path  # the same bytes: the same file
    assert save_upload("other.keras", b"other bytes").parent != path.parent  # other bytes: their own folder


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd.keras", "passwd.keras"),
        ("C:\\Users\\me\\model.KERAS", "model.keras"),
        (".hidden.keras", "hidden.keras"),
        ("été.keras", "t.keras"),
        ("...keras", "model.keras"),
    ],
)
def test_a_name_never_leaves_its_folder(name, expected):
    assert safe_name(name) == expected


def test_other_files_and_files_over_the_limit_are_refused_and_nothing_is_written(cache_dir, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_MAX_MODEL_MB", "1")
    with pytest.raises(ImportModelError, match=r"upload a model \(.keras"):
        save_upload("notes.pdf", b"x")
    with pytest.raises(ImportModelError, match="is empty"):
        save_upload("model.keras", b"")
    with pytest.raises(ImportModelError, match="over the 1 MB allowed for a model file"):
        save_upload("model.keras", b"x" * (2**20 + 1))
    with pytest.raises(ImportModelError, match="over the 1 MB allowed for a labels file"):
        save_upload("labels.txt", b"x" * (MAX_LABELS_BYTES + 1))
    assert not uploads_dir().exists() or not list(uploads_dir().iterdir())
    assert save_upload("labels.json", b'["a", "b"]').name == "labels.json"


def test_discard_removes_an_uploads_folder_and_nothing_else(cache_dir, tmp_path):
    path = save_upload("model.keras", b"data")
    discard_upload(path)
    assert not path.parent.exists() and uploads_dir().is_dir()
    mine = tmp_path / "mine" / "model.keras"
    mine.parent.mkdir()
    mine.write_bytes(b"keep")
    discard_upload(mine)  # not an upload: left alone
    assert mine.read_bytes() == b"keep"


def test_the_conventions_chart_marks_the_chosen_and_the_flagged():
    accuracy = {"raw": 0.3, "unit": 0.9, "symmetric": 0.85}
    fig = convention_accuracy(accuracy, "unit", {"raw": "clearly wrong: 30% against 90% with unit"})
    bar = fig.data[0]
    by_label = dict(zip(bar.y, zip(bar.x, bar.marker.color, strict=True), strict=True))
    assert by_label["⚠ raw pixels 0-255 (the model rescales inside)"] == (0.3, "#e45756")
    assert by_label["[0, 1] (pixels / 255)"] == (0.9, "#54a24b")
    assert by_label["[-1, 1] (pixels / 127.5 - 1)"][1] == "#9d9da1"
    assert list(bar.y)[-1].endswith("(the model rescales inside)")  # the first given is drawn on top
