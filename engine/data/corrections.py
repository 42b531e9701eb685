"""Corrections: relabel or exclude images without touching the user's files.

One record per dataset folder, kept in the cache (`<cache>/corrections/<key>.json`,
the key a hash of the folder's resolved path, so an upload, a generated set and a
folder on disk each have theirs). The record is a list of changes, each with the
number of the edit that made it; what holds for an image is its last change.
So undo is dropping the last edit's changes, and an earlier change shows again.

Changes: `relabel` (to a class name), `exclude`, `keep` (reviewed: the health view
stops showing it; the data is unchanged) and `clear` (back to the file as it is).
A change names the image by its path below the dataset root and its content
hash: a file whose content changed since is not corrected (and is reported).

`apply` is called by `open_dataset`, so training, evaluation and every page see
the corrected data; relabelled and excluded images change the data fingerprint.
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from engine import settings
from engine.data.ingest import MIN_PER_CLASS, Dataset, Item, Summary
from engine.errors import DatasetError

RELABEL, EXCLUDE, KEEP, CLEAR = "relabel", "exclude", "keep", "clear"
ACTIONS = (RELABEL, EXCLUDE, KEEP, CLEAR)
CSV_FIELDS = ("path", "sha256", "action", "label")
_VERSION = 1


@dataclass(frozen=True)
class Change:
    """One correction of one image (`label`: the class name, for relabel)."""

    rel: str
    sha256: str
    action: str
    label: str = ""
    edit: int = 0

    def to_json(self) -> dict:
        return {"path": self.rel, "sha256": self.sha256, "action": self.action, "label": self.label, "edit": self.edit}


def record_path(root: Path) -> Path:
    key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:24]
    return settings.cache_dir() / "corrections" / f"{key}.json"


def load(root: Path) -> list[Change]:
    """The record's changes, oldest first ([] when there is none)."""
    path = record_path(root)
    if not path.is_file():
        return []
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return [
            Change(c["path"], c["sha256"], c["action"], c.get("label", ""), int(c.get("edit", 0)))
            for c in raw["changes"]
        ]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path}: the corrections record is damaged ({exc}); delete it to start again") from exc


def _save(root: Path, changes: list[Change]) -> None:
    path = record_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"version": _VERSION, "root": str(Path(root).resolve()), "changes": [c.to_json() for c in changes]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".corrections-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)  # a reader never sees half a record


