"""Run: a run folder and typed access to its files."""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config import DataConfig, TrainConfig
from engine.data.ingest import Dataset, Item
from engine.data.splits import split_dataset
from engine.errors import ConfigError, RunError
from engine.runs import files

STATUSES = ("queued", "running", "stopped", "failed", "finished")
ACTIVE = ("queued", "running")
INTERRUPTED = "interrupted"  # reason for a run whose process died while it was active

# The temporary name atomic_write gives a file: `.STEM-` + mkstemp's 8 random characters + the suffix.
_TEMPORARY = re.compile(r"^\.(?P<stem>.+)-[a-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]+)?$")
# The files a training process writes (only it, while it runs): their leftovers are safe to remove
# when the run is resumed. Others (evaluations, calibration, exports) may be written meanwhile by other
# commands: their leftovers go once they are older than any write takes.
_TRAINING_FILES = {"status", "config", "labels", "history", "metrics", "model", "last", "epoch", "latency", "changes"}
_STALE_S = 600
CHECKPOINT_RECORD = "last.json"
SAVEDMODEL = "savedmodel"  # an imported SavedModel's folder in its run (it has no model.keras)
RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")  # a run folder's name: no path, no hidden file


def is_run_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "status.json").is_file() or (path / "config.json").is_file())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
            name = files.read_json(folder / CHECKPOINT_RECORD, {}).get("file")
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
        files.atomic_write(folder / name, save, inside=self.path)
        files.write_json(folder / CHECKPOINT_RECORD, {"epoch": int(epoch), "file": name}, inside=self.path)
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
                    doomed = ours or time.time() - files.mtime(p) > _STALE_S
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
    def model_path(self) -> Path:
        """The file that says the run has a model, and whose stat keys caches of its results: model.keras,
        or for an imported SavedModel (opaque, kept as given in SAVEDMODEL/) its saved_model.pb."""
        saved = self.path / SAVEDMODEL / "saved_model.pb"
        return saved if saved.is_file() else self.model_file

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    # ---- the model's scores on a labelled set (evaluations/) ----------------
    def scores_file(self, fingerprint: str, source: str, split: str, size: int, policy: str) -> Path:
        """Where the model's logits on a labelled set are kept: evaluations/<key>.npz.

        The key holds the model file's time and size, the data's fingerprint, source and split, and how images
        are resized, so a new model or changed data is scored again. FileNotFoundError while there is no model.
        """
        stat = self.model_path.stat()
        payload = f"{stat.st_mtime_ns}:{stat.st_size}:{fingerprint}:{source}:{split}:{size}:{policy}"
        return self.path / "evaluations" / f"{hashlib.sha256(payload.encode()).hexdigest()[:24]}.npz"

    def read_scores(self, file: Path, rels: list[str]) -> np.ndarray | None:
        """The logits (N, classes) kept in `file` for exactly these images in this order; None if not there."""
        try:
            with np.load(file) as saved:
                if list(saved["rels"]) == rels:
                    return saved["logits"]
        except (OSError, ValueError, KeyError):
            pass  # absent or unreadable: scored again and replaced
        return None

    def keep_scores(self, file: Path, rels: list[str], logits: np.ndarray) -> None:
        """Keep logits (N, classes) of the images `rels` (N posix paths) in `file` (from scores_file)."""
        # inside=: a run deleted meanwhile is not brought back to hold its scores (RunGone)
        files.atomic_write(file, lambda tmp: np.savez(tmp, logits=logits, rels=np.array(rels)), inside=self.path)

    # ---- reading -----------------------------------------------------------
    def config(self) -> dict:
        return files.read_json(self.path / "config.json", {})

    def history(self) -> dict[str, list[float]]:
        return files.read_json(self.path / "history.json", {})

    def labels(self) -> list[str]:
        return files.read_json(self.path / "labels.json", [])

    def metrics(self) -> dict:
        return files.read_json(self.path / "metrics.json", {})

    def meta(self) -> dict:
        return files.read_json(self.path / "meta.json", {})

    def display_name(self) -> str:
        """The name a user gave the run (rename), or "" when none was given."""
        return str(self.meta().get("display_name") or "")

    def title(self) -> str:
        """The run as users know it: its display name (when set) and its folder name, never a path."""
        shown = self.display_name()
        return f"{shown} · {self.name}" if shown else self.name

    @property
    def train_config(self) -> TrainConfig | None:
        """config.json as a TrainConfig, what it leaves out (an older run's) at engine.config's defaults.

        None while there is no config.json (a queued run). Raises RunError when config.json is
        unreadable or not a valid configuration.
        """
        saved = self.config()
        if not saved:
            return None
        try:
            return TrainConfig.from_json(saved)
        except (ConfigError, AttributeError, TypeError, ValueError) as exc:  # ValueError: a bad number in the JSON
            raise RunError(f"{self.path / 'config.json'}: not a valid run configuration ({exc})") from exc

    @property
    def parent_name(self) -> str:
        """The folder name of the run a fine-tune continued, whether or not it is still there ("" for other runs)."""
        return str(self.config().get("parent") or "")

    @property
    def parent(self) -> Run | None:
        """The run a fine-tune continued: the folder of that name beside this one, else where config.json
        says it was. None for a run that is no fine-tune, or when the parent's folder is gone."""
        config = self.config()
        name = str(config.get("parent") or "")
        recorded = str((config.get("finetune") or {}).get("parent") or "")
        places = [self.path.parent / name] if RUN_NAME.match(name) else []
        if recorded:
            places.append(Path(recorded))
        return next((Run(p) for p in places if is_run_folder(p)), None)

    @property
    def resize_policy(self) -> str:
        """How images are fitted to the model's input size, as in training (engine.imaging.RESIZE_POLICIES)."""
        return resize_policy_of(self.config())

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
        return split_seed_of(self.config())

    def splits(self, dataset: Dataset) -> dict[str, list[Item]]:
        """This run's train/val/test items of `dataset`, split as in training (seed and fractions)."""
        return splits_of(self.config(), dataset)

    def train_seconds(self) -> float:
        """Training time recorded so far (every finished train() call of this run), 0 when none."""
        try:
            return float(files.read_json(self.path / "status.json", {}).get("seconds") or 0.0)
        except (RunError, AttributeError, TypeError, ValueError):
            return 0.0

    def planned_epochs(self) -> int | None:
        """The last epoch's number as planned: a fine-tune counts on from its parent's epochs."""
        return planned_epochs(self.config())

    def checkpoint_epoch(self) -> int:
        """Epochs finished in the last good checkpoint (0 when there is none)."""
        meta = files.read_json(self.path / "checkpoints" / CHECKPOINT_RECORD, {})
        return int(meta.get("epoch", 0)) if self.checkpoint.is_file() else 0

    def consistent_epoch(self) -> int:
        """The epoch a resume continues from: the checkpoint's, but never past the history's length.

        The history is written before the checkpoint, so it is at least as long, except in
        runs killed between the two writes by older versions; those lose the one epoch.
        """
        loss = self.history().get("loss")
        return min(self.checkpoint_epoch(), len(loss) if isinstance(loss, list) else 0)

    def status(self) -> dict:
        """status.json, with an active run whose process has died shown as failed (interrupted).

        `live` is True while this process (or another living one) owns the run.
        """
        status = files.read_json(self.path / "status.json", {"status": "failed", "reason": "no status.json"})
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

    def progress(self) -> dict:
        """The run as a job snapshot (engine.jobs' keys) read from its folder: a CLI run, or one from before
        a restart. No live progress: `progress` is empty and `on_disk` True."""
        status, config = self.status(), self.config()
        return {
            "id": self.name,
            "run_dir": str(self.path),
            "status": status.get("status"),
            "reason": status.get("detail") or status.get("reason", ""),
            "position": None,
            "progress": {},
            "history": self.history(),
            "epochs": planned_epochs(config) or 1,
            "start_epoch": int((config.get("finetune") or {}).get("parent_epochs") or 0),
            "result": None,
            "on_disk": True,
        }

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
        files.write_json(
            self.path / "status.json",
            {"status": status, "reason": reason, "pid": os.getpid(), "updated": time.time(), **extra},
        )

    def write_history(self, history: dict[str, list[float]]) -> None:
        files.write_json(self.path / "history.json", history)


