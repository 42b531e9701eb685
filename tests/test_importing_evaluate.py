"""Imported models (engine.importing) on Evaluate, Predict, Export and the report, checked against Keras itself.

The models are built and trained in plain Keras (tests/keras_models.py), imported once for the module, and
compared with the ORIGINAL .keras file loaded by Keras: its own `model.evaluate` accuracy and its own outputs,
on the images ConvScope scores (decoded and resized by engine.data.pipeline / engine.imaging).
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import keras_models as km
import numpy as np
import pytest

from conftest import runs_dir_set
from engine import evaluate, imaging, runs
from engine.backbones.conventions import LUMA
from engine.cli.main import main
from engine.data import sources
from engine.data.pipeline import load_resized
from engine.errors import EvaluationError, ExportError
from engine.export import export_run
from engine.export.report import IMPORTED_SECTIONS, write_report
from engine.importing import import_model
from engine.model.classifier import RunClassifier

pytestmark = pytest.mark.slow  # every test loads Keras models built and imported once for the module

THREE = "shapes:per_class=12,classes=3,size=48"  # the softmax model's data
TWO = "shapes:per_class=12,classes=2,size=64"  # the tutorial's two classes
GRAY = "shapes:per_class=8,classes=3,size=32"
TRAIN = "shapes:per_class=30,classes=3,size=48"  # what the unit model learns from, in plain Keras


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Four models built in plain Keras and imported as runs: softmax with Rescaling (with data), the tutorial's
    shape (single logit, with data), grayscale (with data) and a trained [0, 1] CNN (imported without data)."""
    root = tmp_path_factory.mktemp("imported")
    files = root / "files"
    files.mkdir()
    labels = files / "labels.txt"
    labels.write_text("\n".join(sources.open_dataset(TRAIN).classes) + "\n")
    paths = {
        "soft": km.softmax_rescaling(files / "soft.keras"),
        "tutorial": km.tutorial(files / "tutorial.keras"),
        "gray": km.grayscale(files / "gray.keras"),
        "unit": km.unit_cnn(files / "unit.keras", train_folder=sources.open_dataset(TRAIN).root),
    }
    with runs_dir_set(root / "runs"):
        imported = {
            "soft": import_model(paths["soft"], source=THREE, out=root / "runs" / "soft"),
            "tutorial": import_model(paths["tutorial"], source=TWO, out=root / "runs" / "tutorial"),
            "gray": import_model(paths["gray"], source=GRAY, out=root / "runs" / "gray"),
            "unit": import_model(paths["unit"], preprocess="unit", labels=labels, out=root / "runs" / "unit"),
        }
    assert [imported[k]["output"] for k in ("soft", "tutorial", "gray")] == ["softmax", "binary_logit", "softmax"]
    return SimpleNamespace(root=root, files=paths, runs={k: Path(v["run_dir"]) for k, v in imported.items()})


@pytest.fixture
def runs_root(made, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(made.root / "runs"))
    return made.root / "runs"


def original(path: Path):
    """The user's own file, as Keras loads it (its softmax / single logit head untouched)."""
    import keras

    return keras.models.load_model(path, compile=False)


def images_of(data: evaluate.LabelledSet, size: int, policy: str = "stretch") -> np.ndarray:
    """The images ConvScope scores, decoded and resized as it does: (N, S, S, 3) float32 in [0, 255]."""
    return np.stack([load_resized(p, size, policy) for p in data.paths]).astype(np.float32)


def keras_evaluate(model, x: np.ndarray, y: np.ndarray, metric) -> float:
    """Keras's own accuracy: the model compiled with the metric matching its head."""
    model.compile(loss="mse" if y.ndim == 2 else "sparse_categorical_crossentropy", metrics=[metric])
    return float(model.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)[metric.name])


def cli(capsys, *args: str) -> tuple[int, dict]:
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


