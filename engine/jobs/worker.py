"""Dashboard jobs in worker processes: training (fine-tunes and resumes too), the LR finder, latency.

The dashboard's server renders every session in one process. Training inside it competed for the
GIL with page refreshes (58 s for a run the CLI trains in 7 s) and shared Keras's global state (a
`clear_session` after a rerun changed a model being built, so the same seed gave other weights).
So each job runs in its own process, `python -m engine worker --json`: the CLI's entry point, with
the CLI's TensorFlow set-up, strategy choice and error handling, calling the same engine functions
as `python -m engine train` / `finetune` / `lr-find`. A dashboard run equals its CLI twin.

The protocol, one process per job:
- stdin: first the request, one JSON line:
    {"task": "train", "config": TrainConfig.to_json(), "run_dir": "...", "resume": false}
    {"task": "lr_find", "config": TrainConfig.to_json(), "steps": 100}
    {"task": "latency", "run_dir": "..."}
  then "stop" asks the job to stop within one batch; the end of stdin (the server is gone) does too.
- stdout: {"progress": {...}} lines while it works (report()'s fields; the LR finder's sweep steps
  as {"stage": "sweep", "done", "total"}); a training run that finished says {"finished": result} as
  soon as it is marked finished, then measures what a user does not wait for (latency, what
  changed, the test split's scores for the Evaluate page and the report); last the CLI's one
  JSON object: the result or {"error"}.

`Worker` is the server's side; `serve` is the worker's.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from engine import runs
from engine.config import TrainConfig
from engine.errors import ConvScopeError, WorkerError
from engine.evaluate import evaluation
from engine.model import latency
from engine.training import changes, distribute, fit, lr_finder

ROOT = Path(__file__).resolve().parents[2]  # the folder holding the engine package
TASKS = ("train", "lr_find", "latency")
# Per-batch reports of a feature-mode fit come every few milliseconds: sending each would only
# load the server; stage changes, epoch ends and the last of a pass always go.
MIN_REPORT_INTERVAL_S = 0.2


# ---- the server's side -----------------------------------------------------------------


def child_env(device: str | None = None) -> dict[str, str]:
    """The worker's environment: this one, the engine importable, pinned to `device`'s GPU if it names one."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("TF_CONFIG", None)  # a dashboard job never joins a cluster (engine.training.distribute)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if device and "GPU:" in device.upper():
        env["CUDA_VISIBLE_DEVICES"] = device.upper().rsplit("GPU:", 1)[1]  # one job per GPU
    return env


