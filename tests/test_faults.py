"""Faults and bad input (issue 20, 9-13; RELIABILITY 30-34): kills at every write, deletions, links, corruption."""

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, poison_from_epoch
from engine import runs
from engine.config import DataConfig, TrainConfig
from engine.errors import ConvScopeError
from engine.training import fit


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def feature_config(epochs: int = 3) -> TrainConfig:
    return TrainConfig(data=DataConfig(source=TINY, image_size=96), epochs=epochs)


class Killed(BaseException):
    """The process dies: nothing after it is written (not an Exception, like SystemExit)."""


def leftovers(run: runs.Run, folders=("", "checkpoints")) -> list[str]:
    return sorted(
        str(p.relative_to(run.path))
        for folder in (run.path / name for name in folders)
        if folder.is_dir()
        for p in folder.iterdir()
        if p.name.startswith(".")
    )


def write_name(path: Path) -> str:
    """A write's name: its file's, or `evaluations` for kept scores (their names hold the model file's time)."""
    return "evaluations" if path.parent.name == "evaluations" else path.name


def dies_at_write(real_write, name: str, at: int, calls: list):
    """atomic_write that works until write number `at` (from 0) of run `name`, then dies there and after."""

    def write(path, fn, **kw):
        if name not in path.parts:
            return real_write(path, fn, **kw)
        calls.append(write_name(path))
        if len(calls) <= at:
            return real_write(path, fn, **kw)
        if len(calls) == at + 1:  # killed mid-write: a half temporary file stays, nothing is renamed
            path.parent.mkdir(exist_ok=True)  # as atomic_write makes evaluations/
            fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=path.suffix)
            os.write(fd, b"half")
            os.close(fd)
        raise Killed(path.name)

    return write


def patch_writes(monkeypatch, write) -> None:
    """Every atomic write of a run goes through `write`: the engine's (runs.atomic_write) and the run store's own."""
    monkeypatch.setattr(runs, "atomic_write", write)
    monkeypatch.setattr(runs.files, "atomic_write", write)


# ---- 9 and RELIABILITY 30: a kill at every write of a run ---------------------------------


@pytest.mark.slow
def test_a_kill_at_any_write_loses_no_epoch_and_its_temporary_file_is_cleaned(monkeypatch):
    import keras

    real_write, real_save, real_alive = runs.atomic_write, runs.Run.save_checkpoint, runs.folder._pid_alive
    writes, weights = [], {}

    def record_write(path, write, **kw):
        if "reference" in path.parts:  # the run's own writes (not the feature cache's)
            writes.append(write_name(path))
        return real_write(path, write, **kw)

    def record_save(self, epoch, save):
        real_save(self, epoch, save)
        weights[epoch] = keras.models.load_model(self.checkpoint, safe_mode=True).get_weights()

    patch_writes(monkeypatch, record_write)
    monkeypatch.setattr(runs.Run, "save_checkpoint", record_save)
    config = feature_config()
    reference_run = runs.create("reference")
    reference = fit.train(config, reference_run)
    assert reference["status"] == "finished"
    monkeypatch.setattr(runs.Run, "save_checkpoint", real_save)
    first_record = writes.index("last.json")
    # Each kind of write after the first checkpoint (history, checkpoint, its record, status, metrics, model).
    kinds = {}
    for k in range(first_record + 1, len(writes)):
        kinds.setdefault(writes[k].split("-")[0], k)
    assert {"history.json", "epoch", "last.json", "status.json", "metrics.json", "model.keras"} <= set(kinds)

    # The run is marked finished by its last status write; what follows (latency) is work nobody waits for.
    marked_finished = len(writes) - 1 - writes[::-1].index("status.json")
    assert any(at > marked_finished for at in kinds.values()), "no follow-up write to kill"

    for kind, at in kinds.items():
        name, calls = f"killed-at-{kind}", []
        dying_write = dies_at_write(real_write, name, at, calls)

        patch_writes(monkeypatch, dying_write)
        run = runs.create(name)
        with pytest.raises(Killed):
            fit.train(config, run)
        assert calls[at] == writes[at], (calls, writes)
        assert leftovers(run, ("", "checkpoints", "evaluations")), f"{kind}: the simulated kill left no temporary file"
        patch_writes(monkeypatch, real_write)
        monkeypatch.setattr(runs.folder, "_pid_alive", lambda pid: False)  # the killed process is gone
        if at > marked_finished:  # killed in the follow-up: the run stays finished, whole and usable
            assert run.status()["status"] == "finished" and not run.resumable(), kind
            assert run.history() == reference["history"], kind
            metrics, expected = (runs.read_json(r.path / "metrics.json") for r in (run, reference_run))
            expected.pop("train_seconds")  # the one field that is a timing
            assert metrics.pop("train_seconds") > 0 and metrics == expected, kind
            model = keras.models.load_model(run.model_file, safe_mode=True)
            final = keras.models.load_model(reference_run.model_file, safe_mode=True)
            assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), final.get_weights(), strict=True))
            assert run.clean_leftovers() and leftovers(run) == [], kind  # as the registry does when it died
            monkeypatch.setattr(runs.folder, "_pid_alive", real_alive)
            continue
        done = run.checkpoint_epoch()
        assert done >= 1 and run.resumable(), kind
        # The recorded checkpoint is the one of its epoch, not a later one.
        saved = keras.models.load_model(run.checkpoint, safe_mode=True).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(saved, weights[done], strict=True)), kind

        resumed = fit.resume(run)
        monkeypatch.setattr(runs.folder, "_pid_alive", real_alive)
        assert resumed["status"] == "finished", (kind, resumed["reason"])
        for key, values in resumed["history"].items():
            assert len(values) == config.epochs, f"{kind}: {key} has {len(values)} epochs, not {config.epochs}"
            assert values[:done] == reference["history"][key][:done], f"{kind}: {key} shifted"
        assert leftovers(run) == [], f"{kind}: {leftovers(run)} left after the resume"
        # Kept scores' temporary files wait until they are stale: an evaluation in another process may be writing one.
        for half in (run.path / "evaluations").glob(".*"):
            os.utime(half, (time.time() - 3600, time.time() - 3600))
        run.clean_leftovers()
        assert leftovers(run, ("evaluations",)) == [], kind
        assert sorted(p.name for p in (run.path / "checkpoints").iterdir()) == ["epoch-0003.keras", "last.json"]


