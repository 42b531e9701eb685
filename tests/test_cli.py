"""`python -m engine` as a script would call it: one JSON object, exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ},
        timeout=300,
    )


def test_backbones_json():
    proc = run_cli("backbones", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["backbones"]
    by_name = {r["name"]: r for r in rows}
    assert {"efficientnet_lite0", "mobilenet_v2", "hub_mobilenet_v2", "alexnet"} <= set(by_name)
    lite0 = by_name["efficientnet_lite0"]
    assert lite0 == {
        "name": "efficientnet_lite0",
        "source": "bundled",
        "available": True,
        "input_size": 224,
        "params": 4694024,
        "imagenet_head": True,
    }
    for r in rows:
        assert set(r) >= {"name", "source", "available", "input_size", "params", "imagenet_head"}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(data.chelsea()).save(d / "chelsea.jpg", quality=92)
    Image.fromarray(data.coffee()).save(d / "coffee.png")
    return d


def test_predict_json(photos):
    proc = run_cli("predict", str(photos / "chelsea.jpg"), str(photos / "coffee.png"), "--top", "3", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)  # exactly one JSON document on stdout
    chelsea, coffee = out["predictions"]
    assert chelsea["image"].endswith("chelsea.jpg") and len(chelsea["top"]) == 3
    assert chelsea["top"][0]["index"] in (281, 282, 285) and chelsea["top"][0]["probability"] > 0.5
    assert coffee["top"][0]["label"] == "espresso"
    assert set(coffee["top"][0]) == {"index", "label", "probability"}


def test_predict_human_output(photos):
    proc = run_cli("predict", str(photos / "coffee.png"), "--top", "2")
    assert proc.returncode == 0 and "espresso" in proc.stdout


def test_unreadable_image_exits_2_naming_the_file(photos, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    proc = run_cli("predict", str(photos / "coffee.png"), str(fake), "--json")
    assert proc.returncode == 2
    err = json.loads(proc.stdout)["error"]
    assert "notes.jpg" in err and "not an image" in err


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["predict", "x.png", "--backbone", "nope", "--json"], "unknown backbone"),
        (["predict", "x.png", "--top", "0", "--json"], "--top"),
        (["predict", "--json"], "required"),
        (["frobnicate", "--json"], "invalid choice"),
    ],
)
def test_bad_input_is_exit_2_with_json_error(args, fragment):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert fragment in json.loads(proc.stdout)["error"]
