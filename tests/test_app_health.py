"""The Dataset Explorer's Health tab through AppTest: analyse, relabel, exclude, undo (the files never change)."""

import shutil

import pytest
from PIL import Image

import datafactory as f
from conftest import TINY
from engine.data import corrections, sources


def _flipped_folder(tmp_path, monkeypatch, copy: bool = False):
    """TINY as a server folder with two circles filed under square (and a resized copy of a triangle):
    (the folder, the flipped paths)."""
    tiny = sources.open_dataset(TINY)
    folder = f.copy_tree(tiny.root, tmp_path / "root" / "shapes")
    flipped = []
    for name in sorted(p.name for p in (folder / "circle").iterdir())[:2]:
        shutil.move(folder / "circle" / name, folder / "square" / name)
        flipped.append(f"square/{name}")
    if copy:
        Image.open(folder / "triangle" / "triangle_0003.png").resize((60, 60)).save(
            folder / "triangle" / "triangle_0003_small.png"
        )
    monkeypatch.setenv("CONVSCOPE_DATA_ROOTS", str(tmp_path / "root"))
    return folder, flipped


def _dataset(at):
    (dataset,) = at.session_state["opened_datasets"].values()
    return dataset


def _click(at, key: str):
    at.button(key=key).click().run()
    assert not at.exception, at.exception
    return at


@pytest.mark.slow
def test_relabel_exclude_and_undo_on_the_health_tab(open_page, cache_dir, tmp_path, monkeypatch):
    folder, flipped = _flipped_folder(tmp_path, monkeypatch)
    on_disk = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    at = open_page("pages/datasets.py")
    at.radio(key="data_kind").set_value("Server folder").run()
    at.selectbox(key="data_folder").set_value(folder).run()
    at.session_state["explorer_tab"] = "🩺 Health"
    at.run()
    assert not at.exception, at.exception
    _click(at, "health_go")
    shown = {m.label: m.value for m in at.metric}
    assert int(shown["Likely label mistakes"]) >= 1 and "/ 100" in shown["Health score"]
    report = at.session_state["health_report"]["report"]
    assert set(flipped) <= set(report["label_ranking"])  # the analysis is of the folder as filed
    first = report["label_issues"][0]
    before = _dataset(at).counts()
    usable = int({m.label: m.value for m in at.metric}["Usable images"])

    # Relabel the worst image as suggested: the record says so, the reloaded dataset's counts move.
    _click(at, "health_relabel_label_issues_0")
    assert [(c.rel, c.action, c.label) for c in corrections.load(folder)] == [
        (first["path"], "relabel", first["suggested"])
    ]
    after = _dataset(at).counts()
    assert after[first["suggested"]] == before[first["suggested"]] + 1
    assert after[first["given"]] == before[first["given"]] - 1
    assert any(f"{first['path']} relabelled {first['given']} → {first['suggested']}" in s.value for s in at.success)

    # The list stays put (not re-scored under the student): the fixed image left it, the next is first.
    assert at.session_state["health_report"]["report"] is report
    assert any("from before your latest fixes" in i.value for i in at.info)
    # Exclude an image: one usable image fewer.
    rel = report["label_issues"][1]["path"]
    _click(at, "health_exclude_label_issues_0")
    assert {"Usable images": str(usable - 1)}.items() <= {m.label: m.value for m in at.metric}.items()
    assert corrections.load(folder)[-1].action == "exclude" and corrections.load(folder)[-1].rel == rel

    # Undo twice (the button beside the message, then the one below): the record is empty, the data as on disk.
    _click(at, "health_undo_flash")
    assert [c.action for c in corrections.load(folder)] == ["relabel"]
    assert any(s.value.startswith(f"Undone: {rel} excluded") for s in at.success)
    _click(at, "health_undo")
    assert corrections.load(folder) == []
    assert _dataset(at).counts() == before
    assert {m.label: m.value for m in at.metric}["Usable images"] == str(usable)
    assert sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file()) == on_disk  # files untouched


@pytest.mark.slow
def test_keep_hides_an_image_and_a_copy_is_excluded_then_train_gets_the_data(
    open_page, cache_dir, tmp_path, monkeypatch
):
    folder, _ = _flipped_folder(tmp_path, monkeypatch, copy=True)
    at = open_page("pages/datasets.py")
    at.radio(key="data_kind").set_value("Server folder").run()
    at.selectbox(key="data_folder").set_value(folder).run()
    at.session_state["explorer_tab"] = "🩺 Health"
    at.run()
    _click(at, "health_go")
    report = at.session_state["health_report"]["report"]

    def cards() -> int:
        return sum(1 for b in at.button if (b.key or "").startswith("health_keep_label_issues_"))

    shown = cards()
    _click(at, "health_keep_label_issues_0")
    assert corrections.load(folder)[-1].action == "keep"
    assert cards() == min(len(report["label_issues"]) - 1, 5) and cards() <= shown
    assert any("1 reviewed hidden" in c.value for c in at.caption)
    at.toggle(key="health_reviewed").set_value(True).run()
    assert cards() == min(len(report["label_issues"]), 5)

    # The resized copy of a triangle is a near-duplicate: excluding it leaves the first of the group.
    group = next(g for g in report["near_duplicates"] if "triangle/triangle_0003_small.png" in g["paths"])
    at.session_state["health_kind"] = "near_duplicates"
    at.run()
    _click(at, f"health_dups_near_duplicates_{report['near_duplicates'].index(group)}")
    assert {c.rel for c in corrections.load(folder) if c.action == "exclude"} == set(group["paths"][1:])

    # The record as CSV, reset (with its confirmation), then the CSV applied again: the same corrections.
    dataset = _dataset(at)
    text, holding = corrections.to_csv(dataset), corrections.current(corrections.load(folder))
    assert at.button(key="health_reset").disabled  # not before the box is ticked
    at.checkbox(key="health_reset_sure").check().run()
    _click(at, "health_reset")
    assert corrections.current(corrections.load(folder)) == {}
    at.file_uploader(key="health_csv_in").set_value(("corrections.csv", text.encode(), "text/csv")).run()
    _click(at, "health_csv_apply")
    assert {r: (c.action, c.label) for r, c in corrections.current(corrections.load(folder)).items()} == {
        r: (c.action, c.label) for r, c in holding.items()
    }

    _click(at, "health_train")  # opens Train on this data, which says it is corrected
    assert at.session_state["data_config"].source == str(folder)
    assert any("Training on corrected data: 1 excluded" in i.value for i in at.info), [i.value for i in at.info]
