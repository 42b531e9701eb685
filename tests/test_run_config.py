"""Run's typed view of its folder: TrainConfig with defaults, parent, splits, resize policy, progress.

Fast: every run here is a folder written by hand (config.json and friends), nothing trains.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from engine import runs
from engine.config import DEFAULT_HEAD_L2, MODE_DEFAULTS, DataConfig, TrainConfig
from engine.data.ingest import Dataset, Item
from engine.data.splits import split_items


@pytest.fixture(autouse=True)
def runs_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def fake_run(name: str, config: dict | None, root: Path | None = None, **files) -> runs.Run:
    """A run folder written by hand: its config.json (None: a queued run) and other JSON `files` (name -> data)."""
    run = runs.create(name, root)
    if config is not None:
        runs.write_json(run.path / "config.json", config)
        run.set_status("finished")
    for file, data in files.items():
        runs.write_json(run.path / f"{file}.json", data)
    return run


def dataset(per_class: int = 20) -> Dataset:
    items = [Item(f"{c}/{k}.png", y, None, f"{c}{k}", 8, 8) for y, c in enumerate("ab") for k in range(per_class)]
    return Dataset("folder:x", Path("/nowhere"), ["a", "b"], items, [])


FEATURE = {
    "backbone": "mobilenet_v2",
    "mode": "feature",
    "epochs": 5,
    "learning_rate": 0.01,
    "seed": 7,
    "data": {"source": "folder:x", "image_size": 96, "resize": "crop", "val_frac": 0.2, "test_frac": 0.1},
    "labels": ["a", "b"],
    "fingerprint": "abc",
}


def finetune_of(parent: runs.Run, **extra) -> dict:
    """A fine-tune's config.json as engine.training.finetune writes it: its own seed, its parent's split seed."""
    return {
        **FEATURE,
        "mode": "finetune",
        "seed": 99,
        "epochs": 3,
        "learning_rate": 0.001,
        "finetune": {"parent": str(parent.path), "unfreeze_top": 2, "parent_epochs": 5},
        "parent": parent.name,
        "split_seed": parent.split_seed,
        **extra,
    }


def test_train_config_reads_config_json_as_saved():
    config = fake_run("f", FEATURE).train_config
    assert isinstance(config, TrainConfig)
    assert (config.backbone, config.mode, config.epochs, config.learning_rate, config.seed) == (
        "mobilenet_v2",
        "feature",
        5,
        0.01,
        7,
    )
    assert config.data == DataConfig(source="folder:x", image_size=96, resize="crop", val_frac=0.2, test_frac=0.1)


def test_an_old_config_missing_newer_keys_takes_the_defaults():
    # A run from before resize policies, split fractions, schedules per mode, head penalties and presets.
    old = {"backbone": "small_cnn", "mode": "scratch", "data": {"source": "shapes", "image_size": 64}}
    run = fake_run("old", old)
    config = run.train_config
    defaults = DataConfig()
    assert (config.data.resize, config.data.val_frac, config.data.test_frac) == (
        defaults.resize,
        defaults.val_frac,
        defaults.test_frac,
    )
    assert config.epochs == MODE_DEFAULTS["scratch"]["epochs"]
    assert config.learning_rate == MODE_DEFAULTS["scratch"]["learning_rate"]
    assert config.batch_size == TrainConfig().batch_size and config.preset == ""
    assert config.head.l2 == 0.0 != DEFAULT_HEAD_L2  # saved before heads had a penalty: they trained without
    assert run.resize_policy == defaults.resize
    assert run.split_seed == 0 and run.parent is None


def test_a_queued_run_has_no_config_yet_and_a_broken_one_says_so():
    queued = fake_run("queued", None)
    assert queued.train_config is None
    assert queued.resize_policy == DataConfig().resize
    broken = fake_run("broken", {**FEATURE, "mode": "upside-down"})
    with pytest.raises(runs.RunError, match="not a valid run configuration"):
        _ = broken.train_config


def test_resize_policy_is_the_one_the_run_trained_with():
    assert fake_run("crop", FEATURE).resize_policy == "crop"


def test_a_fine_tune_splits_with_its_parents_seed_not_its_own():
    parent = fake_run("parent", FEATURE)
    child = fake_run("child", finetune_of(parent))
    assert child.train_config.seed == 99 and child.split_seed == parent.split_seed == 7
    data = dataset()
    assert child.splits(data) == parent.splits(data) == split_items(data.items, 7, 0.2, 0.1)
    assert child.splits(data) != split_items(data.items, 99, 0.2, 0.1)  # the seed matters on this data


def test_parent_is_the_run_a_fine_tune_continued():
    parent = fake_run("parent", FEATURE)
    child = fake_run("child", finetune_of(parent))
    assert child.parent == parent and child.parent.train_config.mode == "feature"
    assert parent.parent is None  # not a fine-tune
    grandchild = fake_run("grandchild", finetune_of(child))
    assert grandchild.parent == child and grandchild.parent.parent == parent


def test_parent_is_found_beside_the_run_when_the_runs_folder_moved(tmp_path):
    parent = fake_run("parent", FEATURE)
    fake_run("child", finetune_of(parent, finetune={"parent": "/gone/parent", "unfreeze_top": 1}))
    moved = tmp_path / "moved"
    (tmp_path / "runs").rename(moved)
    assert runs.Run(moved / "child").parent == runs.Run(moved / "parent")


def test_parent_falls_back_to_the_recorded_path_and_is_none_once_deleted(tmp_path):
    parent = fake_run("parent", FEATURE, root=tmp_path / "elsewhere")  # the CLI's --out: another folder
    child = fake_run("child", finetune_of(parent))
    assert child.parent == parent
    runs.delete(parent)
    assert child.parent is None


def test_parent_never_leaves_the_runs_folder_by_name(tmp_path):
    outside = fake_run("outside", FEATURE, root=tmp_path)
    child = fake_run("child", {**finetune_of(outside), "parent": "../outside", "finetune": {"unfreeze_top": 1}})
    assert child.parent is None


def test_progress_of_a_run_on_disk_is_a_job_snapshot():
    parent = fake_run("parent", FEATURE)
    child = fake_run("child", finetune_of(parent), history={"loss": [1.0] * 6, "accuracy": [0.5] * 6})
    child.set_status("stopped", "asked to stop")
    snap = child.progress()
    assert snap == {
        "id": "child",
        "run_dir": str(child.path),
        "status": "stopped",
        "reason": "asked to stop",
        "position": None,
        "progress": {},
        "history": {"loss": [1.0] * 6, "accuracy": [0.5] * 6},
        "epochs": 8,  # its 3 epochs after the parent's 5
        "start_epoch": 5,
        "result": None,
        "on_disk": True,
    }
    queued = fake_run("queued", None)
    assert queued.progress()["epochs"] == 1 and queued.progress()["start_epoch"] == 0


@pytest.mark.slow
def test_reading_a_run_does_not_load_tensorflow():
    # Pages read runs through Run; pages never load TensorFlow (a fresh interpreter: this one may have).
    code = "import sys, engine.runs, engine.config; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"
