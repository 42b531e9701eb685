"""A SavedModel folder, or a zip of one, imported as an opaque run: predict, evaluate, input attributions, export.

The models are built in plain Keras and exported with `model.export` (tests/keras_models.py), never downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import keras_models as km
import numpy as np
import pytest

from conftest import runs_dir_set

pytestmark = pytest.mark.slow  # every test here loads a SavedModel (TensorFlow)

SIZE = 32


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("savedmodel")


@pytest.fixture(scope="module")
def shapes(root) -> Path:
    """A labelled class-folder dataset: 3 shape classes, 20 images each, 32 px."""
    from engine.data import shapes as shapes_data
    from engine.data.sources import shapes_config

    folder = root / "shapes"
    shapes_data.generate(folder, shapes_config(f"per_class=20,classes=3,size={SIZE}"))
    (folder / "boxes.json").unlink()
    return folder


@pytest.fixture(scope="module")
def saved(root) -> Path:
    """A SavedModel folder: a softmax CNN with Rescaling inside (raw pixels in), random weights."""
    return km.savedmodel(root / "cnn_savedmodel", size=SIZE, classes=3)


@pytest.fixture(scope="module")
def saved_zip(root, saved) -> Path:
    return km.zipped(saved, root / "cnn_savedmodel.zip", inside="cnn_savedmodel")


@pytest.fixture(scope="module")
def runs_root(root) -> Path:
    return root / "runs"


def _import(runs_root: Path, path: Path, **kwargs) -> dict:
    from engine.importing import import_model

    with runs_dir_set(runs_root):
        return import_model(path, **kwargs)


@pytest.fixture(scope="module")
def from_folder(runs_root, saved, shapes) -> dict:
    """The folder imported with its class names (and the images evaluate and export checks use) from `shapes`."""
    return _import(runs_root, saved, preprocess="raw", source=str(shapes), out=runs_root / "folder")


@pytest.fixture(scope="module")
def from_zip(runs_root, root, saved_zip, shapes) -> dict:
    labels = root / "labels.txt"
    labels.write_text("".join(f"{name}\n" for name in sorted(p.name for p in shapes.iterdir())))
    return _import(runs_root, saved_zip, preprocess="raw", labels=labels, out=runs_root / "zip")


def _own_probabilities(folder: Path, images: np.ndarray) -> np.ndarray:
    """What the SavedModel itself gives, called through Keras's TFSMLayer: (N, K)."""
    import keras

    return np.asarray(keras.layers.TFSMLayer(str(folder), call_endpoint="serve")(images), np.float64)


