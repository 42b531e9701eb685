"""How faithful and how fast an export is: reloaded and compared with the Keras model on the test split."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

INT8_WARNING = 0.97  # top-1 agreement below this is shown as a warning
LATENCY_REPEATS = 10


def training_images(run, size: int, policy: str, n: int) -> np.ndarray:
    """Up to `n` images of the run's training split, spread over it: (n, S, S, 3) float32 in [0, 255]."""
    from engine.data.pipeline import load_resized
    from engine.evaluate.evaluation import labelled_set

    data = labelled_set(run, split="train")
    paths = data.paths[:: max(1, len(data.paths) // n)][:n]
    return np.stack([load_resized(p, size, policy) for p in paths]).astype(np.float32)


def runner(fmt: str, path: Path, preprocess: Callable) -> Callable[[np.ndarray], np.ndarray]:
    """A function (N, S, S, 3) float32 in [0, 255] -> (N, K) logits that runs the exported file."""
    if fmt == "keras":
        import keras

        from engine.model.compiled import CompiledModel

        compiled = CompiledModel(keras.models.load_model(path, safe_mode=True, compile=False), preprocess)
        return compiled.logits
    if fmt == "savedmodel":
        import tensorflow as tf

        loaded = tf.saved_model.load(str(path))
        return lambda x: loaded.serve_fixed(tf.constant(x)).numpy()
    if fmt.startswith("tflite"):
        from ai_edge_litert.interpreter import Interpreter  # tf.lite.Interpreter is to be removed

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
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.astype(np.float32)})[0]


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _latency_ms(fn: Callable[[np.ndarray], np.ndarray], image: np.ndarray) -> float:
    """Median milliseconds of one image, after one untimed call."""
    fn(image[None])
    times = []
    for _ in range(LATENCY_REPEATS):
        t0 = time.perf_counter()
        fn(image[None])
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def compare(model, fmt: str, path: Path, data, progress=None) -> dict:
    """The export against the Keras model (`model`, an engine.explain.Explainable) on a labelled set.

    Returns:
        {"agreement": share of images with the same top-1 class, "max_abs_diff": the largest
        probability difference, "accuracy", "accuracy_keras", "latency_ms", "latency_ms_keras"
        (one image at a time, median of 10), "images", and "warning" when int8 agrees on less
        than 97%}.
    """
    from engine.data.pipeline import decoded_batches

    run_export = runner(fmt, Path(path), model.preprocess)
    ours, theirs, done = [], [], 0
    for images in decoded_batches(data.paths, model.input_size, model.resize_policy):
        ours.append(model.compiled.logits(images))
        theirs.append(run_export(images))
        done += len(images)
        if progress:
            progress(done, len(data.paths))
    p_keras, p_export = _softmax(np.concatenate(ours)), _softmax(np.concatenate(theirs))
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
    if fmt == "tflite-int8" and result["agreement"] < INT8_WARNING:
        result["warning"] = (
            f"int8 agrees with the float model on {result['agreement']:.1%} of the test images "
            f"(below {INT8_WARNING:.0%}): check the accuracy before deploying it"
        )
    return result