def test_a_resume_cuts_a_longer_history_back_to_the_checkpoint_and_a_shorter_one_wins():
    run = runs.create("r")
    runs.write_json(run.path / "history.json", {"loss": [3.0, 2.0, 1.0]})
    run.save_checkpoint(2, lambda tmp: tmp.write_bytes(b"weights"))
    assert run.checkpoint.name == "epoch-0002.keras" and run.checkpoint_epoch() == 2
    assert run.consistent_epoch() == 2
    runs.write_json(run.path / "history.json", {"loss": [3.0]})  # an old run killed before its history write
    assert run.consistent_epoch() == 1


def test_old_runs_with_last_keras_still_resume_from_it():
    run = runs.create("old")
    (run.path / "checkpoints").mkdir()
    (run.path / "checkpoints" / "last.keras").write_bytes(b"weights")
    runs.write_json(run.path / "checkpoints" / "last.json", {"epoch": 2})
    runs.write_json(run.path / "history.json", {"loss": [2.0, 1.0]})
    assert run.checkpoint.name == "last.keras" and run.consistent_epoch() == 2
    assert run.clean_leftovers() == [] and run.checkpoint.is_file()


# ---- 13 (d): a NaN stop names a checkpoint only when there is one ------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("first", [0, 2])
def test_a_nan_stop_claims_a_checkpoint_only_when_one_exists(monkeypatch, first):
    poison_from_epoch(monkeypatch, first)
    run = runs.create(f"nan-{first}")
    out = fit.train(feature_config(epochs=4), run)
    assert out["status"] == "failed" and "NaN" in out["reason"]
    if first == 0:
        assert not run.checkpoint.is_file() and not run.resumable()
        assert "checkpoint is kept" not in out["reason"] and "no checkpoint" in out["reason"], out["reason"]
    else:
        kept = run.checkpoint_epoch()
        assert kept >= 1 and f"checkpoint (epoch {kept}) is kept" in out["reason"], out["reason"]


# ---- 13 (e): the time of a killed call counts when the run is resumed ---------------------------


