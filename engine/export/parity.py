"""How faithful and how fast an export is: reloaded and compared with the Keras model on the test split.

A runner per kind of file (run_keras, run_savedmodel, run_tflite, run_onnx) loads a written export as
a function (N, S, S, 3) float32 in [0, 255] -> (N, K) logits; engine.export.formats names each
format's runner in its table, and `compare` measures any of them against the Keras model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from engine.data.pipeline import decoded_batches, load_resized
from engine.evaluate.evaluation import labelled_set
from engine.model.compiled import CompiledModel
from engine.numerics import softmax
from engine.runs import is_imported

LATENCY_REPEATS = 10

Logits = Callable[[np.ndarray], np.ndarray]  # (N, S, S, 3) float32 in [0, 255] -> (N, K) logits


def training_images(run, size: int, policy: str, n: int) -> np.ndarray:
    """Up to `n` images of the run's training split (an imported run's: all of its source), spread over it:
    (n, S, S, 3) float32 in [0, 255]."""
    data = labelled_set(run, split="all" if is_imported(run.config()) else "train")
    paths = data.paths[:: max(1, len(data.paths) // n)][:n]
    return np.stack([load_resized(p, size, policy) for p in paths]).astype(np.float32)


def run_keras(path: Path, preprocess: Callable) -> Logits:
    """A .keras file, compiled as the dashboard runs it."""
    import keras  # heavy: TensorFlow loads in seconds; only a check of an export needs it

    return CompiledModel(keras.models.load_model(path, safe_mode=True, compile=False), preprocess).logits


def run_savedmodel(path: Path, preprocess: Callable) -> Logits:
    """A SavedModel folder, through its `serve_fixed` signature (preprocessing is inside)."""
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only a check of an export needs it

    loaded = tf.saved_model.load(str(path))
    return lambda x: loaded.serve_fixed(tf.constant(x)).numpy()


def run_tflite(path: Path, preprocess: Callable) -> Logits:
    """A .tflite file in the LiteRT interpreter (tf.lite.Interpreter is to be removed), one image per call."""
    from ai_edge_litert.interpreter import Interpreter  # optional: only TFLite exports need LiteRT

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(x: np.ndarray) -> np.ndarray:
        rows = []
        scale, zero = inp["quantization"]
        for image in x:  # the file's input is (1, S, S, 3): one image per call
            if inp["dtype"] == np.uint8:  # quantised as the file says (scale 1, zero 0 for ours)
                image = np.clip(np.rint(image / (scale or 1.0) + zero), 0, 255).astype(np.uint8)
            interpreter.set_tensor(inp["index"], image[None].astype(inp["dtype"]))
            interpreter.invoke()
            rows.append(interpreter.get_tensor(out["index"])[0].astype(np.float32))
        return np.stack(rows)

    return run


def run_onnx(path: Path, preprocess: Callable) -> Logits:
    """A .onnx file in onnxruntime on the CPU."""
    import onnxruntime as ort  # optional: only ONNX exports need onnxruntime

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.astype(np.float32)})[0]


def _latency_ms(fn: Logits, image: np.ndarray) -> float:
    """Median milliseconds of one image, after one untimed call."""
    fn(image[None])
    times = []
    for _ in range(LATENCY_REPEATS):
        t0 = time.perf_counter()
        fn(image[None])
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def compare(model, run_export: Logits, data, progress=None) -> dict:
    """An export (`run_export`, one of the runners above) against the Keras model on a labelled set.

    Args:
        model: an engine.model Explainable (the Keras model, its preprocessing, size and policy).
        run_export: the export as a function (N, S, S, 3) float32 in [0, 255] -> (N, K) logits.
        data: a labelled set (engine.evaluate.evaluation.labelled_set).
        progress: called with (images done, images in all) after each batch.

    Returns:
        {"agreement": share of images with the same top-1 class, "max_abs_diff": the largest
        probability difference, "accuracy", "accuracy_keras", "latency_ms", "latency_ms_keras"
        (one image at a time, median of 10), "images"}.
    """
    ours, theirs, done = [], [], 0
    for images in decoded_batches(data.paths, model.input_size, model.resize_policy):
        ours.append(model.compiled.logits(images))
        theirs.append(run_export(images))
        done += len(images)
        if progress:
            progress(done, len(data.paths))
    p_keras, p_export = softmax(np.concatenate(ours)), softmax(np.concatenate(theirs))
    labels = np.asarray(data.labels)
    result = {
        "agreement": round(float((p_keras.argmax(1) == p_export.argmax(1)).mean()), 4),
        "max_abs_diff": float(np.abs(p_keras - p_export).max()),
        "accuracy": round(float((p_export.argmax(1) == labels).mean()), 4),
        "accuracy_keras": round(float((p_keras.argmax(1) == labels).mean()), 4),
        "images": len(labels),
    }
    sample = np.asarray(images[0], np.float32)
    result["latency_ms"] = round(_latency_ms(run_export, sample), 3)
    result["latency_ms_keras"] = round(_latency_ms(model.compiled.logits, sample), 3)
    return result
