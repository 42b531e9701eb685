"""Writers for each export format, and `export_run`, which writes one and checks it."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.errors import ConvScopeError

FORMATS = ("keras", "savedmodel", "tflite", "tflite-fp16", "tflite-int8", "onnx")
FILE_NAMES = {"keras": "model.keras", "savedmodel": "savedmodel", "tflite": "model.tflite",
              "tflite-fp16": "model-fp16.tflite", "tflite-int8": "model-int8.tflite", "onnx": "model.onnx"}  # fmt: skip
CHECKS_FILE = "exports.json"
CALIBRATION_IMAGES = 100  # representative images for int8: TFLite's guide suggests 100-500


class ExportError(ConvScopeError):
    """A run that cannot be exported (not finished, bad format or path)."""


class ExportUnavailable(ExportError):
    """A converter that cannot handle this model on this TensorFlow; the message is its reason."""


# ---- the graph every format starts from ------------------------------------------------------
def _resize(images, size: int, policy: str):
    """(N, H, W, 3) uint8 of any size -> (N, size, size, 3) float32 in [0, 255], as engine.imaging.resize."""
    import tensorflow as tf

    # antialias: Pillow's bilinear filter widens when it shrinks, and the model was trained on Pillow's
    x = tf.cast(images, tf.float32)
    if policy == "pad":  # fit the long side, pad with black
        return tf.image.resize_with_pad(x, size, size, antialias=True)
    if policy == "crop":  # scale the short side to size, cut the centre
        h, w = tf.cast(tf.shape(x)[1], tf.float32), tf.cast(tf.shape(x)[2], tf.float32)
        scale = size / tf.minimum(h, w)
        new = tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32)
        x = tf.image.resize(x, tf.maximum(new, size), antialias=True)
        return tf.image.resize_with_crop_or_pad(x, size, size)
    return tf.image.resize(x, (size, size), antialias=True)


def write_savedmodel(model, preprocess: Callable, size: int, policy: str, out: Path) -> Path:
    """A SavedModel with two signatures (Keras's ExportArchive, which tracks Keras 3 variables):

    - `serve` (the default): uint8 (N, H, W, 3) of any size -> {"probabilities", "logits"} (N, K),
      resized with the run's policy and preprocessed inside;
    - `serve_fixed`: float32 (N, S, S, 3) in [0, 255], already resized -> logits (N, K);
      what TFLite and the parity checks use.
    """
    import keras
    import tensorflow as tf

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
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(savedmodel), signature_keys=["serve_fixed"])
    if kind == "tflite-fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "tflite-int8":
        if representative is None or not len(representative):
            raise ExportError("int8 needs representative images (the run's training split has none)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in representative)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8  # pixels are whole numbers in [0, 255]: exact
    try:
        blob = converter.convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises many kinds; its message is the reason
        raise ExportUnavailable(f"{kind}: the TFLite converter failed: {_first_line(exc)}") from exc
    out.write_bytes(blob)
    return out


def write_onnx(model, preprocess: Callable, size: int, out: Path) -> Path:
    """ONNX through tf2onnx (opset 17): float32 (N, S, S, 3) in [0, 255] -> logits (N, K)."""
    try:
        import tensorflow as tf
        import tf2onnx
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


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


# ---- one run, one format -----------------------------------------------------------------
def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, check: bool = True, progress=None) -> dict:
    """Write `run_dir`'s model as `fmt` to `out` (default RUN/exports/FILE_NAMES[fmt]) and check it.

    Returns:
        {"format", "path", "bytes"} plus, with `check`, engine.export.parity.compare's figures:
        "agreement", "max_abs_diff", "accuracy", "accuracy_keras", "latency_ms",
        "latency_ms_keras", "images".
    Raises:
        ExportUnavailable: the converter cannot handle this model here (its reason as the message).
    """
    from engine.evaluate.evaluation import labelled_set, run_model
    from engine.export import parity
    from engine.training.runs import Run

    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    run = Run(Path(run_dir))
    model = run_model(run)  # an Explainable: the Keras model, its preprocessing, size and policy
    size, policy = model.input_size, model.resize_policy
    target = Path(out) if out else run.path / "exports" / FILE_NAMES[fmt]
    suffix = Path(FILE_NAMES[fmt]).suffix
    if suffix and target.suffix != suffix:  # Keras and the interpreters go by the file's extension
        target = target.with_name(target.name + suffix)
    target.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="convscope-export-") as tmp:
        staged = Path(tmp) / (target.name or "model")
        if fmt == "keras":
            shutil.copyfile(run.model_file, staged)
        elif fmt == "savedmodel":
            write_savedmodel(model.model, model.preprocess, size, policy, staged)
        elif fmt.startswith("tflite"):
            saved = write_savedmodel(model.model, model.preprocess, size, policy, Path(tmp) / "savedmodel")
            calibration = None
            if fmt == "tflite-int8":
                calibration = parity.training_images(run, size, policy, CALIBRATION_IMAGES)
            write_tflite(saved, staged, fmt, calibration)
        else:
            write_onnx(model.model, model.preprocess, size, staged)
        if target.exists():  # replace only once the new file is whole
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        shutil.move(str(staged), target)
    result = {"format": fmt, "path": str(target), "bytes": _size(target), "seconds": round(time.perf_counter() - t0, 2)}
    if check:
        result.update(parity.compare(model, fmt, target, labelled_set(run), progress))
        from engine.training import runs

        checked = runs.read_json(run.path / CHECKS_FILE, {}) or {}
        runs.write_json(run.path / CHECKS_FILE, {**checked, fmt: result})  # for the report
    return result


def checked_exports(run_dir: str | Path) -> dict[str, dict]:
    """The figures of every export checked so far, by format (RUN/exports.json)."""
    from engine.training import runs

    return runs.read_json(Path(run_dir) / CHECKS_FILE, {}) or {}


def as_download(path: str | Path) -> tuple[bytes, str]:
    """An export as one file to hand to a browser: (bytes, file name); a SavedModel folder is zipped."""
    import io
    import zipfile

    path = Path(path)
    if path.is_file():
        return path.read_bytes(), path.name
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            archive.write(file, Path(path.name) / file.relative_to(path))
    return buffer.getvalue(), f"{path.name}.zip"