@pytest.mark.slow
def test_a_killed_calls_training_time_is_kept_and_a_resume_adds_to_it(monkeypatch):
    import keras

    real_write, real_fit = runs.atomic_write, keras.Model.fit

    def slow_fit(self, *a, **kw):  # each epoch takes at least 0.5 s more, so the killed part is clearly there
        pause = keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: time.sleep(0.5))
        return real_fit(self, *a, **{**kw, "callbacks": [pause, *kw.get("callbacks", [])]})

    def dies_at_third_history(path, write, **kw):
        if path.name == "history.json" and "killed" in path.parts:
            histories.append(path)
        if len(histories) >= 3:  # from epoch 3's first write on (two epochs are recorded) nothing is written
            raise Killed(path.name)
        return real_write(path, write, **kw)

    histories = []
    monkeypatch.setattr(keras.Model, "fit", slow_fit)
    patch_writes(monkeypatch, dies_at_third_history)
    run = runs.create("killed")
    with pytest.raises(Killed):
        fit.train(feature_config(epochs=4), run)
    patch_writes(monkeypatch, real_write)
    monkeypatch.setattr(runs.folder, "_pid_alive", lambda pid: False)
    assert run.checkpoint_epoch() == 2
    killed = run.train_seconds()
    assert killed >= 1.0, f"the killed call's time was not recorded ({killed} s)"
    resumed = fit.resume(run)
    assert resumed["status"] == "finished" and resumed["epochs_run"] == 4
    assert resumed["train_seconds"] >= killed + resumed["seconds"] - 0.05
    assert runs.summary(run)["train_seconds"] == resumed["train_seconds"]


# ---- 10: a command on a run killed before its model was written ------------------------------


def killed_before_model(name: str) -> runs.Run:
    """A run folder as a kill before model.keras leaves it: config, labels, history, no model."""
    from engine.data.sources import open_dataset

    run = runs.create(name)
    config = feature_config(epochs=3)
    runs.write_json(run.path / "config.json", {**config.to_json(), "labels": open_dataset(TINY).classes})
    runs.write_json(run.path / "labels.json", open_dataset(TINY).classes)
    runs.write_json(run.path / "history.json", {"loss": [1.0]})
    return run


@pytest.mark.parametrize("command", [["evaluate"], ["export", "--format", "keras"], ["report"]])
def test_commands_on_a_run_without_a_model_exit_2_with_a_message(command, capsys):
    from engine.cli import main as cli

    run = killed_before_model("nomodel")
    code = cli.main([command[0], str(run.path), *command[1:], "--json"])
    out = capsys.readouterr()
    assert code == 2, out
    error = json.loads(out.out)["error"]
    assert "no model.keras" in error and "Traceback" not in out.err, (error, out.err[-500:])


# ---- 11 and RELIABILITY 32: a run deleted while it is evaluated or exported --------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("trained"), "trained", epochs=1, image_size=64)


def copy_of(trained, runs_dir, name: str) -> runs.Run:
    import shutil

    runs_dir.mkdir(parents=True, exist_ok=True)
    return runs.Run(Path(shutil.copytree(trained, runs_dir / name)))


@pytest.mark.slow
def test_a_run_deleted_while_it_is_evaluated_stays_deleted(trained, runs_dir, monkeypatch, capsys):
    from engine.cli import main as cli
    from engine.evaluate import evaluation

    run = copy_of(trained, runs_dir, "doomed")
    for kept in (run.path / "evaluations").glob("*.npz"):
        kept.unlink()  # the scores training kept: this evaluation scores the images
    real_score = evaluation.score

    def score_then_delete(*a, **kw):
        logits = real_score(*a, **kw)
        runs.delete(run)  # another session deletes the run while this one scores it
        return logits

    monkeypatch.setattr(evaluation, "score", score_then_delete)
    code = cli.main(["evaluate", "doomed", "--json"])
    out = capsys.readouterr()
    assert code == 2, out.out + out.err[-2000:]
    assert "deleted" in json.loads(out.out)["error"], out.out
    assert not run.path.exists() and [r.name for r in runs.list_runs()] == []
    runs.create("doomed")  # the name is free again


@pytest.mark.slow
def test_a_run_deleted_while_it_is_exported_stays_deleted(trained, runs_dir, monkeypatch):
    from engine.export import ExportError, formats

    run = copy_of(trained, runs_dir, "doomed")
    real_swap = formats._swap_in

    def delete_then_swap(*a, **kw):
        runs.delete(run)
        return real_swap(*a, **kw)

    monkeypatch.setattr(formats, "_swap_in", delete_then_swap)
    with pytest.raises(ExportError, match="deleted"):
        formats.export_run(run.path, "keras")
    assert not run.path.exists() and [r.name for r in runs.list_runs()] == []

    # Deleted later, while the export is checked: its record of checks must not bring the folder back.
    run = copy_of(trained, runs_dir, "doomed2")
    from engine.export import parity

    real_compare = parity.compare

    def compare_then_delete(*a, **kw):
        result = real_compare(*a, **kw)
        runs.delete(run)
        return result

    monkeypatch.setattr(formats, "_swap_in", real_swap)
    monkeypatch.setattr(parity, "compare", compare_then_delete)
    with pytest.raises(ExportError, match="deleted"):
        formats.export_run(run.path, "keras")
    assert not run.path.exists() and [r.name for r in runs.list_runs()] == []


