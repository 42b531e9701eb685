"""The Inside-the-network page through AppTest: every tab, the checks, a trained run."""

import json

import pytest

TABS = ["🧱 Layers & feature maps", "🎛️ First-layer filters", "🚶 Walk through", "🔥 Where it looked", "✅ Trust"]


@pytest.fixture
def page(open_page):
    return open_page("pages/inside.py")


def open_tab(at, index: int):
    at.session_state["inside_tab"] = TABS[index]
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


def test_feature_maps_of_any_layer(page):
    assert page.dataframe[0].value["class"][0] == "Egyptian cat"
    open_tab(page, 0)
    assert page.selectbox(key="fm_layer").value == "top_activation"
    page.selectbox(key="fm_layer").set_value("block1a_activation").run()
    metrics = {m.label: m.value for m in page.metric}
    assert metrics["Output"] == "112×112×32" and metrics["Dead channels"].endswith("%")


def test_filters_and_walk(page):
    open_tab(page, 1)
    assert len(page.get("image")) == 1 + 32  # the photo and the stem's 32 kernels
    open_tab(page, 2)
    assert len(page.multiselect(key="walk_layers").value) == 5


def test_where_it_looked_any_class(page):
    open_tab(page, 3)
    assert len(page.get("image")) == 1 + 5  # the photo and five methods
    page.multiselect(key="cam_methods").set_value(["gradcam", "occlusion"]).run()
    page.selectbox(key="cam_class").set_value(504).run()  # coffee mug: any of the 1000 classes
    assert not page.exception and not page.error
    captions = " ".join(str(i.proto) for i in page.get("image"))
    assert "Grad-CAM at top_activation" in captions and "Occlusion sensitivity" in captions


def test_trust_checks(page):
    open_tab(page, 4)
    page.selectbox(key="trust_method").set_value("gradcam").run()
    page.button(key="trust_go").click().run()
    assert not page.exception and not page.error
    assert "Sanity check passes" in page.success[0].value
    assert len(page.get("plotly_chart")) == 1
    assert "not trained on the shapes classes" in " ".join(c.value for c in page.caption)


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
    assert list(page.dataframe[0].value["class"]) and set(page.dataframe[0].value["class"]) <= set(shapes.classes)
    open_tab(page, 4)
    page.slider(key="loc_n").set_value(10).run()
    page.multiselect(key="loc_methods").set_value(["gradcam"]).run()
    page.button(key="loc_go").click().run()
    assert not page.exception and not page.error
    table = page.dataframe[-1].value
    assert list(table["method"]) == ["Grad-CAM"] and 0 <= table["peak inside the box"][0] <= 1


def test_each_map_gets_its_faithfulness_numbers(page):
    open_tab(page, 3)
    page.multiselect(key="cam_methods").set_value(["gradcam", "eigencam"]).run()
    scores = [c.value for c in page.caption if c.value.startswith("deletion ")]
    assert len(scores) == 2 and all("insertion" in s for s in scores)
