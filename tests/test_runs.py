"""The run store's management: display names, delete, training time and parameters, robust summaries, the CLI."""

import json
import os
import subprocess
import sys
import threading

import pytest

from engine import jobs, runs
from engine.cli import main as cli
from engine.config import DataConfig, TrainConfig
from engine.training import fit

TINY = "shapes:per_class=12,classes=3,size=64"


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def fake_run(name: str, status: str = "finished", **files) -> runs.Run:
    """A run folder written by hand: a config, a status and any other JSON `files` (name -> data)."""
    run = runs.create(name)
    config = {"backbone": "small_cnn", "mode": "scratch", "epochs": 3, "data": {"source": TINY, "image_size": 32}}
    runs.write_json(run.path / "config.json", {**config, "created": 1_700_000_000.0})
    for file, data in files.items():
        runs.write_json(run.path / f"{file}.json", data)
    run.set_status(status)
    return run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---- display names -----------------------------------------------------------------


def test_rename_round_trip_keeps_the_folder_and_other_meta():
    run = fake_run("r1")
    assert run.display_name() == ""
    runs.write_json(run.path / "meta.json", {"note": "kept"})
    runs.rename(run, "  Shapes, first try ✓  ")
    assert run.display_name() == "Shapes, first try ✓" and run.path.is_dir() and run.name == "r1"
    assert runs.read_json(run.path / "meta.json") == {"note": "kept", "display_name": "Shapes, first try ✓"}
    runs.rename(run, "x" * runs.DISPLAY_NAME_MAX)
    assert runs.summary(runs.open_run("r1"))["display_name"] == "x" * runs.DISPLAY_NAME_MAX


@pytest.mark.parametrize(
    "name, message",
    [("", "empty"), ("   ", "empty"), ("x" * 81, "at most 80"), ("a\nb", "one line"), ("a\tb", "one line")]
    + [("a\u2028b", "one line"), ("a\x1bb", "control")],
)
def test_rename_refuses_bad_names(name, message):
    run = fake_run("r1")
    runs.rename(run, "good")
    with pytest.raises(runs.RunError, match=message):
        runs.rename(run, name)
    assert run.display_name() == "good", "a refused name changes nothing"


