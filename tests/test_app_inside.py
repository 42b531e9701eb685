"""The Inside-the-network page through AppTest: every tab, the checks, a trained run."""

import json

import pytest

TABS = [
    "🧱 Layers & feature maps",
    "🎛️ First-layer filters",
    "🚶 Walk through",
    "🔥 Where it looked",
    "✅ Trust",
    "🧩 Channels",
]


@pytest.fixture
def page(open_page):
    return open_page("pages/inside.py")


def open_tab(at, index: int):
    at.session_state["inside_tab"] = TABS[index]
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


@pytest.mark.slow
def test_feature_maps_of_any_layer(page):
    assert page.dataframe[0].value["class"][0] == "Egyptian cat"
    open_tab(page, 0)
    assert page.selectbox(key="fm_layer").value == "top_activation"
    page.selectbox(key="fm_layer").set_value("block1a_activation").run()
    metrics = {m.label: m.value for m in page.metric}
    assert metrics["Output"] == "112×112×32" and metrics["Dead channels"].endswith("%")


@pytest.mark.slow
def test_filters_and_walk(page):
    open_tab(page, 1)
    assert len(page.get("image")) == 1 + 32  # the photo and the stem's 32 kernels
    open_tab(page, 2)
    assert len(page.multiselect(key="walk_layers").value) == 5


@pytest.mark.slow
def test_where_it_looked_any_class(page):
    open_tab(page, 3)
    assert len(page.get("image")) == 1 + 1 + 5  # the photo, the colour bar and five methods
    page.multiselect(key="cam_methods").set_value(["gradcam", "occlusion"]).run()
    page.selectbox(key="cam_class").set_value(504).run()  # coffee mug: any of the 1000 classes
    assert not page.exception and not page.error
    captions = " ".join(str(i.proto) for i in page.get("image"))
    assert "Grad-CAM at top_activation" in captions and "Occlusion sensitivity" in captions


@pytest.mark.slow
def test_trust_checks(page):
    open_tab(page, 4)
    page.selectbox(key="trust_method").set_value("gradcam").run()
    text = " ".join(m.value for m in page.markdown) + " ".join(c.value for c in page.caption)
    assert "What the sanity check tests" in text
    assert "Randomised for efficientnet_lite0: " in text and "predictions" in text  # the ImageNet head is among them
    page.button(key="trust_go").click().run()
    assert not page.exception and not page.error
    assert "Sanity check passes" in page.success[0].value
    assert len(page.get("plotly_chart")) == 1
    assert "not trained on the shapes classes" in " ".join(c.value for c in page.caption)
    page.slider(key="trust_depth").set_value(5).run()  # another check: the old result is not shown for it
    assert len(page.get("plotly_chart")) == 0 and "top 5 layers" not in str(page.get("image"))
    page.slider(key="trust_depth").set_value(3).run()
    assert len(page.get("plotly_chart")) == 1  # kept across reruns


