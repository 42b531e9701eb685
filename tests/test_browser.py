"""Real-browser tests: headless Chromium opens the app, uploads a dataset
archive and a photo, and sees the results. CI installs Chromium; elsewhere
they skip without it."""

import os
import sys
import urllib.request
import zipfile
from pathlib import Path

import pytest
from browserkit import CHROMIUM, FLAGS, ROOT, settle, streamlit_server
from PIL import Image
from skimage import data

pytestmark = [pytest.mark.browser, pytest.mark.slow]
RUNS: dict = {}  # the server's runs folder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    RUNS["dir"] = tmp_path_factory.mktemp("runs")
    # a small archive limit, so case 3 needs no big file
    with streamlit_server(RUNS["dir"], {"CONVSCOPE_MAX_ARCHIVE_MB": "1"}) as url:
        yield url


def test_open_a_page_url_first_then_upload_a_dataset_zip(server, tmp_path):
    """Runs first on a fresh server: a page URL must still go through app.py's router."""
    from playwright.sync_api import sync_playwright

    import datafactory as f

    f.messy_folder(tmp_path / "src" / "pets")
    archive = f.zip_folder(tmp_path / "src", tmp_path / "pets.zip")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        page.goto(server + "/datasets")
        page.get_by_text("Usable images").wait_for(timeout=120_000)
        nav = page.locator('[data-testid="stSidebarNav"]').inner_text()
        assert "Dataset Explorer" in nav and "datasets" not in nav.split(), nav  # not the legacy page list
        page.get_by_text("Upload an archive").click()
        page.locator("input[type=file]").set_input_files(str(archive))
        page.get_by_role("heading", name="pets.zip").wait_for(timeout=120_000)
        page.get_by_role("tab", name="Ingest report").click()
        page.get_by_text("truncated or corrupt").first.wait_for(timeout=60_000)
        page.screenshot(path=str(tmp_path / "datasets.png"), full_page=True)

        # Case 3: an archive over the limit is refused in the browser and the server stays up.
        big = tmp_path / "big.zip"
        with zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("a/noise.bin", os.urandom(3 << 20))
        page.locator("input[type=file]").set_input_files(str(big))
        page.get_by_text("File must be 1.0MB or smaller").wait_for(timeout=30_000)
        browser.close()
    assert urllib.request.urlopen(server + "/_stcore/health", timeout=5).read() == b"ok"


def test_upload_an_image_and_see_a_prediction(server, tmp_path):
    from playwright.sync_api import sync_playwright

    photo = tmp_path / "my_cat.jpg"
    Image.fromarray(data.chelsea()).save(photo, quality=90)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 900})
        page.goto(server)
        page.get_by_role("link", name="Predict").first.click()
        page.get_by_text("Upload", exact=True).click()
        page.locator("input[type=file]").set_input_files(str(photo))
        heading = page.get_by_role("heading", name="my_cat.jpg")
        heading.wait_for(timeout=120_000)
        text = heading.inner_text().lower()
        assert "cat" in text.split(":", 1)[1], text
        page.get_by_text("Prediction took").wait_for(timeout=30_000)
        page.screenshot(path=str(tmp_path / "predict.png"), full_page=True)
        browser.close()


