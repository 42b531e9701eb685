"""The run store: one folder per training run, every file written atomically.

A run folder holds:

    config.json     TrainConfig plus `backbone`, `labels` and the data fingerprint
    status.json     queued | running | stopped | failed | finished, reason, epoch, owner pid
    history.json    per-epoch metrics: {"loss": [...], "accuracy": [...], "val_loss": ...}
    labels.json     class names, index = label
    metrics.json    final validation/test accuracy, confusion matrix
    model.keras     the whole classifier (preprocessed images in, logits out)
    checkpoints/    last.keras (what is trained, with optimizer state) + last.json (its epoch)
    logs/           TensorBoard event files

Every write goes to a temporary file in the same folder and is renamed over
the old one with os.replace, so a kill in the middle of a write leaves the
previous version intact, never half a file.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine import settings
from engine.errors import ConvScopeError

STATUSES = ("queued", "running", "stopped", "failed", "finished")
ACTIVE = ("queued", "running")
INTERRUPTED = "interrupted"  # reason for a run whose process died while it was active


class RunError(ConvScopeError):
    """A run folder that is missing, unreadable or in the wrong state."""


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it over `path`.

    The temporary name keeps `path`'s suffix (Keras insists on `.keras`). If
    `write` fails, the temporary file is removed and `path` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1)))


def read_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as exc:
        raise RunError(f"{path}: not readable JSON ({exc})") from exc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def new_run_name(backbone: str, mode: str) -> str:
    """`20261123-110501-efficientnet_lite0-feature-3f9a` (sortable, unique)."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{backbone}-{mode}-{secrets.token_hex(2)}"


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class Run:
    """A run folder and typed access to its files."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoints" / "last.keras"

    @property
    def model_file(self) -> Path:
        return self.path / "model.keras"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    # ---- reading -----------------------------------------------------------
    def config(self) -> dict:
        return read_json(self.path / "config.json", {})

    def history(self) -> dict[str, list[float]]:
        return read_json(self.path / "history.json", {})

    def labels(self) -> list[str]:
        return read_json(self.path / "labels.json", [])

    def metrics(self) -> dict:
        return read_json(self.path / "metrics.json", {})

    def planned_epochs(self) -> int | None:
        """The last epoch's number as planned: a fine-tune counts on from its parent's epochs."""
        config = self.config()
        if not config.get("epochs"):
            return None
        return int(config["epochs"]) + int((config.get("finetune") or {}).get("parent_epochs", 0))

    def checkpoint_epoch(self) -> int:
        """Epochs finished in the last good checkpoint (0 when there is none)."""
        meta = read_json(self.path / "checkpoints" / "last.json", {})
        return int(meta.get("epoch", 0)) if self.checkpoint.is_file() else 0

    def status(self) -> dict:
        """status.json, with an active run whose process has died shown as failed (interrupted).

        `live` is True while this process (or another living one) owns the run.
        """
        status = read_json(self.path / "status.json", {"status": "failed", "reason": "no status.json"})
        if status.get("status") in ACTIVE:
            pid = int(status.get("pid", 0))
            if not pid or not _pid_alive(pid):
                epoch = self.checkpoint_epoch()
                status = {
                    **status,
                    "status": "failed",
                    "reason": INTERRUPTED,
                    "detail": f"the training process ended unexpectedly after {epoch} finished epoch(s); "
                    "resume it to continue from there",
                }
        return status

    def resumable(self) -> bool:
        """A run that did not finish and has a checkpoint to continue from."""
        s = self.status()
        return s.get("status") in ("failed", "stopped") and self.checkpoint.is_file()

    # ---- writing -----------------------------------------------------------
    def set_status(self, status: str, reason: str = "", **extra) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        write_json(
            self.path / "status.json",
            {"status": status, "reason": reason, "pid": os.getpid(), "updated": time.time(), **extra},
        )

    def write_history(self, history: dict[str, list[float]]) -> None:
        write_json(self.path / "history.json", history)


def runs_root() -> Path:
    return settings.runs_dir()


def create(name: str | None = None, root: Path | None = None, *, backbone: str = "", mode: str = "") -> Run:
    """Make a new, empty run folder (status queued). `name` may also be a path (the CLI's --out)."""
    if name and ("/" in name or os.sep in name):
        path = Path(name).expanduser()
    else:
        name = name or new_run_name(backbone or "model", mode or "run")
        if not _NAME.match(name):
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
        if not _NAME.match(text):
            raise RunError(f"run name {text!r} is not valid")
        path = (root or runs_root()) / text
    if not (path / "status.json").is_file() and not (path / "config.json").is_file():
        raise RunError(f"{path}: not a run folder (no status.json or config.json)")
    return Run(path)


def list_runs(root: Path | None = None) -> list[Run]:
    """Every run folder under the root, newest first."""
    folder = root or runs_root()
    if not folder.is_dir():
        return []
    found = [Run(p) for p in folder.iterdir() if p.is_dir() and (p / "status.json").is_file()]
    return sorted(found, key=lambda r: (r.path / "status.json").stat().st_mtime, reverse=True)


def summary(run: Run) -> dict:
    """One row for run tables and `python -m engine runs`."""
    config = run.config()
    status = run.status()
    history = run.history()
    metrics = run.metrics()
    return {
        "name": run.name,
        "path": str(run.path),
        "status": status.get("status"),
        "reason": status.get("reason", ""),
        "detail": status.get("detail", ""),
        "backbone": config.get("backbone", ""),
        "mode": config.get("mode", ""),
        "source": config.get("data", {}).get("source", ""),
        "epochs_run": len(history.get("loss", [])),
        "epochs": run.planned_epochs(),
        "parent": config.get("parent", ""),
        "val_accuracy": metrics.get("val_accuracy", (history.get("val_accuracy") or [None])[-1]),
        "test_accuracy": metrics.get("test_accuracy"),
        "has_model": run.model_file.is_file(),
        "resumable": run.resumable(),
    }
