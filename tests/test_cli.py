"""`python -m engine` as a script would call it: one JSON object, exit codes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

pytestmark = pytest.mark.slow  # every test runs the CLI in a child process

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


def test_unreadable_images_are_skipped_with_their_reasons(photos, tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    missing = tmp_path / "gone.png"
    proc = run_cli("predict", str(photos / "coffee.png"), str(fake), str(missing), "--top", "1", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout)
    assert [p["image"] for p in out["predictions"]] == [str(photos / "coffee.png")]
    assert out["predictions"][0]["top"][0]["label"] == "espresso"
    assert [s["image"] for s in out["skipped"]] == [str(fake), str(missing)]
    assert out["skipped"][0]["reason"].startswith("not an image") and out["skipped"][1]["reason"] == "no such file"
    human = run_cli("predict", str(photos / "coffee.png"), str(fake), "--top", "1")
    assert human.returncode == 0 and "espresso" in human.stdout
    assert "skipped 1 file(s)" in human.stdout and f"{fake}: not an image" in human.stdout


def test_no_readable_image_exits_2_naming_the_files(tmp_path):
    fake = tmp_path / "notes.jpg"
    fake.write_text("not an image")
    proc = run_cli("predict", str(fake), str(tmp_path / "gone.png"), "--json")
    assert proc.returncode == 2
    err = json.loads(proc.stdout)["error"]
    assert "notes.jpg: not an image" in err and "gone.png: no such file" in err


@pytest.mark.skipif(
    any(Path("/dev").glob("nvidia[0-9]*")) or Path("/dev/dxg").exists(), reason="a GPU machine: CUDA lines matter"
)
def test_quiet_about_cuda_without_a_gpu(photos):
    """TensorFlow's start-up lines about missing CUDA drivers (and absl's preamble) never reach stderr."""
    for args in (["backbones", "--json"], ["predict", str(photos / "coffee.png"), "--top", "1"]):
        proc = run_cli(*args)
        assert proc.returncode == 0, proc.stderr
        noisy = [
            line
            for line in proc.stderr.splitlines()
            if any(w in line.lower() for w in ("cuda", "cuinit", "absl::initializelog", "onednn"))
        ]
        assert not noisy, noisy


def test_quiet_import_keeps_other_lines_and_cuda_lines_on_a_gpu(tmp_path):
    """The filter drops only known noise, and keeps the CUDA lines where a GPU exists.

    A stand-in `tensorflow` package writes TensorFlow's start-up lines to file descriptor 2.
    """
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
        "E0000 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
        "W0000 something.cc:1] a real warning",
    ]
    fake = tmp_path / "tensorflow"
    (fake / "config").mkdir(parents=True)
    (fake / "__init__.py").write_text(
        f"import os\nos.write(2, {''.join(line + chr(10) for line in lines).encode()!r})\nfrom . import config\n"
    )
    (fake / "config" / "__init__.py").write_text("def list_physical_devices():\n    return []\n")
    for gpu in (False, True):
        script = (
            f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import engine.__main__ as cli; "
            f"cli._has_gpu_device = lambda: {gpu}; cli._import_tensorflow_quietly()"
        )
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "a real warning" in proc.stderr and "absl::InitializeLog" not in proc.stderr
        assert ("cuInit" in proc.stderr and "cuda drivers" in proc.stderr) == gpu, proc.stderr


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


def test_inspect_data_json_on_a_messy_folder(tmp_path):
    import datafactory as f

    f.messy_folder(tmp_path / "pets")
    proc = run_cli("inspect-data", str(tmp_path / "pets"), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {"source", "classes", "counts", "num_images", "splits", "skipped"} <= set(out)
    assert out["classes"] == ["cats", "dogs"] and out["num_images"] == sum(out["counts"].values())
    assert sum(out["splits"].values()) == out["num_images"]
    reasons = {s["path"]: s["reason"] for s in out["skipped"]}
    assert reasons["cats/truncated.jpg"] == "truncated or corrupt" and reasons["dogs/notes.jpg"] == "not an image"


def test_inspect_data_unusable_data_exits_2_with_the_report(tmp_path):
    import datafactory as f

    for i in range(2):
        f.write(tmp_path / "d" / "only" / f"{i}.png", f.png_bytes(i))
    f.write(tmp_path / "d" / "other" / "0.png", f.png_bytes(9))
    proc = run_cli("inspect-data", str(tmp_path / "d"), "--json")
    assert proc.returncode == 2
    out = json.loads(proc.stdout)
    assert "class 'other' has only 1 usable image" in out["error"] and out["counts"] == {"only": 2, "other": 1}


def test_inspect_data_bad_sources(tmp_path):
    for source, message in [
        (str(tmp_path / "missing"), "no such folder"),
        ("shapes:per_class=0", "per_class must be"),
        (str(f_zip := tmp_path / "x.zip"), "no such archive"),
    ]:
        proc = run_cli("inspect-data", source, "--json")
        assert proc.returncode == 2 and message in json.loads(proc.stdout)["error"], (source, proc.stdout)
    assert not f_zip.exists()


def test_inspect_data_human_output(tmp_path):
    proc = run_cli("inspect-data", "shapes:per_class=3,classes=2,size=48")
    assert proc.returncode == 0
    assert "2 classes, 6 usable images" in proc.stdout and "circle" in proc.stdout


@pytest.fixture(scope="module")
def cat_photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "cat.jpg"
    Image.fromarray(data.chelsea()).save(path, quality=90)
    return path


def test_activations_list_and_one_layer(cat_photo, tmp_path):
    proc = run_cli("activations", "--layer", "list", "--json")
    assert proc.returncode == 0, proc.stderr
    layers = json.loads(proc.stdout)["layers"]
    assert layers[0]["name"] == "stem_conv" and any(la["name"] == "top_activation" for la in layers)
    out = tmp_path / "grid.png"
    proc = run_cli("activations", str(cat_photo), "--layer", "block2a_expand_activation", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["layer"] == "block2a_expand_activation" and result["shape"][:2] == [112, 112]
    assert result["channels"] == result["shape"][2] and result["out"] == str(out)
    assert Image.open(out).size[0] > 100


def test_explain_json_peak_in_image_pixels(cat_photo, tmp_path):
    out = tmp_path / "cam.png"
    proc = run_cli("explain", str(cat_photo), "--method", "gradcam", "--out", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert {"method", "class_index", "label", "probability", "layer", "peak", "out"} <= set(result)
    assert result["label"] == "Egyptian cat" and result["layer"] == "top_activation"
    h, w = data.chelsea().shape[:2]
    assert 0 <= result["peak"][0] < h and 0 <= result["peak"][1] < w
    assert Image.open(out).size == (w, h)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "magic"], "unknown method"),
        (["--layer", "predictions"], "not a feature map"),
        (["--class", "1000"], "class index must be 0..999"),
        (["--run", "/no/such/run"], "no model.keras"),
    ],
)
def test_explain_bad_input(cat_photo, args, message):
    proc = run_cli("explain", str(cat_photo), *args, "--json")
    assert proc.returncode == 2 and message in json.loads(proc.stdout)["error"]
