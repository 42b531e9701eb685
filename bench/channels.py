"""Channel visualisation figures, measured in one run (issues 13 and 25).

On EfficientNet-Lite0 (ImageNet weights), at an early, a middle and a late layer:
- one channel's picture at 128 px, 256 steps: seconds, the first call (which traces the
  step) and a warm one; target (issue 25) <= 3 s; its floor, printed beside it: 256 times
  the compiled forward and input-gradient pass of the model up to the layer, batch 1, at
  the size the model sees (the picture's own parametrisation, transforms and Adam on top);
- 8 channels optimised as one batch against one channel: ratio of warm times; target <= 2x;
  its floor, printed beside it: the same model pass at batch 8 over batch 1 (on 2 cores,
  batch 1 already keeps both busy, so the model itself costs 3-5x more at batch 8);
- top examples of a layer over the built-in dataset (decode from disk, resize, the compiled
  pass to the layer, a running top-k per channel) against the floor, a compiled batched
  forward pass of the whole model over the same images already in memory; timed
  alternately; target <= 1.3x;
- the picture's activation over the channel's mean on the dataset's images, for 16 random
  channels per depth; target >= 5x each, for the channels where ReLU6's cap allows 5x;
  the channels that miss are printed with their means.

No cache is used: the model has no cache folder, and each timed picture is a channel (or
seed) not made before.

    python bench/channels.py [--repeats 3] [--channels 16] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explain_speed import paired  # noqa: E402 - the same alternating timer as the other benchmarks
from run_all import ratio  # noqa: E402

DEPTHS = {"early": "block2b_expand_activation", "middle": "block4a_expand_activation", "late": "top_activation"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels", type=int, default=16, help="random channels per depth for the ratio")
    parser.add_argument("--json", action="store_true", help="end with one JSON line for bench/run_all.py")
    args = parser.parse_args()

    import numpy as np

    from engine.data import sources
    from engine.data.pipeline import load_resized
    from engine.explain import Explainable, featurevis, top_examples

    model = Explainable.from_backbone("efficientnet_lite0")
    model.cache_folder, model.identity = None, ""  # nothing from disk; memory keys carry id(model)
    settings = featurevis.Settings()
    seed = iter(range(1000, 10_000))
    figures = []

    def picture(layer: str, channels: list[int]) -> float:
        t0 = time.perf_counter()
        featurevis.visualize(model, layer, channels, featurevis.Settings(seed=next(seed)))  # a new seed: no memo
        return time.perf_counter() - t0

    def model_pass(layer: str, batch: int, times: int):
        """`times` of the model's own part of a step: compiled forward and input gradient to the layer."""
        import tensorflow as tf

        fn = featurevis.any_size(model.model, layer, before_activation=True)
        side = settings.size + 2 * featurevis.PAD - featurevis.JITTER1 - featurevis.JITTER2  # what the model sees
        x = tf.Variable(tf.random.uniform((batch, side, side, 3), 0, 255))

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(fn(model.preprocess(x))[..., 0])
            return tape.gradient(loss, x)

        def run() -> None:
            for _ in range(times):
                step()

        return run

    print(f"EfficientNet-Lite0, pictures at {settings.size} px, {settings.steps} steps; medians of {args.repeats}")
    header = f"{'depth':8} {'layer':28} {'first s':>8} {'1 ch s':>7} {'floor s':>8} {'8 ch s':>7} {'ratio':>6}"
    print(f"{header}  model alone: 8 vs 1")
    for depth, layer in DEPTHS.items():
        first = picture(layer, [0])
        # the warm picture and its floor timed alternately, as the 8-channel pass and the model's at batch 8 / 1
        warm = lambda layer=layer: picture(layer, [0])  # noqa: E731
        one, steps_floor = paired(warm, model_pass(layer, 1, settings.steps), args.repeats)
        eight = statistics.median(picture(layer, list(range(8))) for _ in range(args.repeats))
        pass_8, pass_1 = paired(model_pass(layer, 8, 20), model_pass(layer, 1, 20), args.repeats)
        print(
            f"{depth:8} {layer:28} {first:8.1f} {one:7.1f} {steps_floor:8.1f} {eight:7.1f} {eight / one:5.2f}x  "
            f"{pass_8 / pass_1:5.2f}x"
        )
        figures += [ratio(f"{depth}: 1-channel picture, first call, s", first, "<= 3"),
                    ratio(f"{depth}: 1-channel picture, warm, s", one, "<= 3"),
                    ratio(f"{depth}: floor, {settings.steps} model passes at batch 1, s", steps_floor),
                    ratio(f"{depth}: 8 channels / 1, warm", eight / one, "<= 2"),
                    ratio(f"{depth}: floor, model pass at batch 8 / batch 1", pass_8 / pass_1)]  # fmt: skip
    print(f"(floor: {settings.steps} x the compiled forward and input-gradient pass of the model part, batch 1;")
    print(" model alone: the same pass at batch 8 over batch 1)")

    dataset = sources.open_dataset(sources.DEFAULT_SOURCE)
    paths = [str(dataset.root / item.rel) for item in dataset.items]
    size = model.input_size
    images = np.stack([load_resized(p, size) for p in paths]).astype(np.float32)
    print(f"\nTop examples over {len(paths)} images of {sources.DEFAULT_SOURCE!r} at {size} px, k=9")
    print(f"{'depth':8} {'ours s':>7} {'floor s':>8} {'ratio':>6}   (floor: compiled batched forward, in memory)")
    natural = {}
    for depth, layer in DEPTHS.items():
        top_examples.scan(model, paths[:32], [layer])  # trace once

        def ours(layer=layer):
            natural[layer] = top_examples.scan(model, paths, [layer], k=9)[layer]

        t_ours, t_floor = paired(ours, lambda: model.compiled.logits(images), args.repeats)
        print(f"{depth:8} {t_ours:7.2f} {t_floor:8.2f} {t_ours / t_floor:5.2f}x")
        figures.append(ratio(f"{depth}: top examples / forward floor", t_ours / t_floor, "<= 1.3"))

    print(f"\nActivation of the picture over the mean on the dataset's images, {args.channels} random channels each")
    rng = np.random.default_rng(0)
    for depth, layer in DEPTHS.items():
        mean = np.asarray(natural[layer]["natural_mean"])
        chosen = sorted(rng.choice(len(mean), args.channels, replace=False).tolist())
        pictures = featurevis.visualize(model, layer, chosen, settings)
        ratios = np.array([p.activation / max(mean[c], 1e-6) for p, c in zip(pictures, chosen, strict=True)])
        cap = featurevis._cap(model.model, layer)  # ReLU6: no image can make a channel's mean exceed 6
        reachable = (cap / np.maximum(mean[chosen], 1e-6) >= 5) if cap else np.ones(len(chosen), bool)
        print(
            f"{depth:8} median {np.median(ratios):6.1f}x  min {ratios.min():6.1f}x  "
            f"at least 5x: {int((ratios >= 5).sum())}/{len(ratios)}  "
            f"(where 5x is possible under the cap: {int((ratios[reachable] >= 5).sum())}/{int(reachable.sum())}; "
            f"picture mean {np.mean([p.activation for p in pictures]):.2f}, natural mean {mean[chosen].mean():.3f})"
        )
        for c, p, r, ok in zip(chosen, pictures, ratios, reachable, strict=True):
            if ok and r < 5:
                print(f"         channel {c}: picture {p.activation:.2f} / natural mean {mean[c]:.3f} = {r:.1f}x")
        # Each channel where the cap allows 5x: the smallest ratio among them.
        least = float(ratios[reachable].min()) if reachable.any() else None
        figures.append(ratio(f"{depth}: picture / natural mean, min", least, ">= 5"))
    if args.json:
        print(json.dumps({"bench": "channels", "ratios": figures}))


if __name__ == "__main__":
    main()
