"""Frozen, validated configuration dataclasses shared by the CLI, pages and runs.

A value out of range, unknown or malformed raises ConfigError (a ConvScopeError)
with a message for the user.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from engine.errors import ConfigError
from engine.imaging import RESIZE_POLICIES

FLIP_MODES = ("none", "horizontal", "vertical", "horizontal_and_vertical")


@dataclass(frozen=True)
class AugmentConfig:
    """Random augmentation applied to training batches only.

    Factors follow the Keras layers: `rotation` is a fraction of a full turn
    (0.1 = up to ±36°), `zoom` and `translation` fractions of the image size,
    `contrast` and `brightness` fractions of the value range. 0 turns one off.
    """

    flip: str = "none"
    rotation: float = 0.0
    zoom: float = 0.0
    translation: float = 0.0
    contrast: float = 0.0
    brightness: float = 0.0

    def __post_init__(self) -> None:
        if self.flip not in FLIP_MODES:
            raise ConfigError(f"flip must be one of {', '.join(FLIP_MODES)}, got {self.flip!r}")
        for f in fields(self):
            if f.name != "flip" and not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ConfigError(f"augmentation {f.name} must be between 0 and 1, got {getattr(self, f.name)}")

    @property
    def enabled(self) -> bool:
        return self != AugmentConfig()

    @classmethod
    def parse(cls, text: str) -> AugmentConfig:
        """`flip=horizontal,rotation=0.1,zoom=0.1` (the CLI form); `none` or '' for none."""
        if text.strip() in ("", "none"):
            return cls()
        values: dict = {}
        names = {f.name for f in fields(cls)}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, raw = part.partition("=")
            if not sep or key not in names:
                raise ConfigError(f"augmentation {part!r}: use key=value with keys {', '.join(sorted(names))}")
            try:
                values[key] = raw if key == "flip" else float(raw)
            except ValueError as exc:
                raise ConfigError(f"augmentation {part!r}: the value must be a number") from exc
        return cls(**values)

    # The classic tutorial choice, offered as a preset.
    @classmethod
    def standard(cls) -> AugmentConfig:
        return cls(flip="horizontal", rotation=0.1, zoom=0.1)


def check_fractions(val_frac: float, test_frac: float) -> None:
    """Raise ConfigError unless both fractions are in [0, 1) and leave room for training."""
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ConfigError(
            f"validation and test fractions must be in [0, 1) and sum below 1, got {val_frac} and {test_frac}"
        )


@dataclass(frozen=True)
class DataConfig:
    """Which data, how it is split, resized and augmented."""

    source: str = "shapes"
    image_size: int = 224
    resize: str = "stretch"
    val_frac: float = 0.15
    test_frac: float = 0.15
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise ConfigError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {self.resize!r}")
        if not 16 <= self.image_size <= 1024:
            raise ConfigError(f"image size must be 16..1024 pixels, got {self.image_size}")
        check_fractions(self.val_frac, self.test_frac)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> DataConfig:
        data = dict(data)
        data["augment"] = AugmentConfig(**data.get("augment", {}))
        return cls(**data)


TRAIN_MODES = ("feature", "scratch")  # what a new run from data can be; a fine-tune starts from a run
MODES = (*TRAIN_MODES, "finetune", "imported")  # "imported": a model brought from a file (engine.importing)
OPTIMIZERS = ("adam", "sgd", "rmsprop")


# The L2 penalty of the default head: with it, a head without hidden layers trained to
# convergence is the model a logistic-regression probe fits (softmax regression with a mild
# L2 penalty), and it converges instead of drifting towards ever larger weights, so early
# stopping on the validation loss ends it there (bench/probe.py measures both on one split).
DEFAULT_HEAD_L2 = 1e-3


@dataclass(frozen=True)
class HeadConfig:
    """The classifier head on a frozen backbone: GAP -> [Dense(relu) -> Dropout]* -> Dense logits.

    `dropout` is applied after every hidden layer, and before the logits
    when there are no hidden layers (the Keras tutorial's Dropout(0.2)).
    `l2` is the penalty `l2 * sum(w ** 2)` on every Dense kernel of the head,
    added to the mean loss; 0 turns it off (the tutorial recipes use none).
    """

    hidden: tuple[int, ...] = ()
    dropout: float = 0.0
    l2: float = DEFAULT_HEAD_L2

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if any(not 1 <= h <= 8192 for h in self.hidden):
            raise ConfigError(f"hidden layer sizes must be 1..8192 units, got {list(self.hidden)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.l2 <= 1.0:
            raise ConfigError(f"the head's L2 penalty must be between 0 (off) and 1, got {self.l2}")

    @classmethod
    def parse(cls, hidden: str, dropout: float = 0.0, l2: float = DEFAULT_HEAD_L2) -> HeadConfig:
        """`256,128` (or '' / `none`) -> hidden layer sizes."""
        text = hidden.strip()
        if text in ("", "none", "0"):
            return cls((), dropout, l2)
        try:
            sizes = tuple(int(p) for p in text.split(","))
        except ValueError as exc:
            raise ConfigError(f"hidden layers {hidden!r}: give sizes like 256 or 256,128") from exc
        return cls(sizes, dropout, l2)


BN_MODES = ("frozen", "train")


@dataclass(frozen=True)
class FinetuneConfig:
    """How a fine-tune continues a finished run (its parent).

    Attributes:
        parent: the parent run's folder (feature mode or an earlier fine-tune).
        unfreeze_from: the first layer that trains: a block of the backbone spec
            (`block5`), a layer name, a layer index into the model (`100`, the Keras
            tutorial's MobileNetV2 boundary; `-15`: the backbone's last 15 layers),
            or `head` (the head alone). Everything below stays frozen.
        unfreeze_top: or: the top N blocks of the backbone (the head always trains).
        bn: `frozen` keeps BatchNormalization in inference mode with its moving
            statistics unchanged (the Keras guide's advice); `train` updates them.
        layer_decay: layer-wise learning-rate decay: the head trains at the full
            rate, each block below at this factor of the one above; 1 turns it off.
        warmup: the fraction of the steps over which the rate rises from 0 before
            its cosine decay.
        parent_epochs: epochs the parent ran; the fine-tune's count continues from there.
    """

    parent: str
    unfreeze_from: str = ""
    unfreeze_top: int = 0
    bn: str = "frozen"
    layer_decay: float = 1.0
    warmup: float = 0.1
    parent_epochs: int = 0

    def __post_init__(self) -> None:
        if bool(self.unfreeze_from) == bool(self.unfreeze_top):
            raise ConfigError(
                "say where fine-tuning starts: either unfreeze from a block or layer, or unfreeze the top N blocks "
                f"(got unfreeze_from={self.unfreeze_from!r}, unfreeze_top={self.unfreeze_top})"
            )
        if self.unfreeze_top < 0:
            raise ConfigError(f"the number of top blocks to unfreeze must be at least 1, got {self.unfreeze_top}")
        if self.bn not in BN_MODES:
            raise ConfigError(f"bn must be one of {', '.join(BN_MODES)}, got {self.bn!r}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"layer-wise decay must be in (0, 1] (1 = off), got {self.layer_decay}")
        if not 0.0 <= self.warmup < 1.0:
            raise ConfigError(f"warm-up must be a fraction of the steps in [0, 1), got {self.warmup}")


OUTPUT_KINDS = ("softmax", "logits", "binary_logit", "sigmoid")


@dataclass(frozen=True)
class ImportConfig:
    """How a model brought from a file became a run (engine.importing); a fine-tune of it keeps this.

    Attributes:
        file: the file's name as given (no folder).
        sha256: of the file (of the zip, or of saved_model.pb for a SavedModel folder).
        format: `keras` (a .keras archive or an allowed .h5) or `savedmodel` (opaque).
        output: what the file's model ends in: `softmax` probabilities, raw `logits`, one
            `binary_logit` or one `sigmoid` probability for two classes. The run's model.keras
            gives logits whatever it was (engine.importing.model.inspect).
        preprocess: an engine.backbones.conventions name.
        preprocess_reason: why that convention, in words.
        channels: 1 (grayscale) or 3.
    """

    file: str
    sha256: str
    format: str = "keras"
    output: str = "logits"
    preprocess: str = "raw"
    preprocess_reason: str = ""
    channels: int = 3

    def __post_init__(self) -> None:
        if self.format not in ("keras", "savedmodel"):
            raise ConfigError(f"an imported model's format is keras or savedmodel, got {self.format!r}")
        if self.output not in OUTPUT_KINDS:
            raise ConfigError(f"output must be one of {', '.join(OUTPUT_KINDS)}, got {self.output!r}")
        if self.channels not in (1, 3):
            raise ConfigError(f"a model takes 1 or 3 channels, got {self.channels}")


# What a run gets when nobody says otherwise, per mode (TrainConfig(mode=...), the CLI, the Train page).
# - feature: an epoch on cached features costs milliseconds, so the head trains to convergence: up to
#   200 epochs at a rate that gets there in about a hundred, ended by early stopping 10 epochs after the
#   last better validation loss, the best epoch's weights kept.
# - scratch: a CNN from random weights; early stopping ends it once validation stops improving
#   (on small data it overfits: see engine.training.fit.scratch_outlook).
MODE_DEFAULTS: dict[str, dict] = {
    "feature": {"epochs": 200, "learning_rate": 1e-2, "early_stopping": 10},
    "scratch": {"epochs": 60, "learning_rate": 1e-3, "early_stopping": 10},
    # a fine-tune: a few epochs at the parent's rate / 10 (engine.training.finetune sets it from the
    # parent), the whole schedule run (warm-up and cosine decay), as in the Keras guide.
    "finetune": {"epochs": 10, "learning_rate": 1e-3, "early_stopping": 0},
    # an imported model never trains as such (a fine-tune of it does): these only fill the fields
    "imported": {"epochs": 1, "learning_rate": 1e-3, "early_stopping": 0},
}


def mode_defaults(mode: str) -> dict:
    """{"epochs", "learning_rate", "early_stopping"} of `mode` (a copy)."""
    if mode not in MODE_DEFAULTS:
        raise ConfigError(f"mode must be one of {', '.join(MODE_DEFAULTS)}, got {mode!r}")
    return dict(MODE_DEFAULTS[mode])


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; saved as the run's config.json.

    `epochs`, `learning_rate` and `early_stopping` left out (None) take the
    mode's defaults (MODE_DEFAULTS); `dataclasses.replace` keeps the values
    a config already has, so give them again when replacing the mode.

    Attributes:
        mode: `feature` (frozen pretrained backbone, train a head on cached
            features) or `scratch` (a scratch CNN trained from random weights).
        early_stopping: patience in epochs on validation loss (training loss
            without a validation split); the best epoch's weights are kept
            at the end. 0 turns it off.
        aug_views: with augmentation on in feature mode, how many augmented
            views of each training image are computed once and cached; each
            epoch draws one view per image (the original counts as a view).
    """

    data: DataConfig = field(default_factory=DataConfig)
    backbone: str = "efficientnet_lite0"
    mode: str = "feature"
    head: HeadConfig = field(default_factory=HeadConfig)
    epochs: int | None = None
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float | None = None
    early_stopping: int | None = None
    class_weights: bool = False
    aug_views: int = 4
    seed: int = 0
    preset: str = ""
    finetune: FinetuneConfig | None = None
    imported: ImportConfig | None = None  # an imported model and its fine-tunes: how it was brought in
    timeline: bool = True  # Grad-CAM of a few validation images after every epoch (engine.training.timeline)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if (self.mode == "finetune") != (self.finetune is not None):
            raise ConfigError("a fine-tune needs its FinetuneConfig, and only a fine-tune has one")
        if self.mode == "imported" and self.imported is None:
            raise ConfigError("an imported run needs its ImportConfig")
        for name, value in MODE_DEFAULTS[self.mode].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 1 <= self.epochs <= 1000:
            raise ConfigError(f"epochs must be 1..1000, got {self.epochs}")
        if not 1 <= self.batch_size <= 4096:
            raise ConfigError(f"batch size must be 1..4096, got {self.batch_size}")
        if not 0 < self.learning_rate <= 100:
            raise ConfigError(f"learning rate must be above 0 (and at most 100), got {self.learning_rate}")
        if not 0 <= self.early_stopping <= 1000:
            raise ConfigError(
                f"early-stopping patience must be 0 (off) or a number of epochs, got {self.early_stopping}"
            )
        if not 1 <= self.aug_views <= 32:
            raise ConfigError(f"augmented views must be 1..32, got {self.aug_views}")

    @property
    def total_epochs(self) -> int:
        """The last epoch's number: a fine-tune counts on from its parent's epochs."""
        return self.epochs + (self.finetune.parent_epochs if self.finetune else 0)

    def to_json(self) -> dict:
        out = asdict(self)
        out["head"]["hidden"] = list(self.head.hidden)
        for optional in ("finetune", "imported"):
            if out[optional] is None:
                out.pop(optional)
        return out

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        data = {k: v for k, v in data.items() if k in {f.name for f in fields(cls)}}
        data["data"] = DataConfig.from_json(data.get("data", {}))
        data["head"] = HeadConfig(**{"l2": 0.0, **data.get("head", {})})  # saved before heads had a penalty
        if data.get("finetune") is not None:
            data["finetune"] = FinetuneConfig(**data["finetune"])
        if data.get("imported") is not None:
            data["imported"] = ImportConfig(**data["imported"])
        return cls(**data)