def _cli(capsys, *args: str) -> tuple[int, dict]:
    from engine.cli.main import main

    capsys.readouterr()
    code = main([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_a_folder_and_a_zip_import_as_opaque_runs(from_folder, from_zip, runs_root, shapes):
    from engine import runs

    classes = sorted(p.name for p in shapes.iterdir())
    for result, fmt in ((from_folder, "savedmodel"), (from_zip, "savedmodel-zip")):
        assert result["format"] == fmt
        assert (result["input_size"], result["channels"], result["output"]) == (SIZE, 3, "softmax")
        assert result["classes"] == classes
        assert "opaque" in result["opaque"] and "CAMs are not offered" in result["opaque"]
        assert "log-probabilities" in result["scores"]
        assert result["layers"] == [] and result["conv_layers"] == []
        assert result["preprocess"]["name"] == "raw" and result["max_diff"] < 1e-5
        run = runs.Run(Path(result["run_dir"]))
        assert not run.model_file.exists()  # kept as given, not rebuilt as Keras
        assert run.model_path == run.path / runs.SAVEDMODEL / "saved_model.pb" and run.model_path.is_file()
        imported = run.config()["imported"]
        assert (imported["format"], imported["output"]) == ("savedmodel", "softmax")
        row = runs.summary(run)
        assert (row["status"], row["mode"]) == ("finished", "imported"), row
    assert from_folder["sha256"] != from_zip["sha256"]  # the folder's files, the zip's bytes


def test_predictions_equal_the_savedmodels_own(from_folder, from_zip, saved, shapes, capsys):
    from engine import imaging
    from engine.model.explainable import Explainable

    images = np.random.default_rng(3).uniform(0, 255, (5, SIZE, SIZE, 3)).astype(np.float32)
    own = _own_probabilities(saved, images)
    for result in (from_folder, from_zip):
        model = Explainable.from_run(result["run_dir"])
        assert model.opaque_reason and model.input_size == SIZE
        np.testing.assert_allclose(model.probabilities(images), own, atol=1e-5)

    image = sorted(shapes.rglob("*.png"))[0]
    code, out = _cli(capsys, "predict", str(image), "--run", from_zip["run_dir"], "--top", "3")
    assert code == 0, out
    expected = _own_probabilities(saved, imaging.resize(imaging.load_rgb(image), SIZE)[None].astype(np.float32))[0]
    top = out["predictions"][0]["top"]
    assert [t["index"] for t in top] == list(np.argsort(-expected)[:3])
    assert [t["probability"] for t in top] == pytest.approx(sorted(expected, reverse=True), abs=1e-5)


def test_evaluate_scores_the_folder_as_the_savedmodel_does(from_folder, saved, shapes, capsys):
    from engine import imaging

    code, out = _cli(capsys, "evaluate", from_folder["run_dir"], "--source", str(shapes), "--split", "all")
    assert code == 0, out
    paths = sorted(shapes.rglob("*.png"))
    labels = from_folder["classes"]
    images = np.stack([imaging.resize(imaging.load_rgb(p), SIZE) for p in paths]).astype(np.float32)
    truth = np.array([labels.index(p.parent.name) for p in paths])
    expected = float(np.mean(np.argmax(_own_probabilities(saved, images), axis=1) == truth))
    assert sum(map(sum, out["confusion_matrix"])) == len(paths)
    assert out["accuracy"] == pytest.approx(expected, abs=1e-9)


def test_input_attributions_work_and_cams_and_layers_are_refused_with_the_reason(from_folder, shapes, capsys):
    from engine import imaging
    from engine.errors import ExplainError
    from engine.explain import explain_image
    from engine.explain.maps import INPUT_METHODS
    from engine.model.explainable import Explainable

    image = sorted(shapes.rglob("*.png"))[0]
    run = from_folder["run_dir"]
    code, out = _cli(capsys, "explain", str(image), "--run", run, "--method", "saliency")
    assert code == 0, out
    assert out["method"] == "saliency" and out["layer"] in (None, "")
    code, out = _cli(capsys, "explain", str(image), "--run", run, "--method", "gradcam")
    assert code == 2 and "opaque" in out["error"] and "saliency" in out["error"], out
    code, out = _cli(capsys, "activations", str(image), "--run", run, "--layer", "savedmodel")
    assert code == 2 and "opaque" in out["error"], out

    model = Explainable.from_run(run)
    rgb = imaging.load_rgb(image)
    assert set(INPUT_METHODS) == {"saliency", "smoothgrad", "integrated_gradients", "occlusion"}
    for method in INPUT_METHODS:
        result = explain_image(model, rgb, method, None, None)
        assert np.all(np.isfinite(result.heatmap)) and result.heatmap.max() > 0, method
    with pytest.raises(ExplainError, match="opaque"):
        model.default_layer()


def test_export_writes_a_savedmodel_and_says_why_not_keras(from_folder):
    from engine.errors import ExportUnavailable
    from engine.export import export_run

    result = export_run(from_folder["run_dir"], "savedmodel")
    assert Path(result["path"], "saved_model.pb").is_file()
    assert result["agreement"] == 1.0 and result["max_abs_diff"] < 1e-5, result
    with pytest.raises(ExportUnavailable, match="opaque"):
        export_run(from_folder["run_dir"], "keras", check=False)


def test_a_sigmoid_savedmodel_becomes_two_logits(root, runs_root):
    from engine.model.explainable import Explainable

    folder = km.export_savedmodel(km.sigmoid_head(root / "sigmoid.keras", size=SIZE), root / "sigmoid_savedmodel")
    result = _import(runs_root, folder, preprocess="raw", out=runs_root / "sigmoid")
    assert result["output"] == "sigmoid" and len(result["classes"]) == 2
    images = np.random.default_rng(4).uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    p = _own_probabilities(folder, images)[:, 0]
    logits = Explainable.from_run(result["run_dir"]).logits(images)
    np.testing.assert_allclose(logits[:, 1], -logits[:, 0], atol=1e-5)  # class 0's score is minus class 1's
    np.testing.assert_allclose(1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0]))), p, atol=1e-5)


