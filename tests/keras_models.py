"""Small Keras models built in plain Keras, as users bring them (never downloaded, never through ConvScope).

Each builder saves one model to `path` and returns the path. Weights are random unless trained with
`fit_on_folder` (a few epochs of plain `model.fit` on a class-folder dataset).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np


def _keras():
    import keras

    keras.utils.set_random_seed(0)
    return keras


def _conv_tower(keras, x, widths=(8, 16), prefix="conv"):
    layers = keras.layers
    for k, w in enumerate(widths, 1):
        x = layers.Conv2D(w, 3, padding="same", activation="relu", name=f"{prefix}{k}")(x)
        x = layers.MaxPooling2D(name=f"pool{k}")(x)
    return x


def softmax_rescaling(path: Path, size: int = 48, classes: int = 3) -> Path:
    """A functional softmax CNN with Rescaling(1/255) inside: it takes raw pixels."""
    keras = _keras()
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255, name="rescaling")(inputs)
    x = _conv_tower(keras, x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(x)
    keras.Model(inputs, outputs, name="softmax_cnn").save(path)
    return path


def tutorial(path: Path, size: int = 64) -> Path:
    """The TensorFlow transfer-learning tutorial's shape: augmentation, preprocess_input, a nested base
    Model called with training=False, GAP, Dropout and a single logit (Dense(1), from_logits=True)."""
    keras = _keras()
    layers = keras.layers
    base_in = keras.Input((size, size, 3))
    b = layers.Conv2D(8, 3, padding="same", name="block1_conv")(base_in)
    b = layers.BatchNormalization(name="block1_bn")(b)
    b = layers.ReLU(name="block1_relu")(b)
    b = layers.MaxPooling2D(name="block1_pool")(b)
    b = layers.Conv2D(16, 3, padding="same", activation="relu", name="block2_conv")(b)
    base = keras.Model(base_in, b, name="base_model")
    augment = keras.Sequential(
        [layers.RandomFlip("horizontal", name="random_flip"), layers.RandomRotation(0.2, name="random_rotation")],
        name="data_augmentation",
    )
    inputs = keras.Input((size, size, 3))
    x = augment(inputs)
    x = keras.applications.mobilenet_v2.preprocess_input(x)  # x / 127.5 - 1: keras.ops in the graph
    x = base(x, training=False)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    outputs = layers.Dense(1, name="prediction")(x)
    model = keras.Model(inputs, outputs, name="tutorial")
    model.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True), metrics=["accuracy"])
    model.save(path)
    return path


def unit_cnn(path: Path, size: int = 48, classes: int = 3, train_folder: Path | None = None) -> Path:
    """A CNN with no preprocessing inside that wants [0, 1] pixels; trained on `train_folder` if given
    (20 epochs of plain Keras on [0, 1] pixels: about 99% on shapes:per_class=30, 2 s)."""
    keras = _keras()
    inputs = keras.Input((size, size, 3))
    x = _conv_tower(keras, inputs, (16, 32, 32))
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    model = keras.Model(inputs, outputs, name="unit_cnn")
    if train_folder is not None:
        fit_on_folder(model, train_folder, size, scale=1 / 255)
    model.save(path)
    return path


def grayscale(path: Path, size: int = 32, classes: int = 3) -> Path:
    """A one-channel (grayscale) softmax model with Rescaling inside."""
    keras = _keras()
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = _conv_tower(keras, x, (8,))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax")(x)
    keras.Model(inputs, outputs, name="gray").save(path)
    return path


def sigmoid_head(path: Path, size: int = 32) -> Path:
    """Two classes through one sigmoid probability (Dense(1, activation='sigmoid')), Rescaling inside."""
    keras = _keras()
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = _conv_tower(keras, x, (8,))
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    keras.Model(inputs, outputs).save(path)
    return path


def softmax_layer(path: Path, size: int = 32, classes: int = 3) -> Path:
    """A Sequential model ending in a separate Softmax layer after a linear Dense."""
    keras = _keras()
    layers = keras.layers
    model = keras.Sequential(
        [
            keras.Input((size, size, 3)),
            layers.Rescaling(1 / 127.5, offset=-1),
            layers.Conv2D(8, 3, activation="relu"),
            layers.GlobalAveragePooling2D(),
            layers.Dense(classes),
            layers.Softmax(),
        ]
    )
    model.save(path)
    return path


def nested_head(path: Path, size: int = 32, classes: int = 3, separate_softmax: bool = False) -> Path:
    """A model whose last layer is a nested Sequential head ending in a softmax (its Dense's own, or a
    separate Softmax layer)."""
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input((size, size, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(8, 3, activation="relu", name="conv")(x))
    if separate_softmax:
        head = keras.Sequential([keras.Input((8,)), layers.Dense(classes), layers.Softmax()], name="head")
    else:
        head = keras.Sequential([keras.Input((8,)), layers.Dense(classes, activation="softmax")], name="head")
    keras.Model(inputs, head(x)).save(path)
    return path


def half_open(path: Path, size: int = 32) -> Path:
    """A model whose input fixes the width only: (None, size, 3)."""
    keras = _keras()
    inputs = keras.Input((None, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="conv")(x))
    keras.Model(inputs, keras.layers.Dense(2)(x)).save(path)
    return path


def any_size(path: Path, classes: int = 3) -> Path:
    """A fully convolutional model that accepts any image size (input (None, None, 3))."""
    keras = _keras()
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes)(x)
    keras.Model(inputs, outputs).save(path)
    return path


def lambda_layer(path: Path, size: int = 32) -> Path:
    """A model with a Lambda layer (Python code in the file): refused."""
    keras = _keras()
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Lambda(lambda t: t / 255.0, name="scale_by_lambda")(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(2)(x)).save(path)
    return path


def custom_layer(path: Path, size: int = 32) -> Path:
    """A model using a registered custom layer class that the loading process does not have."""
    keras = _keras()

    @keras.saving.register_keras_serializable(package="notebook")
    class TimesTwo(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

    inputs = keras.Input((size, size, 3))
    x = TimesTwo(name="times_two")(inputs)
    x = keras.layers.Conv2D(4, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(2)(x)).save(path)
    keras.saving.get_custom_objects().pop("notebook>TimesTwo", None)  # as in a fresh process
    return path


def two_inputs(path: Path, size: int = 32) -> Path:
    keras = _keras()
    a, b = keras.Input((size, size, 3)), keras.Input((size, size, 3))
    x = keras.layers.Concatenate()([a, b])
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x))
    keras.Model([a, b], keras.layers.Dense(2)(x)).save(path)
    return path


def two_outputs(path: Path, size: int = 32) -> Path:
    keras = _keras()
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, [keras.layers.Dense(2)(x), keras.layers.Dense(3)(x)]).save(path)
    return path


def vector_input(path: Path) -> Path:
    """A model on feature vectors (N, 10): not an image model."""
    keras = _keras()
    inputs = keras.Input((10,))
    keras.Model(inputs, keras.layers.Dense(2)(inputs)).save(path)
    return path


def savedmodel(folder: Path, size: int = 32, classes: int = 3) -> Path:
    """A SavedModel folder (model.export) of a softmax CNN with Rescaling inside."""
    keras = _keras()
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = _conv_tower(keras, x, (8,))
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(classes, activation="softmax")(x))
    model.export(str(folder), verbose=False)
    return folder


def truncated(source: Path, path: Path) -> Path:
    """The first half of a .keras file."""
    data = source.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def not_keras_zip(path: Path) -> Path:
    """A zip archive that is not a Keras archive (named .keras)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "hello")
        archive.writestr("weights.bin", b"\0" * 100)
    return path


