"""Corrections (engine.data.corrections): relabel, exclude, keep, undo and CSV, with the user's files untouched.

The fast tests need no backbone: a small generated folder is opened as every loader opens it.
The slow ones train on corrected data, and run `data-fix` / `inspect-data` / `train` as a user would.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.config import DataConfig, TrainConfig
from engine.data import corrections, shapes
from engine.data.sources import open_dataset, shapes_config
from engine.data.splits import split_dataset, split_items
from engine.errors import DatasetError
from engine.training import feature_cache

ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, spec: str = "per_class=8,classes=3,size=48") -> Path:
    """Class folders of generated shapes (no splits of their own, so the splits are carved)."""
    shapes.generate(root, shapes_config(spec))
    return root


def files_on_disk(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def folder(tmp_path, cache_dir):
    return make_folder(tmp_path / "data")


def rels_of(dataset) -> list[str]:
    return [i.rel for i in dataset.items]


def label_of(dataset, rel: str) -> str:
    return next(dataset.classes[i.label] for i in dataset.items if i.rel == rel)


def other_class(dataset, rel: str) -> str:
    return next(c for c in dataset.classes if c != label_of(dataset, rel))


def test_relabel_and_exclude_change_the_fingerprint_not_the_files_and_undo_restores_it(folder):
    before = files_on_disk(folder)
    plain = open_dataset(str(folder))
    assert plain.corrections is None and plain.raw_items is None
    fp = plain.fingerprint
    a, b = rels_of(plain)[0], rels_of(plain)[-1]
    new = other_class(plain, a)

    assert corrections.edit(plain, [(a, corrections.RELABEL, new)]) == 1
    relabelled = open_dataset(str(folder))
    assert relabelled.fingerprint != fp
    assert relabelled.files_fingerprint == fp  # pixel caches stay valid
    assert label_of(relabelled, a) == new
    item = next(i for i in relabelled.items if i.rel == a)
    assert relabelled.classes[item.given] == label_of(plain, a)  # the folder's label is kept
    assert relabelled.corrections.relabelled == 1 and relabelled.corrections.sentence() == "1 relabelled"
    assert open_dataset(str(folder), corrected=False).fingerprint == fp

    assert corrections.edit(relabelled, [(b, corrections.EXCLUDE, "")]) == 2
    excluded = open_dataset(str(folder))
    assert b not in rels_of(excluded) and b in [i.rel for i in excluded.raw_items]
    assert len(excluded.items) == len(plain.items) - 1
    assert excluded.fingerprint not in (fp, relabelled.fingerprint)
    assert excluded.files_fingerprint == fp
    assert excluded.corrections.sentence() == "1 relabelled, 1 excluded"

    assert [c.rel for c in corrections.undo(folder)] == [b]
    assert open_dataset(str(folder)).fingerprint == relabelled.fingerprint
    assert [c.rel for c in corrections.undo(folder)] == [a]
    back = open_dataset(str(folder))
    assert back.fingerprint == fp and rels_of(back) == rels_of(plain)
    assert corrections.undo(folder) == []  # nothing left to undo
    assert files_on_disk(folder) == before  # the user's files never changed


def test_keep_changes_nothing_but_the_reviewed_paths_and_clear_takes_a_change_back(folder):
    plain = open_dataset(str(folder))
    fp = plain.fingerprint
    a, b = rels_of(plain)[1], rels_of(plain)[2]
    corrections.edit(plain, [(a, corrections.KEEP, "")])
    kept = open_dataset(str(folder))
    assert kept.fingerprint == fp and rels_of(kept) == rels_of(plain)
    assert [i.label for i in kept.items] == [i.label for i in plain.items]
    assert corrections.kept_paths(kept) == {a}
    assert not kept.corrections.changes_data and kept.corrections.kept == 1

    corrections.edit(kept, [(b, corrections.EXCLUDE, "")])
    assert open_dataset(str(folder)).fingerprint != fp
    corrections.edit(kept, [(b, corrections.CLEAR, ""), (a, corrections.CLEAR, "")])
    cleared = open_dataset(str(folder))
    assert cleared.fingerprint == fp and corrections.kept_paths(cleared) == set()
    assert len(corrections.history(folder)) == 3  # clear is an edit too: undo brings the exclusion back
    corrections.undo(folder)
    assert b not in rels_of(open_dataset(str(folder)))


def test_relabelling_to_the_folders_own_class_clears_the_change(folder):
    plain = open_dataset(str(folder))
    a = rels_of(plain)[0]
    corrections.edit(plain, [(a, corrections.RELABEL, other_class(plain, a))])
    corrections.edit(open_dataset(str(folder)), [(a, corrections.RELABEL, label_of(plain, a))])
    assert open_dataset(str(folder)).fingerprint == plain.fingerprint


def test_a_correction_moves_no_other_image_to_another_split(folder):
    plain = open_dataset(str(folder))

    def split_of(dataset) -> dict[str, str]:
        return {i.rel: s for s, items in split_dataset(dataset, seed=1).items() for i in items}

    before = split_of(plain)
    assert set(before.values()) == {"train", "validation", "test"}  # carved: there is something to move
    # one image of each split of the first class: relabel one, exclude one
    first = plain.classes[0]
    by_split = {before[r]: r for r in rels_of(plain) if label_of(plain, r) == first}
    relabelled, excluded = by_split["train"], by_split["test"]
    corrections.edit(plain, [(relabelled, corrections.RELABEL, plain.classes[1]), (excluded, corrections.EXCLUDE, "")])
    corrected = open_dataset(str(folder))
    after = split_of(corrected)
    assert excluded not in after
    assert after == {r: s for r, s in before.items() if r != excluded}
    assert label_of(corrected, relabelled) == plain.classes[1]
    # split_items itself pools a relabelled image by its folder's label (Item.given): nothing moves
    corrections.undo(folder)
    corrections.edit(plain, [(relabelled, corrections.RELABEL, plain.classes[1])])
    items = open_dataset(str(folder)).items
    assert {i.rel: s for s, part in split_items(items, seed=1).items() for i in part} == before


def test_a_changed_file_makes_its_correction_stale(folder):
    plain = open_dataset(str(folder))
    a, b = rels_of(plain)[0], rels_of(plain)[1]
    corrections.edit(plain, [(a, corrections.RELABEL, other_class(plain, a)), (b, corrections.EXCLUDE, "")])
    Image.fromarray(np.full((48, 48, 3), 7, np.uint8)).save(folder / a)  # other pixels than were corrected
    (folder / b).unlink()
    corrected = open_dataset(str(folder))
    assert label_of(corrected, a) == label_of(plain, a)  # not applied
    assert set(corrected.corrections.stale) == {a, b}
    assert corrected.corrections.relabelled == 0 and corrected.corrections.excluded == 0


def test_csv_round_trip_onto_another_copy_gives_the_same_fingerprint(folder, tmp_path):
    plain = open_dataset(str(folder))
    a, b, c = rels_of(plain)[:3]
    corrections.edit(plain, [(a, corrections.RELABEL, other_class(plain, a)), (b, corrections.EXCLUDE, "")])
    corrections.edit(plain, [(c, corrections.KEEP, "")])
    corrected = open_dataset(str(folder))
    text = corrections.to_csv(corrected)
    assert text.splitlines()[0] == ",".join(corrections.CSV_FIELDS)

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    other = open_dataset(str(copy))
    assert other.fingerprint == plain.fingerprint  # same relative paths, same content
    number, skipped = corrections.from_csv(other, text)
    assert number == 1 and skipped == []
    applied = open_dataset(str(copy))
    assert applied.fingerprint == corrected.fingerprint
    assert corrections.kept_paths(applied) == {c}
    assert corrections.to_csv(applied) == text


def test_a_csv_row_whose_file_differs_here_is_skipped(folder, tmp_path):
    plain = open_dataset(str(folder))
    a, b = rels_of(plain)[:2]
    corrections.edit(plain, [(a, corrections.EXCLUDE, ""), (b, corrections.EXCLUDE, "")])
    text = corrections.to_csv(open_dataset(str(folder)))
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    Image.fromarray(np.full((48, 48, 3), 200, np.uint8)).save(copy / a)
    number, skipped = corrections.from_csv(open_dataset(str(copy)), text)
    assert number == 1 and skipped == [a]
    applied = open_dataset(str(copy))
    assert a in rels_of(applied) and b not in rels_of(applied)

    assert corrections.from_csv(open_dataset(str(copy)), "path,sha256,action,label\n") == (0, [])
    with pytest.raises(DatasetError, match="columns"):
        corrections.from_csv(open_dataset(str(copy)), "file,what\nx,y\n")


@pytest.mark.parametrize(
    "change, words",
    [
        (("nowhere/x.png", corrections.EXCLUDE, ""), "no such image"),
        (("FIRST", corrections.RELABEL, "dragon"), "no class 'dragon'"),
        (("FIRST", "rename", ""), "unknown correction 'rename'"),
    ],
)
def test_an_unknown_path_class_or_action_raises_and_records_nothing(folder, change, words):
    plain = open_dataset(str(folder))
    good = (rels_of(plain)[1], corrections.EXCLUDE, "")
    bad = (rels_of(plain)[0] if change[0] == "FIRST" else change[0], *change[1:])
    with pytest.raises(DatasetError, match=words):
        corrections.edit(plain, [good, bad])  # the good change of the same edit is not recorded either
    assert corrections.load(folder) == []
    assert open_dataset(str(folder)).fingerprint == plain.fingerprint


def test_two_sessions_editing_at_once_both_keep_their_edits(folder):
    import threading

    dataset = open_dataset(str(folder))
    rels = rels_of(dataset)[:12]
    threads = [threading.Thread(target=corrections.edit, args=(dataset, [(rel, corrections.KEEP, "")])) for rel in rels]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    changes = corrections.load(folder)
    assert sorted(c.rel for c in changes) == sorted(rels)
    assert sorted(c.edit for c in changes) == list(range(1, len(rels) + 1))


def test_a_damaged_record_says_so_clearly(folder):
    plain = open_dataset(str(folder))
    corrections.edit(plain, [(rels_of(plain)[0], corrections.EXCLUDE, "")])
    record = corrections.record_path(folder)
    record.write_text('{"version": 1, "changes": [{"path": ')
    with pytest.raises(DatasetError, match="corrections record is damaged.*delete it"):
        open_dataset(str(folder))
    record.write_text('{"version": 1, "changes": [{"action": "exclude"}]}')
    with pytest.raises(DatasetError, match="damaged"):
        corrections.load(folder)


# ---- slow: training applies them, the CLI edits them ---------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m engine ARGS` in a child process, as tests/test_cli.py runs it."""
    command = [sys.executable, "-m", "engine", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ}, timeout=300)


