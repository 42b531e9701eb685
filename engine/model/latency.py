"""Inference latency of a classifier on this machine, through the compiled path users wait on."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from engine import runs
from engine.model.compiled import CompiledModel
from engine.model.explainable import run_model

LATENCY_FILE = "latency.json"
BATCH = 32


def measure(compiled, size: int, repeats: int = 5) -> dict:
    """Time one image and a batch of 32 through `compiled.logits` (an engine.model.compiled.CompiledModel).

    Returns:
        {"ms_per_image": the median of `repeats` single-image calls (what one prediction waits),
         "ms_per_image_batched": one call on 32 images, per image (throughput), "image_size": size}.
    """
    one = np.zeros((1, size, size, 3), np.float32)
    batch = np.zeros((BATCH, size, size, 3), np.float32)
    compiled.logits(one)  # traces once for any batch size; not timed
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        compiled.logits(one)
        times.append(time.perf_counter() - t0)
    compiled.logits(batch)  # the first large batch allocates its buffers
    t0 = time.perf_counter()
    compiled.logits(batch)
    batched = (time.perf_counter() - t0) / BATCH
    return {
        "ms_per_image": round(float(np.median(times)) * 1000, 3),
        "ms_per_image_batched": round(batched * 1000, 3),
        "image_size": int(size),
    }


def measure_model(model, preprocess, size: int) -> dict:
    """`measure` for a Keras classifier taking preprocessed (N, size, size, 3) input."""
    return measure(CompiledModel(model, preprocess), size)


def measure_run(run) -> dict:
    """`measure` for a trained run's saved model (an engine.runs.Run with model.keras)."""
    model = run_model(run)
    return measure(model.compiled, model.input_size)


def save(run_dir: str | Path, result: dict) -> None:
    runs.write_json(Path(run_dir) / LATENCY_FILE, {**result, "measured": time.time()}, inside=Path(run_dir))


def saved(run_dir: str | Path) -> dict | None:
    return runs.read_json(Path(run_dir) / LATENCY_FILE, None)
