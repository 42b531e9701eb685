"""The run store: one folder per training run, every file written atomically.

A run folder holds:

    config.json     TrainConfig plus `backbone`, `labels` and the data fingerprint
    status.json     queued | running | stopped | failed | finished, reason, epoch, owner pid,
                    seconds (training time of every finished train() call, resumes included)
    history.json    per-epoch metrics: {"loss": [...], "accuracy": [...], "val_loss": ...}
    labels.json     class names, index = label
    metrics.json    final validation/test accuracy, confusion matrix, params, train_seconds
    meta.json       what users may change after the run: {"display_name": ...}
    latency.json    measured inference speed {"ms_per_image": ...} (written by evaluation)
    model.keras     the whole classifier (preprocessed images in, logits out)
    checkpoints/    epoch-NNNN.keras (what is trained, with optimizer state) + last.json, the record
                    {"epoch": N, "file": "epoch-NNNN.keras"} that makes it the checkpoint
    logs/           TensorBoard event files

Every write goes to a temporary file in the same folder and is renamed over
the old one with os.replace, so a kill in the middle of a write leaves the
previous version intact, never half a file. At each epoch end history.json is
written first, then the epoch's checkpoint under a new name, then last.json:
a kill anywhere leaves the recorded checkpoint whole and a history at least as
long as its epoch, and a resume cuts the history back to it (consistent_epoch).
Files a killed write left behind are removed when the run is resumed
(clean_leftovers). A deleted run is first renamed to a
hidden `.NAME.deleting-TOKEN` sibling, so it is either listed whole or not at all.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import unicodedata
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine import settings
from engine.config import DataConfig
from engine.data.ingest import Dataset, Item
from engine.data.splits import split_items
from engine.errors import RunError, RunGone

STATUSES = ("queued", "running", "stopped", "failed", "finished")
ACTIVE = ("queued", "running")
INTERRUPTED = "interrupted"  # reason for a run whose process died while it was active


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


# The temporary name atomic_write gives a file: `.STEM-` + mkstemp's 8 random characters + the suffix.
_TEMPORARY = re.compile(r"^\.(?P<stem>.+)-[a-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]+)?$")
# The files a training process writes (only it, while it runs): their leftovers are safe to remove
# when the run is resumed. Others (evaluations, calibration, exports) may be written meanwhile by other
# commands: their leftovers go once they are older than any write takes.
_TRAINING_FILES = {"status", "config", "labels", "history", "metrics", "model", "last", "epoch", "latency", "changes"}
_STALE_S = 600
CHECKPOINT_RECORD = "last.json"


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
        """The recorded checkpoint file (checkpoints/last.keras in runs made before records named it)."""
        folder = self.path / "checkpoints"
        try:
            name = read_json(folder / CHECKPOINT_RECORD, {}).get("file")
        except (RunError, AttributeError):
            name = None
        if isinstance(name, str) and name == Path(name).name and name.endswith(".keras"):
            return folder / name
        return folder / "last.keras"

    def save_checkpoint(self, epoch: int, save: Callable[[Path], None]) -> None:
        """Save the checkpoint of `epoch` finished epochs under its own name, then record it.

        Until the record is written the previous checkpoint stays the one in use, so a kill
        at any point leaves a whole checkpoint whose epoch the record tells.
        """
        folder = self.path / "checkpoints"
        name = f"epoch-{epoch:04d}.keras"
        atomic_write(folder / name, save, inside=self.path)
        write_json(folder / CHECKPOINT_RECORD, {"epoch": int(epoch), "file": name}, inside=self.path)
        for old in folder.glob("*.keras"):
            if old.name != name and not old.name.startswith("."):
                old.unlink(missing_ok=True)

    def clean_leftovers(self) -> list[str]:
        """Remove what killed training writes left: temporary files and checkpoints never recorded.

        Only for a run no process is training (a resume calls it first). Returns the names removed.
        """
        removed = []
        recorded = self.checkpoint.name
        for folder in (self.path, self.path / "checkpoints", self.path / "evaluations"):
            if not folder.is_dir():
                continue
            for p in folder.iterdir():
                match = _TEMPORARY.match(p.name)
                if match:
                    ours = folder != self.path / "evaluations" and match["stem"].split("-")[0] in _TRAINING_FILES
                    doomed = ours or time.time() - _mtime(p) > _STALE_S
                else:  # a checkpoint saved but never recorded
                    doomed = folder.name == "checkpoints" and p.suffix == ".keras" and p.name != recorded
                if doomed and p.is_file() and not p.is_symlink():
                    p.unlink(missing_ok=True)
                    removed.append(str(p.relative_to(self.path)))
        return removed

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

    def meta(self) -> dict:
        return read_json(self.path / "meta.json", {})

    def display_name(self) -> str:
        """The name a user gave the run (rename), or "" when none was given."""
        return str(self.meta().get("display_name") or "")

    def title(self) -> str:
        """The run as users know it: its display name (when set) and its folder name, never a path."""
        shown = self.display_name()
        return f"{shown} · {self.name}" if shown else self.name

    def parent_epochs(self) -> int:
        """Epochs of a fine-tune's history that are its parent's (0 for any other run)."""
        return int((self.config().get("finetune") or {}).get("parent_epochs") or 0)

    def own_history(self) -> dict[str, list[float]]:
        """The epochs this run trained itself: a fine-tune's history.json starts with its parent's epochs."""
        first = self.parent_epochs()
        return {k: list(v)[first:] for k, v in self.history().items()}

    @property
    def split_seed(self) -> int:
        """The seed that split this run's data: a fine-tune keeps its parent's (config.json "split_seed")."""
        config = self.config()
        return int(config.get("split_seed", config.get("seed", 0)))

    def splits(self, dataset: Dataset) -> dict[str, list[Item]]:
        """This run's train/val/test items of `dataset`, split as in training (seed and fractions)."""
        data = DataConfig(
            **{k: v for k, v in (self.config().get("data") or {}).items() if k in ("val_frac", "test_frac")}
        )
        return split_items(dataset.items, self.split_seed, data.val_frac, data.test_frac)

    def train_seconds(self) -> float:
        """Training time recorded so far (every finished train() call of this run), 0 when none."""
        try:
            return float(read_json(self.path / "status.json", {}).get("seconds") or 0.0)
        except (RunError, AttributeError, TypeError, ValueError):
            return 0.0

    def planned_epochs(self) -> int | None:
        """The last epoch's number as planned: a fine-tune counts on from its parent's epochs."""
        return _planned_epochs(self.config())

    def checkpoint_epoch(self) -> int:
        """Epochs finished in the last good checkpoint (0 when there is none)."""
        meta = read_json(self.path / "checkpoints" / CHECKPOINT_RECORD, {})
        return int(meta.get("epoch", 0)) if self.checkpoint.is_file() else 0

    def consistent_epoch(self) -> int:
        """The epoch a resume continues from: the checkpoint's, but never past the history's length.

        The history is written before the checkpoint, so it is at least as long, except in
        runs killed between the two writes by older versions; those lose the one epoch.
        """
        return min(self.checkpoint_epoch(), len(_list(self.history().get("loss"))))

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
        """Write status.json. The training time total (`seconds`) is kept unless given anew."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if "seconds" not in extra:
            # Every status change (queued for a resume, each epoch's "running", a stop) rewrites
            # the file; the running total of earlier calls must survive them all.
            seconds = self.train_seconds()
            if seconds:
                extra["seconds"] = seconds
        write_json(
            self.path / "status.json",
            {"status": status, "reason": reason, "pid": os.getpid(), "updated": time.time(), **extra},
        )

    def write_history(self, history: dict[str, list[float]]) -> None:
        write_json(self.path / "history.json", history)


def _planned_epochs(config: dict) -> int | None:
    if not config.get("epochs"):
        return None
    return int(config["epochs"]) + int((config.get("finetune") or {}).get("parent_epochs", 0))


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


DISPLAY_NAME_MAX = 80
_DELETING = ".deleting-"  # marks a run folder on its way out: `.NAME.deleting-TOKEN`


def _is_run_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "status.json").is_file() or (path / "config.json").is_file())


def rename(run: Run, name: str) -> None:
    """Give a run a display name (meta.json). The folder keeps its name: it is the job id and is in URLs.

    Raises:
        RunError: not a run folder, or the name is empty, too long or holds control characters.
    """
    if not _is_run_folder(run.path):
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
    if not _is_run_folder(path):
        raise RunError(f"{path}: not a run folder (no status.json or config.json)")
    run = Run(path)
    try:
        status = run.status().get("status")
    except (RunError, AttributeError, TypeError, ValueError):
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


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # deleted meanwhile
        return 0.0


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
    return sorted(found, key=lambda r: _mtime(r.path / "status.json"), reverse=True)


def _number(value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _list(value) -> list:
    return value if isinstance(value, list) else []


def summary(run: Run) -> dict:
    """One row for run tables and `python -m engine runs`.

    Never raises for a broken folder: an unreadable file makes the row's status failed, with the reason.
    """
    problems: list[str] = []

    def read(name: str, default):
        try:
            value = read_json(run.path / name, default)
        except RunError as exc:
            problems.append(str(exc))
            return default
        if not isinstance(value, type(default)):
            problems.append(f"{run.path / name}: expected a JSON {type(default).__name__}")
            return default
        return value

    config = read("config.json", {})
    history = read("history.json", {})
    metrics = read("metrics.json", {})
    try:
        status = run.status()
        if not isinstance(status, dict):
            raise RunError(f"{run.path / 'status.json'}: expected a JSON dict")
    except (RunError, AttributeError, TypeError, ValueError) as exc:
        problems.append(str(exc))
        status = {}
    has_model = run.model_file.is_file()
    broken = keras_archive_problem(run.model_file) if has_model else ""
    if broken:  # a model that cannot load: the run is not finished, whatever its status says
        problems.append(f"{run.path / 'model.keras'}: {broken}")
        has_model = False
    if problems:
        status = {"status": "failed", "reason": "; ".join(problems), "detail": "the run folder is damaged"}
    try:
        display_name = run.display_name()
    except (RunError, AttributeError):
        display_name = ""  # only a label: a damaged meta.json does not fail the run
    try:
        latency = _number(read_json(run.path / "latency.json", {}).get("ms_per_image"))
    except (RunError, AttributeError):
        latency = None
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    finetune = config.get("finetune") if isinstance(config.get("finetune"), dict) else {}
    first = int(_number(finetune.get("parent_epochs")) or 0)  # a fine-tune's history starts with its parent's
    val_history = [v for v in _list(history.get("val_accuracy"))[first:] if _number(v) is not None]
    try:
        planned = _planned_epochs(config)
    except (TypeError, ValueError, AttributeError):
        planned = None
    train_seconds = _number(metrics.get("train_seconds"))
    if train_seconds is None and not problems:
        train_seconds = _number(status.get("seconds"))  # a stopped or failed run: its time so far
    return {
        "name": run.name,
        "display_name": display_name,
        "path": str(run.path),
        "status": status.get("status"),
        "reason": status.get("reason", ""),
        "detail": status.get("detail", ""),
        "backbone": config.get("backbone", ""),
        "mode": config.get("mode", ""),
        "source": data.get("source", ""),
        "image_size": data.get("image_size"),
        "epochs_run": len(_list(history.get("loss"))),
        "epochs": planned,
        "parent": config.get("parent", ""),
        "val_accuracy": metrics.get("val_accuracy", val_history[-1] if val_history else None),
        # the saved model's (early stopping keeps the lowest validation loss's weights): None until saved
        "kept_val_accuracy": _number(metrics.get("val_accuracy")),
        # over the run's own epochs (a fine-tune's, not its parent's)
        "best_val_accuracy": max(val_history) if val_history else None,
        "final_val_accuracy": val_history[-1] if val_history else None,
        "test_accuracy": metrics.get("test_accuracy"),
        "params": metrics.get("params") if isinstance(metrics.get("params"), dict) else None,
        "train_seconds": train_seconds,
        "latency_ms": latency,
        "created": _number(config.get("created")) or _mtime(run.path) or None,
        "has_model": has_model,
        "resumable": not problems and status.get("status") in ("failed", "stopped") and run.checkpoint.is_file(),
    }
