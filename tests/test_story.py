"""A user's whole story in one real browser, against a real `streamlit run app.py` server.

Dataset Explorer (the built-in set) -> Train with the page's defaults (the tab is reloaded mid-run and finds
its job again from ?job=) -> Fine-tune that run for one epoch -> Predict an uploaded PNG with the fine-tuned
run -> Evaluate, open a confusion cell -> Runs: export TFLite (its agreement) and the HTML report -> Inside the
network: Grad-CAM, then one channel in the Channels view.

Only the browser is used: the test never reads the runs folder or calls the engine, so it holds whether
training runs in threads or in worker processes. Two settings a user could also pick differ from the pages'
defaults, for CI's time: training runs at most 10 epochs (the default 200 with early stopping ends near epoch
50, and a head trained inside the dashboard's process took about 5 s an epoch while watched on a busy 2-core
machine), and the fine-tune runs 1 epoch (default 10). Everything else is the default: the built-in shapes,
EfficientNet-Lite0 at 224 px, feature extraction, and the fine-tune's unfreeze point.

A screenshot is saved at every step into CONVSCOPE_STORY_SHOTS (default: a pytest temporary folder) and the
folder is printed; `docs/story_pictures.py FOLDER` copies the README's pictures from it.
"""

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
from browserkit import launch, settle, streamlit_server
from PIL import Image, ImageDraw
from playwright.sync_api import TimeoutError as PlaywrightTimeout

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MINUTE = 60_000  # ms
WIDTH, HEIGHT = 1300, 1000  # the browser window
EPOCHS = 10  # the Train page's default is 200 with early stopping, which ends the built-in set's run near 50


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with streamlit_server(tmp_path_factory.mktemp("story-runs")) as url:
        yield url