# ---- Evaluate ----------------------------------------------------------------------------------------
def test_softmax_accuracy_equals_keras_evaluate(made, runs_root):
    import keras

    run = runs.open_run(made.runs["soft"])
    result = evaluate.evaluate(run)
    assert result.data.split == "all"  # the source given at import: ConvScope never split it for training
    assert result.metrics["count"] == len(sources.open_dataset(THREE).items)
    model = original(made.files["soft"])
    x = images_of(result.data, 48)  # raw pixels: the model's Rescaling layer scales them
    acc = keras_evaluate(model, x, result.labels, keras.metrics.SparseCategoricalAccuracy(name="acc"))
    n = len(result.labels)
    assert round(acc * n) == round(result.metrics["accuracy"] * n)
    np.testing.assert_array_equal(model.predict(x, verbose=0).argmax(1), result.predicted)  # image by image


def test_single_logit_accuracy_equals_keras_evaluate(made, runs_root):
    import keras

    result = evaluate.evaluate(runs.open_run(made.runs["tutorial"]))
    assert result.data.split == "all" and result.class_names == ["circle", "square"]
    model = original(made.files["tutorial"])
    x = images_of(result.data, 64)  # raw: preprocess_input is inside the tutorial's model
    y = result.labels.astype(np.float32)[:, None]
    acc = keras_evaluate(model, x, y, keras.metrics.BinaryAccuracy(threshold=0.0, name="acc"))
    n = len(result.labels)
    assert round(acc * n) == round(result.metrics["accuracy"] * n)
    z = model.predict(x, verbose=0)[:, 0]
    np.testing.assert_array_equal((z > 0).astype(int), result.predicted)


def test_trained_unit_model_accuracy_equals_keras_evaluate(made, runs_root, capsys):
    import keras

    # THREE's images are among those it learned from (TRAIN, same seed): a tiny CNN that memorised them
    code, out = cli(capsys, "evaluate", str(made.runs["unit"]), "--source", THREE)
    assert code == 0, out
    assert out["split"] == "all" and out["count"] == 36
    data = evaluate.labelled_set(runs.open_run(made.runs["unit"]), THREE)
    x = images_of(data, 48) / 255.0  # the [0, 1] convention it was trained with (plain Keras, x * 1/255)
    model = original(made.files["unit"])
    acc = keras_evaluate(model, x, data.labels, keras.metrics.SparseCategoricalAccuracy(name="acc"))
    assert acc > 0.8  # trained: ConvScope feeding it raw pixels would show (it answers one class then)
    assert round(acc * 36) == round(out["accuracy"] * 36)
    wrong = {(m["image"], m["predicted"]) for m in out["mistakes"]}
    predicted = model.predict(x, verbose=0).argmax(1)
    names = out["labels"]
    assert wrong == {(p, names[k]) for p, k, y in zip(data.paths, predicted, data.labels, strict=True) if k != y}


def test_imported_without_data_asks_for_a_source(made, runs_root, capsys):
    code, out = cli(capsys, "evaluate", str(made.runs["unit"]))
    assert code == 2
    assert "imported without labelled data" in out["error"] and "labelled source" in out["error"]


def test_another_source_with_a_subset_of_the_classes(made, runs_root):
    result = evaluate.evaluate(runs.open_run(made.runs["soft"]), TWO)  # circle and square of its three
    assert result.data.split == "all" and result.metrics["count"] == 24
    assert result.class_names == ["circle", "square", "triangle"] and set(result.labels) == {0, 1}
    with pytest.raises(EvaluationError, match="classes the run does not know: triangle"):
        evaluate.evaluate(runs.open_run(made.runs["tutorial"]), THREE)


def test_calibration_of_an_imported_run(made, tmp_path, capsys):
    """The temperature is fitted on a validation split ConvScope makes of the data; saved, Predict divides by it."""
    copy = Path(shutil.copytree(made.runs["soft"], tmp_path / "runs" / "soft"))
    with runs_dir_set(tmp_path / "runs"):
        code, out = cli(capsys, "evaluate", str(copy), "--save-temperature")
        assert code == 0, out
        assert out["temperature"] > 0 and out["temperature_saved"]
        classifier = RunClassifier(copy)
    assert classifier.calibrated and classifier.temperature == pytest.approx(out["temperature"], abs=1e-6)


