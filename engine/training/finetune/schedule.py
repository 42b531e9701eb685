"""A fine-tune's schedule: warm-up then cosine decay, with layer-wise rate decay below the head.

The learning rate warms up from 0 over the first `warmup` fraction of the steps, then follows a
cosine decay to 0; with `layer_decay` < 1 each block below the head trains at that factor of the
rate of the block above.
"""

from __future__ import annotations

from engine.config import TrainConfig
from engine.training import loop
from engine.training.finetune.layers import model_blocks


def _layerwise(base):
    """`base` (a Keras optimizer class) whose rate is scaled per variable by `multipliers` (variable path -> factor).

    Keras 3 has no MultiOptimizer; scaling the rate inside update_step keeps one optimizer, one
    state and one checkpoint, and works for Adam too (scaling gradients would not: Adam
    divides their scale away).
    """
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    @keras.saving.register_keras_serializable(package="convscope", name=f"Layerwise{base.__name__}")
    class Layerwise(base):
        def __init__(self, *args, multipliers: dict | None = None, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.multipliers = dict(multipliers or {})

        def build(self, variables) -> None:
            super().build(variables)
            self._factors = [float(self.multipliers.get(v.path, 1.0)) for v in variables]

        def update_step(self, gradient, variable, learning_rate):
            factor = self._factors[self._get_variable_index(variable)]
            return super().update_step(gradient, variable, learning_rate * factor)

        def get_config(self) -> dict:
            return {**super().get_config(), "multipliers": self.multipliers}

    Layerwise.__name__ = Layerwise.__qualname__ = f"Layerwise{base.__name__}"
    return Layerwise


_LAYERWISE: dict[str, type] = {}


def make_optimizer(config: TrainConfig, steps: int, multipliers: dict[str, float] | None = None):
    """The fine-tune's optimizer: warm-up then cosine decay over `steps`; per-variable factors if given."""
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    ft = config.finetune
    warmup = int(round(steps * ft.warmup))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else config.learning_rate,
        decay_steps=max(steps - warmup, 1),
        warmup_target=config.learning_rate if warmup else None,
        warmup_steps=warmup,
    )
    base = type(loop.make_optimizer(config.optimizer, 1e-3))
    if not multipliers:
        return loop.make_optimizer(config.optimizer, schedule)
    if base.__name__ not in _LAYERWISE:
        _LAYERWISE[base.__name__] = _layerwise(base)
    kwargs = {"momentum": 0.9} if config.optimizer == "sgd" else {}
    return _LAYERWISE[base.__name__](learning_rate=schedule, multipliers=multipliers, **kwargs)


def decay_multipliers(model, backbone: str, first: int, decay: float) -> dict[str, float]:
    """Variable path -> rate factor: 1 for the head, `decay` for the top block, `decay**2` below it, ..."""
    if decay >= 1.0:
        return {}
    groups = [b for b in model_blocks(model, backbone) if b.last >= first]  # the head last
    out: dict[str, float] = {}
    for depth, block in enumerate(reversed(groups)):
        factor = decay**depth
        for name in block.layer_names:
            for v in model.get_layer(name).trainable_weights:
                out[v.path] = factor
    return out
