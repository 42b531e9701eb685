"""Ingest: decode every candidate file once, keep the good ones, report the rest.

Each file is hashed (SHA-256 of its bytes) and fully decoded through
engine.imaging, so a truncated JPEG is found here and not in epoch 3. The
verdict per content hash is kept in a small SQLite table in the cache
folder, so looking at the same data again only re-reads and hashes it.
Files with the same content are kept once; the others are reported as
duplicates (a duplicate across classes or splits is a label conflict or a
leak, so it matters).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import imaging, settings
from engine.data.layout import DUPLICATE, Candidate, Layout, Skipped
from engine.errors import DatasetError

Progress = Callable[[int, int], None]
MIN_CLASSES = 2
MIN_PER_CLASS = 2  # one to train on, one to validate
_VERDICT_VERSION = 2  # bump when imaging's decisions change


@dataclass(frozen=True)
class Item:
    """One usable image: where it is, its label and what ingest learnt about it."""

    rel: str  # posix path relative to the dataset root
    label: int
    split: str | None  # the source's own split, if any
    sha256: str
    width: int
    height: int
    given: int | None = None  # the folder's label, when a correction relabelled the image (engine.data.corrections)


@dataclass(frozen=True)
class Summary:
    """What corrections (engine.data.corrections) did to a dataset: counts, and changes that no longer match a file."""

    relabelled: int = 0
    excluded: int = 0
    kept: int = 0
    stale: tuple[str, ...] = ()  # paths gone or changed since they were corrected

    @property
    def changes_data(self) -> bool:
        return bool(self.relabelled or self.excluded)

    def to_json(self) -> dict:
        return {"relabelled": self.relabelled, "excluded": self.excluded, "kept": self.kept, "stale": list(self.stale)}

    def sentence(self) -> str:
        """`2 relabelled, 1 excluded` (for the CLI and the pages); '' when nothing applies."""
        parts = []
        if self.relabelled:
            parts.append(f"{self.relabelled} relabelled")
        if self.excluded:
            parts.append(f"{self.excluded} excluded")
        return ", ".join(parts)


@dataclass
class Dataset:
    """An ingested dataset: usable items plus the report of what was skipped."""

    source: str
    root: Path
    classes: list[str]
    items: list[Item]
    skipped: list[Skipped]
    has_splits: bool = False
    boxes: dict[str, list[int]] | None = None
    # With corrections applied: every usable image as on disk (excluded ones too) and what was done.
    raw_items: list[Item] | None = None
    corrections: Summary | None = None
    _fingerprint: str | None = field(default=None, repr=False)
    _files_fingerprint: str | None = field(default=None, repr=False)

    def path(self, item: Item) -> Path:
        return self.root / item.rel

    def unknown_to(self, names: list[str]) -> list[str]:
        """The classes holding images that `names` (a model's classes) does not name; [] when it names them all."""
        known, counts = set(names), self.counts()
        return [c for c in self.classes if c not in known and counts.get(c)]

    def counts(self) -> dict[str, int]:
        """Usable images per class, every class listed (0 for an empty one)."""
        c = Counter(self.classes[i.label] for i in self.items)
        return {name: c.get(name, 0) for name in self.classes}

    def skipped_by_class(self) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for s in self.skipped:
            out.setdefault(s.cls or "", Counter())[s.reason] += 1
        return out

    def problems(self) -> list[str]:
        """Why this dataset cannot be trained on; empty when it can."""
        out = []
        counts = self.counts()
        by_class = self.skipped_by_class()
        if len(self.classes) < MIN_CLASSES:
            names = ", ".join(repr(c) for c in self.classes) or "none"
            out.append(
                f"found {len(self.classes)} class folder(s) ({names}); a classifier needs at least "
                f"{MIN_CLASSES} classes, each in its own subfolder"
            )
        for name, n in counts.items():
            if n >= MIN_PER_CLASS:
                continue
            why = by_class.get(name)
            lost = f" ({sum(why.values())} skipped: {', '.join(f'{k} {r}' for r, k in why.items())})" if why else ""
            have = "no usable images" if n == 0 else "only 1 usable image"
            out.append(
                f"class {name!r} has {have}{lost}; every class needs at least {MIN_PER_CLASS} "
                "(add images or remove the folder)"
            )
        return out

    def check(self) -> None:
        """Raise DatasetError listing every problem, before any training starts."""
        problems = self.problems()
        if problems:
            raise DatasetError(f"{self.source} cannot be used for training: " + "; ".join(problems))

    def warnings(self) -> list[str]:
        counts = [n for n in self.counts().values() if n]
        out = []
        if counts and max(counts) > 10 * min(counts):
            out.append(
                f"classes are very unbalanced ({min(counts)} to {max(counts)} images); "
                "consider class weights or more data for the small classes"
            )
        return out

    @property
    def fingerprint(self) -> str:
        """SHA-256 over classes and (path, label, content hash): equal data, equal key.

        A relabelled or excluded image changes it; undoing the correction restores it.
        """
        if self._fingerprint is None:
            self._fingerprint = _fingerprint(self.classes, self.items)
        return self._fingerprint

    @property
    def files_fingerprint(self) -> str:
        """The fingerprint of the data as on disk, before corrections (what pixel caches are keyed by)."""
        if self._files_fingerprint is None:
            self._files_fingerprint = (
                self.fingerprint if self.raw_items is None else _fingerprint(self.classes, self.raw_items)
            )
        return self._files_fingerprint


def _fingerprint(classes: list[str], items: list[Item]) -> str:
    payload = json.dumps([classes, [(i.rel, i.label, i.sha256) for i in items]])
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class _Verdict:
    ok: bool
    reason: str = ""
    message: str = ""
    width: int = 0
    height: int = 0


class _VerdictCache:
    """SHA-256 -> verdict, in SQLite; safe to share between processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.limits = f"{settings.max_image_pixels()}:{settings.max_upload_bytes()}:{_VERDICT_VERSION}"

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(self.path, timeout=30)
        con.execute(
            "CREATE TABLE IF NOT EXISTS verdict (sha TEXT, limits TEXT, ok INT, reason TEXT, message TEXT, "
            "w INT, h INT, PRIMARY KEY (sha, limits))"
        )
        return con

    def get_all(self) -> dict[str, _Verdict]:
        try:
            with self._connect() as con:
                rows = con.execute(
                    "SELECT sha, ok, reason, message, w, h FROM verdict WHERE limits = ?", (self.limits,)
                )
                return {r[0]: _Verdict(bool(r[1]), r[2], r[3], r[4], r[5]) for r in rows}
        except sqlite3.Error:
            return {}  # a broken cache only costs time

    def put_many(self, verdicts: dict[str, _Verdict]) -> None:
        if not verdicts:
            return
        try:
            with self._connect() as con:
                con.executemany(
                    "INSERT OR REPLACE INTO verdict VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(s, self.limits, int(v.ok), v.reason, v.message, v.width, v.height) for s, v in verdicts.items()],
                )
        except sqlite3.Error:
            pass


def _check_file(path: Path, rel: str, known: dict[str, _Verdict]) -> tuple[str, _Verdict, bool]:
    """(sha256, verdict, fresh): read and hash the file; decode it unless its hash is known."""
    size = path.stat().st_size
    limit = settings.max_upload_bytes()
    if size > limit:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        message = f"{size / 2**20:.1f} MB is over the {limit / 2**20:.0f} MB per-image limit (CONVSCOPE_MAX_UPLOAD_MB)"
        return h.hexdigest(), _Verdict(False, imaging.TOO_LARGE, message), False
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    if sha in known:
        return sha, known[sha], False
    try:
        rgb = imaging.load_rgb(data, name=rel)
    except imaging.ImageLoadError as exc:
        return sha, _Verdict(False, exc.reason, str(exc).removeprefix(f"{rel}: ")), True
    return sha, _Verdict(True, width=int(rgb.shape[1]), height=int(rgb.shape[0])), True


def ingest(
    layout: Layout, source: str, progress: Progress | None = None, extra_skipped: list[Skipped] | None = None
) -> Dataset:
    """Check every candidate of `layout`; return the usable items and the report."""
    cache = _VerdictCache(settings.cache_dir() / "ingest.sqlite")
    known = cache.get_all()
    cands: list[Candidate] = layout.candidates
    total = len(cands)
    checked: list[tuple[str, _Verdict, bool]] = []
    # Decoding dominates and Pillow releases the GIL, so threads help.
    with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        jobs = pool.map(lambda c: _check_file(layout.root / c.rel, c.rel, known), cands)
        for n, result in enumerate(jobs, start=1):
            checked.append(result)
            if progress and (n % 25 == 0 or n == total):
                progress(n, total)
    cache.put_many({sha: v for sha, v, fresh in checked if fresh})

    label_of = {c: i for i, c in enumerate(layout.classes)}
    items: list[Item] = []
    skipped = list(extra_skipped or []) + list(layout.skipped)
    first_by_hash: dict[str, Candidate] = {}
    for cand, (sha, verdict, _) in zip(cands, checked, strict=True):
        if not verdict.ok:
            skipped.append(Skipped(cand.rel, verdict.reason, verdict.message, cand.cls))
            continue
        if sha in first_by_hash:
            first = first_by_hash[sha]
            where = "" if first.cls == cand.cls else f" (labelled {first.cls!r} there: conflicting labels)"
            skipped.append(Skipped(cand.rel, DUPLICATE, f"same content as {first.rel}{where}", cand.cls, first.rel))
            continue
        first_by_hash[sha] = cand
        items.append(Item(cand.rel, label_of[cand.cls], cand.split, sha, verdict.width, verdict.height))
    boxes = None
    boxes_file = layout.root / "boxes.json"
    if boxes_file.is_file():
        try:
            boxes = {str(k): [int(v) for v in box] for k, box in json.loads(boxes_file.read_text()).items()}
        except (ValueError, TypeError, AttributeError) as exc:
            raise DatasetError(f"{boxes_file}: not a valid boxes.json ({exc})") from exc
    return Dataset(source, layout.root, list(layout.classes), items, skipped, layout.has_splits, boxes)


def load_item(dataset: Dataset, item: Item) -> np.ndarray:
    """The item's pixels as (H, W, 3) uint8 (decoded the same way as at ingest)."""
    return imaging.load_rgb(dataset.path(item), name=item.rel)
