"""Prediction and all 10 explanation methods against a compiled, batched forward pass.

Everything is measured in this one process, after warm-up (tracing):
- floor 1: one image through `tf.function(model)` (batch 1), the physical floor of
  any single-image answer;
- floor B: the per-image cost of the same compiled forward pass at batch 32, the
  floor of a method that needs many passes;
- for the gradient methods, also the per-image cost of a compiled batched input-gradient
  pass (forward + backward), the floor of any method built on input gradients.

Each row times what a user waits for: `ImageNetClassifier.predict` from the original
photo (resize included); `explain_image` with Grad-CAM for a new photo, end to end (resize,
hash, prediction, map, display); or an explainer's map for one prepared image
(preprocessing, passes, weighting, upsampling, normalisation). Medians of `--repeats` runs.

Targets (issue 25): predict <= 1.15x floor 1; Grad-CAM of a new image end to end <= 2.2x
floor 1 (one forward-and-backward pass gives the prediction and the map). Issue 10: Grad-CAM,
Grad-CAM++, Layer-CAM, CAM, Eigen-CAM, vanilla gradients <= 3x floor 1; Score-CAM,
SmoothGrad, Integrated Gradients, occlusion <= 1.5x (their passes x floor B).

    python bench/explain_speed.py [--backbone efficientnet_lite0] [--repeats 7] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_all import ratio as figure  # noqa: E402

ONE_PASS = ("gradcam", "gradcam++", "layercam", "cam", "eigencam", "saliency")
MANY_PASSES = ("scorecam", "smoothgrad", "integrated_gradients", "occlusion")


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: tracing and first-call allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def paired(fn, floor, repeats: int) -> tuple[float, float]:
    """Medians of `fn` and `floor`, timed alternately: a load that comes and goes hits both alike."""
    fn()
    floor()
    a, b = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t1 = time.perf_counter()
        floor()
        t2 = time.perf_counter()
        a.append(t1 - t0)
        b.append(t2 - t1)
    return statistics.median(a), statistics.median(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="end with one JSON line for bench/run_all.py")
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    from engine.explain import METHODS, Explainable, explain_image, make
    from engine.model.classifier import ImageNetClassifier
    from engine.samples import sample_photo

    model = Explainable.from_backbone(args.backbone)
    classifier = ImageNetClassifier(args.backbone)
    photo = sample_photo("chelsea")
    x = model.prepare(photo)[None]
    target = int(model.logits(x).argmax())
    size = model.input_size

    # The floors: a plain tf.function over the Keras model, on preprocessed tensors.
    keras_model = model.model
    forward = tf.function(lambda t: keras_model(t, training=False))
    one = tf.constant(model.preprocess(x))
    noise = np.random.default_rng(0).normal(0, 5, (32, 1, 1, 1)).astype(np.float32)
    batch = tf.constant(model.preprocess(np.repeat(x, 32, axis=0) + noise))

    @tf.function
    def input_gradient(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            score = keras_model(t, training=False)[:, target]
        return tape.gradient(score, t)

    def floor_one():
        forward(one).numpy()

    def floor_batch():
        forward(batch).numpy()

    def gradient_batch():
        input_gradient(batch).numpy()

    floor_b = median_time(floor_batch, args.repeats) / 32
    floor_g = median_time(gradient_batch, args.repeats) / 32

    rows = []
    # The two end-to-end rows cost one pass each and their targets lie close to 1: more pairs steady their medians.
    pairs = args.repeats * 10
    t, f1 = paired(lambda: classifier.predict([("chelsea", photo)]), floor_one, pairs)
    rows.append(("predict one image", 1, t, f1, 1.15, None))

    # A new photo on every call, so neither the map cache nor the probability memo hits: the sample photo at its
    # own size with one 4x4 block inverted, a different block each time (big enough to survive the resize).
    def new_photos():
        k = 0
        while True:
            k += 1
            p = photo.copy()
            r, c = (k * 7) % (photo.shape[0] - 4), (k * 13) % (photo.shape[1] - 4)
            p[r : r + 4, c : c + 4] ^= 128
            yield p

    photos = new_photos()

    def explain_new():
        if explain_image(model, next(photos), "gradcam").cached:
            raise AssertionError("a new image was found in the map cache: the row would time a lookup")

    t, f1 = paired(explain_new, floor_one, pairs)
    rows.append(("Grad-CAM of a new image", 1, t, f1, 2.2, None))
    for name in ONE_PASS:
        explainer = make(name, model)
        t, f1 = paired(lambda e=explainer: e(x, [target]), floor_one, args.repeats * 2)
        gradient_floor = floor_g if name == "saliency" else None
        rows.append((METHODS[name].title, 1, t, f1, 3.0, gradient_floor))
    for name in MANY_PASSES:
        explainer = make(name, model)
        forwards, gradients = explainer.passes(size)
        passes = forwards + gradients
        chunks = -(-passes // 32)  # the floor runs the same number of images, in full batches of 32
        reps = max(2, args.repeats // 2)

        def method(e=explainer):
            e(x, [target])

        def forward_floor(k=chunks):
            for _ in range(k):
                floor_batch()

        def gradient_floor_fn(k=chunks):
            for _ in range(k):
                gradient_batch()

        t, fb = paired(method, forward_floor, reps)
        gradient_floor = None
        if gradients:
            t2, fg = paired(method, gradient_floor_fn, reps)
            gradient_floor = fg / (32 * chunks) * passes * t / t2  # on the scale of `t`
        rows.append((METHODS[name].title, passes, t, fb / (32 * chunks) * passes, 1.5, gradient_floor))
    floor_1 = statistics.median(r[3] for r in rows[:8])

    print(f"backbone {args.backbone}, one {size}px image, layer {model.default_layer()}, {tf.__version__=}")
    print(
        f"floor 1 (compiled forward, batch 1, median over the rows): {floor_1 * 1000:.1f} ms; "
        f"floor B (compiled forward, batch 32, per image): {floor_b * 1000:.1f} ms; "
        f"compiled input gradient, batch 32, per image: {floor_g * 1000:.1f} ms"
    )
    print()
    header = (
        f"{'':28} {'passes':>6} {'ms':>9} {'floor ms':>9} {'ratio':>6} {'target':>6} {'ok':3} {'vs gradient floor':>17}"
    )
    print(header)
    print("-" * len(header))
    figures = []
    for title, passes, t, floor, target_ratio, gradient_floor in rows:
        ratio = t / floor
        ok = "yes" if ratio <= target_ratio else "NO"
        extra = f"{t / gradient_floor:17.2f}x" if gradient_floor else ""
        print(
            f"{title:28} {passes:6d} {t * 1000:9.1f} {floor * 1000:9.1f} {ratio:5.2f}x {target_ratio:5.2f}x  {ok:3}",
            extra,
        )
        figures.append(figure(f"{title} / floor", ratio, f"<= {target_ratio}"))
    print()
    print("floor = floor 1 for single-pass rows, passes x floor B for the others, each timed alternately with its row;")
    print("vs gradient floor = time / (the same passes through a compiled batched input-gradient function).")
    if args.json:
        print(json.dumps({"bench": "explain_speed", "ratios": figures}))


if __name__ == "__main__":
    main()
