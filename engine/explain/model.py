"""A classifier prepared for looking inside: layers, activations and gradients.

Works on flat functional graphs (the bundled backbones, keras.applications
built with `input_tensor=`) and on transfer-learning models whose backbone
sits nested one level deep (`Input -> base_model -> GAP -> Dense`): for a
layer inside the nested backbone the forward pass is split into the part
before the backbone, the backbone (returning both the layer's output and its
own output), and the part after it, all under one GradientTape.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import backbones, imaging
from engine.errors import ConvScopeError


class ExplainError(ConvScopeError):
    """A layer or method that does not apply to this model."""


@dataclass(frozen=True)
class LayerInfo:
    """One layer as the layer browser lists it."""

    name: str  # "top_conv", or "base/block1a_dwconv" inside a nested backbone
    type: str
    output_shape: tuple
    params: int
    spatial: bool  # a 4-D (N, h, w, C) output: has feature maps and can carry a CAM

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "output_shape": list(self.output_shape),
            "params": self.params,
            "spatial": self.spatial,
        }


def _shape(layer) -> tuple:
    try:
        out = layer.output
    except (AttributeError, ValueError):
        return ()
    if isinstance(out, list | tuple):
        out = out[0]
    return tuple(out.shape)


class Explainable:
    """A logits classifier with its preprocessing and labels.

    Shared read-only between sessions (never trained); calls are serialised by a lock.
    """

    def __init__(
        self,
        model,
        preprocess: Callable,
        labels: list[str],
        name: str,
        default_layer: str | None = None,
        opaque_reason: str = "",
    ) -> None:
        self.model = model
        self.preprocess = preprocess
        self.labels = labels
        self.name = name
        self.input_size = int(model.input_shape[1])
        self.opaque_reason = opaque_reason
        self._default_layer = default_layer
        self._fns: dict[str, Callable] = {}
        self.lock = threading.RLock()

    # ---- construction ---------------------------------------------------
    @classmethod
    def from_backbone(cls, name: str) -> Explainable:
        """A registry backbone with its ImageNet head (1000 classes)."""
        from engine.imagenet import imagenet_labels

        spec = backbones.get_spec(name)
        model = backbones.load(name, include_top=True)
        opaque = "" if spec.last_conv_layer else f"{spec.title} is an opaque TF Hub module: no inner layers"
        return cls(model, spec.preprocess, imagenet_labels(), name, spec.last_conv_layer, opaque)

    @classmethod
    def from_run(cls, run_dir: str | Path) -> Explainable:
        """A trained run: `model.keras` (loaded with safe_mode), `labels.json`, `config.json`."""
        import keras

        run = Path(run_dir)
        model_file = run / "model.keras"
        if not model_file.is_file():
            raise ExplainError(f"{run}: no model.keras in this run folder (was the run finished?)")
        try:
            model = keras.models.load_model(model_file, safe_mode=True, compile=False)
        except Exception as exc:  # noqa: BLE001 - Keras raises many kinds for bad files
            raise ExplainError(f"{model_file}: cannot be loaded safely ({type(exc).__name__}: {exc})") from exc
        try:
            labels = json.loads((run / "labels.json").read_text())
            config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
        except (OSError, ValueError) as exc:
            raise ExplainError(f"{run}: labels.json or config.json is missing or not valid JSON ({exc})") from exc
        backbone = config.get("backbone")
        spec = backbones.get_spec(backbone) if backbone else None
        preprocess = spec.preprocess if spec else backbones.registry.identity
        default = None
        if spec and spec.last_conv_layer:
            default = spec.last_conv_layer if _has_layer(model, spec.last_conv_layer) else None
        opaque = f"{spec.title} is an opaque TF Hub module: no inner layers" if spec and spec.source == "hub" else ""
        return cls(model, preprocess, list(labels), run.name, default, opaque)

    # ---- layers ---------------------------------------------------------
    def layers(self) -> list[LayerInfo]:
        """Every layer, those inside a nested backbone included ("base/layer")."""
        out = []
        for layer in self.model.layers:
            if _is_model(layer):
                for inner in layer.layers:
                    if type(inner).__name__ == "InputLayer":
                        continue
                    shape = _shape(inner)
                    out.append(
                        LayerInfo(
                            f"{layer.name}/{inner.name}",
                            type(inner).__name__,
                            shape,
                            inner.count_params(),
                            len(shape) == 4,
                        )
                    )
                continue
            if type(layer).__name__ == "InputLayer":
                continue
            shape = _shape(layer)
            out.append(LayerInfo(layer.name, type(layer).__name__, shape, layer.count_params(), len(shape) == 4))
        return out

    def spatial_layers(self) -> list[str]:
        return [info.name for info in self.layers() if info.spatial]

    def default_layer(self) -> str:
        """The last layer with a spatial output: where CAMs are usually taken."""
        if self.opaque_reason:
            raise ExplainError(self.opaque_reason)
        if self._default_layer:
            return self._default_layer
        names = self.spatial_layers()
        if not names:
            raise ExplainError(f"{self.name} has no layer with a spatial (N, h, w, C) output")
        return names[-1]

    def check_layer(self, name: str) -> str:
        known = {info.name: info for info in self.layers()}
        if name not in known:
            close = [n for n in known if name.split("/")[-1] in n][:5]
            hint = f"; did you mean {', '.join(close)}" if close else "; `--layer list` shows them"
            raise ExplainError(f"{self.name} has no layer {name!r}{hint}")
        if not known[name].spatial:
            raise ExplainError(f"layer {name!r} has output {known[name].output_shape}, not a feature map (N, h, w, C)")
        return name

    # ---- inputs ---------------------------------------------------------
    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (S, S, 3) float32 in [0, 255], resized as for prediction."""
        return imaging.resize(rgb, self.input_size).astype(np.float32)

    # ---- forward passes -------------------------------------------------
    def logits(self, images: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) in [0, 255] -> (N, classes) logits."""
        with self.lock:
            return np.asarray(self.model(self.preprocess(np.asarray(images, np.float32)), training=False))

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        from engine.predict import softmax

        return softmax(self.logits(images).astype(np.float64))

    def layer_fn(self, layer: str) -> Callable:
        """A function (N, S, S, 3) preprocessed tensor -> (activations (N, h, w, C), logits).

        Both come from one forward pass, so tape.gradient(logits, activations) works.
        """
        if layer in self._fns:
            return self._fns[layer]
        import keras

        self.check_layer(layer)
        outer, _, inner = layer.rpartition("/")
        if not outer:
            both = keras.Model(self.model.input, [self.model.get_layer(layer).output, self.model.output])

            def fn(x):
                a, y = both(x, training=False)
                return a, y
        else:
            nested = self.model.get_layer(outer)
            node = nested._inbound_nodes[0]  # where the backbone sits in the outer graph
            before = keras.Model(self.model.input, node.input_tensors[0])
            middle = keras.Model(nested.input, [nested.get_layer(inner).output, nested.output])
            try:
                after = keras.Model(node.output_tensors[0], self.model.output)
            except ValueError as exc:
                raise ExplainError(
                    f"the layers after {outer!r} also use tensors from before it; pick a layer outside {outer!r}"
                ) from exc

            def fn(x):
                a, inner_out = middle(before(x, training=False), training=False)
                return a, after(inner_out, training=False)

        self._fns[layer] = fn
        return fn

    def activations(self, images: np.ndarray, layer: str) -> np.ndarray:
        """(N, S, S, 3) in [0, 255] -> the layer's output (N, h, w, C) float32."""
        fn = self.layer_fn(layer)
        with self.lock:
            a, _ = fn(self.preprocess(np.asarray(images, np.float32)))
        return np.asarray(a, dtype=np.float32)


def _is_model(layer) -> bool:
    import keras

    return isinstance(layer, keras.Model)


def _has_layer(model, name: str) -> bool:
    try:
        model.get_layer(name)
        return True
    except ValueError:
        return False


def list_runs(folder: Path) -> list[Path]:
    """Run folders (those holding a model.keras) under `folder`, newest first."""
    if not folder.is_dir():
        return []
    runs = [p for p in folder.iterdir() if (p / "model.keras").is_file()]
    return sorted(runs, key=lambda p: (p / "model.keras").stat().st_mtime, reverse=True)
