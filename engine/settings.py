"""Operator settings, read from environment variables (no UI can change them).

- CONVSCOPE_CACHE_DIR: where converted backbones are cached
  (default: $XDG_CACHE_HOME/convscope or ~/.cache/convscope).
- CONVSCOPE_HUB_MODELS: extra TF Hub handles or local SavedModel paths the
  operator allows, `name=handle[@size]` separated by `;`. Users can pick only
  these and the built-in handles; they can never type a handle of their own.
- CONVSCOPE_MAX_IMAGE_PIXELS: decoded images larger than this are refused
  (default 40 megapixels).
- CONVSCOPE_MAX_UPLOAD_MB: largest single image accepted, uploaded or in a
  dataset (default 20).
- CONVSCOPE_MAX_ARCHIVE_MB: largest dataset archive upload (default 200).
- CONVSCOPE_MAX_EXTRACT_MB: most bytes an archive may expand to (default 2000).
- CONVSCOPE_MAX_ARCHIVE_ENTRIES: most members in an archive (default 50000).
- CONVSCOPE_MAX_MODEL_MB: largest model file (or SavedModel) a user may import
  (default 500); a .keras archive may not expand beyond twice that.
- CONVSCOPE_ALLOW_H5: 1 lets users import legacy .h5 model files, which Keras
  loads without safe mode (default: refused).
- CONVSCOPE_DATA_ROOTS: server folders (separated by `:`) whose dataset
  subfolders the dashboard may open; unset means none. The CLI, run by the
  operator, opens any path.
- CONVSCOPE_RUNS_DIR: trained runs (default $XDG_DATA_HOME/convscope/runs).
- CONVSCOPE_TFDS_DIR: TensorFlow Datasets data directory
  (default: TFDS_DATA_DIR or ~/tensorflow_datasets).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from engine.errors import ConfigError


def cache_dir() -> Path:
    """The directory for converted backbones; created on first use."""
    env = os.environ.get("CONVSCOPE_CACHE_DIR")
    if env:
        path = Path(env).expanduser()
    else:
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        path = Path(base) / "convscope"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from exc
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return value


def max_image_pixels() -> int:
    return _int_env("CONVSCOPE_MAX_IMAGE_PIXELS", 40_000_000)


def max_upload_bytes() -> int:
    return _int_env("CONVSCOPE_MAX_UPLOAD_MB", 20) * 1024 * 1024


def max_archive_bytes() -> int:
    return _int_env("CONVSCOPE_MAX_ARCHIVE_MB", 200) * 1024 * 1024


def max_extract_bytes() -> int:
    return _int_env("CONVSCOPE_MAX_EXTRACT_MB", 2000) * 1024 * 1024


def max_archive_entries() -> int:
    return _int_env("CONVSCOPE_MAX_ARCHIVE_ENTRIES", 50_000)


def max_model_bytes() -> int:
    return _int_env("CONVSCOPE_MAX_MODEL_MB", 500) * 1024 * 1024


def allow_h5() -> bool:
    """Whether the operator lets users import legacy .h5 files (RELIABILITY.md case 14)."""
    raw = os.environ.get("CONVSCOPE_ALLOW_H5", "").strip().lower()
    if raw not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"CONVSCOPE_ALLOW_H5 must be 1 or 0, got {raw!r}")
    return raw in ("1", "true", "yes")


def data_roots() -> list[Path]:
    """Operator-allowed server folders holding datasets (resolved, existing only)."""
    raw = os.environ.get("CONVSCOPE_DATA_ROOTS", "")
    roots = [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]
    return [r for r in roots if r.is_dir()]


def tfds_dir() -> Path:
    env = os.environ.get("CONVSCOPE_TFDS_DIR") or os.environ.get("TFDS_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / "tensorflow_datasets"


@dataclass(frozen=True)
class HubEntry:
    name: str
    handle: str
    input_size: int


def hub_models() -> list[HubEntry]:
    """Operator-allowed TF Hub handles from CONVSCOPE_HUB_MODELS."""
    raw = os.environ.get("CONVSCOPE_HUB_MODELS", "").strip()
    entries = []
    for item in filter(None, (part.strip() for part in raw.split(";"))):
        name, sep, handle = item.partition("=")
        if not sep or not name.strip() or not handle.strip():
            raise ConfigError(f"CONVSCOPE_HUB_MODELS entry {item!r} is not of the form name=handle[@size]")
        handle, at, size = handle.strip().rpartition("@") if "@" in handle else (handle.strip(), "", "224")
        if at and not size.isdigit():
            raise ConfigError(f"CONVSCOPE_HUB_MODELS entry {item!r}: size after @ must be a number")
        entries.append(HubEntry(name.strip(), handle, int(size)))
    return entries


def runs_dir() -> Path:
    """Where trained runs live (CONVSCOPE_RUNS_DIR, default $XDG_DATA_HOME/convscope/runs)."""
    env = os.environ.get("CONVSCOPE_RUNS_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "convscope" / "runs"
