"""engine.config: bad values raise ConfigError, a ConvScopeError (bad input), with the messages users know."""

import pytest

from engine.config import AugmentConfig, DataConfig, FinetuneConfig, HeadConfig, TrainConfig, mode_defaults
from engine.errors import ConfigError, ConvScopeError


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: AugmentConfig(flip="sideways"),
            "flip must be one of none, horizontal, vertical, horizontal_and_vertical, got 'sideways'",
        ),
        (lambda: AugmentConfig(zoom=2.0), "augmentation zoom must be between 0 and 1, got 2.0"),
        (
            lambda: AugmentConfig.parse("blur=1"),
            "augmentation 'blur=1': use key=value with keys brightness, contrast, flip, rotation, translation, zoom",
        ),
        (lambda: AugmentConfig.parse("zoom=lots"), "augmentation 'zoom=lots': the value must be a number"),
        (lambda: DataConfig(resize="squash"), "resize must be one of stretch, crop, pad, got 'squash'"),
        (lambda: DataConfig(image_size=8), "image size must be 16..1024 pixels, got 8"),
        (
            lambda: DataConfig(val_frac=0.6, test_frac=0.5),
            "validation and test fractions must be in [0, 1) and sum below 1, got 0.6 and 0.5",
        ),
        (lambda: HeadConfig.parse("big"), "hidden layers 'big': give sizes like 256 or 256,128"),
        (lambda: HeadConfig(dropout=1.0), "dropout must be in [0, 1), got 1.0"),
        (
            lambda: FinetuneConfig(parent="p", unfreeze_from="block5", bn="thaw"),
            "bn must be one of frozen, train, got 'thaw'",
        ),
        (lambda: mode_defaults("magic"), "mode must be one of feature, scratch, finetune, imported, got 'magic'"),
        (lambda: TrainConfig(optimizer="adagrad"), "optimizer must be one of adam, sgd, rmsprop, got 'adagrad'"),
        (lambda: TrainConfig(epochs=0), "epochs must be 1..1000, got 0"),
        (lambda: TrainConfig(mode="finetune"), "a fine-tune needs its FinetuneConfig, and only a fine-tune has one"),
    ],
)
def test_bad_config_raises_config_error_with_its_message(make, message):
    with pytest.raises(ConfigError) as caught:
        make()
    assert str(caught.value) == message


def test_config_error_is_bad_input_and_not_a_value_error():
    """The CLI and pages catch ConvScopeError as bad input; a bare ValueError is a bug, never caught as one."""
    assert issubclass(ConfigError, ConvScopeError)
    assert not issubclass(ConvScopeError, ValueError)
