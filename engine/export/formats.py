"""The export formats, one table entry each (`EXPORT_FORMATS`), their writers, and `export_run`.

Adding a format is adding one `ExportFormat` to the table: its name (the CLI's --format), default
file name, title (the Runs page), writer (below) and runner (engine.export.parity).
"""

from __future__ import annotations

import io
import shutil
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from engine import runs
from engine.errors import ExportError, ExportUnavailable
from engine.evaluate.evaluation import EvaluationError, labelled_set
from engine.export import parity
from engine.model.explainable import run_model
from engine.runs import is_imported

CHECKS_FILE = "exports.json"
LABELS_FILE = "labels.txt"  # beside every export: one class name per line, line k = output k
CALIBRATION_IMAGES = 100  # representative images for int8: TFLite's guide suggests 100-500


# ---- the graph every format starts from ------------------------------------------------------
def _resize(images, size: int, policy: str):
    """(N, H, W, 3) uint8 of any size -> (N, size, size, 3) float32 in [0, 255], as engine.imaging.resize.

    Pillow's geometry is followed (ImageOps.pad rounds the fitted side and the offset; ImageOps.fit
    cuts the central square), and its bilinear filter widens when it shrinks, hence antialias. Crop
    offsets here are whole source pixels where Pillow's can be half ones: under half an output pixel.
    """
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only the export commands need it

    x = tf.cast(images, tf.float32)
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    if policy == "pad":  # fit the long side, pad with black, centred
        hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
        nh = tf.where(w >= h, tf.cast(tf.round(hf / wf * size), tf.int32), size)
        nw = tf.where(w >= h, size, tf.cast(tf.round(wf / hf * size), tf.int32))
        x = tf.image.resize(x, tf.stack([nh, nw]), antialias=True)
        top = tf.cast(tf.round(tf.cast(size - nh, tf.float32) / 2), tf.int32)
        left = tf.cast(tf.round(tf.cast(size - nw, tf.float32) / 2), tf.int32)
        x = tf.pad(x, [[0, 0], [top, size - nh - top], [left, size - nw - left], [0, 0]])
        return tf.ensure_shape(x, [None, size, size, 3])
    if policy == "crop":  # the central square, then scaled
        side = tf.minimum(h, w)
        x = tf.image.crop_to_bounding_box(x, (h - side) // 2, (w - side) // 2, side, side)
    return tf.image.resize(x, (size, size), antialias=True)


def write_savedmodel(model, preprocess: Callable, size: int, policy: str, out: Path) -> Path:
    """A SavedModel with two signatures (Keras's ExportArchive, which tracks Keras 3 variables):

    - `serve` (the default): uint8 (N, H, W, 3) of any size -> {"probabilities", "logits"} (N, K),
      resized with the run's policy and preprocessed inside;
    - `serve_fixed`: float32 (N, S, S, 3) in [0, 255], already resized -> logits (N, K);
      what TFLite and the parity checks use.
    """
    import keras  # heavy: TensorFlow loads in seconds; only the export commands need it
    import tensorflow as tf  # heavy: as keras

    def fixed(x):
        return model(preprocess(x), training=False)

    def serve(images):
        logits = fixed(_resize(images, size, policy))
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, [tf.TensorSpec((None, None, None, 3), tf.uint8, name="image")])
    archive.add_endpoint("serve_fixed", fixed, [tf.TensorSpec((None, size, size, 3), tf.float32, name="image")])
    archive.write_out(str(out), verbose=False)
    return out