def test_a_watched_dashboard_run_equals_its_cli_twin_and_takes_as_long(server, tmp_path):
    """RELIABILITY.md 35: Train with defaults while the page shows live progress (it polls every second).

    The run trains in a worker process, so it has the CLI twin's weights bit for bit and its time
    (issue 20: 58 s in the server against 6.7 s in the CLI, and other weights). bench/watched.py
    measures the same with repeats.
    """
    import json
    import statistics

    from playwright.sync_api import sync_playwright

    sys.path.insert(0, str(ROOT / "bench"))
    import watched

    # First a twin that fills the feature cache, so every timed run reads the same cached features.
    twin = watched.cli_train(tmp_path / "warm")
    twins, ours = [], []
    with sync_playwright() as p:
        # A user's browser renders on their own machine, not on the server's cores: the lowest priority here.
        browser = watched.launch_browser(p)
        page = browser.new_page(viewport={"width": 1300, "height": 1400})
        for k in range(3):  # three pairs, each side's median compared (as bench/watched.py): 2 shared cores are noisy
            twins.append(watched.cli_train(tmp_path / f"twin-{k}"))
            ours.append(watched.watch_one(page, server, Path(RUNS["dir"]))[0])
        browser.close()
    for run, twin in zip(ours, twins, strict=True):
        theirs = Path(twin["run_dir"])
        assert watched.same_config(run, theirs)
        assert json.loads((run / "history.json").read_text()) == twin["history"]
        assert watched.same_weights(run, theirs), "the dashboard run's weights differ from its CLI twin's"
    seconds = [json.loads((run / "metrics.json").read_text())["train_seconds"] for run in ours]
    cli = [twin["train_seconds"] for twin in twins]
    # Medians, not minima: CI once had CLI twins [8.45, 8.37, 6.27] s against watched [10.35, 8.5, 8.22] s,
    # one lucky CLI sample read as 1.31x where the medians are 1.02x.
    ratio = statistics.median(seconds) / statistics.median(cli)
    print(f"watched dashboard runs {seconds} s, CLI twins {cli} s: {ratio:.2f}x (median of each)")
    # bench/watched.py reports the figure against its 1.2x target (1.07-1.18x on an idle machine). Here the
    # bound guards against what issue 20 found (8.7x, training inside the server) with room for a loaded CI
    # machine, where Chromium shares the 2 cores: CI read 1.26x twice at 1.2 with nothing wrong.
    assert ratio <= 1.3, f"the watched run took {ratio:.2f}x its CLI twin"


def test_inside_the_network_maps_follow_the_photo(server, tmp_path):
    """Where it looked: the maps appear; another photo brings its own class, never the old one."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1600})
        page.goto(server + "/inside")
        page.get_by_role("tab", name="🔥 Where it looked").click()
        page.get_by_text("Grad-CAM at top_activation").first.wait_for(timeout=180_000)
        chosen = page.get_by_role("combobox", name="Class")
        assert chosen.input_value().startswith("Egyptian cat ("), chosen.input_value()
        page.screenshot(path=str(tmp_path / "inside-cat.png"), full_page=True)
        page.get_by_role("combobox", name="Photo").click()
        page.get_by_role("option", name="A cup of coffee").click()
        page.get_by_text("A cup of coffee (").first.wait_for(timeout=60_000)  # the photo's caption
        page.wait_for_function(
            "() => !document.querySelector('input[aria-label=\"Class\"]').value.startsWith('Egyptian cat')",
            timeout=120_000,
        )
        page.get_by_text("Grad-CAM at top_activation").first.wait_for(timeout=120_000)
        assert "Egyptian cat" not in chosen.input_value(), chosen.input_value()
        assert "deletion 0.00 ↓ · insertion 0.00" not in page.content()
        page.screenshot(path=str(tmp_path / "inside-coffee.png"), full_page=True)
        browser.close()


def test_fine_tune_a_run_from_the_page(server, tmp_path, monkeypatch):
    """A user fine-tunes a finished run: the layer map, the advice, Start, both phases, what changed."""
    from playwright.sync_api import sync_playwright

    from engine import runs
    from engine.config import DataConfig, TrainConfig
    from engine.training import fit

    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(RUNS["dir"]))
    parent = TrainConfig(data=DataConfig(source="shapes:per_class=12,classes=3,size=64", image_size=96), epochs=3)
    assert fit.train(parent, runs.create("small-parent", backbone=parent.backbone, mode="feature"))["status"] == (
        "finished"
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 2600})
        page.goto(server + "/finetune?run=small-parent")
        page.get_by_text("Trainable parameters").wait_for(timeout=180_000)
        before = page.get_by_test_id("stMetricValue").nth(3).inner_text()
        page.get_by_role("button", name="Use this advice", exact=False).click()
        page.wait_for_function(
            f"() => document.querySelectorAll('[data-testid=stMetricValue]')[3].innerText !== '{before}'",
            timeout=60_000,
        )  # the advice moved the unfreeze point, so the trainable count changed before anything ran
        epochs = page.get_by_role("spinbutton", name="Epochs")
        epochs.fill("2")
        epochs.press("Enter")
        page.get_by_role("button", name="Start fine-tuning", exact=False).click()
        page.wait_for_url("**/finetune?*job=*", timeout=60_000)
        page.get_by_text("Finished").first.wait_for(timeout=300_000)
        page.get_by_text("What changed, block by block").wait_for(timeout=180_000)
        page.get_by_text("before:", exact=False).first.wait_for(timeout=120_000)  # Grad-CAM before and after
        page.get_by_role("link", name="Look inside the fine-tuned model").wait_for(timeout=120_000)
        page.screenshot(path=str(tmp_path / "finetune.png"), full_page=True)
        browser.close()


def test_the_health_tab_shows_suspect_images_with_their_maps(server, tmp_path):
    """Dataset Explorer → Health on a small shapes set: analyse, then the gallery has images and Grad-CAM maps."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 2400})
        page.goto(server + "/datasets")
        page.get_by_text("Usable images").wait_for(timeout=120_000)
        for name, value in (("Images per class", "12"), ("Classes", "3")):
            box = page.get_by_role("spinbutton", name=name)
            box.fill(value)
            box.press("Enter")
            settle(page)
        slider = page.get_by_role("slider", name="Image size")
        slider.focus()
        for _ in range(3):  # 160 -> 64 px
            slider.press("ArrowLeft")
        settle(page)
        page.get_by_text("train 24, validation 6, test 6").wait_for(timeout=60_000)
        page.get_by_role("tab", name="🩺 Health").click()
        page.get_by_role("button", name="🩺 Analyse").click()
        page.get_by_text("Out-of-fold accuracy").wait_for(timeout=240_000)
        settle(page)
        page.screenshot(path=str(tmp_path / "health.png"), full_page=True)
        assert page.get_by_text("Likely label mistakes", exact=True).count() == 1
        cards = page.get_by_text("Filed as ")
        assert cards.count() >= 1, "no label issue shown on the shapes set"
        maps = page.locator('[data-testid="stImage"]').filter(has_text="looked for")
        assert maps.count() >= 2 * min(cards.count(), 5)  # the given and the suggested label's maps
        images = page.locator('[data-testid="stImage"] img')
        assert all(images.nth(k).evaluate("img => img.naturalWidth > 0") for k in range(images.count()))
        assert page.get_by_role("button", name="✏️ Relabel").count() == min(cards.count(), 5)
        browser.close()


