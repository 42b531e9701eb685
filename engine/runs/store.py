"""The run store: create, open, list, rename and delete run folders under the runs root."""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
import unicodedata
from pathlib import Path

from engine import settings
from engine.runs.files import RunError, mtime, write_json
from engine.runs.folder import ACTIVE, RUN_NAME, Run, is_run_folder


def new_run_name(backbone: str, mode: str) -> str:
    """`20261123-110501-efficientnet_lite0-feature-3f9a` (sortable, unique)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{backbone}-{mode}-{secrets.token_hex(2)}"


def runs_root() -> Path:
    return settings.runs_dir()


def create(name: str | None = None, root: Path | None = None, *, backbone: str = "", mode: str = "") -> Run:
    """Make a new, empty run folder (status queued). `name` may also be a path (the CLI's --out)."""
    if name and ("/" in name or os.sep in name):
        path = Path(name).expanduser()
    else:
        name = name or new_run_name(backbone or "model", mode or "run")
        if not RUN_NAME.match(name):
            raise RunError(f"run name {name!r}: use letters, digits, '-', '_' and '.' only")
        path = (root or runs_root()) / name
    if path.exists() and any(path.iterdir()):
        raise RunError(f"{path} already exists and is not empty; choose another --out or resume it")
    path.mkdir(parents=True, exist_ok=True)
    run = Run(path)
    run.set_status("queued")
    return run


def discard(run: Run) -> bool:
    """Remove a run folder that never started: nothing in it but its status. True when removed.

    A folder holding anything else (a config, a checkpoint, a user's file) is left alone.
    """
    try:
        entries = list(run.path.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return False
    if any(p.name != "status.json" for p in entries):
        return False
    for p in entries:
        p.unlink(missing_ok=True)
    try:
        run.path.rmdir()
    except OSError:  # something appeared meanwhile: keep it
        return False
    return True


def open_run(name_or_path: str | Path, root: Path | None = None, *, allow_path: bool = True) -> Run:
    """An existing run, by folder name under the runs root or (with allow_path, the CLI) by path.

    The dashboard passes allow_path=False: a name from a URL must not reach other folders.
    """
    text = str(name_or_path)
    path = Path(text).expanduser()
    is_name = not path.is_absolute() and "/" not in text and os.sep not in text
    if not is_name and not allow_path:
        raise RunError(f"{text!r} is not a run name")
    if is_name:
        if not RUN_NAME.match(text):
            raise RunError(f"run name {text!r} is not valid")
        path = (root or runs_root()) / text
    if not (path / "status.json").is_file() and not (path / "config.json").is_file():
        raise RunError(f"{path}: not a run folder (no status.json or config.json)")
    return Run(path)


DISPLAY_NAME_MAX = 80
_DELETING = ".deleting-"  # marks a run folder on its way out: `.NAME.deleting-TOKEN`


def rename(run: Run, name: str) -> None:
    """Give a run a display name (meta.json). The folder keeps its name: it is the job id and is in URLs.

    Raises:
        RunError: not a run folder, or the name is empty, too long or holds control characters.
    """
    if not is_run_folder(run.path):
        raise RunError(f"{run.path}: not a run folder (no status.json or config.json)")
    name = str(name).strip()
    if not name:
        raise RunError("a run's display name cannot be empty; give at least one visible character")
    if len(name) > DISPLAY_NAME_MAX:
        raise RunError(f"a run's display name can have at most {DISPLAY_NAME_MAX} characters, got {len(name)}")
    # Cc: control characters (newline, tab, escape); Zl/Zp: line and paragraph separators.
    if any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):
        raise RunError("a run's display name must be one line without control characters (newlines, tabs)")
    try:
        meta = run.meta()
    except RunError:
        meta = {}  # an unreadable meta.json is replaced rather than blocking the rename
    if not isinstance(meta, dict):
        meta = {}
    write_json(run.path / "meta.json", {**meta, "display_name": name})


def _registry():
    """This process's job registry, or None when none was made."""
    # Not imported at the top: jobs imports this module. And no registry exists unless jobs
    # was imported, so it is neither imported nor created just to ask.
    jobs = sys.modules.get("engine.jobs")
    return getattr(jobs, "_REGISTRY", None) if jobs is not None else None


def delete(run: Run) -> None:
    """Remove a run folder and everything in it, unless it is queued or running.

    The folder is first renamed to a hidden sibling and then removed, so an interrupted
    removal leaves nothing listed (list_runs sweeps the rest away later).

    Raises:
        RunError: not a run folder, the run is still active, or the folder cannot be moved.
    """
    path = Path(os.path.abspath(run.path))  # "." or "runs/x/" still name the folder itself
    if not is_run_folder(path):
        raise RunError(f"{path}: not a run folder (no status.json or config.json)")
    run = Run(path)
    try:
        status = run.status().get("status")
    except (RunError, AttributeError, TypeError):
        status = None  # an unreadable status.json is what deleting a broken run is for
    registry = _registry()
    if status in ACTIVE or (registry is not None and run.name in registry.active()):
        raise RunError(f"{run.name} is still {status if status in ACTIVE else 'running/queued'}; stop it first")
    doomed = path.with_name(f".{run.name}{_DELETING}{secrets.token_hex(4)}")
    try:
        os.rename(path, doomed)
    except OSError as exc:
        raise RunError(f"cannot delete {path}: {exc.strerror or exc}; check the folder's permissions") from exc
    job = registry.get(run.name) if registry is not None else None
    if job is not None and Path(os.path.abspath(job.run.path)) == path:
        registry.forget(run.name)  # a page must not find the deleted run through its old job
    _remove(doomed)


def _remove(path: Path) -> None:
    """Best effort: anything left stays hidden, and list_runs tries again."""
    if path.is_symlink():
        path.unlink(missing_ok=True)  # a linked run folder: drop the link, never the folder it points to
    else:
        shutil.rmtree(path, ignore_errors=True)


def list_runs(root: Path | None = None) -> list[Run]:
    """Every run folder under the root, newest first. Hidden folders (deletions under way) are skipped."""
    folder = root or runs_root()
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        if p.name.startswith("."):
            if _DELETING in p.name:
                _remove(p)  # a delete that was interrupted: finish it
            continue
        if p.is_dir() and (p / "status.json").is_file():
            found.append(Run(p))
    return sorted(found, key=lambda r: mtime(r.path / "status.json"), reverse=True)
