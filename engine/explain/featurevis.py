"""Feature visualisation by optimisation: the image a channel (or a class) responds to most.

The Lucid recipe (Olah et al. 2017, tensorflow/lucid `optvis/param/spatial.py`,
`color.py`, `transform.py`), in TensorFlow 2:
- the image is parametrised in Fourier space, with each frequency scaled by
  1/f, so gradient steps change coarse structure as easily as fine detail
  (plain pixel ascent gives high-frequency noise);
- colours are decorrelated with the square root of ImageNet's colour
  covariance, and squashed into [0, 1] with a sigmoid;
- at every step the image is padded, jittered, scaled and rotated at random
  before the model sees it, so only patterns that survive small shifts grow.

Several channels are optimised together as one batch: the objective is the sum
of each image's own channel, and BatchNorm runs in inference mode, so each
image's optimisation is independent of its batch-mates (a channel's picture is
the same alone or in a batch, and can be cached per channel). Each channel's
start is seeded by (seed, channel) and the transforms by the seed alone.

The model runs at the picture's size (128 px by default), not its input size:
a convolutional graph does not care, and it is 3x cheaper than 224 px.
"""

from __future__ import annotations

import hashlib
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from engine.model.compiled import Progress, activation_cap, locate_layer
from engine.model.explainable import Explainable, ExplainError
from engine.runs import atomic_write

LOGITS = "logits"  # the layer name that optimises a class logit instead of a channel

# Lucid's colour decorrelation: the square root of ImageNet's colour covariance (color.py).
_COLOR_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
_COLOR = _COLOR_SQRT / np.max(np.linalg.norm(_COLOR_SQRT, axis=0))
# Lucid's standard_transforms: pad 12, jitter 8, scale 0.9..1.1, rotate -10..10 degrees, jitter 4.
PAD, JITTER1, JITTER2 = 12, 8, 4
SCALES = np.array([1 + (i - 5) / 50 for i in range(11)], np.float32)
ANGLES = np.array(list(range(-10, 11)) + 5 * [0], np.float32)
BATCHES = (1, 2, 4, 8)  # batch sizes traced; more channels run in chunks of 8
CHUNK = 16  # steps run as one traced loop between progress reports


@dataclass(frozen=True)
class Settings:
    """How a picture is made; part of its cache key."""

    steps: int = 256
    size: int = 128
    seed: int = 0
    lr: float = 0.05  # Adam, as in Lucid's render_vis
    decay: float = 1.0  # the 1/f^decay scaling of the spectrum

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 4096:
            raise ExplainError(f"steps must be 1..4096, got {self.steps}")
        if not 32 <= self.size <= 512:
            raise ExplainError(f"size must be 32..512 px, got {self.size}")
        if self.seed < 0:
            raise ExplainError(f"seed must be 0 or more, got {self.seed}")
        if not self.lr > 0:
            raise ExplainError(f"the learning rate must be positive, got {self.lr}")


@dataclass
class Picture:
    """One channel's optimised image."""

    layer: str
    channel: int
    image: np.ndarray  # (S, S, 3) uint8
    activation: float  # the objective (the channel's spatial mean, or the logit) on the final image
    curve: np.ndarray  # (steps,) the climbed objective (pre-activation) at each step, under its random transform
    seconds: float  # time of the batch it was made in
    cached: bool = False