def test_auto_needs_a_source_and_then_picks_by_accuracy(root, runs_root, shapes):
    from engine.errors import ImportModelError

    trained = km.unit_cnn(root / "unit.keras", size=SIZE, classes=3, train_folder=shapes)  # wants [0, 1]
    folder = km.export_savedmodel(trained, root / "unit_savedmodel")
    with pytest.raises(ImportModelError, match="SavedModel is opaque.*pick one"):
        _import(runs_root, folder, out=runs_root / "unit-refused")
    assert not (runs_root / "unit-refused").exists()
    result = _import(runs_root, folder, source=str(shapes), out=runs_root / "unit")
    chosen, accuracy = result["preprocess"]["name"], result["preprocess"]["accuracy"]
    assert result["output"] == "logits"
    assert accuracy["unit"] > 0.9 and accuracy[chosen] == max(accuracy.values()), accuracy  # raw may tie with unit
    assert result["preprocess"]["reason"].startswith("the most accurate")
    assert "caffe" in result["preprocess"]["flagged"]  # far below the best: clearly wrong


def test_unsafe_zips_are_refused_with_the_member(root, runs_root, saved_zip):
    from engine.errors import ImportModelError

    parent = km.with_member(saved_zip, root / "parent.zip", "../outside.txt")
    with pytest.raises(ImportModelError, match=r"\.\./outside\.txt"):
        _import(runs_root, parent, preprocess="raw", out=runs_root / "parent")
    link = km.with_member(saved_zip, root / "link.zip", "cnn_savedmodel/assets/passwd", b"/etc/passwd", link=True)
    with pytest.raises(ImportModelError, match="unsafe members.*assets/passwd"):
        _import(runs_root, link, preprocess="raw", out=runs_root / "link")
    assert not (runs_root / "parent").exists() and not (runs_root / "link").exists()


def test_a_folder_without_saved_model_pb_is_refused(root, runs_root):
    from engine.errors import ImportModelError

    folder = root / "not_a_savedmodel"
    (folder / "variables").mkdir(parents=True)
    (folder / "variables" / "variables.index").write_bytes(b"\0" * 10)
    with pytest.raises(ImportModelError, match="without saved_model.pb"):
        _import(runs_root, folder, preprocess="raw")


def test_a_tf_saved_model_with_serving_default_imports_and_one_that_reads_files_is_refused(root, runs_root):
    import keras

    from engine.errors import ImportModelError
    from engine.model.explainable import Explainable

    folder = km.tf_module_savedmodel(root / "tf_module", size=SIZE, classes=2)
    result = _import(runs_root, folder, preprocess="raw", out=runs_root / "tf-module")
    assert (result["output"], len(result["classes"])) == ("softmax", 2)
    images = np.random.default_rng(5).uniform(0, 255, (4, SIZE, SIZE, 3)).astype(np.float32)
    own = keras.layers.TFSMLayer(str(folder), call_endpoint="serving_default")(images)["probabilities"]
    np.testing.assert_allclose(Explainable.from_run(result["run_dir"]).probabilities(images), own, atol=1e-5)

    reader = km.tf_module_savedmodel(root / "reads_files", size=SIZE, read_file=True)
    with pytest.raises(ImportModelError, match="ReadFile"):
        _import(runs_root, reader, preprocess="raw", out=runs_root / "reads-files")
    assert not (runs_root / "reads-files").exists()

    # Writing files from the serving function: a tf.print to a file, a checkpoint write in the call itself.
    printer = km.tf_module_savedmodel(root / "prints", size=SIZE, print_to=str(root / "leak.txt"))
    with pytest.raises(ImportModelError, match="PrintV2 to a file"):
        _import(runs_root, printer, preprocess="raw", out=runs_root / "prints")
    saver = km.tf_module_savedmodel(root / "saves", size=SIZE, save_in_call=True)
    with pytest.raises(ImportModelError, match="SaveV2"):
        _import(runs_root, saver, preprocess="raw", out=runs_root / "saves")
    assert not (root / "leak.txt").exists() and not list(root.glob("written*"))


def test_the_sanity_check_of_an_opaque_model_says_why_it_cannot_run(from_folder, shapes, capsys):
    image = sorted(shapes.rglob("*.png"))[0]
    code, out = _cli(capsys, "explain", str(image), "--run", from_folder["run_dir"], "--method", "saliency", "--checks")
    assert code == 2 and "cannot do here" in out["error"] and "opaque" in out["error"], out


def test_the_pages_open_an_imported_savedmodel(from_folder, runs_root, open_page):
    name = Path(from_folder["run_dir"]).name
    with runs_dir_set(runs_root):
        for page in ("pages/predict.py", "pages/evaluate.py", "pages/inside.py"):
            at = open_page(page, run=name)
            assert not at.error, (page, [e.value for e in at.error])
        warned = " ".join(w.value for w in at.warning)
        assert "imported SavedModel is opaque" in warned  # Inside says why it offers no layers nor CAMs
