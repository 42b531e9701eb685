"""A classifier prepared for looking inside: layers, activations and gradients.

Works on flat functional graphs (the bundled backbones, keras.applications
built with `input_tensor=`) and on transfer-learning models whose backbone
sits nested one level deep (`Input -> base_model -> GAP -> Dense`); the
compiled passes (engine.model.compiled) split the latter at the backbone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine import backbones, imaging, settings
from engine.errors import EvaluationError, ExplainError, ImportModelError
from engine.imagenet import imagenet_labels
from engine.model import savedmodel
from engine.model.compiled import CompiledModel
from engine.model.memo import Memo
from engine.numerics import softmax
from engine.runs import Run, keras_archive_problem, resize_policy_of

# The frozen Dense an imported single-logit model ends in (engine.importing): z -> [-z/2, z/2].
TWO_LOGITS = "two_logits"


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

    Shared read-only between sessions (never trained). Every forward and backward pass
    goes through `self.compiled`, which is safe to call from several threads at once.
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
        self._preprocess = preprocess
        self.labels = labels
        self.name = name
        self.input_size = int(model.input_shape[1])
        self.opaque_reason = opaque_reason
        self._default_layer = default_layer
        self.resize_policy = "stretch"  # a run's own policy (crop, pad) is set by from_run
        self.compiled = CompiledModel(model, preprocess)
        self.memo = Memo()  # maps and scores by image content; shared by the sessions using this model
        # Where results that outlive the process (channel pictures, top examples) are kept, and the
        # model's identity in their keys: set by from_backbone / from_run; None keeps them in memory only.
        self.cache_folder: Path | None = None
        self.identity: str = ""

    @property
    def preprocess(self) -> Callable:
        """[0, 255] RGB float images -> the model's input."""
        return self._preprocess

    @preprocess.setter
    def preprocess(self, fn: Callable) -> None:
        self._preprocess = fn
        self.compiled = CompiledModel(self.model, fn)  # traced functions hold the old preprocessing
        self.memo = Memo()
        self.identity = ""  # no longer the saved model: keep its channel pictures and examples in memory only

    # ---- construction ---------------------------------------------------
    @classmethod
    def from_backbone(cls, name: str) -> Explainable:
        """A registry backbone with its ImageNet head (1000 classes)."""
        spec = backbones.get_spec(name)
        model = backbones.load(name, include_top=True)
        opaque = "" if spec.last_conv_layer else f"{spec.title} is an opaque TF Hub module: no inner layers"
        out = cls(model, spec.preprocess, imagenet_labels(), name, spec.last_conv_layer, opaque)
        out.cache_folder = settings.cache_dir() / "channels" / name
        out.identity = f"backbone:{name}"  # the bundled weights never change under a name
        return out

    @classmethod
    def from_run(cls, run_dir: str | Path) -> Explainable:
        """A trained run: `model.keras` (loaded with safe_mode), `labels.json`, `config.json`.

        An imported SavedModel (no model.keras) is wrapped as engine.model.savedmodel says: opaque.
        """
        run = Path(run_dir)
        model_file = Run(run).model_path
        if not model_file.is_file():
            raise ExplainError(f"{run}: no model.keras in this run folder (was the run finished?)")
        stat = model_file.stat()  # before loading: a rewrite meanwhile must not lend its identity to old weights
        opaque = model_file.name == "saved_model.pb"  # an imported SavedModel: wrapped once its config is read
        model = None if opaque else _load_keras(model_file, run)
        try:
            labels = json.loads((run / "labels.json").read_text())
            config = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
        except (OSError, ValueError) as exc:
            raise ExplainError(f"{run}: labels.json or config.json is missing or not valid JSON ({exc})") from exc
        model = _load_savedmodel(model_file.parent, config) if opaque else model
        backbone = config.get("backbone")
        spec = backbones.get_spec(backbone) if backbone else None
        # an imported model's named convention (engine.backbones.conventions), else the backbone's
        preprocess = backbones.preprocess_of(config) if spec or config.get("imported") else backbones.registry.identity
        default = None
        if spec and spec.last_conv_layer:
            default = spec.last_conv_layer if _has_layer(model, spec.last_conv_layer) else None
        reason = savedmodel.OPAQUE_REASON if opaque else ""
        if spec and spec.source == "hub":
            reason = f"{spec.title} is an opaque TF Hub module: no inner layers"
        out = cls(model, preprocess, list(labels), run.name, default, reason)
        out.resize_policy = resize_policy_of(config)  # as the run was trained
        # a resumed or fine-tuned-again run rewrites model.keras: caches keyed by its stat then miss
        out.cache_folder = run / "channels"
        out.identity = f"run:{run.resolve()}:{stat.st_mtime_ns}:{stat.st_size}"
        return out

    def warm_up(self) -> Explainable:
        """Trace the compiled passes behind a first look (prediction, CAMs at the default layer); returns self."""
        try:
            layer = None if self.opaque_reason else self.default_layer()
        except ExplainError:
            layer = None  # no spatial layer: only predictions and input attributions apply
        self.compiled.warm_up(layer)
        return self

    # ---- layers ---------------------------------------------------------
    def layers(self) -> list[LayerInfo]:
        """Every layer, those inside a nested backbone included ("base/layer")."""
        return layer_infos(self.model)

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
        if self.opaque_reason:
            raise ExplainError(self.opaque_reason)
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
        """(H, W, 3) uint8 -> (S, S, 3) float32 in [0, 255], resized as for prediction (the run's policy)."""
        return imaging.resize(rgb, self.input_size, self.resize_policy).astype(np.float32)

    # ---- forward passes (all compiled: engine.model.compiled) ----------
    def logits(self, images: np.ndarray, progress=None) -> np.ndarray:
        """(N, S, S, 3) in [0, 255] -> (N, classes) logits."""
        return self.compiled.logits(images, progress)

    def probabilities(self, images: np.ndarray, progress=None) -> np.ndarray:
        """(N, S, S, 3) in [0, 255] -> (N, classes) softmax probabilities (float64)."""
        return softmax(self.logits(images, progress))

    def activations(self, images: np.ndarray, layer: str) -> np.ndarray:
        """(N, S, S, 3) in [0, 255] -> the layer's output (N, h, w, C) float32."""
        self.check_layer(layer)
        return self.compiled.activations(images, layer).astype(np.float32, copy=False)