@pytest.mark.slow
def test_a_trained_run_and_localisation(page, tmp_path, monkeypatch):
    import keras

    from engine.backbones import load
    from engine.data.sources import open_dataset

    shapes = open_dataset("shapes")
    base = load("efficientnet_lite0", image_size=96)
    out = keras.layers.Dense(len(shapes.classes), name="head")(keras.layers.GlobalAveragePooling2D()(base.output))
    run = tmp_path / "runs" / "shapes-run"
    run.mkdir(parents=True)
    keras.Model(base.input, out).save(run / "model.keras")
    (run / "labels.json").write_text(json.dumps(shapes.classes))
    (run / "config.json").write_text(json.dumps({"backbone": "efficientnet_lite0"}))
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(tmp_path / "runs"))
    page.radio(key="inside_kind").set_value("Trained run").run()
    page.radio(key="inside_img_source").set_value("Shapes image").run()
    assert not page.exception and not page.error
    predicted = set(page.dataframe[0].value["class"])
    assert predicted and predicted <= set(shapes.classes), (predicted, shapes.classes)
    open_tab(page, 4)
    page.slider(key="loc_n").set_value(10).run()
    page.multiselect(key="loc_methods").set_value(["gradcam"]).run()
    page.button(key="trust_go").click().run()
    assert "Why a frozen-backbone model can fail it" not in " ".join(i.value for i in page.info)  # no run config
    page.button(key="loc_go").click().run()
    # the sanity verdict is shown with st.error when it fails, which an untrained random head may do
    errors = [e.value for e in page.error if not e.value.startswith("Sanity check")]
    assert not page.exception and not errors, errors
    table = page.dataframe[-1].value
    assert list(table["method"]) == ["Grad-CAM"] and 0 <= table["peak inside the box"][0] <= 1, table
    charts = len(page.get("plotly_chart"))
    assert charts == 1, f"the localisation run erased the sanity check's results ({charts} charts)"


@pytest.mark.slow
def test_each_map_gets_its_faithfulness_numbers(page):
    open_tab(page, 3)
    page.multiselect(key="cam_methods").set_value(["gradcam", "eigencam"]).run()
    scores = [c.value for c in page.caption if c.value.startswith("deletion ")]
    assert len(scores) == 2 and all("insertion" in s for s in scores)


def classes_and_scores(page):
    """What the Where-it-looked tab shows about the class: the chosen one, the first option, the scores."""
    box = page.selectbox(key="cam_class")
    scores = [c.value for c in page.caption if c.value.startswith("deletion ")]
    return box.value, box.options[0], scores


@pytest.mark.slow
def test_the_class_maps_and_scores_follow_the_image(page):
    """Switching the image (a sample, then an upload) never keeps the old image's class, maps or scores."""
    import io

    import numpy as np
    from PIL import Image

    open_tab(page, 3)
    page.multiselect(key="cam_methods").set_value(["gradcam"]).run()
    value, first, scores = classes_and_scores(page)
    assert value == 285 and first.startswith("Egyptian cat")  # Chelsea the cat
    cat_scores = scores
    page.selectbox(key="inside_img_sample").set_value("coffee").run()
    assert not page.exception and not page.error
    value, first, scores = classes_and_scores(page)
    predicted = page.dataframe[0].value["index"][0]
    assert value == predicted != 285 and not first.startswith("Egyptian cat")
    assert scores != cat_scores and "deletion 0.00 ↓ · insertion 0.00" not in scores[0]
    page.slider(key="cam_opacity").set_value(0.8).run()  # a redraw keeps the class
    assert page.selectbox(key="cam_class").value == predicted

    page.radio(key="inside_img_source").set_value("Upload").run()
    rgb = np.zeros((96, 96, 3), np.uint8)
    rgb[:, :, 2] = 255  # a plain blue square
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    page.file_uploader(key="inside_img_upload").set_value(("blue.png", buf.getvalue(), "image/png")).run()
    assert not page.exception and not page.error
    value, first, _ = classes_and_scores(page)
    assert value == page.dataframe[0].value["index"][0] and value != predicted


@pytest.mark.slow
def test_maps_are_kept_and_settings_only_redraw(page):
    from ui import cached

    open_tab(page, 3)
    page.multiselect(key="cam_methods").set_value(["gradcam", "smoothgrad"]).run()
    model = cached.explainable_backbone("efficientnet_lite0")
    misses = model.memo.misses
    page.slider(key="cam_opacity").set_value(0.7).run()
    page.selectbox(key="cam_cmap").set_value("Viridis").run()
    page.multiselect(key="cam_methods").set_value(["gradcam"]).run()
    page.multiselect(key="cam_methods").set_value(["gradcam", "smoothgrad"]).run()
    assert model.memo.misses == misses  # nothing was computed again
    captions = " ".join(str(i.proto) for i in page.get("image"))
    assert "kept from before" in captions
    page.radio(key="cam_scale").set_value("relative").run()
    assert not page.exception and not page.error
    assert any("relative to the predicted class" in str(i.proto) for i in page.get("image"))


