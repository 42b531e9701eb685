"""Atomic writes and safe reads of a run folder's files (see engine.runs for the layout)."""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from engine.errors import RunError, RunGone


def gone_error(folder: Path, doing: str = "this command ran") -> RunGone:
    return RunGone(f"the run {folder.name} was deleted while {doing}; nothing was written back to it")


def atomic_write(path: Path, write: Callable[[Path], None], *, inside: Path | None = None) -> None:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it over `path`.

    The temporary name keeps `path`'s suffix (Keras insists on `.keras`). If
    `write` fails, the temporary file is removed and `path` is untouched.

    With `inside` (a run folder), that folder must exist: it and its parents are never
    created, only the folders between it and `path`, so a run deleted meanwhile stays
    deleted (RunGone) instead of coming back holding one file.
    """
    try:
        if inside is None:
            path.parent.mkdir(parents=True, exist_ok=True)
        else:
            folder = Path(inside)
            for part in path.parent.relative_to(inside).parts:
                folder = folder / part
                folder.mkdir(exist_ok=True)  # no parents=True: a missing run folder fails here
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    except FileNotFoundError as exc:
        if inside is not None and not Path(inside).is_dir():
            raise gone_error(Path(inside)) from exc
        raise
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, FileNotFoundError) and inside is not None and not Path(inside).is_dir():
            raise gone_error(Path(inside)) from exc
        raise


def write_json(path: Path, data, *, inside: Path | None = None) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)), inside=inside)


def keras_archive_problem(path: Path) -> str:
    """What is wrong with a `.keras` file, cheaply (its zip directory only); "" when it looks whole.

    Keras itself calls a file that is not a zip "File not found", which misleads for a file that is there.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        return f"{path.name} is corrupted or not a Keras archive ({exc})"
    missing = sorted({"config.json", "metadata.json"} - names)
    if missing:
        return f"{path.name} is corrupted or not a Keras archive (it has no {' or '.join(missing)})"
    return ""


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: not readable JSON ({exc})") from exc


def mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # deleted meanwhile
        return 0.0
