"""Frozen, validated configuration dataclasses shared by the CLI, pages and runs."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from engine.data.splits import check_fractions
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
            raise ValueError(f"flip must be one of {', '.join(FLIP_MODES)}, got {self.flip!r}")
        for f in fields(self):
            if f.name != "flip" and not 0.0 <= getattr(self, f.name) <= 1.0:
                raise ValueError(f"augmentation {f.name} must be between 0 and 1, got {getattr(self, f.name)}")

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
                raise ValueError(f"augmentation {part!r}: use key=value with keys {', '.join(sorted(names))}")
            try:
                values[key] = raw if key == "flip" else float(raw)
            except ValueError as exc:
                raise ValueError(f"augmentation {part!r}: the value must be a number") from exc
        return cls(**values)

    # The classic tutorial choice, offered as a preset.
    @classmethod
    def standard(cls) -> AugmentConfig:
        return cls(flip="horizontal", rotation=0.1, zoom=0.1)


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
            raise ValueError(f"resize must be one of {', '.join(RESIZE_POLICIES)}, got {self.resize!r}")
        if not 16 <= self.image_size <= 1024:
            raise ValueError(f"image size must be 16..1024 pixels, got {self.image_size}")
        check_fractions(self.val_frac, self.test_frac)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> DataConfig:
        data = dict(data)
        data["augment"] = AugmentConfig(**data.get("augment", {}))
        return cls(**data)
