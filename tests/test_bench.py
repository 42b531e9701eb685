"""The deployment defaults, and the pure parts of the load and soak benches; one short real load run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import load  # noqa: E402
import run_all  # noqa: E402
import soak  # noqa: E402

# ---- .streamlit/config.toml against RELIABILITY.md's "Deployment defaults" ----------------------


@pytest.fixture(scope="module")
def config() -> dict:
    return tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())


def test_config_headless(config):
    assert config["server"]["headless"] is True


def test_config_xsrf_on(config):
    assert config["server"]["enableXsrfProtection"] is True


def test_config_max_upload_size(config):
    assert 0 < config["server"]["maxUploadSize"] <= 200


def test_config_static_serving_off(config):
    assert config["server"]["enableStaticServing"] is False


def test_config_file_watcher_off(config):
    assert config["server"]["fileWatcherType"] == "none"
    assert config["server"].get("runOnSave", False) is False


def test_config_error_details_hidden(config):
    assert config["client"]["showErrorDetails"] in ("none", False)


def test_config_usage_stats_off(config):
    assert config["browser"]["gatherUsageStats"] is False


# ---- load and soak: statistics, checks, table ---------------------------------------------------


def test_percentile_interpolates_like_numpy():
    import numpy as np

    values = [0.3, 1.0, 0.1, 2.5, 0.7, 0.9]
    for q in (0, 50, 95, 100):
        assert load.percentile(values, q) == pytest.approx(np.percentile(values, q))
    assert load.percentile([], 50) != load.percentile([], 50)  # NaN


def test_summary_ratio_and_table():
    one = load.summarize(1, [0.5, 0.5, 0.5, 0.5], 0, 2.0)
    many = load.summarize(10, [2.0] * 20, 0, 10.0)
    assert one["rps"] == 2.0 and many["rps"] == 2.0 and many["p95"] == 2.0
    assert load.ratio(one, many) == 1.0
    text = load.table([one, many], 1.0)
    assert "pass" in text and "10 sessions / 1: 1.00" in text
    slow = load.summarize(10, [2.0] * 10, 0, 10.0)
    assert "FAIL" in load.table([one, slow], load.ratio(one, slow))
    errors = load.summarize(10, [2.0] * 20, 1, 10.0)
    assert errors["requests"] == 21 and "FAIL" in load.table([one, errors], load.ratio(one, errors))


def test_widget_key_and_cam_class_parsing():
    assert load.key_of("$$ID-e3611c855007886bd08597e95a7221b3-predict_kind") == "predict_kind"
    assert load.key_of("$$ID-abc-inside-img-sample") == "inside-img-sample"
    assert load.key_of("") == ""
    assert load.cam_class_index("gradcam-283.png") == 283
    assert load.cam_class_index("gradcam++-7.png") == 7
    assert load.cam_class_index("") is None


def test_students_differ():
    students = [load.Student(i) for i in range(10)]
    assert {s.page for s in students} == {"predict", "inside"}
    assert len({(s.page, s.trained, s.top_k) for s in students}) == 10
    assert students[0].photo(0) != students[0].photo(1)


def test_check_predict_catches_another_sessions_state():
    student = load.Student(0)  # Predict, ImageNet backbone, top 1
    render = load.Render()
    render.elements = [
        ("heading", "", "Chelsea the cat: Egyptian cat (79%)"),
        ("plotly_chart", "closer_chart", json.dumps({"data": [{"y": ["Egyptian cat"]}]})),
        ("markdown", "", "1 image(s) · efficientnet_lite0"),
    ]
    assert load.check_predict(render, student, "chelsea") == []
    assert load.check_predict(render, student, "coffee")  # another photo's answer
    assert load.check_predict(render, load.Student(2), "chelsea")  # session 2 asked for the trained run


def test_soak_slopes():
    assert soak.slope([1, 2, 3, 4]) == pytest.approx(1.0)
    assert soak.slope([5]) == 0.0
    warm = [100, 150, 180, 190, 195, 195, 195.2, 195.1, 195.3, 195.2]
    first, last = soak.halves(warm)
    assert first > 10 and abs(last) < 0.5 and soak.verdict(first, last)
    leak = [100 + 5 * i for i in range(10)]
    assert not soak.verdict(*soak.halves(leak))


def test_run_all_table_and_machine():
    rows = [
        {"bench": "load", "name": "10 sessions / 1", "value": 0.8, "target": ">= 0.7", "passed": True},
        {"bench": "soak", "name": "memory", "value": None, "target": "flat", "passed": False},
    ]
    machine = run_all.machine()
    assert machine["cores"] >= 1 and machine["memory_gb"] > 0 and machine["cpu"]
    text = run_all.table(rows, machine)
    assert "load" in text and "pass" in text and "FAIL" in text and str(machine["cores"]) in text
    assert run_all.last_json('noise\n{"bench": "x", "ratios": []}\n') == {"bench": "x", "ratios": []}
    assert run_all.last_json("no json here") is None


def test_run_all_ratio_rows_and_no_target():
    assert run_all.ratio("x", 1.2, "<= 1.5")["passed"] is True
    assert run_all.ratio("x", 1.6, "<= 1.5")["passed"] is False
    assert run_all.ratio("x", 4.9, ">= 5")["passed"] is False
    assert run_all.ratio("x", -2.5, "within 2")["passed"] is False
    assert run_all.ratio("x", 1.5, "within 2")["passed"] is True
    free = run_all.ratio("speed-up", 3.0)
    assert free["target"] is None and free["passed"] is None
    rows = run_all.rows_of("export", json.loads(json.dumps({"bench": "export", "ratios": [free]})))
    text = run_all.table(rows, run_all.machine())
    assert "no target" in text and "FAIL" not in text
    assert run_all.rows_of("x", {"bench": "x"})[0]["note"] == "no ratios"


def test_every_bench_has_json_and_real_quick_options():
    """run_all runs each bench with its QUICK options and --json: each bench must accept them."""
    names = {p.stem for p in (ROOT / "bench").glob("*.py")} - run_all.SKIP
    assert set(run_all.QUICK) == names
    for name, options in run_all.QUICK.items():
        source = (ROOT / "bench" / f"{name}.py").read_text()
        for option in ["--json", *options]:
            if option.startswith("--"):
                assert f'"{option}"' in source, f"bench/{name}.py has no {option}"


@pytest.mark.slow
def test_load_bench_runs_two_sessions():
    """bench/load.py end to end with 2 sessions, 1 request each, no warm-up: no errors, the JSON it promises."""
    out = subprocess.run(
        [
            sys.executable,
            "bench/load.py",
            "--sessions",
            "2",
            "--requests",
            "1",
            "--warmup",
            "0",
            "--port",
            "8629",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == [], result["errors"]
    assert [p["sessions"] for p in result["phases"]] == [1, 2]
    assert result["ratio"] > 0
