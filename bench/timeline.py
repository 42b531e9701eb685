"""What the epoch-by-epoch Grad-CAM timeline costs a training run (issue 24: under 5% of the epoch).

The default feature run on the built-in shapes (Lite0 at 224 px, the mode's learning rate), for a
fixed number of epochs without early stopping so both runs fit the same epochs:

- one run: each epoch's own time (training, validation, checkpoint) against the time the timeline
  took after it, both measured by the recorder (engine.training.timeline); the ratio is
  (epoch + timeline) / epoch over the epochs after the first, in wall time and in the process's CPU
  time (which other programs on a shared machine do not inflate);
- two runs, with and without the timeline, same seed and cached features: the median time between
  epoch ends, with / without (no target: on a shared machine the noise between runs is about the
  size of what is measured).

    python bench/timeline.py [--epochs 30] [--per-class 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_all import private_dirs, ratio  # noqa: E402


def epoch_gaps(config) -> tuple[list[float], object]:
    """Train `config` into a new run; (seconds between consecutive epoch ends, the run)."""
    from engine import runs
    from engine.training import fit

    ends: list[float] = []

    def report(stage: str = "", **fields) -> None:
        if stage == "training" and "history" in fields and fields.get("batch") is None and fields.get("epoch"):
            ends.append(time.perf_counter())

    run = runs.create(backbone=config.backbone, mode=config.mode)
    out = fit.train(config, run, report=report)
    assert out["status"] == "finished", out
    return [b - a for a, b in zip(ends, ends[1:], strict=False)], run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--per-class", type=int, default=0, help="shapes per class (default: the set's own)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line for bench/run_all.py")
    args = parser.parse_args()

    private_dirs()

    import numpy as np

    from engine.config import DataConfig, TrainConfig
    from engine.runs.timeline import load

    source = f"shapes:per_class={args.per_class}" if args.per_class else "shapes"
    config = TrainConfig(data=DataConfig(source=source), epochs=args.epochs, early_stopping=0)
    # without first: it computes the features, so the run with the timeline reads them from the cache as well
    without, _ = epoch_gaps(replace(config, timeline=False))
    with_, run = epoch_gaps(config)
    tl = load(run.path)
    own, maps = tl.epoch_seconds[1:], tl.seconds[1:]  # the first epoch also traced the training step
    one_run = float((own.sum() + maps.sum()) / own.sum())
    one_run_cpu = float((tl.epoch_cpu_seconds[1:].sum() + tl.cpu_seconds[1:].sum()) / tl.epoch_cpu_seconds[1:].sum())
    two_runs = statistics.median(with_) / statistics.median(without)
    print(
        f"{source}, {config.backbone} at {config.data.image_size} px, {args.epochs} epochs: an epoch takes "
        f"{1000 * np.median(own):.1f} ms, its timeline {1000 * np.median(maps):.2f} ms ({tl.maps.shape[1]} images, "
        f"maps {tl.maps.shape[2]}x{tl.maps.shape[3]} at {tl.meta['layer']})"
    )
    print(f"one run: (epoch + timeline) / epoch = {one_run:.3f} (target <= 1.05); in CPU time {one_run_cpu:.3f}")
    print(
        f"two runs: median epoch {1000 * statistics.median(with_):.1f} ms with, "
        f"{1000 * statistics.median(without):.1f} ms without: {two_runs:.3f}"
    )
    if args.json:
        figures = [ratio("epoch with timeline / without, one run", one_run, "<= 1.05"),
                   ratio("the same in CPU time", one_run_cpu, "<= 1.05"),
                   ratio("epoch with timeline / without, two runs", two_runs)]  # fmt: skip
        print(json.dumps({"bench": "timeline", "ratios": figures}))


if __name__ == "__main__":
    main()
