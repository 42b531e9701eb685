"""Importing a 10 MB .keras file and its first Grad-CAM, against loading it in Keras and one compiled pass.

The model is the TensorFlow transfer-learning tutorial's, built in plain Keras: augmentation, a
MobileNetV2 base (random weights: nothing is downloaded) nested as `base_model`, GAP, Dropout and a
single logit; saved once as a .keras file of about 10 MB.

Each side runs in a fresh process, timed from after `import keras` (both pay the same start-up) to
its answer:
- ours: `engine.importing.import_model(file)` (checks, safe loading, the output made logits, the
  run folder written), then `Explainable.from_run` and a Grad-CAM of one image at the default
  layer: what a user waits for from choosing the file to seeing where the model looked;
- the floor: `keras.models.load_model(file)` and one compiled forward pass (`tf.function` of the
  model, traced and run on one image).
Medians of `--repeats` pairs, alternated. Target (issue 22): ours <= 1.5x the floor.

    python bench/import_model.py [--repeats 3] [--size 160] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from run_all import ratio as figure  # noqa: E402

TARGET = 1.5

BUILD = """
import sys, keras
keras.utils.set_random_seed(0)
size = int(sys.argv[2])
base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=None)
base.name = "base_model"
augment = keras.Sequential([keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.2)])
inputs = keras.Input((size, size, 3))
x = keras.applications.mobilenet_v2.preprocess_input(augment(inputs))
x = base(x, training=False)
x = keras.layers.Dropout(0.2)(keras.layers.GlobalAveragePooling2D()(x))
model = keras.Model(inputs, keras.layers.Dense(1)(x))
model.save(sys.argv[1])
"""

OURS = """
import sys, time, numpy as np, keras
t0 = time.perf_counter()
from engine.explain import explain_image
from engine.importing import import_model
from engine.model.explainable import Explainable
result = import_model(sys.argv[1], out=sys.argv[2])
model = Explainable.from_run(result["run_dir"])
rgb = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
heat = explain_image(model, rgb, "gradcam").heatmap
assert heat.shape == (model.input_size, model.input_size)
print(time.perf_counter() - t0)
"""

FLOOR = """
import sys, time, numpy as np, keras, tensorflow as tf
t0 = time.perf_counter()
model = keras.models.load_model(sys.argv[1])
forward = tf.function(lambda x: model(x, training=False))
size = model.input_shape[1]
x = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
np.asarray(forward(tf.constant(x)))
print(time.perf_counter() - t0)
"""


def timed(code: str, *args: str) -> float:
    """Seconds a fresh process reports for `code` (after its imports)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    if out.returncode != 0:
        raise SystemExit(f"a timed process failed:\n{out.stderr[-2000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=160, help="the model's input side (the tutorial's 160)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convscope-bench-import-") as tmp:
        file = Path(tmp) / "tutorial.keras"
        subprocess.run([sys.executable, "-c", BUILD, str(file), str(args.size)], check=True, capture_output=True)
        megabytes = file.stat().st_size / 1024 / 1024
        os.environ["CONVSCOPE_RUNS_DIR"] = str(Path(tmp) / "runs")
        ours, floor = [], []
        for k in range(args.repeats):
            floor.append(timed(FLOOR, str(file)))
            ours.append(timed(OURS, str(file), str(Path(tmp) / "runs" / f"run-{k}")))
    a, b = statistics.median(ours), statistics.median(floor)
    result = {
        "bench": "import_model",
        "file_mb": round(megabytes, 1),
        "ours_s": round(a, 3),
        "floor_s": round(b, 3),
        "ratios": [figure("import + first Grad-CAM / load_model + one compiled pass", a / b, f"<= {TARGET}")],
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"a {megabytes:.1f} MB .keras file (the tutorial's model, MobileNetV2 base at {args.size} px)")
    print(f"  import + first Grad-CAM:              {a:6.2f} s (median of {args.repeats})")
    print(f"  load_model + one compiled forward:    {b:6.2f} s")
    verdict = "pass" if a / b <= TARGET else "FAIL"
    print(f"  ratio {a / b:.2f} (target <= {TARGET}): {verdict}")


if __name__ == "__main__":
    main()