class Worker:
    """One job in its own process; `run()` follows it to its end.

    `request` None starts a spare: the process imports TensorFlow and the engine now and waits for
    `start(request)` (engine.jobs keeps one ready, so a click does not wait seconds for the imports).
    """

    def __init__(self, request: dict | None, device: str | None = None) -> None:
        if request is not None:
            _check(request)
        self.device = device
        self.env = child_env(device)  # a spare is used only while this is still the server's
        self._lock = threading.Lock()
        self._stderr: deque[str] = deque(maxlen=40)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine", "worker", "--json"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=self.env,
            cwd=ROOT,
            # Its own process group: a Ctrl-C at the server's terminal reaches the server, which
            # closes the worker's stdin, and the worker stops cleanly (a resumable run).
            start_new_session=True,
        )
        threading.Thread(target=self._drain_stderr, daemon=True, name="convscope-worker-stderr").start()
        if request is not None:
            self._send(json.dumps(request))

    def start(self, request: dict) -> None:
        """Give a spare its job."""
        _check(request)
        self._send(json.dumps(request))

    def alive(self) -> bool:
        """Whether the process is still running (a spare that died is not given a job)."""
        return self.proc.poll() is None

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip())

    def _send(self, line: str) -> None:
        with self._lock:
            try:
                self.proc.stdin.write(line + "\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass  # the worker has ended: nothing left to ask

    def stop(self) -> None:
        """Ask the job to stop within one batch (it keeps a resumable run)."""
        self._send("stop")

    def kill(self) -> None:
        """End the process now (a spare no longer wanted, or a job whose caller went away)."""
        if self.proc.poll() is None:
            self.proc.kill()

    def run(
        self, progress: Callable[[dict], None] | None = None, finished: Callable[[dict], None] | None = None
    ) -> dict:
        """Pass each progress event to `progress` until the worker ends; its final JSON object.

        `finished(result)`: a training run is finished and usable (the worker goes on with its follow-up).

        Raises:
            WorkerError: the worker ended without one (killed, crashed): the end of its stderr says why.
        """
        final = None
        try:
            for line in self.proc.stdout:
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a library that wrote to the real stdout: not ours
                if not isinstance(event, dict):
                    continue
                if "progress" in event:
                    if progress is not None:
                        progress(event["progress"])
                elif "finished" in event:
                    if finished is not None:
                        finished(event["finished"])
                else:
                    final = event
        finally:
            if final is None:
                self.kill()  # the caller went away (a page rerun): the sweep must not run on alone
            with self._lock:
                if self.proc.stdin:
                    try:
                        self.proc.stdin.close()
                    except OSError:
                        pass
            rc = self.proc.wait()
        if final is None:
            why = next((line for line in reversed(self._stderr) if line.strip()), "")
            raise WorkerError(f"the worker process ended without a result (exit code {rc}){': ' + why if why else ''}")
        return final


def _check(request: dict) -> None:
    """A request's task must be one the worker knows."""
    if request.get("task") not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {request.get('task')!r}")


def call(request: dict, progress: Callable[[dict], None] | None = None, device: str | None = None) -> dict:
    """Run one job in a worker process and return its result (for the LR finder and latency).

    Raises:
        ConvScopeError: the job's own error (bad options, missing run), or WorkerError.
    """
    result = Worker(request, device).run(progress)
    if "error" in result:
        raise ConvScopeError(result["error"])
    return result


# ---- the worker's side -----------------------------------------------------------------


def serve(stop: threading.Event, stdin=None, stdout=None) -> dict:
    """Read one request from `stdin`, run it, report progress on `stdout`; the result (printed by the CLI).

    Args:
        stop: set on "stop", at the end of stdin, or by the CLI's Ctrl-C handler.
    """
    stdin = stdin or sys.stdin
    out = stdout or sys.__stdout__
    line = stdin.readline()
    if not line.strip():
        raise ConvScopeError("the worker got no request on its standard input")
    try:
        request = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ConvScopeError(f"the worker's request is not JSON: {exc}") from exc

    def listen() -> None:
        for command in stdin:
            if command.strip() == "stop":
                stop.set()
        stop.set()  # the server closed our stdin: it is gone, so stop and keep a resumable run

    threading.Thread(target=listen, daemon=True, name="convscope-worker-stdin").start()
    emit = Emitter(out)
    task = request.get("task")
    if task == "train":
        return _train(request, stop, emit)
    if task == "lr_find":
        return _lr_find(request, stop, emit)
    if task == "latency":
        return _latency(request)
    raise ConvScopeError(f"unknown worker task {task!r}; one of {', '.join(TASKS)}")


class Emitter:
    """Progress lines on the worker's stdout, at most every MIN_REPORT_INTERVAL_S but for milestones."""

    def __init__(self, out) -> None:
        self.out = out
        self.lock = threading.Lock()
        self.last = 0.0
        self.stage = None
        self.message = None

    def report(self, **fields) -> None:
        now = time.monotonic()
        milestone = (
            "history" in fields
            or fields.get("stage") != self.stage
            or fields.get("message") != self.message
            or ("batch" in fields and fields["batch"] in (0, fields.get("batches")))
            or ("done" in fields and fields.get("done") == fields.get("total"))
        )
        if not milestone and now - self.last < MIN_REPORT_INTERVAL_S:
            return
        self.last, self.stage, self.message = now, fields.get("stage"), fields.get("message")
        self.send({"progress": fields})

    def send(self, event: dict) -> None:
        with self.lock:
            self.out.write(json.dumps(event) + "\n")
            self.out.flush()


def _train(request: dict, stop: threading.Event, emit: Emitter) -> dict:
    config = TrainConfig.from_json(request["config"])
    resume = bool(request.get("resume"))
    run = runs.Run(Path(request["run_dir"]))
    distribute.start()  # as the CLI: the default strategy here (the server gives each job one device)

    def announce(result: dict) -> None:  # the server hears "finished" as soon as the run is; the follow-up after
        emit.send({"finished": result})

    result = fit.train(config, run, stop=stop, report=emit.report, resume=resume, finished=announce)
    if result["status"] == "finished":
        if config.mode == "finetune":
            _what_changed(config, run, emit.report)
            # a feature or scratch run kept its training's scores as the model's; a fine-tune's came through
            # its float16 boundary, so the model scores them here
            _scores(run, emit.report)
    return result


def _scores(run, report) -> None:
    """The Evaluate page's and the report's inputs: the test split scored, the temperature's validation split too.

    Kept in the run's score cache (engine.evaluate), so those open at once; measured here, after the run is
    finished, not while the user waits for them.
    """
    report(stage="follow-up", message="Scoring the test split for the Evaluate page and the report")
    try:
        evaluation.evaluate(run)
    except Exception as exc:  # noqa: BLE001 - the page scores it again and shows its error; the run is fine
        logging.getLogger(__name__).warning("%s: test split not scored (%s)", run.name, exc)


def _what_changed(config, run, report) -> None:
    """As the CLI's finetune: measure what changed per block now (changes.json), not later in the server."""
    report(stage="follow-up", message="Measuring what changed in each block")
    try:
        changes.what_changed(runs.open_run(config.finetune.parent), run)
    except Exception as exc:  # noqa: BLE001 - the page measures it again and shows its error; the run is fine
        logging.getLogger(__name__).warning("%s: what changed not measured (%s)", run.name, exc)


def _lr_find(request: dict, stop: threading.Event, emit: Emitter) -> dict:
    config = TrainConfig.from_json(request["config"])
    return lr_finder.lr_find(
        config,
        steps=int(request.get("steps", 100)),
        report=emit.report,
        progress=lambda done, total: emit.report(stage="sweep", done=done, total=total),
        stop=stop,
    )


def _latency(request: dict) -> dict:
    run = runs.open_run(request["run_dir"])
    result = latency.measure_run(run)
    latency.save(run.path, result)
    return result
