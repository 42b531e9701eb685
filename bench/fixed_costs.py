"""Where a run's time goes: one default feature run and one fine-tune of it, end to end, split by part.

Each part is the wall time spent inside the engine functions named in PARTS, exclusive of the
parts nested in it (tracing inside the fit counts as tracing, not as fitting), so the parts add up
to the run. "process start" is `python -m engine worker` until it reads its request (its imports,
TensorFlow's among them), which a dashboard run pays unless the registry's spare worker has paid it
before the click (measured too, each way twice). "until marked finished" is what a user waits for:
latency, what changed (CKA) and, for a fine-tune in the dashboard's worker, the test split's scores
follow it. "evaluation" scores the validation and test splits from the pass that computed them (a
feature run keeps those scores for the Evaluate page).

    python bench/fixed_costs.py [--source shapes] [--epochs N] [--json]

No targets: it says where to look (issue 25).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from run_all import BENCH, private_dirs, ratio  # noqa: E402

# (part, "module:attribute"): the functions each part's time is spent in.
PARTS = [
    ("open data", "engine.training.loop:open_checked"),
    ("build model", "engine.training.models:build"),
    ("backbone / boundary pass", "engine.training.feature_cache:clean_features"),
    ("backbone / boundary pass", "engine.training.feature_cache:augmented_features"),
    ("backbone / boundary pass", "engine.training.finetune.setup:cached_batches"),
    ("open data", "engine.training.finetune.setup:open_data"),
    ("load model", "keras.models:load_model"),
    ("fit", "keras:Model.fit"),
    ("timeline", "engine.training.timeline:recorder"),
    ("timeline", "engine.training.timeline:CamPass.__call__"),
    ("evaluation", "engine.training.loop:finish"),
    ("saving", "keras:Model.save"),
    ("checkpoints", "engine.runs.folder:Run.save_checkpoint"),
    ("latency", "engine.training.loop:_record_latency"),
    ("latency", "engine.model.latency:measure_run"),
    ("what changed (CKA)", "engine.training.changes:what_changed"),
    ("tracing", "tensorflow.python.eager.polymorphic_function.tracing_compilation:_create_concrete_function"),
]


class Timers:
    """Exclusive wall time per part: time inside a nested part is charged to it, not to its parent."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.stack: list[list] = []  # [part, started, nested seconds]

    def wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            self.stack.append([part, time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                name, t0, nested = self.stack.pop()
                spent = time.perf_counter() - t0
                self.seconds[name] += spent - nested
                if self.stack:
                    self.stack[-1][2] += spent

        return timed

    def install(self) -> None:
        for part, where in PARTS:
            module_name, attribute = where.split(":")
            owner = importlib.import_module(module_name)
            *path, name = attribute.split(".")
            for step in path:
                owner = getattr(owner, step)
            setattr(owner, name, self.wrap(part, getattr(owner, name)))


def process_start() -> float:
    """Seconds a dashboard worker process takes before it reads its request: `python -m engine worker` to its
    imports' end (given no request, it then stops with a message)."""
    t0 = time.perf_counter()
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    command = [sys.executable, "-m", "engine", "worker", "--json"]
    subprocess.run(command, cwd=BENCH.parent, env=env, stdin=subprocess.DEVNULL, capture_output=True)
    return time.perf_counter() - t0


def profile(name: str, timers: Timers, go) -> dict:
    """Run `go(finished)` (returns the train result) with fresh timers; its parts, total and wait until finished."""
    timers.seconds.clear()
    done: list[float] = []
    t0 = time.perf_counter()
    result = go(lambda _result: done.append(time.perf_counter()))
    total = time.perf_counter() - t0
    assert result["status"] == "finished", result
    parts = dict(timers.seconds)
    parts["other"] = total - sum(parts.values())
    waited = done[0] - t0
    return {"run": name, "total": total, "waited": waited, "parts": parts, "test_accuracy": result.get("test_accuracy")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="shapes")
    parser.add_argument("--epochs", type=int, default=None, help="the feature run's epochs (default: its preset)")
    parser.add_argument("--json", action="store_true", help="end with one JSON line for bench/run_all.py")
    args = parser.parse_args()

    private_dirs()
    start = process_start()

    from engine import runs
    from engine.config import DataConfig, TrainConfig
    from engine.jobs import worker
    from engine.training import finetune, fit

    timers = Timers()
    timers.install()
    feature = TrainConfig(data=DataConfig(source=args.source), epochs=args.epochs)
    parent = runs.create(backbone=feature.backbone, mode="feature")
    rows = [profile("feature run", timers, lambda finished: fit.train(feature, parent, finished=finished))]
    tune = finetune.finetune_config(parent, unfreeze_top=2)  # the top 2 blocks, as bench/finetune.py
    child = runs.create(backbone=tune.backbone, mode="finetune")
    rows.append(profile("fine-tune", timers, lambda finished: _tune(fit, worker, tune, child, finished)))

    # each way twice, in the order ABBA: what one run warms (files, caches) helps both alike
    kinds = {"a new worker process": False, "a spare": True}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    for kind in ("a new worker process", "a spare", "a spare", "a new worker process"):
        times[kind].append(from_click(feature, kinds[kind]))
    click = {kind: sum(t) / len(t) for kind, t in times.items()}
    names = sorted({p for r in rows for p in r["parts"]}, key=lambda p: -max(r["parts"].get(p, 0) for r in rows))
    print(f"process start (import the engine with TensorFlow): {start:.2f} s")
    print(f"{'part':28}" + "".join(f"{r['run']:>16}" for r in rows))
    for part in names:
        print(f"{part:28}" + "".join(f"{r['parts'].get(part, 0):16.2f}" for r in rows))
    print(f"{'total':28}" + "".join(f"{r['total']:16.2f}" for r in rows))
    print(f"{'until marked finished':28}" + "".join(f"{r['waited']:16.2f}" for r in rows))
    for kind, seconds in click.items():
        print(f"the feature run from the dashboard, click to finished, in {kind}: {seconds:.2f} s")
    if args.json:
        figures = [ratio(f"{r['run']}: seconds until finished", r["waited"]) for r in rows]
        figures.append(
            ratio("dashboard click to finished: spare / new process", click["a spare"] / click["a new worker process"])
        )
        print(json.dumps({"bench": "fixed_costs", "ratios": figures, "rows": rows, "process_start": start}))


def from_click(config, spare: bool) -> float:
    """Seconds from submitting `config` to the dashboard's job registry until its run is finished (features cached).

    With `spare`, the registry's spare worker process has had time to import TensorFlow before the click.
    """
    from engine import jobs

    registry = jobs.JobRegistry(spare=spare)
    deadline = time.monotonic() + 60
    while spare and not registry._spares and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(8 if spare else 0)  # the user fills in the form: its imports finish meanwhile
    t0 = time.perf_counter()
    job = registry.submit(config)
    while registry.snapshot(job.id)["status"] in ("queued", "running"):
        time.sleep(0.01)
    seconds = time.perf_counter() - t0
    assert registry.snapshot(job.id)["status"] == "finished"
    registry.wait(job.id, 300)
    registry.close()
    return seconds


def _tune(fit, worker, config, run, finished) -> dict:
    """A fine-tune as the dashboard's worker runs it: the fit, then what changed."""
    result = fit.train(config, run, finished=finished)
    if result["status"] == "finished":
        worker._what_changed(config, run, lambda **_: None)
    return result


if __name__ == "__main__":
    main()
