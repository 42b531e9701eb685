"""One table per kind of thing (issue 21): an export format and a backbone are each one entry.

The export formats' table drives the engine, the CLI's --format choices and the Runs page; a
keras.applications backbone is one registry entry whose loader builds it and checks its weights.
"""

import ast
import dataclasses
from pathlib import Path

import keras

from engine import backbones
from engine.backbones import registry
from engine.backbones.keras_apps import KerasApp
from engine.backbones.spec import SOURCES
from engine.cli.main import main
from engine.export import EXPORT_FORMATS, FORMATS, parity

ROOT = Path(__file__).resolve().parents[1]
RUNNERS = (parity.run_keras, parity.run_savedmodel, parity.run_tflite, parity.run_onnx)


def test_every_export_format_is_one_entry_with_a_file_a_title_a_writer_and_a_runner():
    assert FORMATS == tuple(EXPORT_FORMATS) and FORMATS[0] == "keras"
    for name, fmt in EXPORT_FORMATS.items():
        assert fmt.name == name and fmt.file_name and fmt.title, fmt
        assert callable(fmt.write) and fmt.runner in RUNNERS, fmt
    entries = EXPORT_FORMATS.values()
    assert len({f.file_name for f in entries}) == len({f.title for f in entries}) == len(FORMATS)  # none shared


def test_the_runs_page_and_the_cli_take_the_formats_from_the_table(capsys):
    page = ast.parse((ROOT / "pages" / "runs.py").read_text())
    strings = {n.value for n in ast.walk(page) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    titles = {f.title for f in EXPORT_FORMATS.values()}
    assert not (set(FORMATS) | titles) & strings, "pages/runs.py names formats itself instead of reading the table"
    assert "EXPORT_FORMATS" in {n.id for n in ast.walk(page) if isinstance(n, ast.Name)}

    try:
        main(["export", "--help"])
    except SystemExit as exc:
        assert exc.code == 0
    assert "--format {" + ",".join(FORMATS) + "}" in capsys.readouterr().out


def test_every_backbone_carries_its_loader():
    for spec in backbones.all_specs():
        assert spec.source in SOURCES and callable(spec.loader.build) and callable(spec.loader.availability), spec


def test_a_keras_applications_backbone_is_one_registry_entry(monkeypatch, tmp_path):
    """A new entry, named nowhere else, is listed, checked for its weights and built by its own loader."""
    vgg = backbones.get_spec("vgg16")
    assert isinstance(vgg.loader, KerasApp) and vgg.source == "keras"
    new = dataclasses.replace(
        vgg, name="convnext_tiny", title="ConvNeXtTiny", loader=KerasApp("ConvNeXtTiny", "convnext_tiny.h5")
    )
    monkeypatch.setattr(registry, "BUILT_IN", (*registry.BUILT_IN, new))
    assert backbones.get_spec("convnext_tiny") is new and new.source == "keras"

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    ok, reason = backbones.availability(new)
    assert not ok and "needs network" in reason
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "convnext_tiny.h5").write_bytes(b"x")
    assert backbones.availability(new) == (True, "")

    built = {}
    monkeypatch.setattr(keras.applications, "ConvNeXtTiny", lambda **kwargs: built.update(kwargs) or "the model")
    assert backbones.load("convnext_tiny", weights=False) == "the model"
    assert built == {"weights": None, "include_top": False, "input_shape": (224, 224, 3)}
