"""Do the Train page's defaults work in a demo? Measured on the built-in shapes, in one run.

Feature mode: the page's default run (EfficientNet-Lite0, 224 px, the
default schedule) against a converged logistic-regression probe
(scikit-learn, default C=1) fitted on the very same cached features and the
same train/validation/test split. Both are scored on that split's test
images; the target is the default run within 2 points of the probe. The
previous defaults (10 epochs at 1e-3, no early stopping, no penalty) are
shown for contrast. `--splits 5` repeats it on the splits of seeds 0..4.

Scratch mode (`--scratch`): seconds per epoch of the training data pipeline
(decoded images kept in memory, shuffled by index before decoding) against
the previous one (a shuffle buffer over every decoded image, refilled each
epoch), then the page's default scratch run: its outcome and seconds per
epoch. No target is stated for scratch mode.

    python bench/probe.py [--splits 1] [--scratch] [--per-class 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_all import private_dirs, ratio  # noqa: E402


def probe_accuracy(features, labels, splits_idx) -> tuple[float, int]:
    """Test accuracy of a logistic-regression probe fitted on the training split, and its iterations."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(max_iter=10_000)
    probe.fit(features[splits_idx["train"]], labels[splits_idx["train"]])
    return float(probe.score(features[splits_idx["test"]], labels[splits_idx["test"]])), int(probe.n_iter_.max())


def feature_mode(source: str, n_splits: int) -> list[dict]:
    import numpy as np

    from engine import backbones, runs
    from engine.config import DataConfig, HeadConfig, TrainConfig
    from engine.data import sources
    from engine.data.splits import split_items
    from engine.training import feature_cache, fit
    from engine.training.features import FeatureExtractor

    dataset = sources.open_dataset(source)
    spec = backbones.get_spec(backbones.DEFAULT_BACKBONE)
    default = TrainConfig(data=DataConfig(source=source, image_size=spec.input_size))
    previous = replace(default, epochs=10, learning_rate=1e-3, early_stopping=0, head=HeadConfig(l2=0.0))
    print(
        f"feature mode on {source}: {len(dataset.items)} images, {default.backbone} at {default.data.image_size} px; "
        f"defaults: up to {default.epochs} epochs, lr {default.learning_rate:g}, early stopping patience "
        f"{default.early_stopping}, head L2 {default.head.l2:g}"
    )
    labels = np.array([i.label for i in dataset.items])
    row = {item.rel: k for k, item in enumerate(dataset.items)}
    rows = []
    for seed in range(n_splits):
        config = replace(default, seed=seed, data=replace(default.data, seed=seed))
        splits = split_items(dataset.items, seed, config.data.val_frac, config.data.test_frac)
        idx = {name: [row[i.rel] for i in items] for name, items in splits.items()}
        t0 = time.perf_counter()
        ours = fit.train(config, runs.create(backbone=config.backbone, mode=config.mode))
        ours_s = time.perf_counter() - t0
        assert ours["status"] == "finished", ours
        old = fit.train(
            replace(previous, seed=seed, data=config.data), runs.create(backbone=config.backbone, mode=config.mode)
        )
        # The same features the runs trained on: read back from the feature cache (no recomputation).
        key = feature_cache.FeatureKey(config.backbone, config.data.image_size, config.data.resize)
        extractor = FeatureExtractor(config.backbone, image_size=config.data.image_size)
        features, hit = feature_cache.clean_features(extractor, dataset, key, config.batch_size)
        assert hit, "the runs left the features in the cache"
        probe, iters = probe_accuracy(features, labels, idx)
        rows.append((seed, len(idx["train"]), len(idx["test"]), probe, iters, ours, ours_s, old))

    print(
        f"{'split':>5} {'train':>5} {'test':>4} {'probe':>6} {'default':>8} {'epochs':>6} {'secs':>5} {'gap':>6}"
        f" {'previous':>9}"
    )
    for seed, n_train, n_test, probe, _iters, ours, secs, old in rows:
        gap = 100 * (ours["test_accuracy"] - probe)
        print(
            f"{seed:>5} {n_train:>5} {n_test:>4} {probe:6.3f} {ours['test_accuracy']:8.3f} {ours['epochs_run']:>6} "
            f"{secs:5.1f} {gap:+6.1f} {old['test_accuracy']:9.3f}"
        )
    _, _, _, probe, iters, ours, _, old = rows[0]
    gap = 100 * (ours["test_accuracy"] - probe)
    print(
        f"page default (split 0): probe {probe:.3f} (converged in {iters} iterations), default run "
        f"{ours['test_accuracy']:.3f} after {ours['epochs_run']} epochs ({ours['reason'] or 'all epochs'}), "
        f"gap {gap:+.1f} points (target: within 2); previous defaults {old['test_accuracy']:.3f}"
    )
    figures = [ratio("split 0: default run - probe, test points", gap, "within 2")]
    if len(rows) > 1:
        mean_probe = sum(r[3] for r in rows) / len(rows)
        mean_ours = sum(r[5]["test_accuracy"] for r in rows) / len(rows)
        mean_old = sum(r[7]["test_accuracy"] for r in rows) / len(rows)
        print(
            f"mean of {len(rows)} splits: probe {mean_probe:.3f}, default {mean_ours:.3f} "
            f"(gap {100 * (mean_ours - mean_probe):+.1f} points), previous defaults {mean_old:.3f}"
        )
        figures.append(ratio(f"mean of {len(rows)} splits: default - probe, points", 100 * (mean_ours - mean_probe)))
    return figures


