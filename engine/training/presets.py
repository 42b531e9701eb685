"""The classic tutorial recipes as one-click starting points (see RECIPES.md).

A preset sets the backbone, mode, image size, head, optimizer, schedule,
augmentation and split fractions of a TrainConfig; the data source, resize
policy and seed stay the user's. The fine-tuning halves of the recipes
(unfreezing layers) are not part of a preset: `followup` describes them, and
a page offers them only where a fine-tuning step exists.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from engine.config import AugmentConfig, HeadConfig, TrainConfig
from engine.errors import ConfigError, FinetuneError


@dataclass(frozen=True)
class Preset:
    name: str
    title: str
    published: str  # the recipe's published result, the accuracy anchor
    backbone: str
    mode: str = "feature"
    image_size: int = 224
    head: HeadConfig = field(default_factory=lambda: HeadConfig(l2=0.0))  # the recipes use no penalty
    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_frac: float = 0.15
    test_frac: float = 0.15
    note: str = ""
    followup: str = ""  # the recipe's next step after this preset (fine-tuning), in words

    def apply(self, config: TrainConfig) -> TrainConfig:
        """`config` with this recipe's choices (data source, resize and seed kept)."""
        data = replace(
            config.data,
            image_size=self.image_size,
            augment=self.augment,
            val_frac=self.val_frac,
            test_frac=self.test_frac,
        )
        return replace(
            config,
            data=data,
            backbone=self.backbone,
            mode=self.mode,
            head=self.head,
            epochs=self.epochs,
            batch_size=self.batch_size,
            optimizer=self.optimizer,
            learning_rate=self.learning_rate,
            early_stopping=0,
            class_weights=False,
            preset=self.name,
        )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "hub-course-mobilenet",
            "TF Hub course: MobileNetV2 feature vector",
            "cats_vs_dogs ~97% validation accuracy after 6 epochs; tf_flowers ~90%",
            backbone="hub_mobilenet_v2",
            epochs=6,
            val_frac=0.2,
            test_frac=0.0,
            note="pixels scaled to [0, 1], frozen extractor, Dense(n) head, Adam, batch 32, 80/20 split",
        ),
        Preset(
            "hub-course-inception",
            "TF Hub course: Inception V3 feature vector",
            "tf_flowers ~88.6% validation accuracy after 6 epochs",
            backbone="hub_inception_v3",
            image_size=299,
            epochs=6,
            val_frac=0.2,
            test_frac=0.0,
            note="as the MobileNet one, at 299 px",
        ),
        Preset(
            "keras-tutorial-mobilenet",
            "Keras transfer-learning tutorial: MobileNetV2 (feature extraction)",
            "cats_and_dogs_filtered ~96% validation accuracy after feature extraction",
            backbone="mobilenet_v2",
            image_size=160,
            head=HeadConfig((), 0.2, l2=0.0),
            learning_rate=1e-4,
            augment=AugmentConfig(flip="horizontal", rotation=0.2),
            note="inputs scaled to [-1, 1], GAP, Dropout(0.2), Dense logits, Adam 1e-4, 10 epochs",
            followup="fine-tuning from layer 100 of 154 (BatchNorm kept in inference mode), RMSprop 1e-5, "
            "10 more epochs: ~98.5% validation accuracy",
        ),
        Preset(
            "vgg16-head-only",
            "VGG16 as a fixed feature extractor",
            "no published figure; a classic baseline",
            backbone="vgg16",
            note="VGG16 frozen, a new Dense/softmax head",
        ),
        Preset(
            "alexnet-scratch",
            "AlexNet from scratch",
            "overfits on small data: a teaching contrast with transfer learning",
            backbone="alexnet",
            mode="scratch",
            epochs=20,
            augment=AugmentConfig(rotation=10 / 360, translation=0.1, zoom=0.1),
            note="He initialisation, rotation 10 degrees, shifts 0.1, zoom 0.1 (no shear), Adam 1e-3, TensorBoard logs",
        ),
    )
}


def get(name: str) -> Preset:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


# ---- the fine-tuning halves ------------------------------------------------------


@dataclass(frozen=True)
class FinetunePreset:
    """A recipe's fine-tuning step: where to unfreeze, the optimizer, the rate and the epochs.

    `unfreeze_from` is a layer index into the backbone as the recipe counts it (`100`: layers
    100 and up train), or counted from the backbone's end (`-15`: its last 15 layers).
    `learning_rate` None keeps the fine-tune default (the parent's rate / 10).
    """

    name: str
    title: str
    published: str
    backbone: str
    unfreeze_from: str
    epochs: int = 10
    optimizer: str | None = None
    learning_rate: float | None = None
    note: str = ""

    def options(self, parent) -> dict:
        """finetune_config() keyword arguments for fine-tuning `parent` (a Run) with this recipe.

        Raises:
            FinetuneError: the parent was trained on another backbone than the recipe's.
        """
        backbone = parent.config().get("backbone")
        if backbone != self.backbone:
            trained = f"was trained on {backbone}" if backbone else "is an imported model (no backbone)"
            raise FinetuneError(f"the {self.name} recipe fine-tunes {self.backbone}; {parent.name} {trained}")
        out: dict = {"unfreeze_from": self.unfreeze_from, "epochs": self.epochs}
        if self.optimizer:
            out["optimizer"] = self.optimizer
        if self.learning_rate:
            out["learning_rate"] = self.learning_rate
        return out


FINETUNE_PRESETS: dict[str, FinetunePreset] = {
    p.name: p
    for p in (
        FinetunePreset(
            "keras-tutorial-mobilenet",
            "Keras transfer-learning tutorial: fine-tune MobileNetV2 from layer 100",
            "cats_and_dogs_filtered ~98.5% validation accuracy after fine-tuning",
            backbone="mobilenet_v2",
            unfreeze_from="100",
            optimizer="rmsprop",
            learning_rate=1e-5,
            note="layers 100-154 train, BatchNorm in inference mode, RMSprop 1e-5, 10 more epochs",
        ),
        FinetunePreset(
            "inception-top15",
            "InceptionV3: all but the last 15 layers frozen",
            "no published figure (a 4-class chest CT set in the original)",
            backbone="inception_v3",
            unfreeze_from="-15",
            epochs=8,
            note="the last 15 layers of InceptionV3 train with the head, 8 epochs",
        ),
        FinetunePreset(
            "vgg16-freeze-8",
            "VGG16: the first 8 layers frozen, the rest retrained",
            "no published figure; a classic baseline",
            backbone="vgg16",
            unfreeze_from="8",
            note="layers 8 and up of VGG16 train (blocks 3-5's convolutions and the head)",
        ),
    )
}


def get_finetune(name: str) -> FinetunePreset:
    if name not in FINETUNE_PRESETS:
        raise ConfigError(f"unknown fine-tune preset {name!r}; choose one of: {', '.join(FINETUNE_PRESETS)}")
    return FINETUNE_PRESETS[name]
