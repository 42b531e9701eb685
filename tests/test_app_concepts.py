"""Inside the network's Concepts tab (TCAV) through AppTest, on a tiny run trained on shapes whose circles carry a mark;
and its one-sentence summary."""

import pytest

from conftest import runs_dir_set
from engine.explain.concepts import summary

TAB = "💡 Concepts"
MARKED = "shapes:per_class=12,classes=3,size=64,mark=0"  # class 0 (circle) carries the watermark


@pytest.fixture(scope="module")
def marked_root(tmp_path_factory):
    """A runs folder with one feature run (2 epochs, 96 px) on the tiny shapes with a watermark on the circles."""
    from engine import runs
    from engine.config import DataConfig, TrainConfig
    from engine.training import fit

    root = tmp_path_factory.mktemp("concept-runs")
    with runs_dir_set(root):
        config = TrainConfig(data=DataConfig(source=MARKED, image_size=96), epochs=2)
        run = runs.create("marked", backbone=config.backbone, mode=config.mode)
        assert fit.train(config, run)["status"] == "finished"
    return root


def texts(at) -> str:
    kinds = ("markdown", "caption", "info", "success", "warning", "error")
    return " ".join(str(e.value) for kind in kinds for e in at.get(kind))


@pytest.fixture
def tab(marked_root, monkeypatch, open_page):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(marked_root))
    at = open_page("pages/inside.py", run="marked")
    at.session_state["inside_tab"] = TAB
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    return at


@pytest.mark.slow
def test_the_concept_test_runs_from_the_tab_and_sums_up_per_layer(tab):
    assert tab.selectbox(key="cav_class").value == 0  # the class carrying the mark, from the run's data source
    assert tab.selectbox(key="cav_concept").value == "mark"
    assert len(tab.multiselect(key="cav_layers").value) == 3
    assert "concept's 50 images" in texts(tab)  # the strip of the built-in set
    assert len(tab.get("plotly_chart")) == 0
    tab.number_input(key="cav_runs").set_value(3).run()
    tab.button(key="cav_go").click().run()
    assert not tab.exception, tab.exception
    assert not tab.error, [e.value for e in tab.error]
    assert len(tab.get("plotly_chart")) == 1
    shown = texts(tab)
    # The summary at the top; whether a model trained for 2 epochs already relies on the mark is not asked here.
    assert "relies on 'mark' for 'circle' at" in shown and "3 layers" in shown, shown
    meanings = [m.value for m in tab.markdown if m.value.startswith("- At ")]
    assert len(meanings) == 1 and meanings[0].count("\n- At ") == 2, meanings  # one sentence per layer
    # Kept per (model, concept, class, images, layers, runs): another setting drops the chart, going back shows it.
    tab.number_input(key="cav_runs").set_value(2).run()
    assert len(tab.get("plotly_chart")) == 0
    tab.number_input(key="cav_runs").set_value(3).run()
    assert len(tab.get("plotly_chart")) == 1 and "Took" in texts(tab)


@pytest.mark.slow
def test_a_dataset_without_the_class_is_an_error_not_a_traceback(tab):
    tab.selectbox(key="cav_class").set_value(2).run()  # triangle
    tab.radio(key="cav_images_kind").set_value("A labelled dataset").run()
    tab.number_input(key="cav_data_per_class").set_value(4).run()
    tab.number_input(key="cav_data_classes").set_value(2).run()  # circle and square only
    tab.select_slider(key="cav_data_size").set_value(64).run()
    tab.number_input(key="cav_runs").set_value(2).run()
    tab.button(key="cav_go").click().run()
    assert not tab.exception, tab.exception
    errors = [e.value for e in tab.error]
    assert len(errors) == 1 and "has no class 'triangle'" in errors[0], errors


@pytest.mark.slow
def test_an_uploaded_concept_with_too_few_images_is_an_error_by_its_name(tab):
    import io
    import zipfile

    from PIL import Image

    data = io.BytesIO()
    with zipfile.ZipFile(data, "w") as z:
        for k in range(5):
            png = io.BytesIO()
            Image.new("RGB", (32, 32), (40 * k, 0, 0)).save(png, "PNG")
            z.writestr(f"stripes/{k}.png", png.getvalue())
    tab.radio(key="cav_concept_kind").set_value("Upload a zip").run()
    tab.file_uploader(key="cav_concept_upload").set_value(("stripes.zip", data.getvalue(), "application/zip")).run()
    assert not tab.exception, tab.exception
    errors = [e.value for e in tab.error]
    assert errors == ["stripes.zip: 5 readable images (0 unreadable); at least 20 are needed for a concept"], errors
    assert tab.button(key="cav_go").disabled  # nothing to test with


@pytest.mark.slow
def test_the_backbone_asks_for_the_class_images(open_page):
    at = open_page("pages/inside.py")  # the ImageNet backbone
    at.session_state["inside_tab"] = TAB
    at.run()
    assert not at.exception and not at.error, at.exception or [e.value for e in at.error]
    at.selectbox(key="cav_class").set_value(504).run()  # any of the 1000 classes
    assert "give images of 'coffee mug' yourself" in at.info[0].value
    assert at.radio(key="cav_images_kind").value == "A zip of this class's images"
    assert at.button(key="cav_go").disabled  # until they are given


@pytest.mark.slow
def test_an_opaque_model_says_why_concepts_need_inner_layers():
    from streamlit.testing.v1 import AppTest

    script = """
from types import SimpleNamespace
from ui import concepts_view
concepts_view.show(SimpleNamespace(opaque_reason="hub-like is an opaque TF Hub module"), "hub:hub-like", None)
"""
    at = AppTest.from_string(script).run()
    assert not at.exception, at.exception
    assert "hub-like is an opaque TF Hub module. A concept test needs the model's inner layers" in at.info[0].value
    assert not at.get("button")


def _layer(name: str, direction: str, separable: bool = True) -> dict:
    return {"layer": name, "direction": direction, "separable": separable}


def test_the_summary_counts_the_layers_that_rely_on_the_concept():
    test = {"concept": "mark", "class_name": "circle"}
    assert (
        summary({**test, "layers": [_layer(n, "raises") for n in "abc"]})
        == "The model relies on 'mark' for 'circle' at 3 of 3 layers."
    )
    one = summary({**test, "layers": [_layer("a", "raises"), _layer("b", "none"), _layer("c", "none", False)]})
    assert one.startswith("The model relies on 'mark' for 'circle' at 1 of 3 layers (a).")
    assert one.endswith("1 of 3 layers cannot tell 'mark' from random images (c).")
    none = summary({**test, "layers": [_layer("a", "none")]})
    assert none == "No evidence that the model relies on 'mark' for 'circle' at the layer tested."
    lowers = summary({**test, "layers": [_layer("a", "lowers"), _layer("b", "none")]})
    assert lowers == (
        "No evidence that the model relies on 'mark' for 'circle' at any of the 2 layers tested. "
        "'mark' lowers its score at 1 of 2 layers (a)."
    )
