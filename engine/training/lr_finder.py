"""Learning-rate finder: a short mock training with an exponentially growing rate (Smith 2015).

`sweep()` trains the model's trainable weights for at most `max_steps` batches, the
rate growing from `start_lr` to `end_lr`, records the loss of every batch and
suggests a rate from where the smoothed loss falls fastest. It follows fastai's
`lr_find` (`fastai/callback/schedule.py`: LRFinder, SuggestionMethod.steep and
.minimum): bias-corrected smoothing, stop when the loss exceeds 4x its best,
and the first tenth and last five points left out of the suggestions.

The model's weights are restored when the sweep ends, however it ends.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from engine.config import TrainConfig
from engine.errors import LRFinderError
from engine.training.callbacks import noop
from engine.training.finetune.parent import open_data, parent_of
from engine.training.finetune.setup import prepare
from engine.training.loop import make_optimizer

Progress = Callable[[int, int], None]  # progress(done, total) after every step
OPTIMIZERS = ("adam", "sgd", "rmsprop")
SKIP_END = 5  # points left out at the end: the loss there is already blowing up (fastai's skip_end)
SLOPE_SPAN = 0.5  # decades of learning rate across which the slope of the loss is measured


@dataclass(frozen=True)
class LRSweep:
    """The result of a learning-rate sweep.

    Attributes:
        lrs: learning rate of each recorded step, exponentially spaced.
        losses: the bias-corrected exponential moving average of `raw`.
        raw: the loss of each batch, as trained.
        steepest: rate at the most negative slope of `losses` against log10(rate); None if too few points.
        min_over_10: rate at the lowest smoothed loss, divided by 10; None if nothing was recorded.
        suggestion: the rate to use: `steepest` if valid, else `min_over_10`.
        diverged: the loss blew up (or became NaN) and the sweep stopped early.
        stopped: the stop event ended the sweep early.
    """

    lrs: list[float]
    losses: list[float]
    raw: list[float]
    steepest: float | None
    min_over_10: float | None
    suggestion: float | None
    diverged: bool
    stopped: bool = False

    def to_json(self) -> dict:
        return {
            "lrs": list(self.lrs),
            "losses": list(self.losses),
            "suggestion": self.suggestion,
            "steepest": self.steepest,
            "min_over_10": self.min_over_10,
            "diverged": self.diverged,
        }


def schedule(start_lr: float, end_lr: float, steps: int) -> np.ndarray:
    """Exponentially spaced rates: lr_i = start * (end / start) ** (i / (steps - 1)), shape (steps,)."""
    return start_lr * (end_lr / start_lr) ** (np.arange(steps) / (steps - 1))


def suggest(
    lrs: list[float], losses: list[float], planned: int | None = None
) -> tuple[float | None, float | None, float | None]:
    """Steepest, minimum / 10 and the suggestion from a sweep's smoothed losses.

    Like fastai, the first `planned // 10` points (the smoothing is still warming up
    there) and the last 5 (the blow-up) are left out; a sweep too short for that
    uses all its points. Unlike fastai, the slope at a point is taken across
    SLOPE_SPAN decades around it rather than between neighbours: on 100-step
    and 200-step sweeps of a small classifier (Adam and SGD), batch-to-batch noise
    made the neighbour slope pick a rate near 1e-6, where nothing trains yet, in
    10 of 32 seeded runs; the wider span picked 1e-2 to 2e-1 in all 32.

    Args:
        lrs: (n,) rates, exponentially spaced; losses: (n,) smoothed losses;
            planned: the sweep's max_steps (default n).

    Returns:
        (steepest, min_over_10, suggestion); None where there are too few points.
    """
    n = len(losses)
    if n == 0:
        return None, None, None
    start, end = (planned or n) // 10, n - SKIP_END
    if end - start < 3:
        start, end = 0, n
    lr = np.asarray(lrs[start:end], dtype=np.float64)
    log_lr = np.log10(lr)
    loss = np.asarray(losses[start:end], dtype=np.float64)
    lowest = int(np.argmin(loss))
    min_over_10 = float(lr[lowest] / 10)
    if len(loss) < 2:
        return None, min_over_10, min_over_10
    per_step = (log_lr[-1] - log_lr[0]) / (len(log_lr) - 1)
    half = round(SLOPE_SPAN / 2 / per_step) if per_step > 0 else 1
    k = max(1, min(half, (len(loss) - 1) // 2))  # points on each side of the centre
    if len(loss) > 2 * k:
        centre, slopes = k, (loss[2 * k :] - loss[: -2 * k]) / (log_lr[2 * k :] - log_lr[: -2 * k])
    else:  # two points: the one slope there is, at the left point as fastai
        centre, slopes = 0, np.diff(loss) / np.diff(log_lr)
    steep = int(np.argmin(slopes)) + centre
    steepest = float(lr[steep])
    # Prefer the steepest descent: the rate at which the loss falls fastest while training is
    # still stable. It is meaningless when the curve never falls (slope >= 0) or when it sits at
    # or past the minimum (a dip in the noise of the blow-up); then fall back to one tenth of the
    # rate at the minimum, Smith's conservative rule of an order of magnitude below where the loss
    # stops improving.
    valid = slopes.min() < 0 and steep < lowest
    return steepest, min_over_10, steepest if valid else min_over_10


def _cycle(batches) -> Iterable:
    """Yield (x, y) batches forever, starting over at the end; stop if a pass yields nothing.

    A sequence (list, keras.utils.PyDataset) is indexed, calling its on_epoch_end
    between passes so it can reshuffle; any other iterable (a tf.data.Dataset) is
    iterated afresh each pass. A one-shot iterator ends after its first pass.
    """
    if hasattr(batches, "__getitem__") and hasattr(batches, "__len__"):
        while True:
            n = len(batches)
            if n == 0:
                return
            for k in range(n):
                yield batches[k]
            if hasattr(batches, "on_epoch_end"):
                batches.on_epoch_end()
    else:
        while True:
            empty = True
            for batch in batches:
                empty = False
                yield batch
            if empty:
                return


def _check(start_lr: float, end_lr: float, max_steps: int, beta: float, diverge: float, optimizer: str) -> None:
    if not 0 < start_lr < end_lr:
        raise LRFinderError(f"Need 0 < start_lr < end_lr, got start_lr={start_lr}, end_lr={end_lr}.")
    if max_steps < 2:
        raise LRFinderError(f"max_steps must be at least 2, got {max_steps}; 100 to 200 is usual.")
    if not 0 <= beta < 1:
        raise LRFinderError(f"beta must be in [0, 1), got {beta}; 0.98 is usual.")
    if diverge <= 1:
        raise LRFinderError(f"diverge must be above 1, got {diverge}; 4 is usual.")
    if optimizer not in OPTIMIZERS:
        raise LRFinderError(f"Unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")


def sweep(
    model,
    batches,
    *,
    loss_fn=None,
    optimizer: str = "adam",
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    max_steps: int = 200,
    beta: float = 0.98,
    diverge: float = 4.0,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
) -> LRSweep:
    """Train for at most `max_steps` batches with an exponentially growing rate and record the loss.

    Only the model's trainable weights train (set `trainable` before calling). The
    model's compile state is not touched: the sweep uses its own optimizer and a
    compiled (tf.function) training step. All weights, non-trainable ones such as
    BatchNorm statistics included, are saved at the start and restored at the end,
    also when it fails or is stopped, so it may run on a model the caller keeps;
    the model must still not be used by another thread while the sweep runs.

    Args:
        model: keras.Model with logits out, input (B, ...) or a list of inputs.
        batches: keras.utils.PyDataset, a sequence or an iterable of (x, y) batches: x (B, ...)
            or a list of arrays, y (B,) int labels. Cycled over when shorter than max_steps.
        loss_fn: keras loss taking (y, logits); default sparse categorical cross-entropy from logits.
        optimizer: "adam", "sgd" (momentum 0.9) or "rmsprop".
        start_lr, end_lr: the first and the last rate of the schedule.
        max_steps: planned steps; the schedule spans them even if the sweep stops early.
        beta: smoothing of the recorded loss.
        diverge: stop once the smoothed loss exceeds `diverge` x its best so far.
        stop: checked before every step; when set the sweep ends with what it has.
        progress: progress(done, total) after every step.

    Returns:
        LRSweep with one point per completed step (a NaN / infinite loss is not recorded).
    """
    _check(start_lr, end_lr, max_steps, beta, diverge, optimizer)
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

    variables = list(model.trainable_variables)
    if not variables:
        raise LRFinderError("The model has no trainable weights: unfreeze the layers to fine-tune before the sweep.")
    loss_fn = loss_fn or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    rates = schedule(start_lr, end_lr, max_steps)
    opt = make_optimizer(optimizer, float(rates[0]))
    saved = model.get_weights()
    lrs: list[float] = []
    raw: list[float] = []
    losses: list[float] = []
    diverged = stopped = False
    try:
        opt.build(variables)  # create the optimizer's slots eagerly, not inside the traced step

        # reduce_retracing: a smaller last batch gets a shape-polymorphic trace, not one per size.
        @tf.function(reduce_retracing=True)
        def train_step(x, y):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)
                loss = loss_fn(y, logits)
                if model.losses:  # weight penalties, as Keras fit adds them
                    loss = loss + tf.add_n(model.losses)
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables, strict=True))
            return loss

        best, avg = math.inf, 0.0
        data = iter(_cycle(batches))
        for i in range(max_steps):
            if stop is not None and stop.is_set():
                stopped = True
                break
            batch = next(data, None)
            if batch is None:
                break
            x, y = batch[0], batch[1]  # a PyDataset may add sample weights: not used here
            x = tf.nest.map_structure(tf.convert_to_tensor, list(x) if isinstance(x, tuple) else x)
            opt.learning_rate = float(rates[i])  # assigns the optimizer's variable: no retrace
            value = float(train_step(x, tf.convert_to_tensor(y)))
            if not math.isfinite(value):
                diverged = True
                break
            avg = beta * avg + (1 - beta) * value
            smoothed = avg / (1 - beta ** (i + 1))
            lrs.append(float(rates[i]))
            raw.append(value)
            losses.append(smoothed)
            best = min(best, smoothed)
            if progress is not None:
                progress(i + 1, max_steps)
            if smoothed > diverge * best:
                diverged = True
                break
    finally:
        model.set_weights(saved)
    steepest, min_over_10, suggestion = suggest(lrs, losses, max_steps)
    return LRSweep(lrs, losses, raw, steepest, min_over_10, suggestion, diverged, stopped)


# ---- on a fine-tune's setup ---------------------------------------------------------


def lr_find(
    config: TrainConfig,
    *,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    report=noop,
    progress=None,
    stop=None,
) -> dict:
    """The learning-rate sweep on the fine-tune setup of `config` (the head alone with `unfreeze_from="head"`).

    It fits a private copy of the parent's classifier (on the boundary cache when it fits), so the
    parent's files never change.

    Returns:
        {"lrs", "losses", "suggestion", "steepest", "min_over_10", "diverged", "parent",
         "trainable_params", "boundary"}.
    """
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    parent = parent_of(config.finetune.parent)
    dataset, splits = open_data(config, parent, report, stop)
    keras.utils.set_random_seed(config.seed)
    setup = prepare(config, parent, dataset, splits, report, stop, mixed=False)  # float32: no loss scaling needed
    result = sweep(
        setup.fitted,
        setup.train_data,
        optimizer=config.optimizer,
        start_lr=start_lr,
        end_lr=end_lr,
        max_steps=steps,
        stop=stop,
        progress=progress,
    )
    return {
        **result.to_json(),
        "parent": parent.name,
        "trainable_params": setup.params["trainable"],
        "boundary": setup.boundary,
    }
