"""A model or labels file uploaded in the dashboard, kept on the server until it is imported.

The page hands the bytes over; the engine writes them (pages never write files). Each upload goes
to its own folder under the cache, named by content, and keeps the user's file name (safely
spelled), because the import records that name (`imported.file`) and shows it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path

from engine import settings
from engine.errors import ImportModelError

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5", ".zip")  # what engine.importing.files.kind_of tells apart
LABEL_SUFFIXES = (".txt", ".json")  # engine.importing.read_labels
MAX_LABELS_BYTES = 1024 * 1024


def uploads_dir() -> Path:
    """Where uploaded model files wait for their import: the cache's uploads/models/."""
    return settings.cache_dir() / "uploads" / "models"


def safe_name(name: str) -> str:
    """`name`'s last part with anything but letters, digits, `_`, `-` and `.` replaced: `my model (2).keras`
    -> `my-model-2-.keras`. Never empty, never hidden (no leading dot)."""
    base = Path(name.replace("\\", "/")).name
    stem, dot, suffix = base.rpartition(".")
    stem, suffix = (stem, dot + suffix) if dot else (suffix, "")
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.")[:60] or "model"
    suffix = re.sub(r"[^A-Za-z0-9.]+", "", suffix.lower())
    return f"{stem}{suffix}"


def save_upload(name: str, data: bytes) -> Path:
    """Write an uploaded model (.keras, .h5, a SavedModel .zip) or labels (.txt, .json) file; returns its path.

    The path ends in the user's file name (made safe), in a folder named by the content's hash.

    Raises:
        ImportModelError: another kind of file, an empty one, or one over the size limit
            (CONVSCOPE_MAX_MODEL_MB for models, 1 MB for labels). Nothing is written then.
    """
    shown = safe_name(name)
    suffix = Path(shown).suffix
    if suffix in LABEL_SUFFIXES:
        limit, what = MAX_LABELS_BYTES, "a labels file"
    elif suffix in MODEL_SUFFIXES:
        limit, what = settings.max_model_bytes(), "a model file (the operator sets CONVSCOPE_MAX_MODEL_MB)"
    else:
        raise ImportModelError(
            f"{Path(name).name}: upload a model ({', '.join(MODEL_SUFFIXES)}) or its labels "
            f"({', '.join(LABEL_SUFFIXES)})"
        )
    if not data:
        raise ImportModelError(f"{Path(name).name} is empty")
    if len(data) > limit:
        raise ImportModelError(
            f"{Path(name).name} is {len(data) / 2**20:.1f} MB, over the {limit / 2**20:.0f} MB allowed for {what}"
        )
    folder = uploads_dir() / hashlib.sha256(data).hexdigest()[:20]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / shown
    if not path.is_file():
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise ImportModelError(f"{Path(name).name} could not be stored on the server ({exc})") from exc
    return path


def discard_upload(path: str | Path) -> None:
    """Remove an uploaded file's folder once imported (the run keeps its own copy) or refused.

    Only a folder that save_upload made: any other path is left alone.
    """
    folder = Path(path).parent
    root = uploads_dir().resolve()
    if folder.resolve().parent == root:
        shutil.rmtree(folder, ignore_errors=True)
