"""The built-in shapes set: deterministic, boxes right, options validated; make-shapes CLI."""

import hashlib
import json

import numpy as np
import pytest

from engine.cli.main import main
from engine.data import shapes
from engine.data.sources import open_dataset, parse, shapes_config, shapes_source
from engine.errors import DatasetError


def _digest(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*.png")}


def test_same_seed_same_images_other_seed_other_images(tmp_path):
    cfg = shapes.ShapesConfig(per_class=3, classes=4, size=64, seed=5)
    a = shapes.generate(tmp_path / "a", cfg)
    b = shapes.generate(tmp_path / "b", cfg)
    assert a == b and _digest(tmp_path / "a") == _digest(tmp_path / "b")
    shapes.generate(tmp_path / "c", shapes.ShapesConfig(per_class=3, classes=4, size=64, seed=6))
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_more_per_class_keeps_the_first_images(tmp_path):
    shapes.generate(tmp_path / "small", shapes.ShapesConfig(per_class=2, classes=2, size=48))
    shapes.generate(tmp_path / "big", shapes.ShapesConfig(per_class=4, classes=2, size=48))
    small, big = _digest(tmp_path / "small"), _digest(tmp_path / "big")
    assert all(big[k] == v for k, v in small.items()) and len(big) == 8


@pytest.mark.parametrize("kind", shapes.SHAPE_CLASSES)
def test_box_holds_the_shape(kind):
    rng = np.random.default_rng([0, 1, 2])
    img, (x0, y0, x1, y1) = shapes.render(kind, rng, 96)
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8
    assert 0 <= x0 < x1 <= 96 and 0 <= y0 < y1 <= 96
    assert 96 * 0.2 <= max(x1 - x0, y1 - y0) <= 96 * 0.95  # object-sized, not a speck


def test_boxes_json_and_class_folders(tmp_path):
    cfg = shapes.ShapesConfig(per_class=2, classes=5, size=64)
    shapes.generate(tmp_path, cfg)
    boxes = json.loads((tmp_path / "boxes.json").read_text())
    assert sorted(boxes) == sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(cfg.class_names)
    assert len(cfg.class_names) >= 4


def test_source_string_options():
    assert parse("shapes").kind == "shapes" and parse("tfds:beans:train").kind == "tfds"
    assert parse("x/data.tar.gz").kind == "archive" and parse("x/data").kind == "folder"
    cfg = shapes_config("per_class=10, seed=3,size=96")
    assert (cfg.per_class, cfg.seed, cfg.size, cfg.classes) == (10, 3, 96, 5)
    assert shapes_config(shapes_source(cfg).partition(":")[2]) == cfg
    for bad, msg in [("colour=3", "use classes"), ("seed=x", "whole number"), ("classes=1", "classes must be 2..8")]:
        with pytest.raises(DatasetError, match=msg):
            shapes_config(bad)


def test_shapes_source_opens_with_boxes(cache_dir):
    ds = open_dataset("shapes:per_class=3,classes=3,size=64")
    assert ds.classes == ["circle", "square", "triangle"] and len(ds.items) == 9 and not ds.skipped
    assert ds.boxes is not None and set(ds.boxes) == {i.rel for i in ds.items}


def test_make_shapes_cli(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["make-shapes", str(out), "--per-class", "2", "--classes", "4", "--size", "48", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["num_images"] == 8 and result["classes"] == ["circle", "square", "triangle", "star"]
    assert json.loads((out / "boxes.json").read_text())
    assert main(["make-shapes", str(out), "--json"]) == 2  # not empty: refuse to mix sets
    assert "not empty" in json.loads(capsys.readouterr().out)["error"]
