"""Fine-tuning on the boundary cache against the Keras recipe, in one run.

Both fine-tune the same parent run (the default feature-mode run on the
built-in shapes) with the same top blocks unfrozen, BatchNorm frozen, the same
optimizer and schedule, epochs and seeds, on the same split:

- ours: `engine.training.fit.train` on a fine-tune config, end to end from a
  cold boundary cache (the frozen part's output computed once per image, then
  only the unfrozen part is fitted), evaluation included, until the run is
  marked finished (its latency, measured after that, is not waited for);
- the Keras recipe (keras-io's fine-tuning examples, the Keras transfer-learning
  guide): `model.fit` on the whole classifier with the top blocks trainable, on
  image batches (decoded once and kept in memory, shuffled each epoch, the
  backbone's preprocessing mapped over them), then `evaluate` on validation.

Prints seconds and validation accuracy per seed, the mean speed-up and the mean
accuracy difference, and the parent's and ours' test accuracy. No targets are stated for them.

    python bench/finetune.py [--tops 2 4] [--epochs 10] [--seeds 0 1 2] [--size 224] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_all import ratio  # noqa: E402


def recipe(parent, config, seed: int) -> tuple[float, float]:
    """The Keras recipe's (seconds, validation accuracy) for `config` with `seed`."""
    import keras

    from engine import backbones
    from engine.data.pipeline import make_tf_dataset
    from engine.training import finetune

    t0 = time.perf_counter()
    spec = backbones.get_spec(config.backbone)
    dataset, splits = finetune.open_data(config, parent)
    keras.utils.set_random_seed(seed)
    model = keras.models.load_model(parent.model_file, safe_mode=True)
    first = finetune.first_trainable(model, config.backbone, config.finetune)
    finetune.unfreeze(model, first, "frozen")

    def images(split: str, shuffle: bool):
        ds = make_tf_dataset(
            dataset, splits[split], config.data.image_size, batch_size=config.batch_size, shuffle=shuffle, seed=seed
        )
        return ds.map(lambda x, y: (spec.preprocess(x), y))

    steps = -(-len(splits["train"]) // config.batch_size)
    model.compile(
        optimizer=finetune.make_optimizer(config, steps * config.epochs),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    validation = images("validation", False)
    model.fit(images("train", True), validation_data=validation, epochs=config.epochs, verbose=0)
    _, accuracy = model.evaluate(validation, verbose=0)
    return time.perf_counter() - t0, float(accuracy)


def ours(config, seed: int, cache: Path) -> tuple[float, float, float]:
    """(seconds, validation accuracy, test accuracy) of our fine-tune from a cold boundary cache."""
    from engine import runs
    from engine.training import fit

    for old in cache.glob("features/*/boundary-*"):
        old.unlink()  # cold: the boundary tensors are computed inside the timing
    t0 = time.perf_counter()
    run = runs.create(backbone=config.backbone, mode="finetune")
    done: list[float] = []  # when the run was marked finished: what a user waits for (latency is measured after)
    result = fit.train(replace(config, seed=seed), run, finished=lambda _result: done.append(time.perf_counter()))
    assert result["status"] == "finished", result["reason"]
    return done[0] - t0, result["val_accuracy"], result["test_accuracy"]


def share_below(parent, config) -> float:
    """The frozen part's share of a compiled, batched forward pass of the whole classifier (batch 32)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from engine.training import finetune

    model = keras.models.load_model(parent.model_file, safe_mode=True)
    cut = finetune.split(model, finetune.first_trainable(model, config.backbone, config.finetune))
    x = np.random.default_rng(0).uniform(-1, 1, (32, *model.input_shape[1:])).astype("float32")
    times = []
    for part in (cut.lower, model):
        forward = tf.function(lambda a, part=part: part(a, training=False))
        forward(x)
        t0 = time.perf_counter()
        for _ in range(5):
            forward(x)
        times.append(time.perf_counter() - t0)
    return times[0] / times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tops", type=int, nargs="+", default=[2, 4], help="blocks to unfreeze, one setup each")
    parser.add_argument("--epochs", type=int, default=10, help="fine-tune epochs (default 10)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--size", type=int, default=224, help="image size (default 224, the backbone's)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line for bench/run_all.py")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="convscope-bench-finetune-"))
    os.environ["CONVSCOPE_RUNS_DIR"] = str(work / "runs")
    os.environ.setdefault("CONVSCOPE_CACHE_DIR", str(work / "cache"))
    cache = Path(os.environ["CONVSCOPE_CACHE_DIR"])
    import keras

    from engine import runs
    from engine.config import DataConfig, TrainConfig
    from engine.training import finetune, fit

    keras.config.disable_interactive_logging()
    parent = runs.create("parent", backbone="efficientnet_lite0", mode="feature")
    result = fit.train(TrainConfig(data=DataConfig(image_size=args.size)), parent)
    print(
        f"parent (feature mode, default settings, {args.size} px): val {result['val_accuracy']:.3f}, "
        f"test {result['test_accuracy']:.3f}, {result['epochs_run']} epochs in {result['seconds']:.1f} s"
    )
    figures = []
    for top in args.tops:
        config = finetune.finetune_config(parent, unfreeze_top=top, epochs=args.epochs)
        print(
            f"\nfine-tune: top {top} blocks, {args.epochs} epochs, {config.optimizer} at {config.learning_rate:g} "
            "with warm-up and cosine decay, BatchNorm frozen"
        )
        below = share_below(parent, config)
        # A training step costs about 3 forward passes (forward, and backward through activations and
        # weights), so per epoch the recipe pays below + 3 * above and we pay 3 * above.
        print(
            f"the frozen part is {below:.0%} of a compiled forward pass; per-epoch ceiling of the speed-up "
            f"about {(below + 3 * (1 - below)) / (3 * (1 - below)):.1f}x"
        )
        rows = []
        for seed in args.seeds:
            keras.backend.clear_session()
            t_ours, val_ours, test_ours = ours(config, seed, cache)
            keras.backend.clear_session()
            t_keras, val_keras = recipe(parent, replace(config, seed=seed), seed)
            rows.append((t_ours, val_ours, test_ours, t_keras, val_keras))
            print(
                f"seed {seed}: ours {t_ours:6.1f} s, val {val_ours:.3f}, test {test_ours:.3f} | "
                f"Keras recipe {t_keras:6.1f} s, val {val_keras:.3f} | {t_keras / t_ours:.2f}x"
            )
        n = len(rows)
        speedup = sum(r[3] for r in rows) / sum(r[0] for r in rows)
        val_ours = sum(r[1] for r in rows) / n
        val_keras = sum(r[4] for r in rows) / n
        test_ours = sum(r[2] for r in rows) / n
        print(f"top {top}: speed-up, ours against the Keras recipe, total time of {n} seeds: {speedup:.2f}x")
        print(
            f"top {top}: validation accuracy, mean of {n} seeds: ours {val_ours:.3f}, Keras recipe {val_keras:.3f}, "
            f"difference {100 * (val_ours - val_keras):+.1f} points"
        )
        print(
            f"top {top}: test accuracy: parent {result['test_accuracy']:.3f}, fine-tuned (ours, mean) "
            f"{test_ours:.3f}, {100 * (test_ours - result['test_accuracy']):+.1f} points"
        )
        figures += [ratio(f"top {top}: speed-up over the Keras recipe", speedup, ">= 3" if top == 2 else None),
                    ratio(f"top {top}: val accuracy, ours - Keras, points", 100 * (val_ours - val_keras)),
                    ratio(f"top {top}: test accuracy, ours - parent, points",
                          100 * (test_ours - result["test_accuracy"]))]  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"bench": "finetune", "ratios": figures}))


if __name__ == "__main__":
    main()