def test_rename_refuses_a_folder_that_is_not_a_run(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(runs.RunError, match="not a run folder"):
        runs.rename(runs.Run(tmp_path / "plain"), "name")
    assert not (tmp_path / "plain" / "meta.json").exists()


# ---- delete ------------------------------------------------------------------------


def test_delete_removes_the_run_and_it_leaves_the_list(runs_dir):
    keep, gone = fake_run("keep"), fake_run("gone", history={"loss": [1.0]})
    (gone.path / "checkpoints").mkdir()
    (gone.path / "checkpoints" / "last.keras").write_bytes(b"weights")
    assert {r.name for r in runs.list_runs()} == {"keep", "gone"}
    runs.delete(gone)
    assert not gone.path.exists() and [r.name for r in runs.list_runs()] == ["keep"]
    assert sorted(p.name for p in runs_dir.iterdir()) == ["keep"], "nothing hidden left behind"
    with pytest.raises(runs.RunError, match="not a run folder"):
        runs.delete(gone)
    with pytest.raises(runs.RunError, match="not a run folder"):
        runs.delete(runs.Run(runs_dir))  # the runs folder itself is not a run
    assert keep.path.is_dir()


def test_delete_refuses_a_run_whose_status_says_it_is_active():
    run = fake_run("busy")
    run.set_status("running")  # owned by this (living) process
    with pytest.raises(runs.RunError, match="busy is still running; stop it first"):
        runs.delete(run)
    run.set_status("queued")
    with pytest.raises(runs.RunError, match="still queued"):
        runs.delete(run)
    assert run.path.is_dir()
    # an owner that died is not active any more: status() shows the run as failed (interrupted)
    runs.write_json(run.path / "status.json", {"status": "running", "pid": dead_pid()})
    runs.delete(run)
    assert not run.path.exists()


def test_delete_refuses_a_job_the_registry_is_running(monkeypatch):
    started, release = threading.Event(), threading.Event()

    def fake_train(config, run, *, stop, report, resume):
        started.set()
        release.wait(30)
        return {"status": "finished", "reason": "", "history": {}}

    registry = jobs.JobRegistry(train_fn=fake_train, devices=["/CPU:0"])
    monkeypatch.setattr(jobs, "_REGISTRY", registry)
    job = registry.submit(TrainConfig(data=DataConfig(source=TINY, image_size=32), epochs=2))
    try:
        assert started.wait(120)
        job.run.set_status("finished")  # the folder says done; the registry knows better
        with pytest.raises(runs.RunError, match="still running/queued; stop it first"):
            runs.delete(job.run)
        assert job.run.path.is_dir()
    finally:
        release.set()
    assert registry.wait(job.id, 60)["status"] == "finished"
    runs.delete(job.run)
    assert not job.run.path.exists() and registry.get(job.id) is None, "the deleted run's job is forgotten"


def test_an_interrupted_delete_lists_nothing_and_is_swept_later(monkeypatch, runs_dir):
    run = fake_run("half")
    with monkeypatch.context() as m:
        m.setattr(runs.store.shutil, "rmtree", lambda *a, **k: None)  # the removal "dies" after the rename
        runs.delete(run)
    hidden = [p for p in runs_dir.iterdir() if p.name.startswith(".half.deleting-")]
    assert len(hidden) == 1 and (hidden[0] / "config.json").is_file()
    # a leftover made by hand, and an unrelated hidden folder that only looks like a run
    (runs_dir / ".x.deleting-0000").mkdir()
    (runs_dir / ".x.deleting-0000" / "status.json").write_text("{}")
    (runs_dir / ".hidden").mkdir()
    (runs_dir / ".hidden" / "status.json").write_text("{}")
    assert runs.list_runs() == []
    assert sorted(p.name for p in runs_dir.iterdir()) == [".hidden"], "leftover deletions are swept away"


def test_delete_of_a_broken_run_works():
    run = fake_run("broken")
    (run.path / "status.json").write_text("{not json")
    runs.delete(run)
    assert not run.path.exists()


# ---- summary -----------------------------------------------------------------------


def test_summary_has_the_comparison_fields():
    run = fake_run(
        "cmp",
        history={"loss": [1.0, 0.5, 0.4], "val_accuracy": [0.5, 0.8, 0.7]},
        metrics={"val_accuracy": 0.8, "test_accuracy": 0.75, "params": {"total": 10}, "train_seconds": 12.5},
        latency={"ms_per_image": 3.5},
        meta={"display_name": "Named"},
    )
    row = runs.summary(run)
    assert row["status"] == "finished" and row["display_name"] == "Named" and row["image_size"] == 32
    assert (row["best_val_accuracy"], row["final_val_accuracy"], row["val_accuracy"]) == (0.8, 0.7, 0.8)
    assert row["test_accuracy"] == 0.75 and row["params"] == {"total": 10} and row["train_seconds"] == 12.5
    assert row["latency_ms"] == 3.5 and row["created"] == 1_700_000_000.0 and row["epochs"] == 3
    assert row["epochs_run"] == 3 and row["parent"] == "" and row["resumable"] is False
    bare = runs.summary(fake_run("bare"))
    assert bare["best_val_accuracy"] is None and bare["final_val_accuracy"] is None and bare["val_accuracy"] is None
    assert bare["params"] is None and bare["train_seconds"] is None and bare["latency_ms"] is None


def test_summary_of_a_fine_tune_counts_its_own_epochs_and_names_the_kept_model():
    parent_epochs = {"val_accuracy": [0.5, 0.95, 0.9]}  # the parent's best epoch beats every fine-tune epoch
    history = {"loss": [1.0] * 6, "val_accuracy": [*parent_epochs["val_accuracy"], 0.7, 0.8, 0.75]}
    run = fake_run("ft", history=history, metrics={"val_accuracy": 0.78})  # early stopping kept another epoch
    config = runs.read_json(run.path / "config.json")
    runs.write_json(run.path / "config.json", {**config, "mode": "finetune", "finetune": {"parent_epochs": 3}})
    row = runs.summary(run)
    assert (row["best_val_accuracy"], row["final_val_accuracy"], row["kept_val_accuracy"]) == (0.8, 0.75, 0.78)
    assert run.parent_epochs() == 3 and run.own_history()["val_accuracy"] == [0.7, 0.8, 0.75]
    # Still training: no model kept yet, so no kept accuracy (not the last epoch's, nor "None" text)
    busy = fake_run("busy", "running", history={"loss": [1.0], "val_accuracy": [0.6]})
    row = runs.summary(busy)
    assert row["status"] == "running" and row["kept_val_accuracy"] is None and row["best_val_accuracy"] == 0.6


def test_source_titles_never_show_server_paths(tmp_path, monkeypatch):
    from engine.data import sources

    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    upload = sources.save_upload("pets.zip", b"PK\x05\x06" + b"\0" * 18)
    assert str(tmp_path) in str(upload) and upload.name != "pets.zip"  # the cache names it by content
    assert sources.source_title(str(upload)) == "pets.zip"
    root = tmp_path / "datasets"
    (root / "flowers").mkdir(parents=True)
    monkeypatch.setenv("CONVSCOPE_DATA_ROOTS", str(root))
    assert sources.source_title(str(root / "flowers")) == "datasets/flowers"
    assert sources.source_title(str(tmp_path / "elsewhere" / "cats")) == "cats"
    assert sources.source_title(TINY) == TINY and sources.source_title("tfds:mnist") == "tfds:mnist"


@pytest.mark.parametrize(
    "file, text", [("metrics", "{bad"), ("status", "{bad"), ("history", "[1, 2"), ("config", "[1, 2]")]
)
def test_a_corrupt_file_still_gives_a_failed_row(file, text):
    run = fake_run("bad", metrics={"val_accuracy": 0.5}, history={"loss": [1.0]})
    (run.path / f"{file}.json").write_text(text)
    assert [r.name for r in runs.list_runs()] == ["bad"]
    row = runs.summary(run)
    assert row["name"] == "bad" and row["status"] == "failed" and f"{file}.json" in row["reason"], row
    assert row["resumable"] is False


def test_damaged_extras_do_not_fail_the_run():
    run = fake_run("ok")
    (run.path / "latency.json").write_text("{bad")
    (run.path / "meta.json").write_text("[]")
    row = runs.summary(run)
    assert row["status"] == "finished" and row["latency_ms"] is None and row["display_name"] == ""


def test_the_training_time_survives_status_changes():
    run = fake_run("t")
    run.set_status("stopped", seconds=5.0)
    run.set_status("queued", epoch=1)  # a resume being queued
    run.set_status("running", epoch=1)
    assert run.train_seconds() == 5.0 and runs.read_json(run.path / "status.json")["seconds"] == 5.0


# ---- a real tiny training: stop, resume, time and parameters -------------------------


@pytest.mark.slow
def test_train_seconds_accumulate_across_a_stop_and_resume_and_reach_the_summary():
    config = TrainConfig(
        data=DataConfig(source=TINY, image_size=32), backbone="small_cnn", mode="scratch", epochs=2, batch_size=4
    )
    run = runs.create(backbone=config.backbone, mode=config.mode)
    stop = threading.Event()

    def report(stage="", **fields):
        if stage == "training" and len(fields.get("history", {}).get("loss", [])) == 1:
            stop.set()  # after the first epoch

    first = fit.train(config, run, stop=stop, report=report)
    assert first["status"] == "stopped" and run.checkpoint_epoch() == 1
    assert first["train_seconds"] > 0 and run.train_seconds() == first["train_seconds"]
    stopped = runs.summary(run)
    assert stopped["train_seconds"] == first["train_seconds"] and stopped["params"] is None  # no metrics.json yet
    second = fit.resume(run)
    assert second["status"] == "finished", second["reason"]
    assert second["train_seconds"] == pytest.approx(first["train_seconds"] + second["seconds"], abs=0.05)
    assert second["train_seconds"] > first["train_seconds"]
    metrics = run.metrics()
    assert metrics["train_seconds"] == second["train_seconds"] and metrics["params"] == second["params"]
    assert "validation_confusion" in metrics, "the metrics written by finish are kept"
    row = runs.summary(run)
    assert row["status"] == "finished" and row["train_seconds"] == second["train_seconds"]
    assert row["params"]["total"] > 0 and row["params"]["trainable"] > 0
    history = run.history()["val_accuracy"]
    assert len(history) == 2
    assert row["best_val_accuracy"] == max(history) and row["final_val_accuracy"] == history[-1]
    assert row["image_size"] == 32 and row["created"] > 0
    runs.delete(run)
    assert runs.list_runs() == []


# ---- CLI ---------------------------------------------------------------------------


def engine(capsys, *args: str) -> tuple[int, dict]:
    code = cli.main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_cli_lists_renames_and_deletes(capsys, runs_dir):
    fake_run("a", history={"loss": [1.0], "val_accuracy": [0.6]}, metrics={"val_accuracy": 0.6})
    fake_run("b")
    code, out = engine(capsys, "runs", "rename", "a", "My run")
    assert code == 0 and out == {"run": "a", "display_name": "My run"}
    code, out = engine(capsys, "runs", "rename", str(runs_dir / "b"), "By path")
    assert code == 0 and out == {"run": "b", "display_name": "By path"}
    code, out = engine(capsys, "runs")
    assert code == 0
    rows = {r["name"]: r for r in out["runs"]}
    assert rows["a"]["display_name"] == "My run" and rows["a"]["best_val_accuracy"] == 0.6
    assert {"image_size", "params", "train_seconds", "latency_ms", "created", "final_val_accuracy"} <= set(rows["a"])
    assert cli.main(["runs"]) == 0
    text = capsys.readouterr().out
    assert "My run [a]" in text and "By path [b]" in text
    code, out = engine(capsys, "runs", "delete", "b")
    assert code == 0 and out == {"deleted": "b"} and not (runs_dir / "b").exists()
    code, out = engine(capsys, "runs", "list")
    assert [r["name"] for r in out["runs"]] == ["a"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["runs", "delete", "nope"], "not a run folder"),
        (["runs", "rename", "nope", "x"], "not a run folder"),
        (["runs", "rename", "a"], "takes 2 argument(s), got 1"),
        (["runs", "delete"], "takes 1 argument(s), got 0"),
        (["runs", "list", "extra"], "takes 0 argument(s)"),
        (["runs", "rename", "a", "bad\nname"], "one line"),
        (["runs", "delete", "../elsewhere/x"], "not a run folder"),
    ],
)
def test_cli_errors_are_clear(capsys, args, message):
    fake_run("a")
    code, out = engine(capsys, *args)
    assert code == 2 and message in out["error"], out


def test_cli_refuses_to_delete_an_active_run(capsys):
    fake_run("a").set_status("running")
    code, out = engine(capsys, "runs", "delete", "a")
    assert code == 2 and "still running; stop it first" in out["error"]
    assert cli.main(["runs", "delete", "a"]) == 2
    assert "error: a is still running" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_as_a_process(runs_dir):
    fake_run("a")
    env = {**os.environ, "CONVSCOPE_RUNS_DIR": str(runs_dir)}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = subprocess.run(
        [sys.executable, "-m", "engine", "runs", "--json", "rename", "a", "Named"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0 and json.loads(res.stdout) == {"run": "a", "display_name": "Named"}, res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "engine", "runs", "bogus", "--json"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "invalid choice" in json.loads(res.stdout)["error"]
