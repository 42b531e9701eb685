"""A model trained in plain Keras, as in the TensorFlow transfer-learning tutorial, to import into ConvScope.

Nothing here uses ConvScope: it reads a folder of class folders with
`keras.utils.image_dataset_from_directory`, builds the tutorial's model (augmentation,
`preprocess_input`, a base model called with training=False, global pooling, dropout
and one logit for two classes, or a softmax for more), trains it and saves `model.keras` and
`labels.txt`. The base is a small CNN trained from scratch, so it runs offline in seconds; in
the tutorial it is MobileNetV2 with ImageNet weights.

    python examples/train_in_keras.py data/blobs out/ --make-data   # draws data/blobs, writes out/model.keras
    python -m engine import-model out/model.keras --labels out/labels.txt --source data/blobs --json

`--make-data` first draws a simple two-class set (a circle or a square of random colour, size and
place on a plain noisy background), which a small CNN learns from scratch in a minute; any folder of
class folders works (ConvScope's built-in shapes, with textured backgrounds and distractors, need a
pretrained base).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import keras
import numpy as np
from PIL import Image, ImageDraw


def make_data(folder: Path, per_class: int = 150, size: int = 96, seed: int = 0) -> None:
    """Draw `per_class` PNGs of a circle and of a square under folder/circle and folder/square."""
    rng = np.random.default_rng(seed)
    for name in ("circle", "square"):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            background = rng.integers(0, 256, 3)
            pixels = np.clip(background + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels)
            r = int(rng.integers(size // 8, size // 4))
            cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
            colour = tuple(int(v) for v in (background + rng.integers(80, 176, 3)) % 256)
            box = (cx - r, cy - r, cx + r, cy + r)
            draw = ImageDraw.Draw(image)
            draw.ellipse(box, fill=colour) if name == "circle" else draw.rectangle(box, fill=colour)
            image.save(folder / name / f"{name}_{k:04d}.png")


def base_model(size: int) -> keras.Model:
    """A small CNN standing in for the tutorial's MobileNetV2 (no download needed)."""
    inputs = keras.Input((size, size, 3))
    x = inputs
    for k, width in enumerate((16, 32, 64, 128), 1):
        x = keras.layers.Conv2D(width, 3, padding="same", name=f"block{k}_conv")(x)
        x = keras.layers.ReLU(name=f"block{k}_relu")(x)
        x = keras.layers.MaxPooling2D(name=f"block{k}_pool")(x)
    return keras.Model(inputs, x, name="base_model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="a folder of class folders")
    parser.add_argument("out", type=Path, help="where model.keras and labels.txt go")
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--make-data", action="store_true", help="draw the two-class set into DATA first")
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    if args.make_data:
        make_data(args.data, size=args.size)

    train, val = keras.utils.image_dataset_from_directory(
        args.data,
        validation_split=0.2,
        subset="both",
        seed=0,
        image_size=(args.size, args.size),
        batch_size=16,
    )
    classes = train.class_names
    binary = len(classes) == 2

    augmentation = keras.Sequential(
        [keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)], name="data_augmentation"
    )
    inputs = keras.Input((args.size, args.size, 3))
    x = augmentation(inputs)
    x = keras.applications.mobilenet_v2.preprocess_input(x)  # pixels / 127.5 - 1
    x = base_model(args.size)(x, training=False)
    # The tutorial averages MobileNetV2's ImageNet features; features learnt from scratch on a few hundred
    # images find a small object far better by their maximum (the average drowns it in background).
    x = keras.layers.GlobalMaxPooling2D()(x)
    x = keras.layers.Dropout(0.2)(x)
    if binary:
        outputs = keras.layers.Dense(1)(x)
        loss = keras.losses.BinaryCrossentropy(from_logits=True)
        metric = keras.metrics.BinaryAccuracy(threshold=0.0)
    else:
        outputs = keras.layers.Dense(len(classes), activation="softmax")(x)
        loss, metric = keras.losses.SparseCategoricalCrossentropy(), keras.metrics.SparseCategoricalAccuracy()
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, metrics=[metric])
    model.fit(train, validation_data=val, epochs=args.epochs, verbose=2)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "model.keras")
    (args.out / "labels.txt").write_text("".join(f"{name}\n" for name in classes))
    print(f"saved {args.out / 'model.keras'} and {args.out / 'labels.txt'} ({', '.join(classes)})")


if __name__ == "__main__":
    main()