def previous_pipeline(dataset, items, size: int, batch_size: int, seed: int):
    """The pipeline before: decode -> cache -> shuffle over all decoded images (refilled every epoch)."""
    import numpy as np
    import tensorflow as tf

    from engine.data.pipeline import load_resized

    paths = [str(dataset.path(i)) for i in items]
    labels = np.array([i.label for i in items], dtype=np.int32)

    def decode(path):
        img = tf.numpy_function(lambda p: load_resized(p.decode(), size), [path], tf.uint8)
        img.set_shape((size, size, 3))
        return img

    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    ds = ds.map(lambda p, y: (decode(p), y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).cache()
    ds = ds.shuffle(len(items), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y))
    return ds.prefetch(tf.data.AUTOTUNE)


def epoch_seconds(ds, epochs: int = 4) -> list[tuple[float, float]]:
    """(seconds to the first batch, seconds for the whole epoch) of iterating `ds`, per epoch."""
    out = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        first = None
        for _batch in ds:
            first = first if first is not None else time.perf_counter() - t0
        out.append((first or 0.0, time.perf_counter() - t0))
    return out


def scratch_mode(source: str, pipeline_size: int) -> list[dict]:
    from engine import runs
    from engine.config import DataConfig, TrainConfig
    from engine.data import sources
    from engine.data.pipeline import make_tf_dataset
    from engine.data.splits import split_items
    from engine.training import fit

    dataset = sources.open_dataset(source)
    splits = split_items(dataset.items, 0)
    train = splits["train"]
    print(f"\nscratch mode on {source}: data pipeline alone, {len(train)} training images at {pipeline_size} px")
    later_epochs = []
    for name, ds in (
        ("previous (shuffle buffer of decoded images)", previous_pipeline(dataset, train, pipeline_size, 32, 0)),
        ("now (shuffled indices, decoded once)", make_tf_dataset(dataset, train, pipeline_size, shuffle=True)),
    ):
        secs = epoch_seconds(ds)
        later = sorted(total for _, total in secs[1:])[len(secs[1:]) // 2]
        later_epochs.append(later)
        print(
            f"  {name:44} first epoch {secs[0][1]:6.2f} s (first batch after {secs[0][0]:5.2f} s), "
            f"later epochs {later:6.3f} s (median)"
        )

    config = TrainConfig(data=DataConfig(source=source, image_size=64), backbone="small_cnn", mode="scratch")
    ends: list[float] = []

    def report(stage: str = "", **fields) -> None:
        if stage == "training" and fields.get("history", {}).get("loss"):
            ends.append(time.perf_counter())

    t0 = time.perf_counter()
    out = fit.train(config, runs.create(backbone=config.backbone, mode=config.mode), report=report)
    per_epoch = [b - a for a, b in zip([t0, *ends], ends, strict=False)]
    later = sorted(per_epoch[1:])[len(per_epoch[1:]) // 2] if len(per_epoch) > 1 else float("nan")
    chance = 1 / len(dataset.classes)
    print(
        f"  page default scratch run (small_cnn, 64 px, up to {config.epochs} epochs, lr {config.learning_rate:g}, "
        f"patience {config.early_stopping}): {out['epochs_run']} epochs in {out['seconds']:.0f} s "
        f"(first {per_epoch[0]:.1f} s, then {later:.2f} s per epoch); validation {out['val_accuracy']:.3f}, "
        f"test {out['test_accuracy']:.3f}; chance {chance:.3f}"
    )
    print(f"  what the page says before it starts: {fit.scratch_outlook(len(train), len(dataset.classes))}")
    return [ratio("scratch pipeline, later epoch: previous / now", later_epochs[0] / later_epochs[1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=1, help="seeds 0..N-1, each its own split (0: the page's)")
    parser.add_argument("--per-class", type=int, default=None, help="shapes per class (default: the built-in set)")
    parser.add_argument("--scratch", action="store_true", help="also measure scratch mode")
    parser.add_argument("--no-feature", action="store_true", help="skip the feature-mode comparison")
    parser.add_argument("--pipeline-size", type=int, default=224, help="image size for the pipeline timing")
    parser.add_argument("--json", action="store_true", help="end with one JSON line for bench/run_all.py")
    args = parser.parse_args()

    # A private cache and runs folder: nothing from a developer's runs is reused.
    private_dirs("convscope-probe-")
    source = "shapes" if args.per_class is None else f"shapes:per_class={args.per_class}"
    figures = []
    if not args.no_feature:
        figures += feature_mode(source, args.splits)
    if args.scratch:
        figures += scratch_mode(source, args.pipeline_size)
    if args.json:
        print(json.dumps({"bench": "probe", "ratios": figures}))


if __name__ == "__main__":
    main()