@pytest.mark.slow
def test_slow_methods_show_their_expected_time(page):
    """A method expected to take 1.5 s or more says how long; how long occlusion takes depends on the machine."""
    from ui import cached

    open_tab(page, 3)
    options = page.multiselect(key="cam_methods").options
    occlusion = [o for o in options if o.startswith("Occlusion")][0]
    model = cached.explainable_backbone(page.session_state["inside_backbone"])  # the page's shared model
    eta = model.memo.get(("expected", "occlusion"))
    assert eta is not None, "the page estimated occlusion's time"
    assert ("~" in occlusion) == (eta >= 1.5), (occlusion, eta)
    assert "~" not in occlusion or occlusion.endswith(" s")
    assert not any("~" in o for o in options if o.startswith("Grad-CAM"))


@pytest.mark.slow
def test_channels_view(page, monkeypatch):
    """A layer's channels with their pictures; open one: its picture, map, share of the CAM and top crops."""
    from engine.explain import featurevis
    from ui import channels_view

    monkeypatch.setattr(channels_view, "SKETCH", featurevis.Settings(steps=8, size=48))
    monkeypatch.setattr(channels_view, "FULL", featurevis.Settings(steps=12, size=64))
    monkeypatch.setattr(channels_view, "SCAN_LIMIT", 24)
    page.session_state["ch_layer"] = "block2a_expand_activation"
    open_tab(page, 5)
    grid = [i for i in page.get("image") if "CAM" in str(i.proto) and "mean" in str(i.proto)]
    assert len(grid) == channels_view.PER_PAGE
    first = page.session_state["ch_selected"]
    assert page.subheader[0].value == f"Channel {first} of block2a_expand_activation"
    metrics = {m.label: m.value for m in page.metric}
    assert {"On this image", "Share of the CAM", "Picture", "Natural mean"} <= set(metrics)
    captions = " ".join(str(i.proto) for i in page.get("image"))
    assert "What it looks for" in captions and "Where it fires on this image" in captions
    crops = [i for i in page.get("image") if "Where it fires" not in str(i.proto) and "caption" in str(i.proto)]
    assert len(crops) >= len(grid) + 2 + channels_view.EXAMPLES
    # most active first: the grid's means fall
    means = [float(str(i.proto).split("mean ")[1].split(" ")[0]) for i in grid]
    assert means == sorted(means, reverse=True)
    other = next(b for b in page.button if b.key and b.key.startswith("ch_open_") and b.label.startswith("Open"))
    other.click().run()
    assert not page.exception and not page.error
    assert page.subheader[0].value == f"Channel {other.key.removeprefix('ch_open_')} of block2a_expand_activation"
    page.toggle(key="ch_class_pic").set_value(True).run()  # the class's own picture
    assert "Egyptian cat: logit" in " ".join(str(i.proto) for i in page.get("image"))
    page.radio(key="ch_order").set_value("drives").run()
    page.select_slider(key="ch_page").set_value(1).run()  # the next 8 channels
    assert not page.exception and not page.error