# ---- 12 and RELIABILITY 33: a folder that is a link to a place outside the dataset -------------


def image_folder(folder: Path, seed: int, n: int = 2) -> Path:
    import datafactory

    for i in range(n):
        datafactory.write(folder / f"{i}.png", datafactory.png_bytes(seed * 10 + i))
    return folder


def test_folder_links_out_of_the_dataset_are_never_read(tmp_path, cache_dir, monkeypatch):
    from engine.data import layout, sources
    from engine.data.sources import open_dataset

    outside = image_folder(tmp_path / "elsewhere" / "secrets", 9)
    data = tmp_path / "root" / "data"
    image_folder(data / "a", 1)
    image_folder(data / "b", 2)
    (data / "etc").symlink_to(outside, target_is_directory=True)  # a class folder that is a link
    (data / "a" / "more").symlink_to(outside, target_is_directory=True)  # a folder link inside a class
    image_folder(data / "c", 3)
    (data / "c" / "same").symlink_to(data / "c", target_is_directory=True)  # inside the dataset: not a reason

    ds = open_dataset(str(data))
    assert ds.classes == ["a", "b", "c"]
    assert all("secrets" not in str(ds.path(i).resolve()) and "more" not in i.rel for i in ds.items)
    reasons = {s.path: s.reason for s in ds.skipped}
    assert reasons.get("etc/") == layout.LINK_FOLDER_OUTSIDE, reasons
    assert reasons.get("a/more/") == layout.LINK_FOLDER_OUTSIDE, reasons
    assert "c/same/" not in reasons

    # A wrapping folder and a split folder that are links out of the dataset.
    wrapped = tmp_path / "root" / "wrapped"
    wrapped.mkdir()
    (wrapped / "inner").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with pytest.raises(ConvScopeError, match="outside"):
        open_dataset(str(wrapped))
    split = tmp_path / "root" / "split"
    image_folder(split / "train" / "a", 4)
    image_folder(split / "train" / "b", 5)
    (split / "test").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    ds = open_dataset(str(split))
    assert ds.classes == ["a", "b"] and {s.path: s.reason for s in ds.skipped}["test/"] == layout.LINK_FOLDER_OUTSIDE

    # The operator's allowed roots: a link in a root to a folder elsewhere is neither offered nor opened.
    monkeypatch.setenv("CONVSCOPE_DATA_ROOTS", str(tmp_path / "root"))
    (tmp_path / "root" / "escape").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    assert tmp_path / "root" / "escape" not in sources.server_folders()
    with pytest.raises(ConvScopeError, match="operator"):
        sources.check_server_folder(tmp_path / "root" / "escape")


# ---- 13 (a) and RELIABILITY 34: a corrupted model file ------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["garbage", "truncated", "other zip"])
def test_a_corrupted_model_says_so_and_the_run_is_listed_as_damaged(trained, runs_dir, damage, capsys):
    import zipfile

    from engine.cli import main as cli

    run = copy_of(trained, runs_dir, "corrupt")
    assert runs.summary(run)["status"] == "finished"
    data = run.model_file.read_bytes()
    if damage == "garbage":
        run.model_file.write_bytes(b"this is not a model" * 100)
    elif damage == "truncated":
        run.model_file.write_bytes(data[: len(data) // 2])
    else:
        run.model_file.unlink()
        with zipfile.ZipFile(run.model_file, "w") as zf:
            zf.writestr("notes.txt", "a zip, but not a Keras archive")
    code = cli.main(["evaluate", "corrupt", "--json"])
    out = capsys.readouterr()
    assert code == 2, out.out + out.err[-1500:]
    error = json.loads(out.out)["error"]
    assert "model.keras is corrupted or not a Keras archive" in error and "not found" not in error.lower(), error
    row = runs.summary(run)
    assert row["status"] == "failed" and row["detail"] == "the run folder is damaged", row
    assert "corrupted or not a Keras archive" in row["reason"] and not row["has_model"]
