"""Training on TensorFlow's own distribution engine (tf.distribute): one device, all local GPUs, or a cluster.

`start()` picks the strategy once per process, before TensorFlow runs anything (the CLI's
train and finetune commands call it first):

- `TF_CONFIG` describes a cluster of two or more tasks: MultiWorkerMirroredStrategy. The same
  command runs on every worker; they train one model together, and only the chief (task
  `chief`, else worker 0) writes the run folder. Every worker needs the data (and a fine-tune's
  parent run) at the same path.
- otherwise, two or more local GPUs: MirroredStrategy over all of them.
- otherwise, `CONVSCOPE_CPU_REPLICAS=N` (N >= 2): the CPU split into N logical devices,
  mirrored. No faster: it runs the distributed code path on a machine without GPUs (tests).
- otherwise the default strategy: one device, no overhead.

Without `start()` (the dashboard, whose job registry runs one job per GPU) `current()` is the
default strategy.

Batch size and learning rate: `batch_size` is the global batch and must be a multiple of the
replicas. Each step takes that many examples, split evenly over the replicas (batch / replicas
each), and the gradients are averaged over all of them, so the same config trains the same
model on 1 or N devices, up to float rounding. Two exceptions: a last, short batch that does not
split evenly weighs its examples a little differently (Keras averages each replica's mean
loss), and dropout and training BatchNorm run per replica. The learning rate is not scaled.
To keep N GPUs busy, raise the batch size N times and, by the linear scaling rule (Goyal et
al. 2017), the learning rate N times too, with a warm-up.

Cached features and a fine-tune's boundary tensors are computed with `spread()`: each batch
is split over every replica of every worker and gathered back, so each worker keeps them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterator

import numpy as np

from engine.errors import DistributeError

CPU_REPLICAS_ENV = "CONVSCOPE_CPU_REPLICAS"
# The Keras 3 issue behind the multi-worker fixes in fitting() (open; seen on Keras 3.15.1).
KERAS_ISSUE = "https://github.com/keras-team/keras/issues/20585"

_started = None
_lock = threading.Lock()


def cluster() -> dict | None:
    """TF_CONFIG as a dict when it describes two or more tasks, else None.

    Raises:
        DistributeError: TF_CONFIG is not JSON or has no task.
    """
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        config = json.loads(raw)
        tasks = sum(len(v) for v in config.get("cluster", {}).values())
        task = config["task"]
        task["type"], int(task.get("index", 0))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DistributeError(
            f"TF_CONFIG is not a usable cluster description ({type(exc).__name__}: {exc}); it should look like "
            '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", "index": 0}}'
        ) from exc
    return config if tasks >= 2 else None


def is_chief() -> bool:
    """Whether this process writes the run: no cluster, the `chief` task, or worker 0 when there is no chief."""
    config = cluster()
    if config is None:
        return True
    task = config["task"]
    if "chief" in config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and int(task.get("index", 0)) == 0


def task_name() -> str:
    """`worker 1`, `chief 0`, ... for messages; `local` without a cluster."""
    config = cluster()
    return "local" if config is None else f"{config['task']['type']} {int(config['task'].get('index', 0))}"


def start():
    """Choose this process's strategy (see the module's docstring), once; returns it.

    Raises:
        DistributeError: a cluster or CPU split asked for after TensorFlow started running.
    """
    global _started
    with _lock:
        if _started is None:
            _started = _choose()
        return _started


def _choose():
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

    if cluster() is not None:
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except (RuntimeError, ValueError) as exc:
            raise DistributeError(f"cannot join the cluster in TF_CONFIG: {exc}") from exc
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) >= 2:
        return tf.distribute.MirroredStrategy()
    replicas = _cpu_replicas()
    if replicas >= 2 and not gpus:
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
        except RuntimeError as exc:  # TensorFlow already ran something: its devices are fixed
            raise DistributeError(f"{CPU_REPLICAS_ENV}={replicas} must be set before TensorFlow starts: {exc}") from exc
        return tf.distribute.MirroredStrategy([f"/cpu:{k}" for k in range(replicas)])
    return tf.distribute.get_strategy()


def _cpu_replicas() -> int:
    raw = os.environ.get(CPU_REPLICAS_ENV, "").strip()
    try:
        return int(raw) if raw else 0
    except ValueError as exc:
        raise DistributeError(f"{CPU_REPLICAS_ENV} must be a whole number, got {raw!r}") from exc


def current():
    """The strategy `start()` chose, or the default strategy (one device) when it was not called."""
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

    return _started if _started is not None else tf.distribute.get_strategy()


def multi_worker(strategy) -> bool:
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and strategy.extended._num_workers > 1


def describe(strategy=None) -> dict:
    """{"name", "replicas", "workers", "task", "chief"} of `strategy` (default: current())."""
    strategy = strategy or current()
    workers = strategy.extended._num_workers if multi_worker(strategy) else 1
    name = type(strategy).__name__
    if workers > 1:  # its class is CollectiveAllReduceStrategy: say the name people use
        name = "MultiWorkerMirroredStrategy"
    elif name == "_DefaultDistributionStrategy":
        name = "default"
    return {
        "name": name,
        "replicas": int(strategy.num_replicas_in_sync),
        "workers": int(workers),
        "task": task_name() if workers > 1 else "local",
        "chief": is_chief() if workers > 1 else True,
    }


def spread(fn: Callable, strategy=None) -> Callable[[np.ndarray], np.ndarray]:
    """`fn` over each batch split evenly across every replica (of every worker), gathered back in order.

    Args:
        fn: a traceable function of a (B, ...) float32 tensor -> (B, ...) tensor (a frozen
            model's forward pass), using variables created under the strategy's scope.
    Returns:
        call(x): (B, ...) float32 array -> (B, ...) array. Under a multi-worker strategy every
        worker must call it with the same batch, in the same order (it is a collective).
    """
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

    strategy = strategy or current()
    n = int(strategy.num_replicas_in_sync)
    if n == 1:
        single = tf.function(fn, reduce_retracing=True)
        return lambda x: np.asarray(single(tf.convert_to_tensor(x, tf.float32)))

    @tf.function(reduce_retracing=True)
    def step(parts):
        return strategy.gather(strategy.run(fn, args=(parts,)), axis=0)

    def call(x: np.ndarray) -> np.ndarray:
        b = len(x)
        per = -(-b // n)
        if per * n > b:  # repeat the last image so every replica gets as many; the copies are cut off after
            x = np.concatenate([x, np.repeat(x[-1:], per * n - b, axis=0)])

        def part(ctx):
            k = ctx.replica_id_in_sync_group
            return tf.constant(x[k * per : (k + 1) * per], tf.float32)

        return np.asarray(step(strategy.experimental_distribute_values_from_function(part)))[:b]

    return call


def _all_rows(values: np.ndarray, strategy) -> np.ndarray:
    """(R, K) float32: `values` (K,) float32 of every replica of every worker, gathered (a collective)."""
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

    key = id(strategy)
    if key not in _gathers:  # traced once per strategy: a stop check runs after every batch
        _gathers[key] = tf.function(lambda parts: strategy.gather(parts, axis=0))
    parts = strategy.experimental_distribute_values_from_function(lambda ctx: tf.constant(values[None], tf.float32))
    return np.asarray(_gathers[key](parts))


_gathers: dict[int, Callable] = {}


def everyone(flag: bool, strategy=None) -> bool:
    """Whether `flag` holds on every worker (a collective under a multi-worker strategy; else `flag`).

    Workers must take the same branch around a collective: one finding features in its cache
    while another computes them would leave the other waiting forever.
    """
    strategy = strategy or current()
    if not multi_worker(strategy):
        return flag
    # float32: collectives on GPUs refuse int32 (tensorflow/tensorflow#56184)
    return bool(_all_rows(np.array([float(flag)], np.float32), strategy).min() == 1.0)


def stop_agreed(stop: threading.Event | None) -> bool:
    """Whether to stop now: `stop` is set here, or, with several workers, on any of them.

    With several workers it is a collective, so every worker must ask at the same point (after
    each batch). A worker stopping alone would leave the others failing at their next step.
    """
    wanted = stop is not None and stop.is_set()
    if not multi_worker(current()):
        return wanted
    return not everyone(not wanted)


def agree(value: str, what: str) -> None:
    """Check that every worker has the same `value` (the data's fingerprint, a plan); else say so clearly.

    Workers that differ would run different collectives and fail with an obscure error, or
    silently train on different data.

    Raises:
        DistributeError: the workers differ.
    """
    strategy = current()
    if not multi_worker(strategy):
        return
    digest = hashlib.sha256(value.encode()).digest()
    # 16-bit pieces are exact in float32
    pieces = np.array([int.from_bytes(digest[k : k + 2], "big") for k in range(0, 16, 2)], np.float32)
    rows = _all_rows(pieces, strategy)
    if not (rows == rows[0]).all():
        raise DistributeError(
            f"the workers differ in {what} (this is {task_name()}: {value[:80]}); every worker needs the same "
            "data, parent run and settings at the same paths"
        )


@contextlib.contextmanager
def fitting(model, data, *others) -> Iterator[None]:
    """Around `model.fit(data)` and later `predict` calls: the strategy's scope, plus fixes Keras 3 needs there.

    1. Before the first step, `fit` on a model created under a strategy takes one batch from the
       data and averages it across replicas, only to build the model's metrics and loss. Under
       MirroredStrategy that peek shifts a PyDataset's batches, so an epoch does not start at
       batch 0 and two replicas train differently from one device; under
       MultiWorkerMirroredStrategy the eager average fails outright ("Attempt to convert a value
       (PerReplica...) to a Tensor", keras-team/keras#20585). Here Keras's own build runs on a
       batch taken without moving the data (a PyDataset's first, or zeros shaped like a tf.data
       batch), and the model's captured strategy is cleared so the peek is skipped; the strategy
       of the scope entered here still runs every step. `others` (models whose predict() runs
       later) are cleared too.
    2. With several workers, every step averages the per-replica loss and metrics with
       `reduce("MEAN", v, axis=0)`, which fails on scalars ("Invalid reduction dimension 0 for
       input with 0 dimensions"); scalars are averaged with axis=None instead.
    With one replica nothing is changed.

    Args:
        data: the training data, a keras.utils.PyDataset or a tf.data.Dataset of (x, y) batches.
    """
    import keras  # heavy: TensorFlow loads in seconds; only commands that need it pay
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay

    strategy = current()
    if strategy.num_replicas_in_sync == 1:
        yield  # one device: nothing to enter, nothing to fix
        return
    if multi_worker(strategy):
        _patch_keras_reduce()
    with strategy.scope():
        if isinstance(data, keras.utils.PyDataset):
            batch = data[0]  # indexing moves nothing
        else:  # zeros of the batch's spec: a new iterator would move a reshuffling dataset's order on
            batch = tf.nest.map_structure(lambda s: tf.zeros([d or 1 for d in s.shape], s.dtype), data.element_spec)
        model._symbolic_build(data_batch=batch)
        for m in (model, *others):  # stays cleared: a later predict() must not peek either
            m._distribute_strategy = None
        yield


_patched = False


def _patch_keras_reduce() -> None:
    global _patched
    if _patched:
        return
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only commands that need it pay
    from keras.src.backend.tensorflow import (
        trainer,
    )  # heavy: TensorFlow loads in seconds; only commands that need it pay

    original = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy):

            def one(v):  # with one replica per worker `v` is a plain tensor: still averaged over the workers
                local = (
                    strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v
                )
                return strategy.reduce("MEAN", v, axis=0 if local.shape.rank else None)

            return tf.nest.map_structure(one, values)
        return original(values, strategy, reduction)

    trainer.reduce_per_replica = reduce_per_replica
    _patched = True