@pytest.mark.slow
def test_channels_of_a_fine_tune_before_and_after(page, tmp_path, monkeypatch):
    """A fine-tuned run shows the chosen channel's picture in its parent run and in itself, and the weight change."""
    import keras

    from conftest import TINY
    from engine.backbones import load
    from engine.explain import featurevis
    from ui import channels_view

    monkeypatch.setattr(channels_view, "SKETCH", featurevis.Settings(steps=4, size=48))
    monkeypatch.setattr(channels_view, "FULL", featurevis.Settings(steps=8, size=48))
    base = load("efficientnet_lite0", image_size=96)
    head = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(base.output))
    model = keras.Model(base.input, head)
    runs = tmp_path / "runs"
    parent, child = runs / "parent", runs / "child"
    config = {"backbone": "efficientnet_lite0", "data": {"source": TINY}}
    for run in (parent, child):
        run.mkdir(parents=True)
        (run / "labels.json").write_text(json.dumps(["circle", "square", "triangle"]))
    model.save(parent / "model.keras")
    (parent / "config.json").write_text(json.dumps(config))
    kernel = model.get_layer("block2a_expand_conv").get_weights()
    kernel[0] = kernel[0] * 1.1  # a "fine-tune" that changed every channel of this layer by 10%
    model.get_layer("block2a_expand_conv").set_weights(kernel)
    model.save(child / "model.keras")
    (child / "config.json").write_text(json.dumps({**config, "parent": str(parent), "mode": "finetune"}))
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(runs))
    page.session_state["ch_layer"] = "block2a_expand_activation"
    page.session_state["inside_kind"] = "Trained run"
    page.session_state["inside_run"] = child
    open_tab(page, 5)
    assert "Before and after fine-tuning" in " ".join(m.value for m in page.markdown)
    captions = " ".join(str(i.proto) for i in page.get("image"))
    assert "before: parent" in captions and "after: this run" in captions
    assert {m.label: m.value for m in page.metric}["Weights changed"] == "10.0%"
    assert page.selectbox(key="ch_source").value == TINY  # top examples from the run's own data first


def _curves(deletion: float, insertion: float):
    import numpy as np

    from engine.explain.checks import Curves

    fractions = np.linspace(0, 1, 9)
    return Curves(fractions, np.full(9, deletion), np.full(9, insertion), deletion, insertion)


def test_scores_that_cannot_separate_maps_are_recognised():
    from engine.explain import checks

    assert checks.indistinct([_curves(0.99, 1.0), _curves(0.995, 1.0), _curves(1.0, 0.995)])  # all 0.99-1.00
    assert not checks.indistinct([_curves(0.35, 0.9), _curves(0.6, 0.8)])
    assert not checks.indistinct([_curves(0.99, 1.0), _curves(0.95, 1.0)])  # deletion tells them apart
    assert checks.indistinct([_curves(0.99, 1.0)])  # one map: both curves flat
    assert not checks.indistinct([_curves(0.3, 0.9)]) and not checks.indistinct([])


@pytest.mark.slow
@pytest.mark.parametrize("easy", [True, False])
def test_scores_that_cannot_separate_maps_say_why(page, monkeypatch, easy):
    """All maps scoring 0.99-1.00 were shown without a word: now a note says the image is too easy for the tests."""
    from engine.explain import checks

    def scores(model, result, steps=8):  # per method, as an easy or a telling image would score
        first = result.method == "gradcam"
        if easy:
            return _curves(0.99, 1.0) if first else _curves(1.0, 0.995)
        return _curves(0.3 + 0.4 * first, 0.9)

    monkeypatch.setattr(checks, "faithfulness", scores)
    open_tab(page, 3)
    page.multiselect(key="cam_methods").set_value(["gradcam", "eigencam"]).run()
    assert not page.exception, page.exception
    notes = [i.value for i in page.info if "too easy" in i.value]
    if easy:
        assert len(notes) == 1 and "harder image" in notes[0] and "confident" in notes[0], notes
    else:
        assert not notes


@pytest.fixture
def imported_tutorial(tmp_path, monkeypatch):
    """The tutorial-shaped model (nested base_model, augmentation, one logit) imported as a run without data."""
    import keras_models

    from engine.importing import import_model

    runs = tmp_path / "runs"
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(runs))
    found = import_model(keras_models.tutorial(tmp_path / "tutorial.keras"), out=runs / "tutorial-imported")
    return found["run_dir"]


