"""int8 TFLite against the float Keras model of the same run, on this CPU, in one run (issue 14).

Trains a Lite0 head on the built-in shapes set (or takes --run), exports it as `tflite-int8`
(full-integer, calibrated on 100 training images) and `tflite` (float32), and prints:
- size: the int8 file over the .keras file;
- latency: one image at a time, the LiteRT interpreter against the compiled Keras model
  (the physical floor of this codebase's own path), timed alternately, medians;
- agreement: top-1 of int8 against Keras on the run's test split, and both accuracies.

No targets are stated for these figures.

    python bench/export.py [--run RUN_DIR] [--repeats 30] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explain_speed import paired  # noqa: E402 - the same alternating timer as the other benchmarks
from run_all import ratio  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="a finished run (default: train a Lite0 head on shapes, 224 px)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", action="store_true", help="end with one JSON line for bench/run_all.py")
    args = parser.parse_args()

    import numpy as np

    from engine.data.pipeline import load_resized
    from engine.evaluate.evaluation import labelled_set
    from engine.export import EXPORT_FORMATS, export_run
    from engine.model.explainable import run_model
    from engine.runs import Run

    run_dir = args.run
    if not run_dir:
        import os

        from engine import runs
        from engine.config import TrainConfig
        from engine.training import fit

        os.environ.setdefault("CONVSCOPE_RUNS_DIR", tempfile.mkdtemp(prefix="convscope-bench-runs-"))
        config = TrainConfig(epochs=5)
        result = fit.train(config, runs.create("bench-export", backbone=config.backbone, mode="feature"))
        run_dir = str(result["run_dir"])
    run = Run(Path(run_dir))
    out = Path(tempfile.mkdtemp(prefix="convscope-bench-export-"))
    keras_file = export_run(run_dir, "keras", out / "model.keras")
    fp32 = export_run(run_dir, "tflite", out / "model.tflite")
    int8 = export_run(run_dir, "tflite-int8", out / "model-int8.tflite")

    model = run_model(run)
    image = load_resized(labelled_set(run).paths[0], model.input_size, model.resize_policy)[None].astype(np.float32)
    lite8 = EXPORT_FORMATS["tflite-int8"].runner(Path(int8["path"]), model.preprocess)
    lite32 = EXPORT_FORMATS["tflite"].runner(Path(fp32["path"]), model.preprocess)
    t_int8, t_keras = paired(lambda: lite8(image), lambda: model.compiled.logits(image), args.repeats)
    t_fp32, _ = paired(lambda: lite32(image), lambda: model.compiled.logits(image), args.repeats)

    print(f"run {run.name}: {model.input_size} px, {int8['images']} test images")
    print(f"{'':34} {'MB':>7} {'ms/image':>9} {'agreement':>10} {'accuracy':>9}")
    print(f"{'Keras float32 (compiled)':34} {keras_file['bytes'] / 1e6:7.2f} {t_keras * 1e3:9.2f} {'':>10} "
          f"{int8['accuracy_keras']:9.1%}")  # fmt: skip
    print(f"{'TFLite float32 (LiteRT)':34} {fp32['bytes'] / 1e6:7.2f} {t_fp32 * 1e3:9.2f} "
          f"{fp32['agreement']:10.1%} {fp32['accuracy']:9.1%}")  # fmt: skip
    print(f"{'TFLite int8 (LiteRT)':34} {int8['bytes'] / 1e6:7.2f} {t_int8 * 1e3:9.2f} "
          f"{int8['agreement']:10.1%} {int8['accuracy']:9.1%}")  # fmt: skip
    print(
        f"\nint8 / Keras: size {int8['bytes'] / keras_file['bytes']:.2f}x, latency {t_int8 / t_keras:.2f}x, "
        f"top-1 agreement {int8['agreement']:.1%}" + (f"  ({int8['warning']})" if "warning" in int8 else "")
    )
    if args.json:
        figures = [ratio("int8 / Keras: size", int8["bytes"] / keras_file["bytes"]),
                   ratio("int8 / Keras: latency", t_int8 / t_keras),
                   ratio("int8 / Keras: top-1 agreement", int8["agreement"])]  # fmt: skip
        print(json.dumps({"bench": "export", "ratios": figures}))


if __name__ == "__main__":
    main()
