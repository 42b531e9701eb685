"""The compiled functions of one classifier: the one place hot paths are traced.

An eager Keras call costs about 9x a compiled one on a CPU (EfficientNet-Lite0,
224 px: 222 ms against 24 ms), so prediction, every explanation method,
activations and the trust checks go through the `tf.function`s here. Each is
traced once per (model, layer) with an input signature of (None, S, S, 3), so
any batch size reuses the trace; inputs bigger than `batch` images are split
into chunks so memory stays bounded. The functions only read the model, so
one CompiledModel serves several threads (sessions) at once.

`compiled=False` runs exactly the same Python functions eagerly: the tests'
reference for "the compiled path gives the same maps".
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np

from engine.errors import ExplainError

BATCH = 32  # images per call: the CPU's throughput is flat from about 8 on, memory is not

Progress = Callable[[float], None]  # fraction done in [0, 1]


class CompiledModel:
    """Logits, activations and gradients of a Keras classifier, compiled and batched.

    Args:
        model: a keras.Model from preprocessed (N, S, S, 3) images to (N, K) logits.
        preprocess: [0, 255] RGB float images -> the model's input (TensorFlow ops).
        batch: the most images per call.
        compiled: False runs the same functions eagerly (a reference for tests).
        input_shape: what one input is, when not an (S, S, 3) image.
    """

    def __init__(
        self, model, preprocess: Callable, batch: int = BATCH, compiled: bool = True, input_shape: tuple = ()
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.input_size = int(model.input_shape[1])
        # [0, 255] RGB images (a grayscale model's preprocessing turns them to gray); a model cut at a layer
        # (engine.training.timeline) takes that layer's (h, w, C) activations instead
        self.input_shape = tuple(input_shape) if input_shape else (self.input_size, self.input_size, 3)
        self.batch = batch
        self.compiled = compiled
        self.traces: Counter = Counter()  # times each function was traced (tests check "once")
        self._fns: dict[tuple, Callable] = {}
        self._lock = threading.Lock()
        self._timing: dict[str, float] | None = None

    # ---- building -------------------------------------------------------
    def _function(self, key: tuple, build: Callable[[], Callable], with_classes: bool = False) -> Callable:
        """The traced function for `key`, built on first use (thread-safe)."""
        with self._lock:
            fn = self._fns.get(key)
            if fn is not None:
                return fn
            python_fn = build()
            if not self.compiled:
                self._fns[key] = python_fn
                return python_fn
            import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

            def traced(*args):
                self.traces[key] += 1  # a Python side effect: runs only while tracing
                return python_fn(*args)

            image_spec = tf.TensorSpec((None, *self.input_shape), tf.float32)
            signature = [image_spec, tf.TensorSpec((None,), tf.int32)] if with_classes else [image_spec]
            fn = self._fns[key] = tf.function(traced, input_signature=signature)
            return fn

    def _logits_fn(self) -> Callable:
        def build():
            def fn(x):
                return self.model(self.preprocess(x), training=False)

            return fn

        return self._function(("logits",), build)

    def _layer_fn(self, layer: str) -> Callable:
        """(N, S, S, 3) -> (activations (N, h, w, C), logits (N, K)) from one forward pass."""

        def build():
            split = layer_and_logits(self.model, layer)

            def fn(x):
                return split(self.preprocess(x))

            return fn

        return self._function(("layer", layer), build)

    def _activation_fn(self, layer: str) -> Callable:
        """(N, S, S, 3) -> activations only: the graph stops at the layer (cheap for early layers)."""

        def build():
            upto = activations_only(self.model, layer)

            def fn(x):
                return upto(self.preprocess(x))

            return fn

        return self._function(("activations", layer), build)

    def _layer_gradient_fn(self, layer: str) -> Callable:
        def build():
            import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

            split = layer_and_logits(self.model, layer)

            def fn(x, classes):
                with tf.GradientTape() as tape:
                    tape.watch(x)  # a frozen model records nothing otherwise
                    a, y = split(self.preprocess(x))
                    score = tf.gather(y, predicted_where_negative(y, classes), axis=1, batch_dims=1)
                return a, tape.gradient(score, a), y

            return fn

        return self._function(("layer_gradient", layer), build, with_classes=True)

    def _grad_cam_fn(self, layer: str) -> Callable:
        def build():
            import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

            split = layer_and_logits(self.model, layer)

            def fn(x, classes):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    a, y = split(self.preprocess(x))
                    score = tf.gather(y, predicted_where_negative(y, classes), axis=1, batch_dims=1)
                weights = tf.reduce_mean(tape.gradient(score, a), axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
                return tf.nn.relu(tf.reduce_sum(weights * a, axis=-1)), y

            return fn

        return self._function(("grad_cam", layer), build, with_classes=True)

    def _input_gradient_fn(self) -> Callable:
        def build():
            import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

            def fn(x, classes):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = self.model(self.preprocess(x), training=False)
                    score = tf.gather(y, predicted_where_negative(y, classes), axis=1, batch_dims=1)
                return tape.gradient(score, x), y

            return fn

        return self._function(("input_gradient",), build, with_classes=True)

    # ---- running --------------------------------------------------------
    def _run(self, fn: Callable, images: np.ndarray, classes=None, progress: Progress | None = None) -> list:
        """`fn` over `images` in chunks of `batch`; returns its outputs concatenated, as NumPy.

        `images` may be a float32 tf.Tensor a caller keeps to pass again and again (the training timeline
        does, every epoch): it is then not copied into a new tensor on each call.
        """
        import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

        kept = isinstance(images, tf.Tensor)
        images = images if kept else np.asarray(images, dtype=np.float32)
        if len(images.shape) != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"expected images (N, {', '.join(map(str, self.input_shape))}), got {images.shape}")
        n = len(images)
        parts: list[list[np.ndarray]] = []
        for start in range(0, n, self.batch):
            chunk = images[start : start + self.batch] if n > self.batch else images
            args = [chunk if kept else tf.constant(chunk)]
            if classes is not None:
                args.append(tf.constant(np.asarray(classes[start : start + self.batch], dtype=np.int32)))
            out = fn(*args)
            out = out if isinstance(out, tuple | list) else (out,)
            parts.append([np.asarray(o) for o in out])
            if progress:
                progress(min(n, start + self.batch) / n)
        return [np.concatenate(p) for p in zip(*parts, strict=True)]

    def logits(self, images: np.ndarray, progress: Progress | None = None) -> np.ndarray:
        """(N, S, S, 3) in [0, 255] -> (N, K) logits."""
        return self._run(self._logits_fn(), images, progress=progress)[0]

    def layer_and_logits(self, images: np.ndarray, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S, 3) -> ((N, h, w, C) activations of `layer`, (N, K) logits)."""
        a, y = self._run(self._layer_fn(layer), images)
        return a, y

    def activations(self, images: np.ndarray, layer: str) -> np.ndarray:
        """(N, S, S, 3) -> (N, h, w, C) activations of `layer`."""
        return self._run(self._activation_fn(layer), images)[0]

    def layer_gradients(
        self, images: np.ndarray, layer: str, classes: list[int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(A (N, h, w, C), dLogit[class]/dA (N, h, w, C), logits (N, K)); a class of -1: the predicted one."""
        a, g, y = self._run(self._layer_gradient_fn(layer), images, classes)
        return a, g, y

    def grad_cam(self, images: np.ndarray, layer: str, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(Grad-CAM (N, h, w) at the layer's size before upsampling, logits (N, K)); a class of -1: the predicted one.

        engine.explain.grad_cam's maps (ReLU of the activations weighted by the spatially averaged
        gradients), computed inside the graph so only the small maps leave it: for a caller that wants
        nothing else, such as the training timeline (engine.training.timeline) after every epoch.
        """
        cam, y = self._run(self._grad_cam_fn(layer), images, classes)
        return cam, y

    def input_gradients(
        self, images: np.ndarray, classes: list[int], progress: Progress | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(dLogit[class]/dPixel (N, S, S, 3) in [0, 255] pixel units, logits (N, K)); class -1: the predicted one."""
        g, y = self._run(self._input_gradient_fn(), images, classes, progress)
        return g, y

    def channel_peaks(self, images: np.ndarray, layers: list[str]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per channel and image, where and how strongly each layer's channels fire; one forward pass.

        Only these (N, C) summaries leave the graph, never the (N, h, w, C) maps, which is
        what keeps a pass over a whole dataset (top examples) cheap; nothing after the
        deepest requested layer runs.

        Args:
            images: (N, S, S, 3) in [0, 255].
            layers: spatial layer names, all flat or all inside the same nested backbone ("base/x").

        Returns:
            Per layer: (spatial max (N, C) float32, flat arg-max position over h*w (N, C) int32
            (row = p // w, col = p % w), spatial mean (N, C) float32). For a capped activation
            (ReLU6) the max and its position are taken before the cap, the mean after it.
        """
        layers = list(layers)
        if not layers:
            return []

        def build():
            import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays
            import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

            split = [locate_layer(self.model, name) for name in layers]
            nested = split[0][0]
            if len({n.name if n is not None else None for n, _ in split}) != 1:
                raise ExplainError(
                    f"layers {', '.join(layers)} lie in different parts of the model (flat and nested, or two "
                    "nested models); ask for each part separately"
                )
            # A keras.Model with several outputs holds only the graph up to the deepest of them.
            graph = self.model if nested is None else nested
            targets = [graph.get_layer(inner) for _, inner in split]
            # A capped activation (ReLU6) saturates: many images tie at 6, all at the first saturated
            # position. Peaks are ranked and located on its input instead, which keeps counting.
            tensors = [t.input if activation_cap(t) is not None else t.output for t in targets]
            tensors += [t.output for t in targets]
            before = None
            if nested is not None:
                before = keras.Model(self.model.input, nested._inbound_nodes[0].input_tensors[0])
            upto = keras.Model(graph.input, tensors)

            def flat(a):
                shape = tf.shape(a)
                return tf.cast(tf.reshape(a, (shape[0], shape[1] * shape[2], shape[3])), tf.float32)  # (N, h*w, C)

            def fn(x):
                x = self.preprocess(x)
                if before is not None:
                    x = before(x, training=False)
                outputs = upto(x, training=False)
                peaks, maps = outputs[: len(targets)], outputs[len(targets) :]
                out = []
                for peak, a in zip(peaks, maps, strict=True):
                    out += [
                        tf.reduce_max(flat(peak), axis=1),
                        tf.argmax(flat(peak), axis=1, output_type=tf.int32),
                        tf.reduce_mean(flat(a), axis=1),
                    ]
                return tuple(out)

            return fn

        parts = self._run(self._function(("peaks", tuple(layers)), build), images)
        return [(parts[i], parts[i + 1], parts[i + 2]) for i in range(0, len(parts), 3)]

    def warm_up(self, layer: str | None = None) -> None:
        """Trace the functions a first look needs (about a second each), so no user click pays for it."""
        x = np.full((1, self.input_size, self.input_size, 3), 127.0, np.float32)
        self.timing()  # traces logits and input gradients
        if layer:
            self.layer_and_logits(x, layer)
            self.layer_gradients(x, layer, [0])

    # ---- cost -----------------------------------------------------------
    def timing(self) -> dict[str, float]:
        """Seconds per image of a batched forward pass and of a batched input-gradient pass.

        Measured once (after tracing) on a batch of 8; used to tell a user how long a method will take.
        """
        if self._timing is None:
            x = np.full((8, self.input_size, self.input_size, 3), 127.0, np.float32)
            classes = [0] * 8
            self.logits(x[:1])
            self.input_gradients(x[:1], classes[:1])
            t0 = time.perf_counter()
            self.logits(x)
            t1 = time.perf_counter()
            self.input_gradients(x, classes)
            t2 = time.perf_counter()
            self._timing = {"forward": (t1 - t0) / 8, "gradient": (t2 - t1) / 8}
        return self._timing


def predicted_where_negative(logits, classes):
    """The class indices (N,) with each -1 replaced by the arg-max of its logits (N, K): one pass, no second call."""
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

    return tf.where(classes < 0, tf.argmax(logits, axis=1, output_type=tf.int32), classes)


def activation_cap(layer) -> float | None:
    """The upper clip of a Keras activation layer (6 for ReLU6), or None."""
    config = layer.get_config()
    if type(layer).__name__ == "ReLU" and config.get("max_value") is not None:
        return float(config["max_value"])
    if type(layer).__name__ == "Activation" and config.get("activation") == "relu6":
        return 6.0
    return None


# ---- splitting a model at a layer ----------------------------------------
def locate_layer(model, name: str) -> tuple:
    """(the nested backbone holding layer `name` or None for a flat one, the layer's name inside it)."""
    outer, _, inner = name.rpartition("/")
    return (model.get_layer(outer), inner) if outer else (None, name)


OUTPUTS = "<outputs>"  # the layer "name" of a model whose two outputs already are (activations, logits)


def layer_and_logits(model, layer: str) -> Callable:
    """A function preprocessed (N, S, S, 3) -> (activations (N, h, w, C), logits), one forward pass.

    For a flat graph this is one keras.Model with two outputs. For a layer inside a
    backbone nested one level deep (`Input -> base -> head`), the pass is split into the
    part before the backbone, the backbone (returning the layer's and its own output)
    and the part after it, so tape.gradient(logits, activations) still works. A model that
    returns both itself is called as it is (`layer` OUTPUTS: the training timeline's part above
    a fine-tune's frozen layers).
    """
    import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays

    if layer == OUTPUTS:

        def both(x):
            a, y = model(x, training=False)
            return a, y

        return both
    nested, inner = locate_layer(model, layer)
    if nested is None:
        both = keras.Model(model.input, [model.get_layer(inner).output, model.output])

        def flat(x):
            a, y = both(x, training=False)
            return a, y

        return flat
    node = nested._inbound_nodes[0]  # where the backbone sits in the outer graph
    before = keras.Model(model.input, node.input_tensors[0])
    middle = keras.Model(nested.input, [nested.get_layer(inner).output, nested.output])
    try:
        after = keras.Model(node.output_tensors[0], model.output)
    except ValueError as exc:
        raise ExplainError(
            f"the layers after {nested.name!r} also use tensors from before it; pick a layer outside {nested.name!r}"
        ) from exc

    def split(x):
        a, inner_out = middle(before(x, training=False), training=False)
        return a, after(inner_out, training=False)

    return split


def activations_only(model, layer: str) -> Callable:
    """A function preprocessed (N, S, S, 3) -> the layer's (N, h, w, C) output; nothing after it runs."""
    import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays

    nested, inner = locate_layer(model, layer)
    if nested is None:
        upto = keras.Model(model.input, model.get_layer(inner).output)
        return lambda x: upto(x, training=False)
    before = keras.Model(model.input, nested._inbound_nodes[0].input_tensors[0])
    middle = keras.Model(nested.input, nested.get_layer(inner).output)
    return lambda x: middle(before(x, training=False), training=False)
