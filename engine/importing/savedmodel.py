"""A SavedModel folder (or a zip of one) as given: unpacked safely, checked to be an image classifier, opaque.

Its graph is checked for ops that touch files or call Python before it is loaded (scan_ops). Its layers
cannot be seen, so its input is read from the serving signature and its output kind from the scores it
gives on probe images (engine.model.savedmodel, which also wraps it to end in logits).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine import settings
from engine.data.archive import Limits, extract
from engine.data.layout import UNSAFE
from engine.errors import ArchiveError, ImportModelError
from engine.importing.model import MAX_DIFF, Inspected, image_side, output_gap
from engine.model import savedmodel

# Graph ops that touch files or call Python: refused in an imported SavedModel (scan_ops).
UNSAFE_OPS = {
    "ReadFile",
    "WriteFile",
    "MatchingFiles",
    "ImmutableConst",
    "PyFunc",
    "PyFuncStateless",
    "EagerPyFunc",
    "FixedLengthRecordDataset",
    "FixedLengthRecordDatasetV2",
    "TextLineDataset",
    "TFRecordDataset",
    "TFRecordDatasetV2",
    "SaveDataset",
    "SaveDatasetV2",
    "CSVDataset",
    "CSVDatasetV2",
    "SqlDataset",
    "LMDBDataset",
    "SnapshotDataset",
    "SnapshotDatasetV2",
    "DatasetToTFRecord",
    "LoadDataset",
    "WholeFileReader",
    "WholeFileReaderV2",
    "InitializeTableFromTextFile",
    "InitializeTableFromTextFileV2",
    "CreateSummaryFileWriter",
    "CreateSummaryDbWriter",
    "WriteSummary",
    "WriteScalarSummary",
    "WriteHistogramSummary",
    "WriteImageSummary",
    "WriteAudioSummary",
    "WriteRawProtoSummary",
    "WriteGraphSummary",
    "ImportEvent",
    "DebugIdentity",
    "DebugIdentityV2",
    "DebugIdentityV3",
}
# Checkpoint ops: every SavedModel carries them in its saving and restoring functions (and its top-level
# saver graph), where they only run when the model is saved or restored; anywhere else they write files.
CHECKPOINT_OPS = {"SaveV2", "Save", "SaveSlices", "MergeV2Checkpoints", "RestoreV2", "Restore", "RestoreSlice"}
CHECKPOINT_FUNCTIONS = ("_traced_save", "_traced_restore")


def unpack(zip_path: Path, dest: Path) -> Path:
    """Extract a zip of a SavedModel into the new folder `dest`; returns the folder holding saved_model.pb.

    Raises:
        ImportModelError: an unsafe member (absolute or parent path, a link), a bomb, or not exactly
            one saved_model.pb inside.
    """
    limits = Limits(settings.max_archive_entries(), settings.max_model_bytes())
    try:
        skipped = extract(zip_path, dest, limits)
    except ArchiveError as exc:
        raise ImportModelError(f"{zip_path.name}: {exc}") from exc
    unsafe = [s.path for s in skipped if s.reason.startswith(UNSAFE)]
    if unsafe:
        raise ImportModelError(
            f"{zip_path.name} has unsafe members ({', '.join(unsafe[:5])}): absolute or parent paths and links "
            "are refused, a SavedModel never needs them"
        )
    found = sorted(p.parent for p in dest.rglob("saved_model.pb") if p.is_file())
    if len(found) != 1:
        where = ", ".join(str(p.relative_to(dest)) for p in found) or "none"
        raise ImportModelError(f"{zip_path.name} must hold one SavedModel (one saved_model.pb), it holds {where}")
    return found[0]


def scan_ops(folder: Path) -> None:
    """Refuse, before it is loaded, a SavedModel whose graph reads or writes files or calls Python.

    Loading a SavedModel runs no Python, but calling it runs its graph, and a graph can hold ops that
    read or write any file the server can (ReadFile, WriteFile ...). A classifier never needs them; the
    checkpoint ops every SavedModel carries (SaveV2, RestoreV2) run only when it is saved or restored.
    """
    from tensorflow.core.protobuf import saved_model_pb2  # heavy: TensorFlow; only a SavedModel import pays

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((folder / "saved_model.pb").read_bytes())
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError, OSError for the file
        raise ImportModelError(f"{folder.name}/saved_model.pb is damaged or not a SavedModel ({exc})") from exc
    found = set()
    for graph in proto.meta_graphs:
        found |= {node.op for node in graph.graph_def.node} & UNSAFE_OPS
        for function in graph.graph_def.library.function:
            saver = any(part in function.signature.name for part in CHECKPOINT_FUNCTIONS)
            for node in function.node_def:
                if node.op in UNSAFE_OPS or (node.op in CHECKPOINT_OPS and not saver):
                    found.add(node.op)
                elif node.op == "PrintV2" and node.attr["output_stream"].s.startswith(b"file://"):
                    found.add("PrintV2 to a file")
    refused = sorted(found)
    if refused:
        raise ImportModelError(
            f"{folder.name} runs {', '.join(refused)}: a graph op that reads or writes files or calls Python, "
            "which a classifier never needs; ConvScope refuses it. Export the model again without it."
        )


def inspect_savedmodel(folder: Path, image_size: int | None = None) -> Inspected:
    """The SavedModel at `folder` checked (one image input, one (N, K) output) and wrapped to end in logits.

    Raises:
        ImportModelError: not one image input and one (N, K) output, or a size that does not fit.
    """
    scan_ops(folder)
    layer = savedmodel.serving_layer(folder)
    specs = savedmodel.input_specs(layer)
    if len(specs) != 1:
        shown = ", ".join(f"{s.name} {tuple(s.shape)}" for s in specs)
        raise ImportModelError(f"the SavedModel takes {len(specs)} inputs ({shown}); ConvScope takes one image input")
    shape = tuple(specs[0].shape)
    if len(shape) != 4 or shape[-1] not in (1, 3) or not specs[0].dtype.is_floating:
        raise ImportModelError(
            f"the SavedModel's input is {specs[0].dtype.name} {shape}: not a float image batch (N, H, W, 1 or 3)"
        )
    channels = int(shape[3])
    size = image_side(shape[1], shape[2], image_size)
    probe = _probe(size, channels)
    try:
        scores = np.asarray(savedmodel.single_output(layer(probe)), np.float64)
    except ImportModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - a graph that fails on an image says why in many ways
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ImportModelError(
            f"the SavedModel fails on a {size}x{size} image ({type(exc).__name__}: {first})"
        ) from exc
    if scores.ndim != 2 or scores.shape[0] != len(probe) or scores.shape[1] < 1:
        raise ImportModelError(f"the SavedModel's output is {scores.shape[1:]} per image, not class scores (K,)")
    output = savedmodel.output_kind(scores)
    model = savedmodel.opaque_model(folder, size, channels, output, layer)
    if model.output_shape[-1] is None:
        raise ImportModelError("the SavedModel's signature leaves its number of classes open (None): not class scores")
    logits = np.asarray(model(probe, training=False), np.float64)
    diff = output_gap(output, scores, logits)
    if diff > MAX_DIFF:
        raise ImportModelError(f"ConvScope could not reproduce the SavedModel's {output} output (off by {diff:.2g})")
    return Inspected(model, output, size, channels, takes_raw="", augmentation=[], max_diff=diff, opaque=True)


def _probe(size: int, channels: int) -> np.ndarray:
    """Images in each range a model may want (0-255, [0, 1], [-1, 1]): whatever it expects, some fit."""
    rng = np.random.default_rng(0)
    unit = rng.uniform(0.0, 1.0, (6, size, size, channels)).astype(np.float32)
    return np.concatenate([unit[:2] * 255.0, unit[2:4], unit[4:] * 2.0 - 1.0])