def padded(source: Path, path: Path, megabytes: float) -> Path:
    """A valid .keras archive grown to about `megabytes` by an extra member (assets/padding.bin)."""
    data = np.random.default_rng(0).integers(0, 256, int(megabytes * 1024 * 1024), dtype=np.uint8).tobytes()
    path.write_bytes(source.read_bytes())
    with zipfile.ZipFile(path, "a", zipfile.ZIP_STORED) as archive:
        archive.writestr("assets/padding.bin", data)
    return path


def fit_on_folder(model, folder: Path, size: int, scale: float, channels: int = 3, epochs: int = 20) -> None:
    """Train `model` (logits out) on a class-folder dataset with plain Keras, inputs = pixels * scale."""
    keras = _keras()
    ds = keras.utils.image_dataset_from_directory(
        folder,
        image_size=(size, size),
        batch_size=16,
        color_mode="rgb" if channels == 3 else "grayscale",
        seed=0,
        verbose=False,
    )
    ds = ds.map(lambda x, y: (x * scale, y))
    model.compile(
        optimizer=keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(ds, epochs=epochs, verbose=0)


def export_savedmodel(keras_file: Path, folder: Path) -> Path:
    """The model of a .keras file exported as a SavedModel folder (model.export: the `serve` endpoint)."""
    keras = _keras()
    keras.models.load_model(keras_file).export(str(folder), verbose=False)
    return folder


def zipped(folder: Path, path: Path, inside: str = "") -> Path:
    """A zip of `folder`'s files, under `inside/` when given (as a zip of the folder itself would be)."""
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            archive.write(file, f"{inside}/{file.relative_to(folder)}" if inside else str(file.relative_to(folder)))
    return path


def with_member(source: Path, path: Path, name: str, data: bytes = b"x", link: bool = False) -> Path:
    """A copy of the zip `source` with one more member `name` (a symbolic link to `data` when `link`)."""
    path.write_bytes(source.read_bytes())
    with zipfile.ZipFile(path, "a") as archive:
        info = zipfile.ZipInfo(name)
        if link:
            info.external_attr = (0o120777 << 16) | 0x20  # S_IFLNK: unzip would make a link
        archive.writestr(info, data)
    return path


def tf_module_savedmodel(
    folder: Path,
    size: int = 32,
    classes: int = 2,
    read_file: bool = False,
    print_to: str = "",
    save_in_call: bool = False,
) -> Path:
    """A SavedModel written by tf.saved_model.save, not Keras: a `serving_default` signature that returns a dict
    {"probabilities": (N, classes)} (softmax of a linear map of the mean colour, pixels 0-255). With `read_file`
    its graph also reads a file, as a malicious model could (refused); with `print_to` it tf.prints to that file,
    with `save_in_call` it writes a checkpoint (SaveV2) whenever it is called (both refused too)."""
    import tensorflow as tf

    weights = np.random.default_rng(0).normal(size=(3, classes)).astype(np.float32) / 50

    class Classifier(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(weights)

        @tf.function(input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32, name="pixels")])
        def __call__(self, x):
            z = tf.reduce_mean(x, [1, 2]) @ self.w
            if read_file:
                z += 0.0 * tf.cast(tf.strings.length(tf.io.read_file(str(folder / "saved_model.pb"))), tf.float32)
            if print_to:
                tf.print(z, output_stream=f"file://{print_to}")
            if save_in_call:
                tf.raw_ops.SaveV2(
                    prefix=str(folder.parent / "written"), tensor_names=["w"], shape_and_slices=[""], tensors=[self.w]
                )
            return {"probabilities": tf.nn.softmax(z)}

    module = Classifier()
    tf.saved_model.save(module, str(folder), signatures=module.__call__)
    return folder