@pytest.mark.slow
def test_an_imported_model_inside(open_page, imported_tutorial, monkeypatch):
    """An imported run is selectable, its nested layers are listed and reachable, maps and checks work,
    and the Channels view lets the user choose a dataset for top examples since the run has none."""
    from pathlib import Path

    from engine.explain import featurevis
    from ui import channels_view

    monkeypatch.setattr(channels_view, "SKETCH", featurevis.Settings(steps=4, size=48))
    monkeypatch.setattr(channels_view, "FULL", featurevis.Settings(steps=6, size=48))
    monkeypatch.setattr(channels_view, "SCAN_LIMIT", 24)
    state = {"inside_kind": "Trained run", "inside_img_source": "Shapes image"}
    page = open_page("pages/inside.py", state=state)
    assert not page.error, [e.value for e in page.error]
    picker = page.selectbox(key="inside_run")
    assert Path(picker.value) == Path(imported_tutorial)
    assert "tutorial.keras" in picker.format_func(picker.value) and "imported" in picker.format_func(picker.value)
    sidebar = " ".join(c.value for c in page.sidebar.caption)
    assert "Imported from tutorial.keras" in sidebar and "-z for class 0" in sidebar, sidebar
    assert set(page.dataframe[0].value["class"]) <= {"class 0", "class 1"}

    open_tab(page, 0)
    table = page.dataframe[1].value
    assert "base_model" in set(table["inside"]) and "base_model/block1_conv" in set(table["name"])
    assert "nested model 'base_model'" in " ".join(c.value for c in page.caption)
    assert page.selectbox(key="fm_layer").value == "base_model/block2_conv"
    page.selectbox(key="fm_layer").set_value("base_model/block1_conv").run()
    assert not page.exception and not page.error
    assert {m.label: m.value for m in page.metric}["Output"] == "64×64×8"

    open_tab(page, 3)
    page.multiselect(key="cam_methods").set_value(["gradcam", "cam", "occlusion"]).run()
    page.selectbox(key="cam_class").set_value(0).run()  # the other class: -z
    assert not page.exception and not page.error and not page.warning, [w.value for w in page.warning]
    captions = " ".join(str(i.proto) for i in page.get("image"))
    assert "CAM at base_model/block2_conv" in captions and "Occlusion sensitivity" in captions
    page.multiselect(key="cam_methods").set_value(["gradcam"]).run()
    page.selectbox(key="cam_layer").set_value("base_model/block1_conv").run()  # deeper inside the nested model
    assert not page.exception and not page.error and not page.warning
    assert "Grad-CAM at base_model/block1_conv" in " ".join(str(i.proto) for i in page.get("image"))

    open_tab(page, 4)
    text = " ".join(c.value for c in page.caption)
    assert "block2_conv" in text and "two_logits" not in text  # ConvScope's adapter is never randomised
    page.button(key="trust_go").click().run()
    assert not page.exception and [e for e in page.error if not e.value.startswith("Sanity check")] == []
    assert len(page.get("plotly_chart")) == 1

    page.session_state["ch_layer"] = "base_model/block2_conv"
    open_tab(page, 5)
    assert "came without data of its own" in " ".join(c.value for c in page.caption)
    box = page.selectbox(key="ch_source")
    assert box.options[-1] == channels_view.OTHER_TITLE and box.value != channels_view.OTHER
    assert {m.label for m in page.metric} >= {"Natural mean"}  # the first offered data scans at once
    page.session_state["ch_data_per_class"] = 4  # a small built-in set for the chosen data
    page.session_state["ch_data_classes"] = 2
    page.session_state["ch_data_size"] = 64
    box.set_value(channels_view.OTHER).run()
    assert not page.exception and not page.error
    assert page.radio(key="ch_data_kind").value == "Built-in shapes"
    assert "8 images scanned" in " ".join(m.value for m in page.markdown) or any(
        "never fires on these 8 images" in i.value for i in page.info
    )