@pytest.mark.slow
def test_training_applies_corrections_and_reuses_the_cached_features(tmp_path, cache_dir, runs_dir):
    from engine import runs
    from engine.training import fit

    folder = make_folder(tmp_path / "data", "per_class=10,classes=3,size=64")
    config = TrainConfig(data=DataConfig(source=str(folder), image_size=96), epochs=1)
    first = fit.train(config, runs.create("plain", backbone=config.backbone, mode=config.mode))
    assert first["status"] == "finished", first["reason"]
    plain = open_dataset(str(folder))
    key = feature_cache.FeatureKey(config.backbone, 96, config.data.resize)
    features = key.folder / f"{plain.files_fingerprint[:32]}.npy"
    assert features.is_file()
    stamp = features.stat().st_mtime_ns
    before = set(key.folder.iterdir())
    split = {i.rel: s for s, items in split_dataset(plain, config.seed).items() for i in items}
    out = next(r for r in rels_of(plain) if split[r] == "test")
    moved = rels_of(plain)[0]
    corrections.edit(plain, [(moved, corrections.RELABEL, other_class(plain, moved)), (out, corrections.EXCLUDE, "")])

    second = fit.train(config, runs.create("corrected", backbone=config.backbone, mode=config.mode))
    assert second["status"] == "finished", second["reason"]
    assert second["corrections"] == {"relabelled": 1, "excluded": 1, "kept": 0, "stale": []}
    saved = json.loads((runs_dir / "corrected" / "config.json").read_text())
    assert saved["corrections"] == second["corrections"]
    assert "corrections" not in json.loads((runs_dir / "plain" / "config.json").read_text())
    sizes = json.loads((runs_dir / "plain" / "config.json").read_text())["split_sizes"]
    assert saved["split_sizes"] == {**sizes, "test": sizes["test"] - 1}
    assert saved["fingerprint"] == open_dataset(str(folder)).fingerprint != plain.fingerprint
    # features key on the files as on disk: the corrected run read them, computed none
    assert features.stat().st_mtime_ns == stamp
    assert {p for p in set(key.folder.iterdir()) - before if not p.name.startswith("aug-")} == set()
    # the run before the fixes is still evaluated on its own test split: the same images less the excluded
    from engine.evaluate.evaluation import labelled_set

    old_test = labelled_set(runs.open_run("plain"), split="test")
    assert len(old_test.rels) == sizes["test"] - 1 and out not in old_test.rels

    out = str(runs_dir / "cli")
    proc = run_cli("train", str(folder), "--image-size", "96", "--epochs", "1", "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["corrections"] == second["corrections"]
    assert "Corrections applied: 1 relabelled, 1 excluded" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_data_fix_then_inspect_data_then_undo_through_the_cli(tmp_path, cache_dir):
    folder = make_folder(tmp_path / "data")
    before = files_on_disk(folder)
    plain = open_dataset(str(folder))
    a = rels_of(plain)[0]
    new = other_class(plain, a)

    fix = run_cli("data-fix", str(folder), "--relabel", f"{a}={new}", "--json")
    assert fix.returncode == 0, fix.stderr
    out = json.loads(fix.stdout)
    assert out["edit"] == 1 and out["corrections"]["relabelled"] == 1
    assert out["files_fingerprint"] == plain.fingerprint != out["fingerprint"]
    assert Path(out["record"]) == corrections.record_path(folder)

    inspect = run_cli("inspect-data", str(folder), "--json")
    assert inspect.returncode == 0, inspect.stderr
    report = json.loads(inspect.stdout)
    assert report["corrections"] == {"relabelled": 1, "excluded": 0, "kept": 0, "stale": []}
    assert report["counts"][new] == plain.counts()[new] + 1

    undo = run_cli("data-fix", str(folder), "--undo", "--json")
    assert undo.returncode == 0, undo.stderr
    out = json.loads(undo.stdout)
    assert [c["path"] for c in out["undone"]] == [a]
    assert out["fingerprint"] == plain.fingerprint
    assert files_on_disk(folder) == before


@pytest.mark.slow
def test_data_fix_on_a_bad_path_exits_2_with_an_error(tmp_path, cache_dir):
    folder = make_folder(tmp_path / "data")
    proc = run_cli("data-fix", str(folder), "--exclude", "circle/nope.png", "--json")
    assert proc.returncode == 2, proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert "circle/nope.png" in error and "no such image" in error
    assert "Traceback" not in proc.stderr
    assert corrections.load(folder) == []


def test_data_fix_in_process_csv_out_and_in_reset_and_refusals(folder, tmp_path, capsys):
    from engine.cli.main import main

    plain = open_dataset(str(folder))
    a, b = rels_of(plain)[:2]
    csv = tmp_path / "fixes.csv"

    def fix(*args: str) -> tuple[int, dict]:
        code = main(["data-fix", *args, "--json"])
        return code, json.loads(capsys.readouterr().out)

    code, out = fix(str(folder), "--relabel", f"{a}={other_class(plain, a)}", "--exclude", b, "--csv-out", str(csv))
    assert code == 0 and out["edit"] == 1 and out["num_images"] == len(plain.items) - 1
    assert csv.read_bytes().decode() == corrections.to_csv(open_dataset(str(folder)))
    fingerprint = out["fingerprint"]

    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    code, out = fix(str(copy), "--csv-in", str(csv))
    assert code == 0 and out["skipped"] == [] and out["fingerprint"] == fingerprint

    for bad, words in (
        (["--relabel", a], "give PATH=CLASS"),
        (["--exclude", a, "--undo"], "one of"),
        (["--relabel", f"{a}=dragon"], "no class 'dragon'"),
    ):
        code, out = fix(str(folder), *bad)
        assert code == 2 and words in out["error"], out
    assert len(corrections.history(folder)) == 1  # the refusals recorded nothing

    code, out = fix(str(folder), "--reset")
    assert code == 0 and out["forgotten"] == 2 and out["fingerprint"] == plain.fingerprint
    code, out = fix(str(folder), "--undo")
    assert code == 0 and out["undone"] == []

    assert main(["data-fix", str(copy), "--keep", rels_of(plain)[2]]) == 0  # the words a user reads
    text = capsys.readouterr().out
    assert "edit 2 recorded" in text and "1 relabelled, 1 excluded, 1 reviewed (your files are unchanged)" in text


def test_an_edit_that_leaves_a_class_too_small_to_train_on_is_refused(folder):
    dataset = open_dataset(str(folder))
    cls = dataset.classes[0]
    mine = [i.rel for i in dataset.items if dataset.classes[i.label] == cls]
    with pytest.raises(DatasetError, match=f"leave '{cls}' 1 image"):
        corrections.edit(dataset, [(rel, corrections.EXCLUDE, "") for rel in mine[:-1]])
    assert corrections.load(folder) == []
    corrections.edit(dataset, [(rel, corrections.EXCLUDE, "") for rel in mine[:-2]])  # two left: fine
    assert open_dataset(str(folder)).counts()[cls] == 2


def test_a_csv_row_with_a_class_unknown_here_is_skipped_not_the_whole_csv(folder):
    dataset = open_dataset(str(folder))
    a, b = rels_of(dataset)[:2]
    sha = {i.rel: i.sha256 for i in dataset.items}
    text = f"path,sha256,action,label\n{a},{sha[a]},relabel,nosuch\n{b},{sha[b]},exclude,\n"
    edit, skipped = corrections.from_csv(dataset, text)
    assert edit == 1 and skipped == [a]
    assert open_dataset(str(folder)).corrections.excluded == 1