def write_tflite(savedmodel: Path, out: Path, kind: str, representative: np.ndarray | None = None) -> Path:
    """TFLite from the SavedModel's `serve_fixed` signature.

    kind: "tflite" (float32), "tflite-fp16" (float16 weights) or "tflite-int8" (full-integer:
    weights and activations int8, uint8 input, float32 output; calibrated on `representative`,
    (n, S, S, 3) images in [0, 255]).
    """
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only the export commands need it

    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel), signature_keys=["serve_fixed"])
    if kind == "tflite-fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "tflite-int8":
        if representative is None or not len(representative):
            raise ExportError("int8 needs representative images (the run's training split has none)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        # The uint8 input's scale comes from the range the calibration images cover; one pixel at 0
        # and one at 255 pin it to [0, 255], so raw pixels are the input, unchanged (scale 1, zero 0).
        images = np.array(representative, np.float32, copy=True)
        images[0, 0, 0], images[0, 0, 1] = 0.0, 255.0
        converter.representative_dataset = lambda: ([image[None]] for image in images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
    try:
        blob = converter.convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds; its message is the reason
        raise ExportUnavailable(f"{kind}: the TFLite converter failed: {_first_line(exc)}") from exc
    if kind == "tflite-int8":
        from ai_edge_litert.interpreter import Interpreter  # optional: only TFLite exports need LiteRT

        scale, zero = Interpreter(model_content=blob).get_input_details()[0]["quantization"]
        if abs(scale - 1.0) > 1e-6 or zero != 0:
            raise ExportUnavailable(
                f"tflite-int8: the input came out quantised as scale {scale}, zero {zero}, not raw pixels"
            )
    out.write_bytes(blob)
    return out


def write_onnx(model, preprocess: Callable, size: int, out: Path) -> Path:
    """ONNX through tf2onnx (opset 17): float32 (N, S, S, 3) in [0, 255] -> logits (N, K)."""
    try:
        import tensorflow as tf  # heavy: TensorFlow loads in seconds; only the export commands need it
        import tf2onnx  # optional: only the ONNX export needs it
    except ImportError as exc:
        raise ExportUnavailable(f"onnx: tf2onnx is not installed ({exc})") from exc

    fn = tf.function(lambda x: model(preprocess(x), training=False))
    try:
        proto, _ = tf2onnx.convert.from_function(
            fn, input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, name="image")], opset=17
        )
    except Exception as exc:  # noqa: BLE001 - tf2onnx raises many kinds; its message is the reason
        raise ExportUnavailable(f"onnx: tf2onnx cannot convert this model here: {_first_line(exc)}") from exc
    out.write_bytes(proto.SerializeToString())
    return out


def write_labels(labels: list[str], out: Path) -> Path:
    """labels.txt: class k's name on line k+1, as TFLite and ONNX apps expect next to the model."""
    if not labels:
        raise ExportError("the run has no labels.json: its class names are unknown")
    out.write_text("".join(f"{name}\n" for name in labels), encoding="utf-8")
    return out


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


# ---- the table: one entry per format ------------------------------------------------------
Writer = Callable[[runs.Run, Any, Path, Path], None]  # (run, model: an Explainable, out, tmp) -> None


def _write_keras(run: runs.Run, model, out: Path, tmp: Path) -> None:
    if not run.model_file.is_file():  # an imported SavedModel (run.model_path) is kept as given, not as Keras
        raise ExportUnavailable(
            "keras: an imported SavedModel is opaque and has no .keras file; export it as savedmodel, tflite or onnx"
        )
    shutil.copyfile(run.model_file, out)


def _write_savedmodel(run: runs.Run, model, out: Path, tmp: Path) -> None:
    write_savedmodel(model.model, model.preprocess, model.input_size, model.resize_policy, out)


def _write_tflite(kind: str, run: runs.Run, model, out: Path, tmp: Path) -> None:
    size, policy = model.input_size, model.resize_policy
    saved = write_savedmodel(model.model, model.preprocess, size, policy, tmp / "savedmodel")
    calibration = None
    if kind == "tflite-int8":
        try:
            calibration = parity.training_images(run, size, policy, CALIBRATION_IMAGES)
        except EvaluationError as exc:  # an imported run without data, a source gone: nothing to calibrate on
            why = _no_data(run) or str(exc)
            raise ExportError(f"tflite-int8 is calibrated on the run's images, and there are none: {why}") from exc
    write_tflite(saved, out, kind, calibration)