def test_a_concept_test_on_a_marked_run(server, tmp_path, monkeypatch):
    """Inside the network → Concepts on a tiny run whose circles carry a mark: run the test, see the chart drawn."""
    from playwright.sync_api import sync_playwright

    from engine import runs
    from engine.config import DataConfig, TrainConfig
    from engine.training import fit

    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(RUNS["dir"]))
    data = DataConfig(source="shapes:per_class=12,classes=3,size=64,mark=0", image_size=96)  # marked circles
    config = TrainConfig(data=data, epochs=2)
    run = runs.create("marked-run", backbone=config.backbone, mode="feature")
    assert fit.train(config, run)["status"] == "finished"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1300, "height": 2600})
        page.goto(server + "/inside?run=marked-run")
        page.get_by_role("tab", name="💡 Concepts").click()
        page.get_by_text("of the concept's 50 images").wait_for(timeout=180_000)
        assert page.get_by_role("combobox", name="Class").input_value() == "circle"  # the marked class
        cavs = page.get_by_role("spinbutton", name="CAVs each way")
        cavs.fill("2")
        cavs.press("Enter")
        settle(page)
        page.get_by_role("button", name="Run the concept test").click()
        page.get_by_text("relies on 'mark' for 'circle' at", exact=False).first.wait_for(timeout=180_000)
        chart = page.locator('[data-testid="stPlotlyChart"]')
        chart.get_by_text("TCAV score", exact=False).wait_for(timeout=60_000)  # drawn by plotly.js
        assert chart.locator(".point").count() >= 3 * 2  # bars per layer: the concept's and random
        page.screenshot(path=str(tmp_path / "concepts.png"), full_page=True)
        browser.close()