@contextlib.contextmanager
def _locked(root: Path):
    """One writer at a time per record: two sessions editing at once both keep their edits."""
    path = record_path(root).with_suffix(".lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def current(changes: list[Change]) -> dict[str, Change]:
    """path -> the change that holds for it now (cleared paths left out)."""
    out: dict[str, Change] = {}
    for c in changes:
        out[c.rel] = c
    return {rel: c for rel, c in out.items() if c.action != CLEAR}


def edit(dataset: Dataset, changes: list[tuple[str, str, str]]) -> int:
    """Record one edit: a list of (path, action, label); returns its number.

    Paths are the images' paths below the dataset root (as the health report gives them);
    `dataset` is the data as opened (corrected or not: the same files).

    Raises:
        DatasetError: an unknown path, action or class; nothing is recorded then.
    """
    with _locked(dataset.root):
        return _edit(dataset, changes)


def _edit(dataset: Dataset, changes: list[tuple[str, str, str]]) -> int:
    by_rel = {i.rel: i for i in _all_items(dataset)}
    made = []
    old = load(dataset.root)
    number = max((c.edit for c in old), default=0) + 1
    for rel, action, label in changes:
        rel = rel.strip()
        if action not in ACTIONS:
            raise DatasetError(f"unknown correction {action!r}; use one of {', '.join(ACTIONS)}")
        item = by_rel.get(rel)
        if item is None:
            raise DatasetError(f"{rel}: no such image in {dataset.source} (give its path below the dataset folder)")
        if action == RELABEL:
            if label not in dataset.classes:
                raise DatasetError(f"{rel}: no class {label!r}; the classes are {', '.join(dataset.classes)}")
            if dataset.classes.index(label) == _given(item):
                action, label = CLEAR, ""  # back to the folder's own label
        made.append(Change(rel, item.sha256, action, label if action == RELABEL else "", number))
    if made:
        _check_trainable(dataset, old, made)
        _save(dataset.root, old + made)
    return number


def _check_trainable(dataset: Dataset, old: list[Change], made: list[Change]) -> None:
    """Refuse an edit that leaves a class with too few images to train on (it had enough before)."""
    before, after = _applied(dataset, old).counts(), _applied(dataset, old + made).counts()
    short = {c: n for c, n in after.items() if n < MIN_PER_CLASS <= before[c]}
    if short:
        left = ", ".join(f"{c!r} {n} image{'s' * (n != 1)}" for c, n in short.items())
        raise DatasetError(
            f"that would leave {left}; every class needs at least {MIN_PER_CLASS} to train on: "
            "relabel or exclude fewer of it (nothing was recorded)"
        )


def undo(root: Path) -> list[Change]:
    """Drop the last edit; returns its changes ([] when there is nothing to undo)."""
    with _locked(root):
        changes = load(root)
        if not changes:
            return []
        last = max(c.edit for c in changes)
        _save(root, [c for c in changes if c.edit != last])
        return [c for c in changes if c.edit == last]


def reset(root: Path) -> int:
    """Forget every correction; returns how many changes there were."""
    with _locked(root):
        changes = load(root)
        if changes:
            _save(root, [])
        return len(changes)


def _given(item: Item) -> int:
    return item.given if item.given is not None else item.label


def _all_items(dataset: Dataset) -> list[Item]:
    """Every usable image of the folder, as on disk (the excluded ones too), in ingest order."""
    return dataset.raw_items if dataset.raw_items is not None else dataset.items


def apply(dataset: Dataset) -> Dataset:
    """The dataset with its record applied (the same object when there is no record).

    Relabelled items keep their folder's label in `Item.given`, so splits stay where they were
    (engine.data.splits); excluded items leave `items` and stay in `raw_items`.
    """
    return _applied(dataset, load(dataset.root))


def _applied(dataset: Dataset, changes: list[Change]) -> Dataset:
    holding = current(changes)
    if not holding:  # the files as they are
        return (
            dataset
            if dataset.raw_items is None
            else replace(
                dataset,
                items=dataset.raw_items,
                raw_items=None,
                corrections=None,
                _fingerprint=None,
                _files_fingerprint=None,
            )
        )
    items, stale = [], []
    relabelled = excluded = kept = 0
    raw = _all_items(dataset)
    for item in raw:
        change = holding.pop(item.rel, None)
        if change is not None and change.sha256 != item.sha256:
            stale.append(item.rel)  # the file changed since: the correction was about other pixels
            change = None
        if change is None or change.action == KEEP:
            kept += change is not None
            items.append(item)
        elif change.action == EXCLUDE:
            excluded += 1
        elif change.label in dataset.classes:
            relabelled += 1
            items.append(replace(item, label=dataset.classes.index(change.label), given=_given(item)))
        else:
            stale.append(item.rel)  # a class folder renamed or removed since
            items.append(item)
    stale += sorted(holding)  # files gone since
    summary = Summary(relabelled, excluded, kept, tuple(stale))
    return replace(dataset, items=items, raw_items=raw, corrections=summary, _fingerprint=None, _files_fingerprint=None)


def kept_paths(dataset: Dataset) -> set[str]:
    """Paths marked reviewed (`keep`) that still match their file."""
    return paths_with(dataset, KEEP)


def paths_with(dataset: Dataset, *actions: str) -> set[str]:
    """Paths whose correction now is one of `actions` and still matches their file."""
    sha = {i.rel: i.sha256 for i in _all_items(dataset)}
    holding = current(load(dataset.root))
    return {rel for rel, c in holding.items() if c.action in actions and sha.get(rel) == c.sha256}


def to_csv(dataset: Dataset) -> str:
    """The corrections that hold now, as CSV (path, sha256, action, label) to keep or apply elsewhere."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(CSV_FIELDS)
    for c in current(load(dataset.root)).values():
        writer.writerow([c.rel, c.sha256, c.action, c.label])
    return buf.getvalue()


def from_csv(dataset: Dataset, text: str) -> tuple[int, list[str]]:
    """Apply a CSV from `to_csv` (maybe of another copy of the data) as one edit.

    Rows whose path is missing here, whose file has other content, or whose class or action is not
    known here are skipped and returned.

    Returns:
        (the edit's number, or 0 when no row applied; the skipped rows' paths).
    """
    try:
        rows = list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise DatasetError(f"not a corrections CSV ({exc})") from exc
    if rows and not set(CSV_FIELDS) <= set(rows[0]):
        raise DatasetError(
            f"a corrections CSV has the columns {', '.join(CSV_FIELDS)}; this one has {', '.join(rows[0])}"
        )
    sha = {i.rel: i.sha256 for i in _all_items(dataset)}
    todo, skipped = [], []
    for row in rows:
        unknown = row["action"] not in ACTIONS or (row["action"] == RELABEL and row.get("label") not in dataset.classes)
        if sha.get(row["path"]) != row["sha256"] or unknown:  # another copy, or other class folders
            skipped.append(row["path"])
        else:
            todo.append((row["path"], row["action"], row.get("label") or ""))
    return (edit(dataset, todo) if todo else 0), skipped


def history(root: Path) -> list[dict]:
    """The edits, newest first: number and changes (for a page's list of what was done)."""
    by_edit: dict[int, list[Change]] = {}
    for c in load(root):
        by_edit.setdefault(c.edit, []).append(c)
    return [{"edit": n, "changes": [c.to_json() for c in by_edit[n]]} for n in sorted(by_edit, reverse=True)]
