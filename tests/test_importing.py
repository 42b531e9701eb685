"""Importing a user's Keras model as a run: the file checks, the refusals, output kinds, labels, preprocessing.

The models are built in plain Keras by tests/keras_models.py (never downloaded). File checks that
need no Keras run in the fast tier; building and loading models is `slow`.
"""

from __future__ import annotations

import json
import zipfile

import keras_models as km
import numpy as np
import pytest

from conftest import TINY
from engine import runs
from engine.cli.main import main
from engine.config import TrainConfig
from engine.errors import ConfigError, ImportModelError
from engine.importing import files, import_model, read_labels
from engine.importing.run import labels_for

TWO_CLASSES = "shapes:per_class=12,classes=2,size=64"
TRAINABLE = "shapes:per_class=30,classes=3,size=64"  # enough images for a plain-Keras CNN to learn (about 99%)


def _fake_keras(path, extra: dict[str, bytes] | None = None):
    """A zip with the members of a .keras archive (not loadable: for the checks before loading)."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", "{}")
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"\0" * 10)
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return path


# ---- the file, before anything loads it (fast) ------------------------------------------------------------
def test_a_keras_archive_is_recognised_by_its_members(tmp_path):
    assert files.kind_of(_fake_keras(tmp_path / "m.keras")) == "keras"


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda p: p.write_bytes(b"PK\x03\x04 not really"), "damaged or truncated"),
        (km.not_keras_zip, "not a Keras archive: a .keras file holds config.json and model.weights.h5"),
        (lambda p: _fake_keras(p, {"../escape.txt": b"x"}), "absolute or parent paths"),
        (lambda p: _fake_keras(p, {"/etc/owned": b"x"}), "absolute or parent paths"),
    ],
    ids=["truncated", "zip-not-keras", "parent-path", "absolute-path"],
)
def test_a_file_that_is_no_whole_keras_archive_is_refused_before_loading(tmp_path, make, says):
    path = tmp_path / "model.keras"
    make(path)
    with pytest.raises(ImportModelError, match=says):
        files.kind_of(path)


def test_a_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_MAX_MODEL_MB", "1")
    path = _fake_keras(tmp_path / "big.keras", {"assets/pad.bin": np.zeros(1_200_000, np.uint8).tobytes()})
    with pytest.raises(ImportModelError, match=r"over the 1\.0 MB an import may be .*CONVSCOPE_MAX_MODEL_MB"):
        files.kind_of(path)


def test_an_archive_that_expands_beyond_twice_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_MAX_MODEL_MB", "1")
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:  # 3 MB of zeros compress to a few KB
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"\0" * (3 * 1024 * 1024))
    with pytest.raises(ImportModelError, match="expands to 3.0 MB"):
        files.kind_of(path)


def test_a_legacy_h5_file_is_refused_unless_the_operator_allows_it(tmp_path, monkeypatch):
    path = tmp_path / "old.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n")
    monkeypatch.delenv("CONVSCOPE_ALLOW_H5", raising=False)
    with pytest.raises(ImportModelError, match=r"legacy \.h5 .* re-save the model as \.keras .*CONVSCOPE_ALLOW_H5=1"):
        files.kind_of(path)
    monkeypatch.setenv("CONVSCOPE_ALLOW_H5", "1")
    assert files.kind_of(path) == "h5"


def test_a_folder_must_be_a_savedmodel_and_a_missing_path_says_so(tmp_path):
    (tmp_path / "folder").mkdir()
    with pytest.raises(ImportModelError, match="without saved_model.pb"):
        files.kind_of(tmp_path / "folder")
    with pytest.raises(ImportModelError, match="no such file"):
        files.kind_of(tmp_path / "nothing.keras")


def test_labels_come_from_a_text_file_or_a_json_list_and_must_fit_the_output(tmp_path):
    (tmp_path / "labels.txt").write_text("cat\ndog\n\n")
    (tmp_path / "labels.json").write_text('["cat", "dog", "bird"]')
    (tmp_path / "twice.txt").write_text("cat\ncat\n")
    assert read_labels(tmp_path / "labels.txt") == ["cat", "dog"]
    assert read_labels(tmp_path / "labels.json") == ["cat", "dog", "bird"]
    with pytest.raises(ImportModelError, match="names a class twice"):
        read_labels(tmp_path / "twice.txt")
    with pytest.raises(ImportModelError, match="names 2 classes, but the model scores 3"):
        labels_for(3, ["cat", "dog"], None)
    names, origin, warning = labels_for(3, None, None)
    assert names == ["class 0", "class 1", "class 2"] and "no labels given" in warning


def test_data_that_contradicts_the_rescaling_guess_wins(tmp_path):
    """A model whose first op looks like rescaling but is not (x * 2 - 1 on [0, 1] input): auto follows the data."""
    from engine.importing.model import Inspected
    from engine.importing.run import choose

    found = Inspected(model=None, output="logits", input_size=32, channels=3, takes_raw="it scales its input itself")
    accuracy = {"raw": 0.3, "unit": 0.95, "symmetric": 0.6, "caffe": 0.3, "torch": 0.5}
    chosen = choose(found, "auto", accuracy)
    assert chosen.name == "unit" and "although it scales its input itself" in chosen.reason
    assert choose(found, "auto", {"raw": 0.9, "unit": 0.95}).name == "raw"  # within 15 points: the layers win
    assert choose(found, "auto", {}).name == "raw"


# ---- models built in plain Keras (slow) ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(
    ("build", "says"),
    [
        (km.lambda_layer, r"Lambda layer \('scale_by_lambda'\).*arbitrary code.*Rebuild the model with a standard"),
        (km.custom_layer, r"custom class 'TimesTwo' .*notebook>TimesTwo.*not available here"),
        (km.two_inputs, r"2 inputs \(\(None, 32, 32, 3\), \(None, 32, 32, 3\)\); ConvScope takes one image input"),
        (km.two_outputs, r"2 outputs \(\(None, 2\), \(None, 3\)\)"),
        (km.vector_input, r"input is \(None, 10\): not an image batch"),
    ],
    ids=["lambda", "custom-class", "two-inputs", "two-outputs", "not-an-image"],
)
def test_a_model_convscope_cannot_or_should_not_load_is_refused_with_why(tmp_path, runs_dir, build, says):
    path = build(tmp_path / "model.keras")
    with pytest.raises(ImportModelError, match=says):
        import_model(path, preprocess="unit")
    assert not runs_dir.exists() or not any(runs_dir.iterdir())  # nothing left behind


@pytest.mark.slow
@pytest.mark.parametrize(
    ("build", "output", "channels", "size"),
    [
        (km.softmax_rescaling, "softmax", 3, 48),
        (km.tutorial, "binary_logit", 3, 64),
        (km.sigmoid_head, "sigmoid", 3, 32),
        (km.softmax_layer, "softmax", 3, 32),
        (km.grayscale, "softmax", 1, 32),
    ],
    ids=["softmax-rescaling", "tutorial-logit", "sigmoid", "softmax-layer", "grayscale"],
)
def test_the_output_kind_is_read_and_the_run_gives_the_files_probabilities(
    tmp_path, runs_dir, build, output, channels, size
):
    import keras

    from engine.model.explainable import Explainable

    path = build(tmp_path / "model.keras")
    result = import_model(path)
    assert (result["output"], result["channels"], result["input_size"]) == (output, channels, size)
    assert result["preprocess"]["name"] == "raw" and "so it takes raw pixels" in result["preprocess"]["reason"]
    run = runs.open_run(result["run_dir"])
    config = TrainConfig.from_json(run.config())
    assert config.mode == "imported" and config.imported.output == output and config.imported.sha256 == result["sha256"]
    assert run.status()["status"] == "finished"

    # The run's model gives the file's own probabilities: softmax of its logits, sigmoid(z) for one logit.
    original = keras.models.load_model(path, safe_mode=True, compile=False)
    images = np.random.default_rng(1).uniform(0, 255, (5, size, size, 3)).astype(np.float32)
    model = Explainable.from_run(run.path)
    mine = model.probabilities(images)
    fed = images if channels == 3 else images @ np.array([[0.299], [0.587], [0.114]], np.float32)
    theirs = np.asarray(original(fed, training=False), np.float64)
    if theirs.shape[1] == 1:
        theirs = np.concatenate([1 - theirs, theirs], axis=1) if output == "sigmoid" else None
        if theirs is None:  # a logit: probabilities are sigmoid(z)
            z = np.asarray(original(fed, training=False), np.float64)[:, 0]
            theirs = np.stack([1 / (1 + np.exp(z)), 1 / (1 + np.exp(-z))], axis=1)
    np.testing.assert_allclose(mine, theirs, atol=1e-5)


@pytest.mark.slow
def test_a_softmax_inside_a_nested_head_is_found_and_a_separate_one_there_refused(tmp_path, runs_dir):
    import keras

    from engine.model.explainable import Explainable

    path = km.nested_head(tmp_path / "head.keras")
    result = import_model(path)
    assert result["output"] == "softmax" and result["max_diff"] < 1e-5
    images = np.random.default_rng(2).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    original = keras.models.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_allclose(
        Explainable.from_run(result["run_dir"]).probabilities(images), original(images), atol=1e-5
    )
    with pytest.raises(ImportModelError, match="nested model 'head' whose last layer is a separate Softmax"):
        import_model(km.nested_head(tmp_path / "separate.keras", separate_softmax=True))


@pytest.mark.slow
def test_an_input_with_one_free_side_is_fixed_square(tmp_path, runs_dir):
    from engine.model.explainable import Explainable

    result = import_model(km.half_open(tmp_path / "half.keras"))
    assert result["input_size"] == 32
    model = Explainable.from_run(result["run_dir"])
    assert model.logits(np.zeros((1, 32, 32, 3), np.float32)).shape == (1, 2)


@pytest.mark.slow
def test_the_tutorials_model_keeps_its_nesting_and_its_augmentation_is_named(tmp_path, runs_dir):
    result = import_model(km.tutorial(tmp_path / "tutorial.keras"))
    names = [row["name"] for row in result["layers"]]
    assert "base_model/block1_conv" in names and "base_model/block2_conv" in names
    assert result["conv_layers"] == ["base_model/block1_conv", "base_model/block2_conv"]
    assert result["augmentation"] == ["random_flip", "random_rotation"]
    assert "true_divide" in result["preprocess"]["reason"]  # mobilenet_v2.preprocess_input's keras.ops
    assert result["classes"] == ["class 0", "class 1"] and result["warnings"]


@pytest.mark.slow
def test_a_model_without_rescaling_needs_a_convention_or_data_to_choose_one(tmp_path, runs_dir):
    path = km.unit_cnn(tmp_path / "unit.keras")
    with pytest.raises(ImportModelError, match="cannot tell which pixel range it expects"):
        import_model(path)
    with pytest.raises(ConfigError, match="preprocessing must be one of"):
        import_model(path, preprocess="bgr")
    assert import_model(path, preprocess="unit")["preprocess"]["reason"] == "chosen by you"


@pytest.mark.slow
def test_auto_picks_the_most_accurate_convention_on_labelled_data_and_flags_the_clearly_wrong(tmp_path, runs_dir):
    from engine.data import sources

    folder, _ = sources.resolve(TRAINABLE)
    path = km.unit_cnn(tmp_path / "unit.keras", train_folder=folder)  # trained in plain Keras on [0, 1] pixels
    result = import_model(path, source=TRAINABLE)
    pre = result["preprocess"]
    accuracy = pre["accuracy"]
    assert set(accuracy) == {"raw", "unit", "symmetric", "caffe", "torch"}
    assert pre["name"] == max(accuracy, key=accuracy.get) and accuracy[pre["name"]] >= 0.9
    assert accuracy["unit"] >= 0.9  # what it was trained on
    assert pre["flagged"] and all(accuracy[n] < accuracy[pre["name"]] - 0.15 for n in pre["flagged"])
    assert "the most accurate on a labelled sample" in pre["reason"]
    assert result["classes"] == ["circle", "square", "triangle"] and result["labels_from"].startswith("the class")

    # Asked for a clearly wrong one, it is used and the warning says so.
    wrong = next(iter(pre["flagged"]))
    forced = import_model(path, source=TRAINABLE, preprocess=wrong)
    assert forced["preprocess"]["name"] == wrong and any("clearly wrong" in w for w in forced["warnings"])


@pytest.mark.slow
def test_a_model_that_takes_any_size_asks_for_one(tmp_path, runs_dir):
    path = km.any_size(tmp_path / "any.keras")
    with pytest.raises(ImportModelError, match="accepts images of any size"):
        import_model(path)
    result = import_model(path, image_size=40)
    assert result["input_size"] == 40
    with pytest.raises(ImportModelError, match="takes 48x48 images, not 64x64"):
        import_model(km.softmax_rescaling(tmp_path / "fixed.keras"), image_size=64)


@pytest.mark.slow
def test_labels_that_do_not_fit_the_model_or_the_data_are_refused(tmp_path, runs_dir):
    path = km.softmax_rescaling(tmp_path / "model.keras")  # 3 classes
    (tmp_path / "two.txt").write_text("a\nb\n")
    with pytest.raises(ImportModelError, match="names 2 classes, but the model scores 3"):
        import_model(path, labels=tmp_path / "two.txt")
    (tmp_path / "other.txt").write_text("a\nb\nc\n")
    with pytest.raises(ImportModelError, match="classes the model's labels do not name: circle"):
        import_model(path, labels=tmp_path / "other.txt", source=TINY)


@pytest.mark.slow
def test_the_cli_imports_and_prints_what_the_issue_names(tmp_path, runs_dir, capsys):
    path = km.tutorial(tmp_path / "tutorial.keras")
    (tmp_path / "labels.txt").write_text("circle\nsquare\n")
    out = tmp_path / "my-run"
    code = main(
        ["import-model", str(path), "--labels", str(tmp_path / "labels.txt"), "--source", TWO_CLASSES]
        + ["--name", "Tutorial", "--out", str(out), "--json"]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0, result
    for key in ("run_dir", "input_size", "channels", "classes", "output", "preprocess", "layers", "conv_layers"):
        assert key in result
    assert result["run_dir"] == str(out) and result["classes"] == ["circle", "square"]
    assert result["output"] == "binary_logit" and result["params"] > 0
    assert set(result["preprocess"]["accuracy"]) == {"raw", "unit", "symmetric", "caffe", "torch"}
    assert runs.open_run(out).display_name() == "Tutorial"

    code = main(["import-model", str(km.lambda_layer(tmp_path / "lam.keras")), "--json"])
    error = json.loads(capsys.readouterr().out)
    assert code == 2 and "Lambda layer" in error["error"]
