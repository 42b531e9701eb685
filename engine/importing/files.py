"""A model file as given, checked before anything loads it: its kind, its size, its archive's members."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

from engine import settings
from engine.data.archive import safe_relative
from engine.errors import ImportModelError

KERAS_MEMBERS = ("config.json", "model.weights.h5")  # what Keras 3 writes in every .keras archive (and metadata.json)
H5_SUFFIXES = (".h5", ".hdf5")
KINDS = ("keras", "h5", "savedmodel", "savedmodel-zip")
WHAT_WE_TAKE = "a .keras file, a SavedModel folder or a .zip of one"


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file under a folder."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size


def sha256_of(path: Path) -> str:
    """Of a file; of a SavedModel folder, its saved_model.pb and variables (in name order)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode())
        with file.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def kind_of(path: str | Path) -> str:
    """Which kind of model file `path` is (one of KINDS), checked: size limit, archive members.

    Raises:
        ImportModelError: a missing file, one over CONVSCOPE_MAX_MODEL_MB, an .h5 file the operator
            did not allow, a damaged or unsafe archive, or anything that is no model file.
    """
    path = Path(path)
    if not path.exists():
        raise ImportModelError(f"{path}: no such file or folder")
    limit = settings.max_model_bytes()
    size = size_of(path)
    if size > limit:
        raise ImportModelError(
            f"{path.name} is {_mb(size)}, over the {_mb(limit)} an import may be (the operator sets "
            "CONVSCOPE_MAX_MODEL_MB)"
        )
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "savedmodel"
        raise ImportModelError(
            f"{path.name} is a folder without saved_model.pb, so not a SavedModel; ConvScope imports {WHAT_WE_TAKE}"
        )
    if path.suffix.lower() in H5_SUFFIXES:
        if not settings.allow_h5():
            raise ImportModelError(
                f"{path.name} is a legacy .h5 file, which Keras loads without its safe mode (a file can then run "
                "code); re-save the model as .keras (model.save('model.keras')), or ask the operator to allow "
                ".h5 files (CONVSCOPE_ALLOW_H5=1)"
            )
        return "h5"
    if not zipfile.is_zipfile(path):
        what = "is damaged or truncated (not a whole zip archive)" if path.suffix.lower() == ".keras" else "is not"
        raise ImportModelError(f"{path.name} {what}: ConvScope imports {WHAT_WE_TAKE}")
    names = _members(path, 2 * limit)
    if all(m in names for m in KERAS_MEMBERS):
        return "keras"
    if any(n == "saved_model.pb" or n.endswith("/saved_model.pb") for n in names):
        return "savedmodel-zip"
    shown = ", ".join(sorted(names)[:6]) + (" ..." if len(names) > 6 else "")
    raise ImportModelError(
        f"{path.name} is a zip but not a Keras archive: a .keras file holds {' and '.join(KERAS_MEMBERS)}, "
        f"this one holds {shown or 'nothing'}"
    )


def _members(path: Path, max_bytes: int) -> list[str]:
    """The member names of a zip, refused when one would leave its folder or the whole expands too far."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            bad = archive.testzip() if path.stat().st_size < 64 * 1024 * 1024 else None  # CRCs, for files read whole
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise ImportModelError(f"{path.name} is damaged or truncated ({exc})") from exc
    if bad:
        raise ImportModelError(f"{path.name} is damaged: its member {bad} does not match its checksum")
    unsafe = [i.filename for i in infos if safe_relative(i.filename) is None or i.filename.startswith("/")]
    if unsafe:
        raise ImportModelError(
            f"{path.name} has members with absolute or parent paths ({', '.join(unsafe[:3])}): refused, "
            "a model archive never needs them"
        )
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise ImportModelError(f"{path.name} expands to {_mb(total)}, beyond the {_mb(max_bytes)} allowed")
    return [i.filename for i in infos if not i.is_dir()]