def planned_epochs(config: dict) -> int | None:
    if not config.get("epochs"):
        return None
    return int(config["epochs"]) + int((config.get("finetune") or {}).get("parent_epochs", 0))


def source_of(config: dict) -> str:
    """The data source a run trained on, from its config.json; "" when it has none (an import without data)."""
    return str((config.get("data") or {}).get("source") or "")


def split_seed_of(config: dict) -> int:
    """The seed a run split its data with, from its config.json: a fine-tune keeps its parent's ("split_seed")."""
    return int(config.get("split_seed", config.get("seed", 0)))


def splits_of(config: dict, dataset: Dataset) -> dict[str, list[Item]]:
    """A run's train/val/test items of `dataset`, from its config.json: split as in training (seed, fractions)."""
    data = DataConfig(**{k: v for k, v in (config.get("data") or {}).items() if k in ("val_frac", "test_frac")})
    return split_dataset(dataset, split_seed_of(config), data.val_frac, data.test_frac)


def same_files(config: dict, dataset: Dataset) -> bool:
    """True when `dataset`'s files are those the run trained on (corrections since aside).

    Corrections move no image between splits (engine.data.splits.split_dataset), so the run's
    split of these files is the split it had, whatever was relabelled or excluded since.
    """
    return config.get("files_fingerprint", config.get("fingerprint")) == dataset.files_fingerprint


def is_imported(config: dict) -> bool:
    """A model imported from a file (engine.importing), not trained here: ConvScope never split its data."""
    return config.get("mode") == "imported"


def resize_policy_of(config: dict) -> str:
    """How a run fits images to its input size (engine.imaging.RESIZE_POLICIES), from its config.json."""
    return str((config.get("data") or {}).get("resize") or DataConfig().resize)
