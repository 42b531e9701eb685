"""The one-file report: every section, the checked exports, and it renders in a browser with the network off."""

import os
import re
from pathlib import Path

import pytest

from conftest import train_tiny_run
from engine.export import export_run
from engine.export.report import SECTIONS, write_report

pytestmark = pytest.mark.slow
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    run = train_tiny_run(tmp_path_factory.mktemp("runs"), "report-run", epochs=2, image_size=96)
    export_run(run, "tflite-int8")  # checked: its figures go into the report
    return run, write_report(run)


def test_every_section_is_written_and_self_contained(report):
    run, result = report
    assert Path(result["path"]) == run / "report.html" and result["sections"] == list(SECTIONS)
    page = Path(result["path"]).read_text()
    for section in SECTIONS:
        assert f"<h2>{section}</h2>" in page
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=['\"]?https?:", page)  # nothing fetched from the net
    configuration = page.split("<h2>Configuration</h2>")[1].split("</section>")[0]
    assert "trained on" in configuration and "default: 1 replica(s), 1 worker(s)" in configuration
    exports = page.split("<h2>Exports</h2>")[1]
    assert "tflite-int8" in exports and "%" in exports  # the checked export's agreement
    mistakes = page.split("<h2>Most confident mistakes</h2>")[1].split("</section>")[0]
    assert "data:image/png;base64," in mistakes or "No mistakes" in mistakes
    assert page.count('class="plotly-graph-div"') >= 4  # curves, per class, confusion, calibration


def test_cli_report(report, tmp_path, capsys):
    import json

    from engine.cli.main import main

    run, _ = report
    out = tmp_path / "r.html"
    assert main(["report", str(run), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(out) and out.stat().st_size > 1_000_000
    assert main(["report", str(tmp_path / "nothing"), "--json"]) == 2


@pytest.mark.browser
def test_the_report_renders_offline_in_a_browser(report):
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install Chromium for the browser tests")
        pytest.skip("no /usr/bin/chromium")
    from playwright.sync_api import sync_playwright

    _, result = report
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=flags + ["--disable-component-update"])
        context = browser.new_context(offline=True)  # the network is off
        requests = []
        context.on("request", lambda r: requests.append(r.url))
        page = context.new_page()
        page.goto(Path(result["path"]).as_uri())
        for section in SECTIONS:
            page.get_by_role("heading", name=section, exact=True).wait_for(timeout=30_000)
        page.locator(".js-plotly-plot .main-svg").first.wait_for(timeout=30_000)
        assert page.locator(".js-plotly-plot").count() >= 4
        drawn = page.evaluate(
            "Array.from(document.querySelectorAll('.js-plotly-plot')).map(d => !!d.querySelector('svg'))"
        )
        assert all(drawn)
        broken = page.evaluate("Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).length")
        assert broken == 0
        assert all(url.startswith(("file:", "data:")) for url in requests), requests
        browser.close()


def test_a_fine_tunes_report_shows_no_server_path(report, monkeypatch, tmp_path):
    """finetune.parent (the parent's folder) and an upload's cache path were shown as they are on the server."""
    from engine import runs
    from engine.data import sources
    from engine.training import finetune, fit

    run_dir, _ = report
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(run_dir.parent))
    parent = runs.Run(run_dir)
    runs.rename(parent, "Shapes head")
    try:
        child = runs.create("ft-report", backbone="efficientnet_lite0", mode="finetune")
        result = fit.train(finetune.finetune_config(parent, unfreeze_top=1, epochs=1), child)
        assert result["status"] == "finished", result["reason"]
        page = Path(write_report(child.path)["path"]).read_text()
    finally:
        (run_dir / "meta.json").unlink()  # the other tests see the run as it was
    assert str(run_dir.parent) not in page
    configuration = page.split("<h2>Configuration</h2>")[1].split("</section>")[0]
    assert "Shapes head · report-run" in configuration, configuration
    from engine.export.report import _shown

    monkeypatch.setenv("CONVSCOPE_CACHE_DIR", str(tmp_path / "cache"))
    upload = sources.save_upload("pets.zip", b"PK\x05\x06" + b"\0" * 18)
    assert _shown({"data": {"source": str(upload)}})["data"]["source"] == "pets.zip"