def _freqs(size: int) -> np.ndarray:
    """(size, size // 2 + 1) spatial frequencies of a real 2-D FFT (lucid rfft2d_freqs)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[: size // 2 + 1]
    return np.sqrt(fx * fx + fy * fy)


def initial_spectrum(size: int, seed: int, channel: int) -> np.ndarray:
    """(2, 3, size, size // 2 + 1) float32: the real and imaginary start of one channel's picture."""
    rng = np.random.default_rng([seed, channel])
    return rng.normal(0.0, 0.01, (2, 3, *_freqs(size).shape)).astype(np.float32)


def transform_plan(settings: Settings) -> dict[str, np.ndarray]:
    """Every step's random transform, drawn up front from the seed: offsets, scale, angle."""
    rng = np.random.default_rng(settings.seed)
    n = settings.steps
    return {
        "jitter1": rng.integers(0, JITTER1 + 1, (n, 2)).astype(np.int32),
        "scale": SCALES[rng.integers(0, len(SCALES), n)],
        "angle": ANGLES[rng.integers(0, len(ANGLES), n)] * np.float32(np.pi / 180),
        "jitter2": rng.integers(0, JITTER2 + 1, (n, 2)).astype(np.int32),
    }


ACTIVATIONS = {"Activation", "ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax"}


def any_size(model, layer: str, before_activation: bool = False) -> Callable:
    """Preprocessed (N, s, s, 3) of any size s -> the layer's output, or the logits for LOGITS.

    Keras checks a model's input shape when it is called, so the graph is run through
    `Model.call`, which does not: every layer here is convolutional or pools globally.
    With `before_activation`, an activation layer's input is returned instead of its output.
    """
    import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays

    if layer == LOGITS:
        nested = next((inner for inner in model.layers if isinstance(inner, keras.Model)), None)
        if nested is None:
            return lambda x: model.call(x, training=False)
        node = nested._inbound_nodes[0]
        before = keras.Model(model.input, node.input_tensors[0])
        after = keras.Model(node.output_tensors[0], model.output)
        return lambda x: after.call(nested.call(before.call(x, training=False), training=False), training=False)
    nested, inner = locate_layer(model, layer)
    graph = nested if nested is not None else model
    target = graph.get_layer(inner)
    pre = before_activation and type(target).__name__ in ACTIVATIONS
    upto = keras.Model(graph.input, target.input if pre else target.output)
    if nested is None:
        return lambda x: upto.call(x, training=False)
    before = keras.Model(model.input, nested._inbound_nodes[0].input_tensors[0])
    return lambda x: upto.call(before.call(x, training=False), training=False)


def _cap(model, layer: str) -> float | None:
    """The upper clip of an activation layer (6 for ReLU6), or None."""
    if layer == LOGITS:
        return None
    nested, inner = locate_layer(model, layer)
    return activation_cap((nested or model).get_layer(inner))


class _Optimiser:
    """The traced step for one (layer, batch, size): its variables are reset for each new batch of channels.

    Adam is written out (eight lines) rather than taken from keras.optimizers so its state
    can be zeroed in place: a new optimiser would mean a new trace, a few seconds each.
    """

    def __init__(self, model: Explainable, layer: str, batch: int, size: int, decay: float) -> None:
        import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

        freqs = _freqs(size)
        self.size = size
        # 1/f scaling (f floored at one cycle per image), times sqrt(w*h) as in lucid fft_image
        self.scale = tf.constant((size / np.maximum(freqs, 1.0 / size) ** decay).astype(np.complex64))
        shape = (2, batch, 3, *freqs.shape)
        self.spectrum = tf.Variable(tf.zeros(shape))
        self.m = tf.Variable(tf.zeros(shape))
        self.v = tf.Variable(tf.zeros(shape))
        self.t = tf.Variable(0.0)
        self.channels = tf.Variable(tf.zeros((batch,), tf.int32))
        self.lock = threading.Lock()
        # A ReLU has no gradient below 0: a channel silent on the start image would never move.
        # So, as Lucid does with its "_pre_relu" tensors, the optimiser climbs the activation's
        # input, capped where the activation caps (ReLU6 at 6): above the cap a position adds
        # nothing, so the climb spreads over the map instead of piling up in one spot.
        climb = any_size(model.model, layer, before_activation=True)
        report = any_size(model.model, layer)
        cap = _cap(model.model, layer)
        preprocess = model.preprocess
        logits = layer == LOGITS

        def objective(images, fn=climb, capped=True):
            out = fn(preprocess(images * 255.0))
            if logits:
                return tf.gather(out, self.channels, axis=1, batch_dims=1)  # (B,)
            if capped and cap is not None:
                out = tf.minimum(out, cap)
            per_channel = tf.reduce_mean(out, axis=[1, 2])  # (B, C): the channel's spatial mean
            return tf.gather(per_channel, self.channels, axis=1, batch_dims=1)

        self.objective = objective
        self.report = report

        def step(jitter1, scale, angle, jitter2, lr):
            with tf.GradientTape() as tape:
                images = _transform(self.image(), jitter1, scale, angle, jitter2)
                value = objective(images)
                loss = -tf.reduce_sum(value)
            g = tape.gradient(loss, self.spectrum)
            self.t.assign_add(1.0)
            self.m.assign(0.9 * self.m + 0.1 * g)
            self.v.assign(0.999 * self.v + 0.001 * g * g)
            m_hat = self.m / (1 - 0.9**self.t)
            v_hat = self.v / (1 - 0.999**self.t)
            self.spectrum.assign_sub(lr * m_hat / (tf.sqrt(v_hat) + 1e-8))
            return value

        def steps(jitter1, scale, angle, jitter2, lr):
            # A chunk of steps as one graph loop: no return to Python between steps.
            curve = tf.TensorArray(tf.float32, size=tf.shape(scale)[0])
            for k in tf.range(tf.shape(scale)[0]):
                curve = curve.write(k, step(jitter1[k], scale[k], angle[k], jitter2[k], lr))
            return curve.stack()  # (k, B)

        i32, f32 = tf.TensorSpec((None, 2), tf.int32), tf.TensorSpec((None,), tf.float32)
        self.steps = tf.function(steps, input_signature=[i32, f32, f32, i32, tf.TensorSpec((), tf.float32)])

    def image(self):
        """(B, S, S, 3) float in [0, 1] from the spectrum variable."""
        import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

        spectrum = tf.complex(self.spectrum[0], self.spectrum[1]) * self.scale
        image = tf.signal.irfft2d(spectrum, fft_length=[self.size, self.size]) / 4.0  # (B, 3, S, S), odd S too
        image = tf.transpose(image, (0, 2, 3, 1))
        image = tf.einsum("bhwc,dc->bhwd", image, _COLOR)  # decorrelated -> RGB
        return tf.sigmoid(image)

    def run(self, starts: np.ndarray, channels: list[int], plan: dict, lr: float, progress: Progress | None):
        """Optimise from `starts` (2, B, 3, S, S//2+1); returns ((B, S, S, 3) uint8, (B,) objective, (steps, B))."""
        with self.lock:  # the variables are shared by every caller of this (layer, batch, size)
            self.spectrum.assign(starts)
            for var in (self.m, self.v):
                var.assign(np.zeros(var.shape, np.float32))
            self.t.assign(0.0)
            self.channels.assign(np.asarray(channels, np.int32))
            steps = len(plan["scale"])
            curve = np.zeros((steps, len(channels)), np.float32)
            for k in range(0, steps, CHUNK):
                part = [plan[name][k : k + CHUNK] for name in ("jitter1", "scale", "angle", "jitter2")]
                curve[k : k + CHUNK] = self.steps(*part, np.float32(lr))
                if progress:
                    progress(min(steps, k + CHUNK) / steps)
            image = self.image()  # once per picture: eager is fine
            value = self.objective(image, self.report, False)  # the layer's own output, as natural images
        return (np.asarray(image) * 255).round().astype(np.uint8), np.asarray(value), curve


def _transform(images, jitter1, scale, angle, jitter2):
    """Lucid's standard transforms on (B, S, S, 3) images in [0, 1], with this step's drawn parameters.

    Scale and rotation are one affine warp on a fixed canvas (Lucid resizes the canvas):
    the same picture motion, but every step has the same shape, so the traced graph is
    static and each step costs the same (a new shape each step made them 1.6x slower).
    """
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

    x = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]], constant_values=0.5)
    x = _crop(x, JITTER1, jitter1)
    x = _warp(x, scale, angle)
    return _crop(x, JITTER2, jitter2)


