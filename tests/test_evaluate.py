"""Evaluating a trained run: its test split, caching, other sources, mistakes, CAM pairs, temperature, the CLI."""

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, train_tiny_run
from engine import evaluate, jobs, runs
from engine.config import DataConfig, TrainConfig
from engine.jobs import bakeoff
from engine.model.classifier import saved_temperature
from engine.model.explainable import run_model
from engine.training import fit

pytestmark = pytest.mark.slow  # every test uses a trained run, a child process or a worker process

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A finished feature-mode run on the tiny shapes (96 px, 3 epochs), shared by the module."""
    return train_tiny_run(tmp_path_factory.mktemp("runs"), "evaluated")


@pytest.fixture
def run(run_dir, tmp_path):
    """A private copy of the module's run (tests may write its cache or calibration)."""
    return runs.Run(Path(shutil.copytree(run_dir, tmp_path / "runs" / run_dir.name)))


def test_the_test_split_matches_training_and_the_matrix_counts_it(run):
    result = evaluate.evaluate(run)
    config = run.config()
    n = config["split_sizes"]["test"]
    matrix = np.array(result.metrics["confusion_matrix"])
    assert matrix.sum() == n == len(result.labels) == result.metrics["count"]
    assert matrix.shape == (3, 3) and result.class_names == run.labels()
    # The same images and model as training's own test evaluation (features there, images here).
    assert result.metrics["accuracy"] == pytest.approx(run.metrics()["test_accuracy"], abs=1.01 / n)
    support = sum(v["support"] for v in result.metrics["per_class"].values())
    assert support == n
    assert 0 <= result.ece <= 1 and result.temperature is not None and result.temperature > 0


def test_scores_are_cached_per_model_and_data(run):
    kept = evaluate.evaluate(run)
    assert kept.cached, "training keeps the test split's logits from the pass that computed them"
    shutil.rmtree(run.path / "evaluations")
    first = evaluate.evaluate(run)
    assert not first.cached and first.temperature == pytest.approx(kept.temperature, rel=1e-4)
    # The head on the cached features and the whole model on the images: the same logits, the same answers.
    np.testing.assert_allclose(kept.logits, first.logits, atol=1e-4)
    assert np.array_equal(kept.predicted, first.predicted) and kept.metrics["accuracy"] == first.metrics["accuracy"]
    again = evaluate.evaluate(run)
    assert again.cached and np.array_equal(again.logits, first.logits)
    os.utime(run.model_file, ns=(1, 1))  # a rewritten model (a resumed run): scored again
    assert not evaluate.evaluate(run).cached


def test_mistakes_cells_and_csv(run):
    result = evaluate.evaluate(run, split="all")  # every image: some mistakes after 3 epochs are likely
    mistakes = result.mistakes()
    probs = [m["probability"] for m in mistakes]
    assert probs == sorted(probs, reverse=True)
    assert all(m["true"] != m["predicted"] for m in mistakes)
    assert len(mistakes) == len(result.labels) - np.trace(np.array(result.metrics["confusion_matrix"]))
    for t in range(3):
        for p in range(3):
            cell = result.cell(t, p)
            assert len(cell) == result.metrics["confusion_matrix"][t][p]
            assert all(result.labels[k] == t and result.predicted[k] == p for k in cell)
            assert list(result.confidence[cell]) == sorted(result.confidence[cell], reverse=True)
    csv = result.mistakes_csv().splitlines()
    assert csv[0] == "path,true,predicted,confidence" and len(csv) == len(mistakes) + 1
    assert all(not line.startswith("/") for line in csv[1:])  # relative to the source, no server paths
    unsure = result.unsure_correct()
    assert list(result.confidence[unsure]) == sorted(result.confidence[unsure])


def test_another_source_maps_classes_by_name(run, tmp_path):
    import datafactory as f
    from engine.data import sources

    # The same shapes, three classes, from a folder: every image, labels by class name.
    dataset = sources.open_dataset(TINY)
    folder = tmp_path / "mine"
    for item in dataset.items[::3]:
        dst = folder / dataset.classes[item.label] / Path(item.rel).name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(dataset.path(item), dst)
    result = evaluate.evaluate(run, str(folder))
    assert result.data.split == "all" and len(result.labels) == len(dataset.items[::3])
    truth = [run.labels().index(Path(rel).parent.name) for rel in result.data.rels]
    assert result.labels.tolist() == truth
    # A class the run never saw: refused with the class names.
    (folder / "hexagon").mkdir()
    for k in range(2):
        (folder / "hexagon" / f"h{k}.png").write_bytes(f.png_bytes(k))
    with pytest.raises(evaluate.EvaluationError, match="hexagon"):
        evaluate.evaluate(run, str(folder))


def test_a_bad_split_and_an_unfinished_run(run, tmp_path):
    with pytest.raises(evaluate.EvaluationError, match="split must be one of"):
        evaluate.evaluate(run, split="holdout")
    bare = runs.create(str(tmp_path / "bare"))
    with pytest.raises(evaluate.EvaluationError, match="model.keras"):
        run_model(bare)