# ---- Predict -----------------------------------------------------------------------------------------
def _some_images(source: str, n: int = 6) -> list[tuple[str, np.ndarray]]:
    dataset = sources.open_dataset(source)
    return [(item.rel, imaging.load_rgb(dataset.path(item))) for item in dataset.items[:: len(dataset.items) // n]]


def test_predict_gives_the_files_softmax_probabilities(made, runs_root):
    images = _some_images(THREE)
    results = RunClassifier(made.runs["soft"]).predict(images, top_k=3)
    x = np.stack([imaging.resize(rgb, 48) for _, rgb in images]).astype(np.float32)
    theirs = original(made.files["soft"]).predict(x, verbose=0)
    for result, p in zip(results, theirs, strict=True):
        ours = np.zeros(3)
        ours[[t.index for t in result.top]] = [t.probability for t in result.top]
        np.testing.assert_allclose(ours, p, atol=1e-5)


def test_predict_gives_sigmoid_of_the_single_logit(made, runs_root, capsys):
    images = _some_images(TWO)
    x = np.stack([imaging.resize(rgb, 64) for _, rgb in images]).astype(np.float32)
    z = original(made.files["tutorial"]).predict(x, verbose=0)[:, 0].astype(np.float64)
    sigmoid = 1 / (1 + np.exp(-z))
    for result, s in zip(RunClassifier(made.runs["tutorial"]).predict(images, top_k=2), sigmoid, strict=True):
        by_class = {t.label: t.probability for t in result.top}
        assert by_class["square"] == pytest.approx(s, abs=1e-5)  # class 1: sigmoid(z)
        assert by_class["circle"] == pytest.approx(1 - s, abs=1e-5)
    dataset = sources.open_dataset(TWO)
    path = str(dataset.path(dataset.items[0]))
    code, out = cli(capsys, "predict", path, "--run", str(made.runs["tutorial"]), "--top", "2")
    assert code == 0, out
    assert out["imported"] == {"file": "tutorial.keras", "output": "binary_logit", "preprocess": "raw"}
    assert out["backbone"] == ""
    one = np.stack([imaging.resize(imaging.load_rgb(path), 64)]).astype(np.float32)
    z0 = float(original(made.files["tutorial"]).predict(one, verbose=0)[0, 0])
    square = next(t for t in out["predictions"][0]["top"] if t["label"] == "square")
    assert square["probability"] == pytest.approx(1 / (1 + np.exp(-z0)), abs=1e-5)


# ---- Export ------------------------------------------------------------------------------------------
TOLERANCE = {"keras": 1e-6, "savedmodel": 1e-5, "tflite": 1e-4, "tflite-fp16": 2e-2, "onnx": 1e-4, "tflite-int8": 0.1}


@pytest.mark.parametrize("fmt", list(TOLERANCE))
@pytest.mark.parametrize("which", ["soft", "tutorial"])
def test_every_export_with_parity_on_the_source_given_at_import(made, runs_root, tmp_path, which, fmt):
    result = export_run(made.runs[which], fmt, tmp_path / f"model-{fmt}")
    assert "unchecked" not in result, result
    assert result["split"] == "all" and result["images"] == (36 if which == "soft" else 24)
    assert result["max_abs_diff"] < TOLERANCE[fmt], result
    assert result["agreement"] >= (0.9 if fmt == "tflite-int8" else 1.0), result


@pytest.mark.parametrize("fmt", ["savedmodel", "tflite", "onnx"])
def test_grayscale_export_takes_rgb(made, runs_root, tmp_path, fmt):
    """The export takes RGB like every other (the luma conversion inside) and gives the file's own probabilities."""
    result = export_run(made.runs["gray"], fmt, tmp_path / f"gray-{fmt}")
    assert result["agreement"] == 1.0 and result["max_abs_diff"] < 1e-4, result
    if fmt != "savedmodel":
        return
    import tensorflow as tf

    rgb = np.stack([rgb for _, rgb in _some_images(GRAY, 4)])  # (4, 32, 32, 3) uint8: the generated size
    loaded = tf.saved_model.load(result["path"])  # kept: its functions hold weak references to its variables
    served = loaded.serve(tf.constant(rgb))["probabilities"].numpy()
    gray = rgb.astype(np.float32) @ np.asarray(LUMA, np.float32)  # (4, 32, 32, 1), computed here
    np.testing.assert_allclose(served, original(made.files["gray"]).predict(gray, verbose=0), atol=1e-5)


def test_export_of_an_import_without_data_is_unchecked(made, runs_root, tmp_path):
    result = export_run(made.runs["unit"], "keras", tmp_path / "unit.keras")
    assert "imported without labelled data" in result["unchecked"] and "agreement" not in result
    with pytest.raises(ExportError, match="tflite-int8 is calibrated on the run's images"):
        export_run(made.runs["unit"], "tflite-int8", tmp_path / "unit-int8.tflite")


# ---- the report --------------------------------------------------------------------------------------
def test_report_says_it_is_an_imported_model(made, runs_root, tmp_path):
    out = write_report(made.runs["soft"], tmp_path / "report.html")
    assert out["sections"] == list(IMPORTED_SECTIONS) and "Training curves" not in out["sections"]
    page = Path(out["path"]).read_text(encoding="utf-8")
    facts = json.loads((made.runs["soft"] / "config.json").read_text())["imported"]
    for text in ("an imported model (soft.keras", "Imported model", facts["sha256"][:16], "softmax probabilities"):
        assert text in page, text
    assert html.escape(facts["preprocess_reason"]) in page and "Rescaling" in facts["preprocess_reason"]
    assert f"{json.loads((made.runs['soft'] / 'metrics.json').read_text())['params']['total']:,}" in page
    for absent in ("best validation accuracy", "Training curves", "learning_rate"):
        assert absent not in page, absent


def test_report_of_an_import_without_data_needs_a_source(made, runs_root, tmp_path, capsys):
    code, out = cli(capsys, "report", str(made.runs["unit"]), "--out", str(tmp_path / "r.html"))
    assert code == 2 and "imported without labelled data" in out["error"]
    code, out = cli(capsys, "report", str(made.runs["unit"]), "--out", str(tmp_path / "r.html"), "--source", THREE)
    assert code == 0, out
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "[0, 1] (pixels / 255)" in page and "chosen by you" in page


# ---- the Evaluate page ---------------------------------------------------------------------------------
def _texts(at) -> str:
    kinds = ("markdown", "caption", "info", "warning", "error")
    return " ".join(str(e.value) for kind in kinds for e in at.get(kind))


def test_evaluate_page_on_imported_runs(made, runs_root, open_page):
    small = {"eval_src_per_class": 4, "eval_src_classes": 3, "eval_src_size": 64}  # the picker's shapes, if shown
    at = open_page("pages/evaluate.py", state={"eval_run": "soft", **small})
    assert at.radio(key="eval_data_kind_imported").value == "The data given at import"
    assert at.selectbox(key="eval_split_The data given at import").value == "all"
    shown = _texts(at)
    assert "An imported model" in shown and "36 images" in shown, shown
    assert any(m.label == "Accuracy" for m in at.metric)
    at.selectbox(key="eval_run").set_value("unit").run()  # imported without data: a dataset picker, no error
    assert not at.exception, at.exception
    assert "imported without labelled data" in _texts(at)
    assert at.radio(key="eval_src_kind") is not None


def test_predict_page_on_the_data_given_at_import(made, runs_root, open_page):
    at = open_page("pages/predict.py", state={"predict_kind": "Trained run", "predict_run": "tutorial"})
    at.radio(key="image_source").set_value("Data given at import").run()
    assert not at.exception, at.exception
    shown = _texts(at)
    assert "24 image(s)" in shown and "of 24 right" in shown, shown
    at.selectbox(key="predict_run").set_value("unit").run()  # imported without data: no such choice
    assert not at.exception, at.exception
    assert "Data given at import" not in at.radio(key="image_source").options