def _crop(x, d: int, offset):
    """Cut d pixels off each side's total, at `offset` (2,) in [0, d]: a random shift."""
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

    n = x.shape[1] - d
    return tf.slice(x, tf.stack([0, offset[0], offset[1], 0]), [-1, n, n, -1])


def _warp(x, scale, angle):
    """Scale by `scale` and rotate by `angle` radians about the centre of (B, n, n, 3); bilinear, grey edges."""
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

    n = x.shape[1]
    c = (n - 1) / 2
    # the output pixel (x, y) reads the input at (a0 x + a1 y + a2, b0 x + b1 y + b2): the inverse motion
    cos, sin = tf.cos(angle) / scale, tf.sin(angle) / scale
    transform = tf.stack([cos, -sin, c - cos * c + sin * c, sin, cos, c - sin * c - cos * c, 0.0, 0.0])
    transforms = tf.tile(transform[None], [tf.shape(x)[0], 1])
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=x,
        transforms=transforms,
        output_shape=[n, n],
        fill_value=0.5,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


# ---- caching and the public entry -----------------------------------------------------------
# Explainable -> {(layer, batch, size, decay): _Optimiser}; dropped with the model
_OPTIMISERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_BUILD_LOCK = threading.Lock()


def _optimiser(model: Explainable, layer: str, batch: int, settings: Settings) -> _Optimiser:
    with _BUILD_LOCK:
        mine = _OPTIMISERS.setdefault(model, {})
        key = (layer, batch, settings.size, settings.decay, id(model.preprocess))  # the trace holds the preprocessing
        if key not in mine:
            mine[key] = _Optimiser(model, layer, batch, settings.size, settings.decay)
        return mine[key]


VERSION = 1  # of the recipe: raise it when the objective or the transforms change, so old pictures miss


def _key(model: Explainable, layer: str, channel: int, settings: Settings) -> str:
    who = model.identity or f"memory:{id(model)}"
    payload = f"v{VERSION}|{who}|{layer}|{channel}|{sorted(asdict(settings).items())}"
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def _disk(model: Explainable, key: str) -> Path | None:
    """Where a picture is kept on disk: only for a model with a folder and an identity that outlives the process."""
    return model.cache_folder / "pictures" / f"{key}.npz" if model.cache_folder and model.identity else None