@pytest.fixture
def shots(tmp_path):
    folder = Path(os.environ.get("CONVSCOPE_STORY_SHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    print(f"\nstory screenshots: {folder}")
    return folder


def _circle_png(path: Path) -> Path:
    """A photo-like PNG of a circle on a noisy background, as a user might draw one."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(90, 160, (200, 200, 3), dtype=np.uint8))
    ImageDraw.Draw(image).ellipse((50, 50, 150, 150), fill=(200, 40, 40))
    image.save(path)
    return path


def _sidebar(page, name: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=name).click()


def _set_number(page, label: str, value: int) -> None:
    box = page.get_by_role("spinbutton", name=label, exact=True)
    box.fill(str(value))
    box.press("Enter")
    settle(page)
    assert box.input_value() == str(value), box.input_value()


def _expand(page, label: str) -> None:
    """Open an expander and wait for its opening animation to end.

    The animation scrolls the expander's <details> element, and a selectbox's popup list closes when an element
    around it scrolls: a list opened during the animation closed again at once (the story stalled there).
    """
    page.get_by_text(label).click()
    page.wait_for_function(
        """label => {
            const box = [...document.querySelectorAll('[data-testid=stExpander] details')]
                .find(d => d.querySelector('summary').textContent.includes(label));
            if (!box || !box.open) return false;
            const now = `${box.scrollTop} ${box.getBoundingClientRect().height}`;
            const same = box.dataset.lastSeen === now;
            box.dataset.lastSeen = now;
            return same && box.scrollTop === 0;
        }""",
        arg=label,
        polling=200,
    )


def _choose(page, box, option: str) -> None:
    """Pick an option of a Streamlit selectbox: type to filter, click it, and check what the box then holds."""
    for _ in range(3):  # the popup list can move or close while it opens
        box.click()
        page.keyboard.press("ControlOrMeta+A")  # a retry types over what the last try left in the box
        page.keyboard.type(option)
        try:
            page.get_by_role("option", name=option).first.click(timeout=15_000)
        except PlaywrightTimeout:  # the list closed under the pointer: try again
            page.keyboard.press("Escape")
            continue
        settle(page)
        box.blur()
        if option in box.input_value():
            return
    raise AssertionError(f"could not choose {option!r}: the box shows {box.input_value()!r}")


def _screenshot(page, path: Path) -> None:
    """The whole page: Streamlit scrolls inside its main element, so the window grows to its height first."""
    page.mouse.move(0, 0)  # no chart tooltip in the picture
    height = page.evaluate("document.querySelector('[data-testid=stMain]').scrollHeight")
    page.set_viewport_size({"width": WIDTH, "height": min(max(height, HEIGHT), 4000)})
    page.wait_for_timeout(1500)  # tables and charts draw after the script has finished
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})


def _progress_text(page) -> str:
    bars = page.locator('[data-testid="stProgress"]')
    return bars.first.inner_text() if bars.count() else ""


def _story(page, server: str, shot, tmp_path: Path) -> None:
    """The steps, in order; `shot(page, name)` saves a screenshot."""
    # 1. Dataset Explorer: the built-in set, and whether its classes separate in feature space.
    page.goto(server)
    _sidebar(page, "Dataset Explorer")
    page.get_by_text("Usable images").wait_for(timeout=3 * MINUTE)
    page.get_by_text("Ready for training").wait_for()
    page.get_by_role("tab", name="🧭 Feature space").click()
    page.get_by_role("button", name="Embed and project").click()
    page.get_by_text("5-NN accuracy").wait_for(timeout=3 * MINUTE)
    settle(page)
    shot(page, "datasets")

    # 2. Train with the defaults (10 epochs); reload mid-run; it reattaches from the URL and goes on.
    _sidebar(page, "Train")
    start = page.get_by_role("button", name="🚀 Start training")
    start.wait_for(timeout=3 * MINUTE)
    page.get_by_text("Trainable", exact=True).wait_for()  # the model summary before starting
    settle(page)
    _set_number(page, "Epochs (at most)", EPOCHS)
    shot(page, "train-setup")
    start.click()
    page.wait_for_url("**/train?job=*", timeout=MINUTE)
    job = page.url.split("job=", 1)[1].split("&")[0]
    page.locator('[data-testid="stProgress"]').first.wait_for(timeout=MINUTE)
    shot(page, "train-running")
    page.reload()  # the tab is refreshed mid-run: it finds its job again from the URL
    page.get_by_role("heading", name=f"Run {job}").wait_for(timeout=MINUTE)
    assert f"job={job}" in page.url
    page.get_by_role("button", name="⏹ Stop").wait_for(timeout=MINUTE)  # still running, and stoppable
    page.locator('[data-testid="stProgress"]').first.wait_for(timeout=MINUTE)
    seen = _progress_text(page)
    page.wait_for_function(  # the progress moves on in the reattached tab
        """seen => {
            const bar = document.querySelector('[data-testid="stProgress"]');
            return bar ? bar.innerText !== seen : document.body.innerText.includes('Finished');
        }""",
        arg=seen,
        timeout=2 * MINUTE,
    )
    page.get_by_text("Finished").first.wait_for(timeout=5 * MINUTE)
    page.get_by_text("Validation accuracy", exact=True).wait_for()
    settle(page)
    shot(page, "train-finished")

    # 3. Fine-tune that run for one epoch, from the Train page's link.
    page.get_by_role("link", name="Fine-tune this run").click()
    page.get_by_text("Trainable parameters").wait_for(timeout=3 * MINUTE)
    _set_number(page, "Epochs", 1)
    page.get_by_role("button", name="Start fine-tuning", exact=False).click()
    page.wait_for_url("**/finetune?*job=*", timeout=MINUTE)
    finetuned = page.url.split("job=", 1)[1].split("&")[0]
    assert finetuned != job
    page.get_by_role("heading", name=f"Fine-tune {finetuned}").wait_for(timeout=MINUTE)
    page.get_by_text("Finished").first.wait_for(timeout=5 * MINUTE)
    page.get_by_text("What changed, block by block").wait_for(timeout=3 * MINUTE)
    page.get_by_role("link", name="Look inside the fine-tuned model").wait_for(timeout=3 * MINUTE)
    settle(page)
    shot(page, "finetune")

    # 4. Predict: an uploaded PNG with the fine-tuned run, then the run's test split.
    _sidebar(page, "Predict")
    page.get_by_text("Trained run", exact=True).click()
    settle(page)
    run_box = page.locator('[data-testid="stSidebar"]').get_by_role("combobox", name="Trained run")
    assert finetuned in run_box.input_value(), run_box.input_value()  # the newest run comes first
    page.get_by_text("Upload", exact=True).click()
    photo = _circle_png(tmp_path / "my_circle.png")
    page.locator("input[type=file]").set_input_files(str(photo))
    heading = page.get_by_role("heading", name=re.compile(r"^my_circle\.png: "))
    heading.wait_for(timeout=2 * MINUTE)
    assert heading.inner_text().startswith("my_circle.png: circle"), heading.inner_text()  # a plain red circle
    page.get_by_text("Prediction took").wait_for()
    settle(page)
    shot(page, "predict-upload")
    page.get_by_text("Test split", exact=True).click()
    page.get_by_text("right (").first.wait_for(timeout=2 * MINUTE)  # "k of n right (p%)"
    settle(page)
    shot(page, "predict-test-split")

    # 5. Evaluate: click a confusion cell and see exactly its images with their Grad-CAMs.
    _sidebar(page, "Evaluate")
    page.get_by_text("Accuracy", exact=True).wait_for(timeout=3 * MINUTE)
    page.locator(".js-plotly-plot .scatterlayer .point").first.wait_for()
    settle(page)
    shown = page.get_by_role("heading", name=re.compile(r" predicted as ")).inner_text()
    cells = page.evaluate(
        """() => [...document.querySelectorAll('.js-plotly-plot')].map(el => el.data && el.data[0])
            .filter(d => d && d.customdata).map(d => d.x.map((x, k) => [k, d.y[k], x, Number(d.text[k])]))[0]"""
    )
    cells = [c for c in cells if c[3] > 0 and not shown.startswith(f"{c[1]} predicted as {c[2]}:")]
    assert cells, "the confusion matrix has a single non-empty cell"
    index, true, predicted, count = next((c for c in cells if c[1] != c[2]), cells[0])  # a mistake, if any
    page.locator(".js-plotly-plot .scatterlayer .point").nth(index).click(force=True)
    heading = page.get_by_role("heading", name=f"{true} predicted as {predicted}")
    heading.wait_for(timeout=MINUTE)
    kind = ("right answer" if true == predicted else "mistake") + ("" if count == 1 else "s")
    assert f": {count} {kind}, " in heading.inner_text(), heading.inner_text()
    page.get_by_text(f"looked for {predicted} (predicted)").first.wait_for(timeout=MINUTE)
    if true != predicted:
        page.get_by_text(f"looked for {true} (true)").first.wait_for(timeout=MINUTE)
    settle(page)
    shot(page, "evaluate")

    # 6. Runs: export the fine-tune as TFLite, checked against Keras; then the one-file report.
    _sidebar(page, "Runs")
    run_box = page.get_by_role("combobox", name="Run", exact=True)
    run_box.wait_for(timeout=MINUTE)
    if finetuned not in run_box.input_value():
        _choose(page, run_box, finetuned)
    _expand(page, "Export this model")
    _choose(page, page.get_by_role("combobox", name="Format"), "TFLite float32")
    page.get_by_role("button", name="Export and check").click()
    page.get_by_text("Top-1 agreement").wait_for(timeout=3 * MINUTE)
    agreement = page.get_by_test_id("stMetric").filter(has_text="Top-1 agreement")
    value = float(agreement.get_by_test_id("stMetricValue").inner_text().rstrip("%"))
    assert value >= 95.0, f"TFLite float32 agrees with Keras on only {value}% of the test images"
    page.get_by_role("button", name=re.compile(r"^Download .*\.tflite")).wait_for()
    _expand(page, "One-file report")
    page.get_by_role("button", name="Write the report").click()
    download = page.get_by_role("button", name=re.compile(r"^Download the report \("))
    download.wait_for(timeout=3 * MINUTE)
    with page.expect_download() as got:
        download.click()
    report = tmp_path / "report.html"
    got.value.save_as(report)
    assert report.read_text()[:2000].lower().lstrip().startswith("<!doctype html"), report.read_text()[:200]
    settle(page)
    shot(page, "runs")

    # 7. Inside the network, from the Runs page's link: Grad-CAM on an image, then one channel.
    page.get_by_role("link", name="Look inside").click()
    page.get_by_role("tab", name="🔥 Where it looked").click()
    page.get_by_text(re.compile(r"^Grad-CAM at ")).first.wait_for(timeout=3 * MINUTE)
    settle(page)
    shot(page, "inside-gradcam")
    page.get_by_role("tab", name="🧩 Channels").click()
    opener = page.get_by_role("button", name=re.compile(r"Open #\d+"))
    opener.first.wait_for(timeout=4 * MINUTE)
    button = opener.nth(1)
    channel = button.inner_text().removeprefix("Open #")
    button.click()
    page.get_by_role("heading", name=re.compile(rf"Channel {channel} of ")).wait_for(timeout=2 * MINUTE)
    page.get_by_text("Where it fires most in this data").wait_for(timeout=2 * MINUTE)
    settle(page)
    shot(page, "inside-channel")


def test_the_whole_story(server, shots, tmp_path):
    from playwright.sync_api import sync_playwright

    started = time.monotonic()
    steps: list[tuple[str, float]] = []

    def shot(page, name: str) -> None:
        _screenshot(page, shots / f"{len(steps) + 1:02d}-{name}.png")
        steps.append((name, time.monotonic() - started))
        print(f"{steps[-1][1]:5.0f} s  {name}", flush=True)

    with sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
        page.set_default_timeout(2 * MINUTE)

        try:
            _story(page, server, shot, tmp_path)
        except Exception:
            _screenshot(page, shots / "failed.png")
            print(f"failed: {shots / 'failed.png'} at {page.url}")
            raise
        browser.close()

    print(f"story took {time.monotonic() - started:.0f} s; screenshots in {shots}")