def test_predict_with_a_run_uses_its_labels_and_saved_temperature(run):
    from engine import imaging
    from engine.data import sources
    from engine.model.classifier import RunClassifier

    dataset = sources.open_dataset(TINY)
    images = [(i.rel, imaging.load_rgb(dataset.path(i))) for i in dataset.items[:4]]
    plain = RunClassifier(run.path)
    assert plain.temperature == 1.0 and not plain.calibrated
    results = plain.predict(images, top_k=5)  # more than the run has: all 3
    assert all(len(r.top) == 3 and {t.label for t in r.top} == set(run.labels()) for r in results)
    assert all(sum(t.probability for t in r.top) == pytest.approx(1.0) for r in results)
    evaluate.save_temperature(run, 2.5)
    warm = RunClassifier(run.path)
    assert warm.temperature == 2.5 and warm.calibrated
    for a, b in zip(plain.predict(images), warm.predict(images), strict=True):
        assert a.top[0].label == b.top[0].label  # a temperature never changes the winner
        assert b.top[0].probability < a.top[0].probability  # only how sure it is
    with pytest.raises(evaluate.EvaluationError, match="positive"):
        evaluate.save_temperature(run, 0)


def test_heatmaps_batch_matches_one_by_one_and_is_cached(run):
    from engine.explain import explain_image, heatmaps

    model = run_model(run)
    result = evaluate.evaluate(run, model=model)
    from engine.data.pipeline import load_resized

    rgbs = [load_resized(p, 96) for p in result.data.paths[:3]]
    x = np.stack(rgbs).astype(np.float32)
    classes = [0, 1, 2]
    maps = heatmaps(model, np.concatenate([x, x]), classes + [2, 0, 1])
    assert maps.shape == (6, 96, 96) and maps.min() >= 0 and maps.max() <= 1
    for k, c in enumerate(classes):
        one = explain_image(model, rgbs[k], "gradcam", c)
        np.testing.assert_allclose(maps[k], one.display, atol=1e-5)
    misses = model.memo.misses
    again = heatmaps(model, x, classes)
    assert model.memo.misses == misses and np.array_equal(again, maps[:3])


def cli(*args: str, runs_dir: Path) -> tuple[int, dict]:
    env = {**os.environ, "CONVSCOPE_RUNS_DIR": str(runs_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "engine", *args, "--json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    return proc.returncode, json.loads(proc.stdout)


def test_cli_evaluate_and_predict_with_a_run(run, tmp_path):
    code, out = cli("evaluate", str(run.path), "--save-temperature", runs_dir=run.path.parent)
    assert code == 0, out
    keys = {"accuracy", "top_k_accuracy", "labels", "confusion_matrix", "per_class", "ece", "ece_calibrated"}
    assert keys | {"temperature", "mistakes"} <= set(out)
    assert sum(map(sum, out["confusion_matrix"])) == run.config()["split_sizes"]["test"]
    assert set(out["per_class"]) == set(run.labels())
    assert set(out["per_class"][run.labels()[0]]) == {"precision", "recall", "f1", "support"}
    assert out["temperature_saved"] and saved_temperature(run.path) == pytest.approx(out["temperature"])

    from engine.data import sources

    dataset = sources.open_dataset(TINY)
    image = str(dataset.path(dataset.items[0]))
    code, out = cli("predict", image, str(tmp_path / "missing.png"), "--run", str(run.path), runs_dir=tmp_path)
    assert code == 0, out
    (p,) = out["predictions"]
    assert {t["label"] for t in p["top"]} == set(run.labels()) and len(p["top"]) == 3
    assert out["run"] == run.name and out["temperature"] == pytest.approx(saved_temperature(run.path))
    assert out["skipped"][0]["image"].endswith("missing.png")
    code, out = cli("evaluate", str(tmp_path / "nowhere"), runs_dir=tmp_path)
    assert code == 2 and "not a run folder" in out["error"]


def test_a_bakeoff_queues_and_fills_its_table(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    release = threading.Event()

    def fake_train(config, run, stop=None, report=None, resume=False):
        release.wait(30)
        runs.write_json(run.path / "config.json", {**config.to_json(), "labels": ["a", "b"]})
        runs.write_json(run.path / "history.json", {"loss": [1.0], "val_accuracy": [0.5]})
        runs.write_json(run.path / "metrics.json", {"val_accuracy": 0.5, "test_accuracy": 0.5})
        run.set_status("finished")
        return {"status": "finished", "reason": "", "history": {}}

    registry = jobs.JobRegistry(fake_train, devices=["/CPU:0"])
    config = TrainConfig(data=DataConfig(source=TINY, image_size=96), epochs=2)
    with pytest.raises(fit.TrainingError, match="at least two"):
        bakeoff.start(config, ["efficientnet_lite0"], registry)
    with pytest.raises(Exception, match="nonesuch"):
        bakeoff.start(config, ["efficientnet_lite0", "nonesuch"], registry)
    names = ["efficientnet_lite0", "efficientnet_lite1"]
    assert set(names) <= set(bakeoff.usable())
    record = bakeoff.start(config, names, registry)
    assert len(record["runs"]) == 2 and bakeoff.list_bakeoffs()[0]["id"] == record["id"]
    table = bakeoff.table(bakeoff.load(record["id"]))
    assert [r["status"] for r in table] in (["running", "queued"], ["queued", "queued"])
    release.set()
    for job_id in record["runs"]:
        assert registry.wait(job_id, timeout=60)["status"] == "finished"
    table = bakeoff.table(bakeoff.load(record["id"]))
    assert [r["backbone"] for r in table] == names and all(r["status"] == "finished" for r in table)
    assert all(r["test_accuracy"] == 0.5 for r in table)
    assert {r.name for r in runs.list_runs()} == set(record["runs"])  # the record is not a run
