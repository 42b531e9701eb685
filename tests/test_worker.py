"""Dashboard jobs in worker processes (engine.jobs.worker): a dashboard run is its CLI twin,
Stop and resume reach the process, a killed process leaves an honest run, and the server process
itself never trains (issue 20; RELIABILITY.md 23, 24, 35)."""

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from test_training import feature_config as tiny_config  # TINY at 96 px, 3 epochs

from conftest import TINY
from engine import jobs, runs
from engine.errors import ConvScopeError
from engine.jobs import worker
from engine.training import fit

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def cli(*args: str) -> dict:
    res = subprocess.run(
        [sys.executable, "-m", "engine", *args, "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


def weights(run_dir) -> list[np.ndarray]:
    import keras

    return [np.asarray(w) for w in keras.models.load_model(Path(run_dir) / "model.keras").get_weights()]


def without_times(config: dict) -> dict:
    return {k: v for k, v in config.items() if k != "created"}


# ---- the protocol, without a process (fast) ------------------------------------------------


def test_the_worker_refuses_an_empty_or_unknown_request():
    with pytest.raises(ConvScopeError, match="no request"):
        worker.serve(threading.Event(), io.StringIO(""), io.StringIO())
    with pytest.raises(ConvScopeError, match="unknown worker task 'bake'"):
        worker.serve(threading.Event(), io.StringIO('{"task": "bake"}\n'), io.StringIO())
    with pytest.raises(ValueError, match="task must be one of"):
        worker.Worker({"task": "bake"})


def test_the_end_of_stdin_stops_the_job(monkeypatch):
    """The server is gone (its pipe closed): the job stops and keeps a resumable run."""
    seen = {}

    def fake_train(request, stop, report):
        seen["stopped"] = stop.wait(10)
        return {"status": "stopped"}

    monkeypatch.setattr(worker, "_train", fake_train)
    stop = threading.Event()
    assert worker.serve(stop, io.StringIO('{"task": "train"}\n'), io.StringIO()) == {"status": "stopped"}
    assert seen["stopped"]


def test_progress_is_sent_at_milestones_and_at_most_five_times_a_second():
    out = io.StringIO()
    emit = worker.Emitter(out)
    for done in range(32, 321, 32):  # a pass over cached features: a batch every few milliseconds
        emit.report(stage="features", message="Computing backbone features", done=done, total=320)
    for batch in range(1, 101):  # a feature-mode epoch: 100 batches within a few milliseconds
        emit.report(stage="training", epoch=1, batch=batch, batches=100)
    emit.report(stage="training", epoch=1, history={"loss": [0.5]})
    emit.report(stage="evaluating")
    events = [json.loads(line)["progress"] for line in out.getvalue().splitlines()]
    assert [e.get("done") for e in events[:2]] == [32, 320], "the pass's start and end, not each batch"
    assert [e.get("batch") for e in events[2:4]] == [1, 100], "the first and the last batch of the epoch"
    assert "history" in events[4] and events[5] == {"stage": "evaluating"}
    assert len(events) == 6


def test_a_gpu_job_sees_only_its_own_gpu_and_never_joins_a_cluster(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {}}')
    env = worker.child_env("/GPU:1")
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and "TF_CONFIG" not in env
    assert str(ROOT) in env["PYTHONPATH"].split(":")
    assert worker.child_env("/CPU:0").get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


# ---- real worker processes (slow) -------------------------------------------------------


@pytest.mark.slow
def test_a_dashboard_run_is_its_cli_twin_bit_for_bit(runs_dir, monkeypatch):
    """The same config trained by the CLI and by the dashboard's registry: the same weights and history.

    The server process must not train: fit.train is broken in it, and the job still finishes.
    """

    def not_here(*args, **kwargs):
        raise AssertionError("the dashboard's server process must never train")

    monkeypatch.setattr(fit, "train", not_here)
    registry = jobs.JobRegistry(devices=["/CPU:0"])
    job = registry.submit(tiny_config())
    snap = registry.wait(job.id, 300)
    assert snap["status"] == "finished", snap["reason"]
    twin = cli("train", TINY, "--epochs", "3", "--image-size", "96", "--out", str(runs_dir / "cli-twin"))
    assert without_times(runs.Run(Path(twin["run_dir"])).config()) == without_times(job.run.config())
    assert snap["result"]["history"] == twin["history"]
    for ours, theirs in zip(weights(job.run.path), weights(twin["run_dir"]), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert (job.run.path / "latency.json").is_file(), "latency is measured in the worker, after training"


@pytest.mark.slow
def test_stop_reaches_the_worker_and_resume_continues_in_a_new_one():
    registry = jobs.JobRegistry(devices=["/CPU:0"])
    job = registry.submit(tiny_config(epochs=400, early_stopping=0))
    deadline = time.monotonic() + 180
    while (registry.snapshot(job.id)["progress"].get("epoch") or 0) < 2:
        assert time.monotonic() < deadline, registry.snapshot(job.id)
        time.sleep(0.1)
    assert registry.stop(job.id)
    snap = registry.wait(job.id, 120)
    assert snap["status"] == "stopped" and "by the user" in snap["reason"]
    done = job.run.checkpoint_epoch()
    assert done >= 2 and job.run.resumable() and job.run.model_file.is_file()
    assert len(job.run.history()["loss"]) == done
    again = registry.resume(job.run, epochs=done + 2)
    snap = registry.wait(again.id, 300)
    assert snap["status"] == "finished", snap["reason"]
    assert len(job.run.history()["loss"]) == done + 2


@pytest.mark.slow
def test_a_killed_worker_fails_its_job_and_the_next_one_runs():
    registry = jobs.JobRegistry(devices=["/CPU:0"])
    doomed = registry.submit(tiny_config(epochs=400, early_stopping=0))
    after = registry.submit(tiny_config(epochs=1))
    deadline = time.monotonic() + 180
    while registry.get(doomed.id).process is None or not registry.snapshot(doomed.id)["history"].get("loss"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    registry.get(doomed.id).process.kill()  # the OOM killer, or an operator
    snap = registry.wait(doomed.id, 60)
    assert snap["status"] == "failed" and "without a result" in snap["reason"]
    status = doomed.run.status()
    assert status["status"] == "failed" and doomed.run.resumable()
    assert registry.wait(after.id, 300)["status"] == "finished"


@pytest.mark.slow
def test_lr_finder_and_latency_run_in_worker_processes(runs_dir, monkeypatch):
    from conftest import train_tiny_run
    from engine.model import latency
    from engine.training import finetune, lr_finder

    parent = train_tiny_run(runs_dir, "parent", epochs=2)
    (parent / latency.LATENCY_FILE).unlink()

    def not_here(*args, **kwargs):
        raise AssertionError("the dashboard's server process must never run the sweep")

    monkeypatch.setattr(lr_finder, "lr_find", not_here)
    registry = jobs.JobRegistry(devices=["/CPU:0"])
    config = finetune.finetune_config(runs.Run(parent), unfreeze_from="head", epochs=1)
    steps = []
    result = registry.call("lr_find", {"config": config.to_json(), "steps": 20}, steps.append)
    assert len(result["lrs"]) > 5 and result["parent"] == "parent"
    assert any(s.get("stage") == "sweep" for s in steps), "the sweep's steps reach the page"
    measured = registry.call("latency", {"run_dir": str(parent)})
    assert measured["ms_per_image"] > 0 and latency.saved(parent)["ms_per_image"] == measured["ms_per_image"]
    with pytest.raises(ConvScopeError, match="not a run folder"):
        registry.call("latency", {"run_dir": str(runs_dir / "nothing")})


@pytest.mark.slow
def test_the_page_hears_finished_before_the_latency_and_the_job_waits_for_it(runs_dir):
    """The run is finished and usable (model saved) while its worker still measures its latency."""
    registry = jobs.JobRegistry(devices=["/CPU:0"])
    job = registry.submit(tiny_config())
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        snap = registry.snapshot(job.id)
        if snap["status"] not in runs.ACTIVE:
            seen.append((snap["following"], (job.run.path / "latency.json").is_file()))
            if not snap["following"]:
                break
        time.sleep(0.01)
    assert seen and seen[0] == ("Measuring its latency", False), seen[:3]
    assert job.run.status()["status"] == "finished" and job.run.model_file.is_file()
    assert registry.wait(job.id, 60)["following"] == "" and (job.run.path / "latency.json").is_file()
    from engine.evaluate import evaluation

    assert evaluation.evaluate(job.run).cached, "the worker scored the test split for the Evaluate page, after"


@pytest.mark.slow
def test_a_spare_worker_takes_the_next_job_and_another_is_started_after_it(runs_dir):
    """The dashboard keeps a worker process started, its imports done, so a click does not wait for them."""
    registry = jobs.JobRegistry(devices=["/CPU:0"], spare=True)
    deadline = time.monotonic() + 60
    while "/CPU:0" not in registry._spares and time.monotonic() < deadline:
        time.sleep(0.05)
    spare = registry._spares["/CPU:0"]
    job = registry.submit(tiny_config())
    deadline = time.monotonic() + 60
    while job.process is None and registry.snapshot(job.id)["status"] in runs.ACTIVE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.process is spare, "the job went to the spare"
    assert registry.wait(job.id, 300)["status"] == "finished"
    assert spare.proc.wait(10) == 0
    deadline = time.monotonic() + 30
    while (registry._spares.get("/CPU:0") in (None, spare)) and time.monotonic() < deadline:
        time.sleep(0.05)
    fresh = registry._spares["/CPU:0"]
    assert fresh is not spare and fresh.alive(), "a new spare waits for the next job"
    measured = registry.call("latency", {"run_dir": str(job.run.path)})
    assert measured["ms_per_image"] > 0 and fresh.proc.wait(10) == 0, "the short call went to the spare"
    deadline = time.monotonic() + 30
    while registry._spares.get("/CPU:0") in (None, fresh) and time.monotonic() < deadline:
        time.sleep(0.05)
    last = registry._spares["/CPU:0"]
    registry.close()
    assert last.proc.wait(10) != 0 and not registry._spares, "close() ends the spare"


@pytest.mark.slow
def test_a_spare_is_not_started_beside_a_running_job_and_a_stale_one_is_replaced(runs_dir, monkeypatch):
    registry = jobs.JobRegistry(devices=["/CPU:0"], spare=True)
    deadline = time.monotonic() + 60
    while "/CPU:0" not in registry._spares and time.monotonic() < deadline:
        time.sleep(0.05)
    stale = registry._spares["/CPU:0"]
    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(runs_dir.parent / "another-cache"))
    job = registry.submit(tiny_config())
    deadline = time.monotonic() + 60
    while job.process is None and registry.snapshot(job.id)["status"] in runs.ACTIVE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert job.process is not stale and stale.proc.wait(10) != 0, "a spare of other folders is ended, not used"
    registry._refill()  # as a short call's end does: not while the job runs
    assert "/CPU:0" not in registry._spares
    assert registry.wait(job.id, 300)["status"] == "finished"
    registry.close()


@pytest.mark.slow  # a registry job (its worker process is a stand-in that dies)
def test_a_job_whose_follow_up_fails_stays_finished(runs_dir, monkeypatch):
    """A worker that dies while measuring latency (after the run was finished) does not make the run failed."""

    class Dies:
        def __init__(self, request, device=None):
            self.env, self.device, self.run_dir = worker.child_env(device), device, request["run_dir"]

        def alive(self):
            return True

        def stop(self):
            pass

        def run(self, progress=None, finished=None):
            runs.Run(Path(self.run_dir)).set_status("finished")  # as loop.train does before it says so
            finished({"status": "finished", "reason": "", "history": {"loss": [1.0]}})
            (Path(self.run_dir) / ".latency-abcd1234.json").write_text("half")  # the write it died in
            raise worker.WorkerError("the worker process ended without a result (exit code -9)")

    monkeypatch.setattr(worker, "Worker", Dies)
    registry = jobs.JobRegistry(devices=["/CPU:0"])
    job = registry.submit(tiny_config())
    snap = registry.wait(job.id, 30)
    assert snap["status"] == "finished" and snap["following"] == "" and snap["reason"] == ""
    assert job.run.status()["status"] == "finished"
    assert not list(job.run.path.glob(".latency-*")), "the half write of the dead follow-up is cleaned"


def test_a_changed_message_is_sent_at_once():
    out = io.StringIO()
    emit = worker.Emitter(out)
    emit.report(stage="follow-up", message="Measuring its latency")
    emit.report(stage="follow-up", message="Scoring the test split")
    assert [json.loads(line)["progress"]["message"] for line in out.getvalue().splitlines()] == [
        "Measuring its latency",
        "Scoring the test split",
    ]