def layer_infos(model) -> list[LayerInfo]:
    """Every layer of a Keras model, those inside a nested model included ("base/layer"); no InputLayer."""
    out = []
    for layer in model.layers:
        inner_layers = layer.layers if is_model(layer) else [layer]
        prefix = f"{layer.name}/" if is_model(layer) else ""
        for inner in inner_layers:
            if type(inner).__name__ == "InputLayer":
                continue
            shape = _shape(inner)
            out.append(
                LayerInfo(prefix + inner.name, type(inner).__name__, shape, inner.count_params(), len(shape) == 4)
            )
    return out


def _load_keras(model_file: Path, run: Path):
    """A run's model.keras, loaded with safe_mode (a damaged archive named as such, not "File not found")."""
    import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays

    broken = keras_archive_problem(model_file)  # Keras would call a damaged archive "File not found"
    if broken:
        raise ExplainError(f"{run}: {broken}; train or resume the run again to write a new one")
    try:
        return keras.models.load_model(model_file, safe_mode=True, compile=False)
    except Exception as exc:  # noqa: BLE001 - Keras raises many kinds for bad files
        raise ExplainError(
            f"{model_file}: cannot be loaded safely; it may be corrupted ({type(exc).__name__}: {exc})"
        ) from exc


def _load_savedmodel(folder: Path, config: dict):
    """An imported SavedModel wrapped to end in logits, at the size and channels of its import."""
    imported = config.get("imported") or {}
    try:
        size = int(config["data"]["image_size"])
        return savedmodel.opaque_model(folder, size, int(imported.get("channels", 3)), imported["output"])
    except ImportModelError as exc:
        raise ExplainError(f"{folder.parent}: its imported SavedModel cannot be used ({exc})") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise ExplainError(f"{folder.parent}: config.json does not say how the SavedModel was imported") from exc


def is_model(layer) -> bool:
    """Whether a layer is itself a Keras model (a nested base or head)."""
    import keras  # heavy: TensorFlow loads in seconds; only what runs a model pays

    return isinstance(layer, keras.Model)


def _has_layer(model, name: str) -> bool:
    try:
        model.get_layer(name)
        return True
    except ValueError:
        return False


def require_model(run: Run) -> None:
    """Raise EvaluationError while the run has no model.keras yet (still training, or killed before writing it)."""
    if not run.model_path.is_file():
        raise EvaluationError(f"{run.name} has no model.keras yet: only a finished (or stopped) run can be evaluated")


def run_model(run: Run) -> Explainable:
    """A trained run's classifier (Explainable.from_run), after require_model's clear error for an unfinished run."""
    require_model(run)
    return Explainable.from_run(run.path)


def list_runs(folder: Path) -> list[Path]:
    """Run folders (those holding a model: Run.model_path) under `folder`, newest first."""
    if not folder.is_dir():
        return []
    runs = [Run(p) for p in folder.iterdir() if Run(p).model_path.is_file()]
    return [r.path for r in sorted(runs, key=lambda r: r.model_path.stat().st_mtime, reverse=True)]
