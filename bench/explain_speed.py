"""Grad-CAM for one image against a bare forward pass of the same model.

Both are timed in this one process after warm-up (tracing), interleaved, and
the medians compared. Grad-CAM includes everything a user waits for:
preprocessing, the forward pass returning the layer's activations, the
backward pass to them, the weighting, upsampling and normalisation.

    python bench/explain_speed.py [--backbone efficientnet_lite0] [--method gradcam] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    from engine.explain import Explainable, make
    from engine.samples import sample_photo

    model = Explainable.from_backbone(args.backbone)
    explainer = make(args.method, model)
    x = model.prepare(sample_photo("chelsea"))[None]
    target = int(model.logits(x).argmax())
    for _ in range(3):  # warm-up: graph tracing and first-call allocations
        model.logits(x)
        explainer(x, [target])
    forward, explain = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        model.logits(x)
        forward.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        explainer(x, [target])
        explain.append(time.perf_counter() - t0)
    f, e = statistics.median(forward), statistics.median(explain)
    print(
        f"backbone {args.backbone}, layer {explainer.layer}, one {model.input_size}px image, {args.repeats} runs each"
    )
    print(f"forward pass   median {f * 1000:7.1f} ms")
    print(f"{args.method:14} median {e * 1000:7.1f} ms")
    print(f"ratio {args.method} / forward = {e / f:.2f}x (target: 3x or less)")


if __name__ == "__main__":
    main()