def _write_onnx(run: runs.Run, model, out: Path, tmp: Path) -> None:
    write_onnx(model.model, model.preprocess, model.input_size, out)


@dataclass(frozen=True)
class ExportFormat:
    """Everything the engine, the CLI and the Runs page know about one export format.

    Attributes:
        name: the CLI's --format value and the key in RUN/exports.json.
        file_name: the default file (or folder) under RUN/exports/; an --out path keeps its suffix.
        title: what the Runs page's picker shows.
        write: (run, model: an engine.model Explainable, out, tmp: a scratch folder) -> None; writes `out`.
        runner: (path, preprocess) -> the written file as a function (N, S, S, 3) float32 in [0, 255]
            -> (N, K) logits (engine.export.parity), compared with the Keras model.
        folder: for a format written as a folder, the file inside that marks one of its exports (an
            earlier export there is replaced; any other folder never is); "" for a single file.
        min_agreement: top-1 agreement with Keras below which the result carries a warning.
    """

    name: str
    file_name: str
    title: str
    write: Writer
    runner: Callable[[Path, Callable], parity.Logits]
    folder: str = ""
    min_agreement: float = 0.0


EXPORT_FORMATS = {
    f.name: f
    for f in (
        ExportFormat("keras", "model.keras", "Keras (.keras)", _write_keras, parity.run_keras),
        ExportFormat(
            "savedmodel",
            "savedmodel",
            "TensorFlow SavedModel (any image size, uint8)",
            _write_savedmodel,
            parity.run_savedmodel,
            folder="saved_model.pb",
        ),
        ExportFormat("tflite", "model.tflite", "TFLite float32", partial(_write_tflite, "tflite"), parity.run_tflite),
        ExportFormat(
            "tflite-fp16",
            "model-fp16.tflite",
            "TFLite float16",
            partial(_write_tflite, "tflite-fp16"),
            parity.run_tflite,
        ),
        ExportFormat(
            "tflite-int8",
            "model-int8.tflite",
            "TFLite int8 (full-integer)",
            partial(_write_tflite, "tflite-int8"),
            parity.run_tflite,
            min_agreement=0.97,  # quantised: said when it changes answers
        ),
        ExportFormat("onnx", "model.onnx", "ONNX", _write_onnx, parity.run_onnx),
    )
}
FORMATS = tuple(EXPORT_FORMATS)  # the names, in the order the CLI and the Runs page offer them


# ---- one run, one format -----------------------------------------------------------------
def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, check: bool = True, progress=None) -> dict:
    """Write `run_dir`'s model as `fmt` to `out` (default RUN/exports/, the format's file_name) and check it.

    labels.txt (the class names, one per line) is written beside the export.

    Returns:
        {"format", "path", "bytes", "labels"} plus, with `check`, engine.export.parity.compare's figures:
        "agreement", "max_abs_diff", "accuracy", "accuracy_keras", "latency_ms",
        "latency_ms_keras", "images".
    Raises:
        ExportUnavailable: the converter cannot handle this model here (its reason as the message).
    """
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = runs.Run(Path(run_dir))
    if not run.path.is_dir():
        raise ExportError(f"no run folder at {run.path}")
    if not run.model_path.is_file():
        raise ExportError(f"{run.name} has no model.keras yet: only a finished (or stopped) run can be exported")
    if (runs.read_json(run.path / "status.json", {}) or {}).get("status") in runs.ACTIVE:
        raise ExportError(f"{run.name} is still queued or training: export it once it has finished")
    try:
        return _export(run, EXPORT_FORMATS[fmt], out, check, progress)
    except Exception as exc:
        if not run.path.is_dir():  # whatever failed, the cause is that the run was deleted meanwhile
            raise ExportError(str(runs.gone_error(run.path, "it was exported"))) from exc
        raise


