"""The process-wide job registry: training in worker processes, never in the dashboard's server.

One thread per accelerator (each GPU, or the CPU when there is none) takes jobs
from one FIFO queue, so one training job runs per accelerator and the others
wait with a visible position. The thread starts each job in its own process
(engine.jobs.worker: `python -m engine worker`, the CLI's code path) and
follows its progress; Stop asks the process to stop within one batch. The
server itself never builds or trains a model, so a dashboard run equals the
CLI run of its config and page refreshes cannot slow it down.

A job's id is its run folder's name, so a page that lost its session (a
refresh, a reopened tab, a restarted server) finds it again: in the registry
while this process knows it, in the run folder otherwise.

The threads never call Streamlit; pages read `snapshot()` copies.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from engine import runs
from engine.config import TrainConfig
from engine.errors import ConvScopeError
from engine.jobs import worker
from engine.runs import Run
from engine.training import fit


@dataclass
class Job:
    """One training request and everything known about it so far."""

    id: str
    run: Run
    config: TrainConfig
    resume: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    status: str = "queued"
    reason: str = ""
    progress: dict = field(default_factory=dict)  # the latest report(): stage, epoch, batch, logs, eta, ...
    history: dict = field(default_factory=dict)  # per-epoch metrics so far
    result: dict | None = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    device: str = ""
    process: worker.Worker | None = None  # while it runs in a worker process
    # finished, and its worker still measures what a user does not wait for (latency, what changed)
    following: str = ""


class JobRegistry:
    """Queue, workers and the state of every job this process has run.

    Args:
        train_fn: None (the dashboard): each job runs in a worker process. A function with
            fit.train's signature runs jobs in this process's threads instead (tests of the queue).
        devices: the accelerators to run on (default: every GPU, else the CPU).
        spare: keep a worker process started per device, its imports done (about 4 s on 2 cores),
            so a job starts at once; a new one starts when a job ends (the dashboard's registry).
    """

    def __init__(self, train_fn: Callable | None = None, devices: list[str] | None = None, spare: bool = False) -> None:
        self._train = train_fn
        self._devices = devices
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._workers: list[threading.Thread] = []
        self._spares: dict[str, worker.Worker] = {}
        self._busy: set[str] = set()  # devices running a job (their spare is started only when it ends)
        self._keep_spares = spare and train_fn is None
        if self._keep_spares:  # in the background: listing the devices imports TensorFlow
            threading.Thread(target=self._refill, daemon=True, name="convscope-spare").start()

    # ---- spare worker processes ---------------------------------------------------
    def _refill(self) -> None:
        """Start a spare worker for every idle device without a live one (it waits for its request).

        Never beside a running job: its imports would take the job's CPU. A spare whose environment is
        no longer this process's (another cache or runs folder) is stopped and replaced.
        """
        for device in self._devices or _devices():
            with self._lock:
                spare = self._spares.get(device)
                if device in self._busy or (
                    spare is not None and spare.alive() and spare.env == worker.child_env(device)
                ):
                    continue
                self._spares.pop(device, None)
            if spare is not None:
                spare.kill()
            try:
                fresh = worker.Worker(None, device)
            except OSError as exc:  # out of processes or memory: jobs then start their own, as before
                logging.getLogger(__name__).warning("no spare worker for %s (%s)", device, exc)
                continue
            with self._lock:
                if device in self._spares or device in self._busy:  # another thread was quicker, or a job began
                    fresh.kill()
                else:
                    self._spares[device] = fresh

    def _process(self, request: dict, device: str | None) -> worker.Worker:
        """A worker process for `request`: the device's spare when one is alive (any spare for None), else a new one."""
        with self._lock:
            if device is None:  # a short call, pinned to no device: any spare will do
                device = next(iter(self._spares), None)
            spare = self._spares.pop(device, None) if device is not None else None
        if spare is not None and spare.alive() and spare.env == worker.child_env(spare.device):
            spare.start(request)
            return spare
        if spare is not None:
            spare.kill()
        return worker.Worker(request, device)

    def close(self) -> None:
        """Stop the spare workers (tests; a server that ends closes their stdin, which ends them too)."""
        with self._lock:
            spares, self._spares = list(self._spares.values()), {}
        for spare in spares:
            spare.kill()

    # ---- requests ----------------------------------------------------------------
    def submit(self, config: TrainConfig, run: Run | None = None) -> Job:
        """Queue a new run of `config` (a new run folder unless `run` is given)."""
        run = run or runs.create(backbone=config.backbone, mode=config.mode)
        return self._enqueue(Job(run.name, run, config))

    def resume(self, run: Run, epochs: int | None = None) -> Job:
        """Queue the continuation of a stopped, failed or killed run from its last finished epoch."""
        with self._lock:
            known = self._jobs.get(run.name)
            if known and known.status in runs.ACTIVE:
                return known
        config = fit.resume_config(run, epochs)
        run.set_status("queued", epoch=run.checkpoint_epoch())
        return self._enqueue(Job(run.name, run, config, resume=True, history=run.history()))

    def _enqueue(self, job: Job) -> Job:
        with self._lock:
            self._jobs[job.id] = job
            self._queue.append(job)
            self._start_workers()
            self._wake.notify_all()
        return job

    def stop(self, job_id: str) -> bool:
        """Ask a job to stop: a queued one is dropped, a running one stops within one batch."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.status not in runs.ACTIVE:
                return False
            job.stop.set()
            if job.process is not None:
                job.process.stop()
            if job.status == "queued":
                self._queue.remove(job)
                job.status, job.reason, job.finished = "stopped", "stopped before it started", time.time()
                job.run.set_status("stopped", job.reason, epoch=job.run.checkpoint_epoch())
        return True

    def forget(self, job_id: str) -> bool:
        """Drop a job that is no longer active (its run folder was deleted). False while it is active."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is not None and job.status in runs.ACTIVE:
                return False
            self._jobs.pop(job_id, None)
            return True

    # ---- reading -----------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id)

    def position(self, job_id: str) -> int | None:
        """0 while running, k for the k-th in the queue, None otherwise."""
        with self._lock:
            return self._position(job_id)

    def _position(self, job_id: str) -> int | None:
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.status == "running":
            return 0
        for k, queued in enumerate(self._queue, start=1):
            if queued.id == job_id:
                return k
        return None

    def snapshot(self, job_id: str) -> dict | None:
        """A copy of a job's state for rendering, or None when this process does not know it."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None:
                return None
            return {
                "id": job.id,
                "run_dir": str(job.run.path),
                "status": job.status,
                "stopping": job.stop.is_set() and job.status in runs.ACTIVE,  # asked to stop, not yet stopped
                "reason": job.reason,
                "position": self._position(job_id),
                "progress": copy.deepcopy(job.progress),
                "history": copy.deepcopy(job.history),
                "epochs": job.config.total_epochs,
                "start_epoch": job.config.total_epochs - job.config.epochs,  # a fine-tune's parent's epochs
                "result": copy.deepcopy(job.result),
                "submitted": job.submitted,
                "started": job.started,
                "finished": job.finished,
                "device": job.device,
                "following": job.following,
            }

    def active(self) -> list[str]:
        """Ids of running and queued jobs, running first, and of finished ones whose worker still follows up.

        A following job still holds its device and writes to its run (latency, what changed, scores): it
        is not deleted meanwhile, and a job queued behind it waits for it.
        """
        with self._lock:
            running = [j.id for j in self._jobs.values() if j.status == "running" or j.following]
            return running + [j.id for j in self._queue]

    def wait(self, job_id: str, timeout: float | None = None) -> dict | None:
        """Block until the job is no longer queued or running, nor following up (for the CLI and tests)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while (job := self._jobs.get(job_id)) is not None and (job.status in runs.ACTIVE or job.following):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._wake.wait(left)
        return self.snapshot(job_id)

    # ---- workers -----------------------------------------------------------------
    def _start_workers(self) -> None:
        if self._workers:
            return
        for device in self._devices or _devices():
            worker = threading.Thread(target=self._work, args=(device,), name=f"convscope-train-{device}", daemon=True)
            self._workers.append(worker)
            worker.start()

    def _work(self, device: str) -> None:
        while True:
            with self._lock:
                while not self._queue:
                    self._wake.wait()
                job = self._queue.popleft()
                job.status, job.started, job.device = "running", time.time(), device
                self._busy.add(device)
            self._run(job, device)
            with self._lock:
                job.finished, job.following = time.time(), ""
                self._busy.discard(device)
                self._wake.notify_all()
            if self._keep_spares:
                self._refill()  # its imports run now, while the user looks at the results
            gc.collect()  # a job run in this process (tests): let its models go before the next one

    def _run(self, job: Job, device: str) -> None:
        def report(fields: dict) -> None:
            with self._lock:
                if "history" in fields:
                    job.history = fields.pop("history")
                job.progress.update(fields)
                if job.following and fields.get("message"):
                    job.following = fields["message"]

        def finished(result: dict) -> None:
            """The run is finished and usable: say so now; the worker goes on with latency and what changed."""
            with self._lock:
                job.result, job.status, job.reason = result, result["status"], result["reason"]
                job.history, job.following = result["history"], "Measuring its latency"
                self._wake.notify_all()

        try:
            if self._train is None:
                result = self._in_worker(job, device, report, finished)
            else:
                import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

                with tf.device(device):
                    result = self._train(
                        job.config, job.run, stop=job.stop, report=lambda **f: report(f), resume=job.resume
                    )
            with self._lock:
                job.result, job.status, job.reason = result, result["status"], result["reason"]
                job.history = result["history"]
        except Exception as exc:  # noqa: BLE001 - a worker must survive any failed job; the run says why
            with self._lock:
                if job.following:  # the run was finished and saved: only its follow-up failed (latency, ...)
                    logging.getLogger(__name__).warning("%s: its follow-up failed (%s)", job.id, exc)
                else:
                    job.status, job.reason = "failed", str(exc) or type(exc).__name__

    def _in_worker(
        self, job: Job, device: str, report: Callable[[dict], None], finished: Callable[[dict], None]
    ) -> dict:
        """Run the job in a worker process; its result, or ConvScopeError with the worker's error."""
        request = {"task": "train", "config": job.config.to_json(), "run_dir": str(job.run.path), "resume": job.resume}
        process = self._process(request, device)
        with self._lock:
            job.process = process
            if job.stop.is_set():  # Stop came while the process started
                process.stop()
        try:
            result = process.run(report, finished)
        except worker.WorkerError as exc:
            # Killed or crashed without a word: the run folder must not say "running" for ever (a run that
            # finished before its follow-up died is finished).
            if not job.following and job.run.path.is_dir() and job.run.status().get("status") in runs.ACTIVE:
                job.run.set_status("failed", str(exc), epoch=job.run.checkpoint_epoch())
            elif job.following and job.run.path.is_dir():
                job.run.clean_leftovers()  # the half write it died in (latency.json, ...): no process writes now
            raise
        finally:
            with self._lock:
                job.process = None
        if "error" in result:
            raise ConvScopeError(result["error"])
        return result

    def call(self, task: str, request: dict, progress: Callable[[dict], None] | None = None) -> dict:
        """Run a short job (the LR finder's sweep, a latency measurement) in a worker process, now.

        It does not queue behind training: the caller waits for it (with a progress bar).
        """
        request = {**request, "task": task}
        try:
            result = self._process(request, None).run(progress)
        finally:
            if self._keep_spares:
                threading.Thread(target=self._refill, daemon=True, name="convscope-spare").start()
        if "error" in result:
            raise ConvScopeError(result["error"])
        return result


def _devices() -> list[str]:
    """One entry per accelerator: every GPU, else the CPU."""
    import tensorflow as tf  # heavy: TensorFlow loads in seconds; only what runs a model pays

    # Physical devices: listing them does not claim GPU memory in the server; each job's process
    # sees only its own GPU (worker.child_env).
    gpus = tf.config.list_physical_devices("GPU")
    return [f"/GPU:{k}" for k in range(len(gpus))] or ["/CPU:0"]


_REGISTRY: JobRegistry | None = None
_REGISTRY_LOCK = threading.Lock()


def registry() -> JobRegistry:
    """The one registry of this process (shared by every dashboard session)."""
    global _REGISTRY
    with _REGISTRY_LOCK:
        if _REGISTRY is None:
            # CONVSCOPE_SPARE_WORKERS=0 turns the spare off (the tests do: each would import TensorFlow)
            _REGISTRY = JobRegistry(spare=os.environ.get("CONVSCOPE_SPARE_WORKERS", "1") != "0")
        return _REGISTRY