def _read(model: Explainable, layer: str, channel: int, key: str) -> Picture | None:
    found = model.memo.get(("picture", key))
    if found is not None:
        return Picture(**{**found.__dict__, "cached": True})
    path = _disk(model, key)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path) as saved:
            picture = Picture(
                layer, channel, saved["image"], float(saved["activation"]), saved["curve"], float(saved["seconds"])
            )
    except (OSError, ValueError, KeyError):
        return None  # unreadable: make it again
    model.memo(("picture", key), lambda: picture)
    return Picture(**{**picture.__dict__, "cached": True})


def _write(model: Explainable, key: str, picture: Picture) -> None:
    model.memo(("picture", key), lambda: picture)
    path = _disk(model, key)
    if path is not None:
        atomic_write(
            path,
            lambda tmp: np.savez(
                tmp,
                image=picture.image,
                activation=picture.activation,
                curve=picture.curve,
                seconds=picture.seconds,
            ),
        )


def check_target(model: Explainable, layer: str, channels: list[int]) -> int:
    """The number of channels (or classes) of `layer`; a clear error for a bad layer or channel."""
    if model.opaque_reason:
        raise ExplainError(model.opaque_reason)
    if layer == LOGITS:
        flatten = [layer.name for layer in model.model.layers if type(layer).__name__ == "Flatten"]
        if flatten:  # the pictures are not the model's input size, and a Flatten head takes only that size
            raise ExplainError(
                f"{model.name}'s classes come through a Flatten layer ({flatten[0]}), which takes only "
                f"{model.input_size}-px images: visualise the channels of a convolutional layer instead"
            )
        count = len(model.labels)
        what = "classes"
    else:
        model.check_layer(layer)
        nested, inner = locate_layer(model.model, layer)
        count = int((nested or model.model).get_layer(inner).output.shape[-1])
        what = "channels"
    if not channels:
        raise ExplainError("no channels asked for: give one or more channel numbers")
    bad = [c for c in channels if not 0 <= c < count]
    if bad:
        raise ExplainError(f"{layer} has {count} {what} (0..{count - 1}); got {', '.join(map(str, bad))}")
    return count


def visualize(
    model: Explainable,
    layer: str,
    channels: list[int],
    settings: Settings | None = None,
    progress: Progress | None = None,
) -> list[Picture]:
    """The optimised picture of each channel of `layer` (or each class, with layer=LOGITS), in order.

    Pictures already made with the same model, layer, channel and settings come from the
    memo or the model's cache folder; the rest are optimised together, 8 at a time.
    `progress(fraction)` is called every CHUNK (16) steps.
    """
    settings = settings or Settings()
    check_target(model, layer, channels)
    keys = {c: _key(model, layer, c, settings) for c in dict.fromkeys(channels)}
    found = {c: _read(model, layer, c, k) for c, k in keys.items()}
    missing = [c for c, p in found.items() if p is None]
    plan = transform_plan(settings)
    chunks = [missing[k : k + BATCHES[-1]] for k in range(0, len(missing), BATCHES[-1])]
    for n, chunk in enumerate(chunks):
        batch = next(b for b in BATCHES if b >= len(chunk))
        padded = chunk + [chunk[-1]] * (batch - len(chunk))  # a traced batch size; the copies are dropped
        starts = np.stack([initial_spectrum(settings.size, settings.seed, c) for c in padded], axis=1)

        def part(f: float, n: int = n) -> None:
            if progress:
                progress((n + f) / len(chunks))

        t0 = time.perf_counter()
        images, values, curve = _optimiser(model, layer, batch, settings).run(starts, padded, plan, settings.lr, part)
        seconds = time.perf_counter() - t0
        for i, c in enumerate(chunk):
            found[c] = Picture(layer, c, images[i], float(values[i]), curve[:, i].copy(), seconds)
            _write(model, keys[c], found[c])
    if progress and not missing:
        progress(1.0)
    return [found[c] for c in channels]


def activation_on(model: Explainable, layer: str, images: np.ndarray, channels: list[int]) -> np.ndarray:
    """(N, s, s, 3) uint8 or [0, 255] images at any size -> (N, len(channels)) spatial-mean activations.

    The same objective the pictures were optimised for, without the random transforms.
    """
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

    fn = any_size(model.model, layer)
    out = np.asarray(fn(model.preprocess(tf.constant(np.asarray(images, np.float32)))))
    out = out if layer == LOGITS else out.mean(axis=(1, 2))
    return out[:, channels]