def _export(run: runs.Run, fmt: ExportFormat, out: str | Path | None, check: bool, progress) -> dict:
    target = _target(run, fmt, out)
    data, unchecked = None, _no_data(run)
    if check and not unchecked:  # before converting: a run that cannot be checked says so at once
        # an imported model's data was never split here: it is checked on all of the source given at import
        for split in ("all",) if is_imported(run.config()) else ("test", "validation"):
            try:
                data = labelled_set(run, split=split)
                break
            except EvaluationError as exc:
                unchecked = str(exc)
    model = run_model(run)  # an Explainable: the Keras model, its preprocessing, size and policy
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="convscope-export-") as tmp:
        staged = Path(tmp) / target.name
        fmt.write(run, model, staged, Path(tmp))
        _swap_in(staged, target, Path(tmp))
    labels = write_labels(run.labels(), target.parent / LABELS_FILE)
    result = {
        "format": fmt.name,
        "path": str(target),
        "bytes": _size(target),
        "labels": str(labels),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if check and data is None:
        result["unchecked"] = f"not compared with Keras: {unchecked}"
    elif check:
        result.update(parity.compare(model, fmt.runner(target, model.preprocess), data, progress))
        if result["agreement"] < fmt.min_agreement:
            result["warning"] = (
                f"{fmt.title} agrees with the float model on {result['agreement']:.1%} of the test images "
                f"(below {fmt.min_agreement:.0%}): check the accuracy before deploying it"
            )
        result["split"] = data.split
        stat = run.model_path.stat()
        result["model"] = f"{stat.st_mtime_ns}:{stat.st_size}"  # the report shows only checks of this model
        with _CHECKS_LOCK:
            checked = runs.read_json(run.path / CHECKS_FILE, {}) or {}
            runs.write_json(run.path / CHECKS_FILE, {**checked, fmt.name: result}, inside=run.path)
    return result


_CHECKS_LOCK = threading.Lock()


def _no_data(run: runs.Run) -> str:
    """Why the run has no images to check (or calibrate) an export on: an import without labelled data; else ""."""
    config = run.config()
    if is_imported(config) and not (config.get("data") or {}).get("source"):
        return f"{run.name} was imported without labelled data (import it again with a labelled source to check it)"
    return ""


def _target(run: runs.Run, fmt: ExportFormat, out: str | Path | None) -> Path:
    """Where the export goes, checked: never over a folder that is not an earlier export of the same kind."""
    target = Path(out).expanduser().resolve() if out else run.path / "exports" / fmt.file_name
    suffix = Path(fmt.file_name).suffix
    if suffix and target.suffix.lower() != suffix:  # Keras and the interpreters go by the file's extension
        target = target.with_name(target.name + suffix)
    if target.is_dir() and not (fmt.folder and (target / fmt.folder).is_file()):
        raise ExportError(
            f"{target} is a folder that is not an earlier {fmt.name} export; give a new path "
            "(an existing folder is never replaced)"
        )
    if target.is_file() and fmt.folder:
        raise ExportError(f"{target} is a file; give a new folder for the {fmt.name} export")
    if out:
        target.parent.mkdir(parents=True, exist_ok=True)
    else:
        (run.path / "exports").mkdir(exist_ok=True)  # never parents=True: a deleted run is not brought back
    return target


def _swap_in(staged: Path, target: Path, tmp: Path) -> None:
    """Put the finished export in place; an earlier one is moved aside first and removed only after."""
    try:
        if target.exists():
            shutil.move(str(target), tmp / "replaced")  # removed with the temporary folder
        shutil.move(str(staged), target)
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc}") from exc


def checked_exports(run_dir: str | Path) -> dict[str, dict]:
    """The figures of every export checked so far, by format (RUN/exports.json)."""
    return runs.read_json(Path(run_dir) / CHECKS_FILE, {}) or {}


def as_download(path: str | Path) -> tuple[bytes, str]:
    """An export as one file to hand to a browser: (bytes, file name); a SavedModel folder is zipped."""
    path = Path(path)
    if path.is_file():
        return path.read_bytes(), path.name
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            archive.write(file, Path(path.name) / file.relative_to(path))
    return buffer.getvalue(), f"{path.name}.zip"
