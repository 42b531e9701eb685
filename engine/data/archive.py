"""Safe extraction of dataset archives (.zip, .tar, .tar.gz, .tgz, .tar.bz2, .tar.xz).

Checks before a byte is written: entry count, declared total size,
compression ratio, overlapping zip entries (the "overlapped" zip bomb).
During extraction the bytes really written are counted against the declared
sizes and the limit. Members that would land outside the destination
(`../x`, `/abs/x`, `C:\\x`), links, devices and encrypted members are
rejected and reported; macOS/Windows/Jupyter clutter is skipped. The result
is built in a temporary folder and moved into place at the end, so a failed
extraction leaves nothing behind.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine import settings
from engine.data.layout import HIDDEN, UNSAFE, Skipped, is_hidden_name
from engine.errors import ArchiveError

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
MAX_RATIO = 200  # a real image compresses far less than this; bombs compress 1000x and more
_CHUNK = 1 << 20


def is_archive(path: str | Path) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class Limits:
    max_entries: int
    max_bytes: int
    max_ratio: int = MAX_RATIO

    @classmethod
    def from_settings(cls) -> Limits:
        return cls(settings.max_archive_entries(), settings.max_extract_bytes())


@dataclass(frozen=True)
class _Member:
    name: str  # as stored in the archive
    target: str | None  # safe relative posix path, None when rejected
    size: int  # declared uncompressed size
    reason: str | None = None  # why it is skipped


def safe_relative(name: str) -> str | None:
    """The member's path relative to the destination, or None if it would escape it."""
    name = name.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return posixpath.join(*parts)


def _classify(name: str, size: int, *, is_dir: bool, bad_kind: str | None) -> _Member | None:
    if is_dir:
        return None
    rel = safe_relative(name)
    if rel is None:
        return _Member(name, None, size, f"{UNSAFE}: path leaves the archive folder")
    if bad_kind:
        return _Member(name, None, size, f"{UNSAFE}: {bad_kind}")
    if any(is_hidden_name(p) for p in rel.split("/")):
        return _Member(name, None, size, HIDDEN)
    return _Member(name, rel, size)


def _zip_members(zf: zipfile.ZipFile, limits: Limits) -> list[_Member]:
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise ArchiveError(
            f"archive has {len(infos):,} entries, over the limit of {limits.max_entries:,} "
            "(CONVSCOPE_MAX_ARCHIVE_ENTRIES)"
        )
    # Entries must not share compressed bytes: the overlapped-entries bomb
    # points thousands of headers at one blob.
    spans = sorted((i.header_offset, i.header_offset + 30 + i.compress_size) for i in infos)
    for (_, end), (next_start, _) in zip(spans, spans[1:], strict=False):
        if next_start < end:
            raise ArchiveError("archive entries overlap each other (a zip bomb); refusing to extract it")
    members = []
    for info in infos:
        kind = None
        if stat.S_ISLNK(info.external_attr >> 16):
            kind = "symbolic link"
        elif info.flag_bits & 0x1:
            kind = "encrypted"
        elif info.file_size > 1 << 20 and info.file_size > limits.max_ratio * max(info.compress_size, 1):
            raise ArchiveError(
                f"archive member {info.filename!r} expands {info.file_size / max(info.compress_size, 1):,.0f}x "
                f"(limit {limits.max_ratio}x): a zip bomb; refusing to extract it"
            )
        member = _classify(info.filename, info.file_size, is_dir=info.is_dir(), bad_kind=kind)
        if member:
            members.append(member)
    return members


def _tar_members(tf: tarfile.TarFile, limits: Limits) -> list[_Member]:
    members = []
    for count, info in enumerate(tf, start=1):
        if count > limits.max_entries:
            raise ArchiveError(f"archive has more than {limits.max_entries:,} entries (CONVSCOPE_MAX_ARCHIVE_ENTRIES)")
        kind = None
        if info.issym():
            kind = "symbolic link"
        elif info.islnk():
            kind = "hard link"
        elif not (info.isfile() or info.isdir()):
            kind = "device or special file"
        member = _classify(info.name, info.size, is_dir=info.isdir(), bad_kind=kind)
        if member:
            members.append(member)
    return members


def _copy_counted(src, dst_path: Path, declared: int, budget: list[int], name: str) -> None:
    written = 0
    with open(dst_path, "wb") as dst:
        while chunk := src.read(_CHUNK):
            written += len(chunk)
            budget[0] -= len(chunk)
            if written > declared:
                raise ArchiveError(f"archive member {name!r} is larger than its header says: refusing the archive")
            if budget[0] < 0:
                raise ArchiveError("archive expands beyond the extraction limit (CONVSCOPE_MAX_EXTRACT_MB)")
            dst.write(chunk)


def extract(
    archive: str | Path,
    dest: str | Path,
    limits: Limits | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Skipped]:
    """Extract `archive` into the new folder `dest` (which must not exist).

    Returns:
        The members that were not extracted, with the reason.

    Raises:
        ArchiveError: unreadable archive, or a bomb (too many entries, too many
            bytes, overlapping entries, sizes that lie); nothing is left behind.
    """
    archive, dest = Path(archive), Path(dest)
    limits = limits or Limits.from_settings()
    lower = archive.name.lower()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    try:
        if lower.endswith(".zip"):
            open_archive, list_members, kind = zipfile.ZipFile, _zip_members, "zip"
        else:
            open_archive, list_members, kind = tarfile.open, _tar_members, "tar"
        try:
            handle = open_archive(archive)
        except (zipfile.BadZipFile, tarfile.TarError, OSError) as exc:
            raise ArchiveError(f"{archive.name} is not a readable {kind} archive ({exc})") from exc
        with handle:
            opener = handle.open if kind == "zip" else handle.extractfile
            skipped = _write(list_members(handle, limits), opener, tmp, limits, progress)
        os.replace(tmp, dest)
        return skipped
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise ArchiveError(f"{archive.name} is damaged: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _write(members: list[_Member], opener, tmp: Path, limits: Limits, progress) -> list[Skipped]:
    declared = sum(m.size for m in members if m.target)
    if declared > limits.max_bytes:
        raise ArchiveError(
            f"archive would expand to {declared / 2**20:,.0f} MB, over the limit of "
            f"{limits.max_bytes / 2**20:,.0f} MB (CONVSCOPE_MAX_EXTRACT_MB)"
        )
    budget = [limits.max_bytes]
    skipped = [Skipped(m.name, m.reason or UNSAFE) for m in members if not m.target]
    seen: set[str] = set()
    todo = [m for m in members if m.target]
    for n, m in enumerate(todo, start=1):
        if m.target.lower() in seen:
            skipped.append(Skipped(m.name, f"{UNSAFE}: a second member with the same path"))
            continue
        seen.add(m.target.lower())
        out = tmp / m.target
        out.parent.mkdir(parents=True, exist_ok=True)
        src = opener(m.name)
        if src is None:
            skipped.append(Skipped(m.name, f"{UNSAFE}: not a regular file"))
            continue
        with src:
            _copy_counted(src, out, m.size, budget, m.name)
        if progress and (n % 50 == 0 or n == len(todo)):
            progress(n, len(todo))
    return skipped
