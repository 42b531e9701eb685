"""Export a trained run to every format, reload it, and check it against the Keras model."""

import json

import numpy as np
import pytest

from conftest import train_tiny_run
from engine.export import FORMATS, ExportError, ExportUnavailable, export_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("runs"), "export-run", epochs=3, image_size=96)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_round_trips(run, fmt, tmp_path):
    result = export_run(run, fmt, tmp_path / f"out-{fmt}")
    assert result["format"] == fmt and result["bytes"] > 100_000
    assert {"agreement", "max_abs_diff", "accuracy", "accuracy_keras", "latency_ms", "latency_ms_keras"} <= set(result)
    if fmt in ("keras", "savedmodel", "tflite", "onnx"):  # float32 all the way: the same numbers
        assert result["agreement"] == 1.0 and result["max_abs_diff"] < 1e-4, result
        assert result["accuracy"] == result["accuracy_keras"]
    elif fmt == "tflite-fp16":
        assert result["agreement"] == 1.0 and result["max_abs_diff"] < 0.05, result
    else:  # int8: close, and said when it is not
        assert result["agreement"] >= 0.8 and result["max_abs_diff"] < 0.5, result
        assert ("warning" in result) == (result["agreement"] < 0.97)
    assert result["latency_ms"] > 0 and result["latency_ms_keras"] > 0
    labels = (tmp_path / "labels.txt").read_text().splitlines()
    assert result["labels"] == str(tmp_path / "labels.txt")
    assert labels == json.loads((run / "labels.json").read_text())


def test_int8_is_smaller_and_takes_uint8(run, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    fp32 = export_run(run, "tflite", tmp_path / "a.tflite", check=False)
    int8 = export_run(run, "tflite-int8", tmp_path / "b.tflite", check=False)
    assert int8["bytes"] < 0.4 * fp32["bytes"]  # int8 weights: about a quarter
    interpreter = Interpreter(model_path=int8["path"])
    assert interpreter.get_input_details()[0]["dtype"] == np.uint8


def test_the_savedmodel_takes_uint8_images_of_any_size(run, tmp_path):
    import tensorflow as tf

    from engine import imaging
    from engine.explain import Explainable

    path = export_run(run, "savedmodel", tmp_path / "sm", check=False)["path"]
    loaded = tf.saved_model.load(path)
    from engine.samples import SAMPLE_PHOTOS, sample_photo

    image = sample_photo(next(iter(SAMPLE_PHOTOS)))[:, 40:]  # a photo, not square
    out = loaded.signatures["serving_default"](image=tf.constant(image[None]))
    probs = out["probabilities"].numpy()
    assert probs.shape == (1, 3) and probs.sum() == pytest.approx(1.0, abs=1e-5)
    model = Explainable.from_run(run)
    expected = model.probabilities(imaging.resize(image, 96, model.resize_policy)[None].astype(np.float32))
    assert np.abs(probs - expected).max() < 0.05  # TF's and Pillow's bilinear resize differ a little


def test_a_converter_that_fails_is_unavailable_with_its_reason(run, tmp_path, monkeypatch, capsys):
    import tf2onnx

    def refuse(*args, **kwargs):
        raise ValueError("Unsupported ops: SomeNewOp\nmore detail")

    monkeypatch.setattr(tf2onnx.convert, "from_function", refuse)
    with pytest.raises(ExportUnavailable, match="tf2onnx cannot convert this model here: ValueError: Unsupported"):
        export_run(run, "onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()  # nothing half-written

    from engine.cli.main import main

    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "y.onnx"), "--json"]) == 2
    assert "Unsupported ops: SomeNewOp" in json.loads(capsys.readouterr().out)["error"]


def test_cli_export_json_and_bad_input(run, tmp_path, capsys):
    from engine.cli.main import main

    assert main(["export", str(run), "--format", "keras", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"format", "path", "bytes", "agreement", "max_abs_diff", "accuracy", "accuracy_keras",
                           "latency_ms", "latency_ms_keras"}  # fmt: skip
    assert result["path"].endswith("exports/model.keras")
    with pytest.raises(ExportError, match="format must be one of"):
        export_run(run, "tflite-int4", tmp_path / "z")
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    assert main(["export", str(empty), "--format", "keras", "--json"]) == 2


def test_an_existing_folder_is_never_replaced_and_int8_takes_raw_pixels(run, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    precious = tmp_path / "precious"
    (precious / "sub").mkdir(parents=True)
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match="never replaced"):
        export_run(run, "savedmodel", precious, check=False)
    with pytest.raises(ExportError, match="never replaced"):
        export_run(run, "savedmodel", tmp_path, check=False)  # e.g. --out .
    assert (precious / "notes.txt").read_text() == "mine"
    first = export_run(run, "savedmodel", tmp_path / "sm", check=False)["path"]
    export_run(run, "savedmodel", tmp_path / "sm", check=False)  # an earlier export of its own is replaced
    assert (tmp_path / "sm" / "saved_model.pb").is_file() and first == str(tmp_path / "sm")
    int8 = export_run(run, "tflite-int8", tmp_path / "q", check=False)["path"]
    assert int8.endswith("q.tflite")
    scale, zero = Interpreter(model_path=int8).get_input_details()[0]["quantization"]
    assert scale == pytest.approx(1.0) and zero == 0  # raw pixels in, whatever the calibration images covered


@pytest.mark.parametrize("policy", ["pad", "crop"])
def test_the_serving_resize_follows_pillow(policy):
    import tensorflow as tf

    from engine import imaging
    from engine.export.formats import _resize
    from engine.samples import SAMPLE_PHOTOS, sample_photo

    photo = sample_photo(next(iter(SAMPLE_PHOTOS)))
    for crop in (photo[:, 40:], photo[:201, :120], photo[:33, :101]):
        ours = _resize(tf.constant(crop[None]), 64, policy).numpy()[0]
        pillow = imaging.resize(crop, 64, policy).astype(np.float32)
        assert ours.shape == pillow.shape
        limit = {"pad": 0.5, "crop": 2.5}[policy]  # stretch differs by about 0.3; crop by up to half a pixel
        assert np.abs(ours - pillow).mean() < limit, (policy, crop.shape, np.abs(ours - pillow).mean())


def test_a_run_without_a_test_split_is_checked_on_validation(run, tmp_path):
    import shutil

    copy = tmp_path / "no-test"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("exports*"))
    config = json.loads((copy / "config.json").read_text())
    config["data"]["test_frac"] = 0.0  # as if trained with --test 0
    (copy / "config.json").write_text(json.dumps(config))
    result = export_run(copy, "keras")
    assert result["split"] == "validation" and result["agreement"] == 1.0 and result["images"] > 0


def test_a_new_table_entry_is_exported_and_checked_with_nothing_else_changed(run, tmp_path, monkeypatch):
    from engine.export import formats, parity

    copy = formats.ExportFormat("keras-copy", "copy.keras", "A copy", formats._write_keras, parity.run_keras)
    monkeypatch.setitem(formats.EXPORT_FORMATS, "keras-copy", copy)
    result = export_run(run, "keras-copy", tmp_path / "copy")
    assert result["format"] == "keras-copy" and result["path"] == str(tmp_path / "copy.keras")  # its suffix
    assert result["agreement"] == 1.0 and "warning" not in result
    assert json.loads((run / "exports.json").read_text())["keras-copy"]["agreement"] == 1.0
