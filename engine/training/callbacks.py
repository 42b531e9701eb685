"""What watches a fit: progress reports with the time left, Stop within one batch, NaN detection,
the per-epoch history and checkpoint, early stopping and TensorBoard logs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from engine.config import TrainConfig
from engine.runs import Run
from engine.training import distribute

Report = Callable[..., None]  # report(stage=..., **fields): progress for the UI or the CLI
HISTORY_KEYS = ("loss", "accuracy", "val_loss", "val_accuracy")
# A validation loss better by less than this is no improvement: a converged head creeps down by
# a hundred-thousandth per epoch for hundreds of epochs and would otherwise never stop.
EARLY_STOPPING_MIN_DELTA = 1e-3


class Stopped(Exception):
    """Raised inside training when the stop event is set (caught by the training loop)."""


class NanLoss(Exception):
    """Raised inside training when the loss stops being a finite number."""


def noop(**_: object) -> None:
    """A report that reports nothing."""


class BatchClock:
    """Seconds left in a fit, from measured batch times; None ("estimating") until enough are timed.

    The first batch of a fit is never timed: it includes tracing the training
    step, often seconds, so extrapolating from it promised minutes that then
    vanished. Between epochs a run also validates, checkpoints and logs; that
    gap is measured too. Until the first gap is seen the estimate waits for it
    (short epochs: feature mode, where the gap is most of the time) or, once
    `settle_s` seconds have passed (long epochs), assumes a validation batch
    costs about a training batch. The median of recent batch times is used,
    so one slow batch does not swing it.
    """

    def __init__(self, min_timed: int = 3, clock: Callable[[], float] = time.monotonic, settle_s: float = 5.0) -> None:
        self.min_timed = min_timed
        self.clock = clock
        self.settle_s = settle_s
        self._start: float | None = None
        self.batch_times: list[float] = []
        self.gaps: list[float] = []
        self._begin: float | None = None
        self._last_end: float | None = None
        self._seen = 0

    def batch_begin(self, first_of_epoch: bool = False) -> None:
        now = self.clock()
        if self._start is None:
            self._start = now
        if first_of_epoch and self._last_end is not None:
            self.gaps.append(now - self._last_end)
        self._begin = now

    def batch_end(self) -> None:
        now = self.clock()
        self._seen += 1
        if self._seen > 1 and self._begin is not None:
            self.batch_times.append(now - self._begin)
        self._last_end = now

    def left(self, batches_left: int, epoch_ends_left: int, val_batches: int = 0) -> float | None:
        """Estimated seconds for `batches_left` training batches and `epoch_ends_left` epoch ends."""
        if len(self.batch_times) < self.min_timed:
            return None
        if not self.gaps and epoch_ends_left > 1 and self.clock() - (self._start or 0.0) < self.settle_s:
            return None  # an epoch end is coming soon: measure it rather than guess it
        per_batch = float(np.median(self.batch_times[-50:]))
        if self.gaps:  # the first gap also traced the validation step: drop it once there are others
            gap = float(np.mean(self.gaps[1:][-10:] or self.gaps))
        else:
            gap = val_batches * per_batch
        return max(batches_left, 0) * per_batch + max(epoch_ends_left, 0) * gap


def callbacks(
    run: Run,
    fitted,
    config: TrainConfig,
    history: dict,
    stop,
    report: Report,
    steps: int,
    val_steps: int,
    seconds: Callable[[], float] | None = None,
):
    """Keras callbacks of a fit; `seconds()` is the run's training time so far, recorded at each epoch end."""
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay

    class Watch(keras.callbacks.Callback):
        """Per-batch progress, Stop within one batch, NaN detection, per-epoch checkpoint."""

        def on_train_begin(self, logs=None) -> None:
            self.clock = BatchClock()

        def on_epoch_begin(self, epoch, logs=None) -> None:
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None) -> None:
            self.clock.batch_begin(first_of_epoch=batch == 0)

        def on_train_batch_end(self, batch, logs=None) -> None:
            self.clock.batch_end()
            values = {k: float(v) for k, v in (logs or {}).items() if k in HISTORY_KEYS}
            if not all(math.isfinite(v) for v in values.values()):
                bad = ", ".join(f"{k} {v}" for k, v in values.items() if not math.isfinite(v))
                raise NanLoss(f"the loss became NaN or infinite ({bad}) at epoch {self.epoch + 1}, batch {batch + 1}")
            batches_left = (config.epochs - self.epoch - 1) * steps + (steps - batch - 1)
            report(
                stage="training",
                epoch=self.epoch + 1,
                epochs=config.epochs,
                batch=batch + 1,
                batches=steps,
                logs=values,
                eta=self.clock.left(batches_left, config.epochs - self.epoch, val_steps),
                eta_upper_bound=bool(config.early_stopping),
            )
            if distribute.stop_agreed(stop):  # with several workers: when any of them is stopped
                raise Stopped(f"by the user at epoch {self.epoch + 1}, batch {batch + 1}")

        def on_epoch_end(self, epoch, logs=None) -> None:
            logs = logs or {}
            values = {k: float(logs[k]) for k in HISTORY_KEYS if k in logs}
            if not all(math.isfinite(v) for v in values.values()):
                raise NanLoss(
                    f"the {'validation ' if 'val_loss' in values else ''}loss became NaN at epoch {epoch + 1}"
                )
            for k, v in values.items():
                history.setdefault(k, []).append(v)
            # The history first, then the checkpoint and its record (runs.Run.save_checkpoint): a kill
            # between any two writes leaves the history at least as long as the recorded checkpoint's
            # epoch, and a resume cuts it back to that (runs.Run.consistent_epoch). All atomic.
            run.write_history(history)
            run.save_checkpoint(epoch + 1, lambda tmp: fitted.save(tmp))
            # The time so far, as it goes: a killed call's time is then kept for the resume to add to.
            run.set_status("running", epoch=epoch + 1, **({"seconds": seconds()} if seconds else {}))
            report(
                stage="training",
                epoch=epoch + 1,
                epochs=config.epochs,
                history={k: list(v) for k, v in history.items()},
            )

    out = [Watch()]
    if config.early_stopping:
        out.append(
            keras.callbacks.EarlyStopping(
                monitor="val_loss" if val_steps else "loss",
                min_delta=EARLY_STOPPING_MIN_DELTA,
                patience=config.early_stopping,
                restore_best_weights=True,
            )
        )
    out.append(keras.callbacks.TensorBoard(log_dir=str(run.logs), write_graph=False, update_freq="epoch"))
    return out


def features_progress(report: Report, stop, message: str) -> Callable[[int, int], None]:
    """progress(done, total) for a pass over every image: reports it with an ETA, and stops on request."""
    timed: list[tuple[float, int]] = []  # (time, images done) after each batch

    def progress(done: int, total: int) -> None:
        # The first batch traces the model: the rate is measured from its end, once 3 more are done.
        timed.append((time.monotonic(), done))
        eta = None
        if len(timed) > 3 and done > timed[0][1]:
            rate = (done - timed[0][1]) / max(timed[-1][0] - timed[0][0], 1e-6)
            eta = (total - done) / rate
        report(stage="features", message=message, done=done, total=total, eta=eta, cached=False)
        if distribute.stop_agreed(stop):
            raise Stopped(f"by the user while {message[0].lower() + message[1:]}")

    progress.cached = lambda total: report(stage="features", message=message, done=total, total=total, cached=True)
    return progress
