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
    savedmodel/     instead of model.keras, an imported SavedModel as given (opaque: engine.model.savedmodel);
                    Run.model_path is the file of either that says the run has a model
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

Modules: files (atomic writes, reads), folder (Run: typed access to one run folder: its
TrainConfig, parent, splits, status and progress), store (create, open, list, rename, delete),
rows (summary: one row of the Runs table).
"""

from engine.runs.files import RunError, RunGone, atomic_write, gone_error, keras_archive_problem, read_json, write_json
from engine.runs.folder import (
    ACTIVE,
    CHECKPOINT_RECORD,
    INTERRUPTED,
    SAVEDMODEL,
    STATUSES,
    Run,
    is_imported,
    resize_policy_of,
    same_files,
    source_of,
    split_seed_of,
    splits_of,
)
from engine.runs.rows import summary
from engine.runs.store import (
    DISPLAY_NAME_MAX,
    create,
    delete,
    discard,
    list_runs,
    new_run_name,
    open_run,
    rename,
    runs_root,
)

__all__ = [
    "ACTIVE",
    "CHECKPOINT_RECORD",
    "DISPLAY_NAME_MAX",
    "INTERRUPTED",
    "SAVEDMODEL",
    "STATUSES",
    "Run",
    "RunError",
    "RunGone",
    "atomic_write",
    "create",
    "delete",
    "discard",
    "gone_error",
    "is_imported",
    "keras_archive_problem",
    "list_runs",
    "new_run_name",
    "open_run",
    "read_json",
    "resize_policy_of",
    "same_files",
    "rename",
    "runs_root",
    "source_of",
    "split_seed_of",
    "splits_of",
    "summary",
    "write_json",
]
