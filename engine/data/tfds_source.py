"""TensorFlow Datasets image-classification sets, exported once to a folder tree.

`tfds.load` reads the prepared TFRecords from the data directory (downloading
them first on a machine with network). The images are written out as their
original encoded bytes (no re-encoding) to `<split>/<class>/<n>.<ext>`, so
they go through the same ingest checks as any folder. The export is built in
a temporary folder and moved into place only when complete: a failed
download or export never leaves partial data to train on.
"""

from __future__ import annotations

import difflib
import socket
from collections.abc import Callable
from pathlib import Path

from engine import settings
from engine.errors import DatasetError

# Offered in the dashboard; any other TFDS image-classification name works too.
KNOWN = {
    "tf_flowers": ("train",),
    "beans": ("train", "validation", "test"),
    "rock_paper_scissors": ("train", "test"),
    "cats_vs_dogs": ("train",),
    "oxford_flowers102": ("train", "validation", "test"),
    "caltech101": ("train", "test"),
    "cifar10": ("train", "test"),
    "mnist": ("train", "test"),
}
_SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}


def parse(spec: str) -> tuple[str, str | None]:
    """`NAME[:SPLIT]` -> (name, split or None)."""
    name, _, split = spec.partition(":")
    name = name.strip()
    if not name or not all(c.isalnum() or c in "_/." for c in name):
        raise DatasetError(f"tfds:{spec}: give a TFDS dataset name, e.g. tfds:tf_flowers or tfds:beans:train")
    return name, (split.strip() or None)


def network_ok(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
    """A quick check before a download: TFDS itself retries for minutes offline."""
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _ext(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "img"  # still decoded by content at ingest


def unknown_name(name: str, exc: Exception) -> str:
    """A short message for a name TFDS does not know: its own lists every dataset it has (460 lines)."""
    import tensorflow_datasets as tfds  # heavy: loads TensorFlow; only a tfds: source pays

    try:
        close = difflib.get_close_matches(name, tfds.list_builders(), n=3, cutoff=0.6)
    except Exception:  # noqa: BLE001 - suggestions only
        close = []
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    hint = f"did you mean {', '.join(close)}?" if close else "see https://www.tensorflow.org/datasets/catalog"
    return f"tfds:{name}: not a TensorFlow Datasets name ({first[:200]}); {hint}"


def export(name: str, split: str | None, dest: Path, progress: Callable[[int, int], None] | None = None) -> None:
    """Write dataset `name` (one split, or all of them) under the new folder `dest`.

    Raises:
        DatasetError: unknown name, not an image-classification set, or the
            data is not in the data directory and cannot be downloaded.
    """
    import tensorflow_datasets as tfds  # heavy: loads TensorFlow; only a tfds: source pays

    data_dir = settings.tfds_dir()
    try:
        builder = tfds.builder(name, data_dir=str(data_dir))
    except Exception as exc:  # noqa: BLE001 - tfds raises many kinds for unknown names
        raise DatasetError(unknown_name(name, exc)) from exc
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise DatasetError(f"tfds:{name} is not an image-classification set (it needs 'image' and 'label' features)")
    class_names = list(features["label"].names)
    splits = [split] if split else (list(builder.info.splits) or list(KNOWN.get(name, ("train",))))
    if not builder.is_prepared() and not network_ok():
        raise DatasetError(
            f"tfds:{name} is not in the TFDS data directory {data_dir} and there is no network to download it. "
            'Download it on a machine with network (python -c "import tensorflow_datasets as tfds; '
            f"tfds.load('{name}')\") and copy the folder there, or set CONVSCOPE_TFDS_DIR."
        )
    try:
        loaded = tfds.load(
            name,
            split=splits,
            data_dir=str(data_dir),
            as_supervised=True,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
    except Exception as exc:  # noqa: BLE001 - network, checksum and quota errors come in many types
        raise DatasetError(
            f"tfds:{name}: could not load or download it ({type(exc).__name__}: {str(exc)[:300]}). "
            "Nothing partial was kept; check the network or the data directory and try again."
        ) from exc
    totals = [builder.info.splits[s].num_examples if s in builder.info.splits else 0 for s in splits]
    total, done = sum(totals), 0
    for split_name, ds in zip(splits, loaded, strict=True):
        # One split asked for: a plain class tree (its own splits get carved).
        # All of them: <split>/<class>, so the source's splits are kept.
        folder = dest if split else dest / _SPLIT_NAMES.get(split_name.split("[")[0], "train")
        for n, (image, label) in enumerate(ds.as_numpy_iterator()):
            data = bytes(image)
            out = folder / class_names[int(label)] / f"{n:06d}.{_ext(data)}"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(data)
            done += 1
            if progress and done % 50 == 0:
                progress(done, max(total, done))
        for c in class_names:  # an empty class still shows up, so the report can name it
            (folder / c).mkdir(parents=True, exist_ok=True)
