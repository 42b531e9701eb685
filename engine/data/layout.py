"""Finding the classes (and a source's own splits) in a folder tree.

Accepted layouts, after descending through single wrapping folders:
  root/<class>/**/<image>                   classes only
  root/<split>/<class>/**/<image>           the source's own splits
with <split> one of train / val / valid / validation / test. Hidden and
system entries (`.x`, `__MACOSX`, `Thumbs.db`, ...) are never a class or an
image; files outside a class folder are reported, not guessed at.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DatasetError

# Reasons a file is skipped (besides engine.imaging's decoding reasons).
HIDDEN = "hidden or system file"
DUPLICATE = "duplicate"
OUTSIDE_CLASS = "not in a class folder"
UNSAFE = "unsafe archive member"
LINK_OUTSIDE = "link to a file outside the dataset"
LINK_FOLDER_OUTSIDE = "link to a folder outside the dataset"

_SYSTEM_NAMES = {
    "__macosx", "thumbs.db", "desktop.ini", "ehthumbs.db", "$recycle.bin",
    "system volume information", "@eadir", "__pycache__",
}  # fmt: skip
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "validation", "valid": "validation", "validation": "validation",
    "test": "test", "testing": "test",
}  # fmt: skip
METADATA_FILES = ("boxes.json",)


def is_hidden_name(name: str) -> bool:
    """True for dot files (`.DS_Store`, `._x`, `.ipynb_checkpoints`) and OS/tool clutter."""
    return name.startswith((".", "~$")) or name.lower() in _SYSTEM_NAMES


@dataclass(frozen=True)
class Skipped:
    """A file that is not used, and why (`reason` is a short code, `detail` says more)."""

    path: str
    reason: str
    detail: str = ""
    cls: str | None = None
    duplicate_of: str | None = None

    def to_json(self) -> dict:
        out = {"path": self.path, "reason": self.reason}
        if self.detail:
            out["detail"] = self.detail
        if self.cls is not None:
            out["class"] = self.cls
        if self.duplicate_of:
            out["duplicate_of"] = self.duplicate_of
        return out


@dataclass(frozen=True)
class Candidate:
    """A file that sits in a class folder; ingest decides whether it is usable."""

    rel: str  # posix path relative to the dataset root
    cls: str
    split: str | None  # the source's own split, if it has them


@dataclass
class Layout:
    root: Path
    classes: list[str]
    candidates: list[Candidate]
    skipped: list[Skipped]
    has_splits: bool


def _links_out(entry: Path, real_root: Path) -> bool:
    """A link (to a folder or a file) whose target is not inside the dataset: never read."""
    if not entry.is_symlink():
        return False
    try:
        return not entry.resolve(strict=True).is_relative_to(real_root)
    except (OSError, RuntimeError):  # dangling or a loop
        return True


def _visible(folder: Path, skipped: list[Skipped], root: Path) -> tuple[list[Path], list[Path]]:
    dirs, files = [], []
    real_root = root.resolve()
    for entry in sorted(folder.iterdir()):
        if is_hidden_name(entry.name):
            suffix = "/" if entry.is_dir() else ""
            skipped.append(Skipped(entry.relative_to(root).as_posix() + suffix, HIDDEN))
        elif entry.is_dir() and _links_out(entry, real_root):
            skipped.append(Skipped(entry.relative_to(root).as_posix() + "/", LINK_FOLDER_OUTSIDE))
        elif entry.is_dir():
            dirs.append(entry)
        else:
            files.append(entry)
    return dirs, files


def _descend(root: Path) -> Path:
    """Step through single wrapping folders (`data.zip` -> `data/` -> classes).

    Raises:
        DatasetError: the wrapping folder is a link to a place outside the given folder.
    """
    real_start = root.resolve()
    while True:
        entries = [e for e in root.iterdir() if not is_hidden_name(e.name)]
        only = entries[0] if len(entries) == 1 else None
        if only is not None and only.is_dir() and _links_out(only, real_start):
            raise DatasetError(
                f"{only}: a link to a folder outside the dataset ({os.path.realpath(only)}); links out of a "
                "dataset are never followed. Put the class folders themselves in the dataset folder."
            )
        if (
            only is None
            or not only.is_dir()
            or not any(e.is_dir() and not is_hidden_name(e.name) for e in only.iterdir())
        ):
            return root
        root = only


def _walk_class(folder: Path, root: Path, cls: str, split: str | None, layout: Layout) -> None:
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(folder):
        here = Path(dirpath)
        for d in sorted(dirnames):
            if is_hidden_name(d):
                layout.skipped.append(Skipped((here / d).relative_to(root).as_posix() + "/", HIDDEN, cls=cls))
            elif _links_out(here / d, real_root):  # os.walk does not follow folder links; say why it is unread
                rel = (here / d).relative_to(root).as_posix() + "/"
                layout.skipped.append(Skipped(rel, LINK_FOLDER_OUTSIDE, cls=cls))
        dirnames[:] = sorted(d for d in dirnames if not is_hidden_name(d))
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            if is_hidden_name(name):
                layout.skipped.append(Skipped(rel, HIDDEN, cls=cls))
            elif path.is_symlink() and not path.resolve().is_relative_to(real_root):
                layout.skipped.append(Skipped(rel, LINK_OUTSIDE, cls=cls))
            else:
                layout.candidates.append(Candidate(rel, cls, split))


def scan(folder: str | Path) -> Layout:
    """Find classes, candidate files and clutter under `folder`.

    Raises:
        DatasetError: the folder does not exist or holds no folders at all.
    """
    start = Path(folder).expanduser()
    if not start.is_dir():
        raise DatasetError(f"{folder}: no such folder. Give a folder with one subfolder per class.")
    root = _descend(start)
    layout = Layout(root, [], [], [], False)
    dirs, files = _visible(root, layout.skipped, root)
    for f in files:
        if f.name not in METADATA_FILES:
            layout.skipped.append(Skipped(f.name, OUTSIDE_CLASS))
    split_dirs = {d: SPLIT_NAMES.get(d.name.lower()) for d in dirs}
    if dirs and all(split_dirs.values()) and "train" in split_dirs.values():
        layout.has_splits = True
        class_dirs = []
        # train first: a file duplicated into validation/test is then dropped there (a leak), not from train.
        order = ("train", "validation", "test")
        for d in sorted(dirs, key=lambda d: (order.index(split_dirs[d]), d.name)):
            sub_dirs, sub_files = _visible(d, layout.skipped, root)
            layout.skipped.extend(Skipped(f.relative_to(root).as_posix(), OUTSIDE_CLASS) for f in sub_files)
            class_dirs.extend((c, split_dirs[d]) for c in sub_dirs)
    else:
        class_dirs = [(d, None) for d in dirs]
    layout.classes = sorted({d.name for d, _ in class_dirs})
    for d, split in class_dirs:
        _walk_class(d, root, d.name, split, layout)
    if not layout.classes:
        raise DatasetError(
            f"{folder}: found no class folders. Put each class's images in its own subfolder, "
            "e.g. data/cats/*.jpg and data/dogs/*.jpg."
        )
    return layout
