"""Predict → Inside the network handoff, the session's shared backbone, and no server paths on pages."""

import re

import numpy as np
import pytest

from ui import state

# An absolute server path, or a home-relative one, in text shown on a page.
SERVER_PATH = re.compile(r"(?:~|(?<![\w:/.~]))/[\w.+@-]+/")


def shown_text(at) -> str:
    """Everything a page writes as text: headings, markdown, captions, alerts, widget labels and options."""
    parts = [
        e.value
        for kind in ("title", "subheader", "markdown", "caption", "info", "warning", "error", "success")
        for e in getattr(at, kind)
    ]
    for kind in ("selectbox", "radio", "multiselect"):
        for w in getattr(at, kind):
            parts += [w.label, *map(str, w.options)]
    parts += [str(e.proto) for e in at.get("expander")]
    return "\n".join(parts)


def assert_path_free(at, *forbidden: str) -> None:
    text = shown_text(at)
    assert not SERVER_PATH.search(text), SERVER_PATH.search(text).group(0)
    for f in forbidden:
        assert f not in text, f


@pytest.mark.slow
def test_explain_hands_the_image_and_backbone_to_inside(open_page):
    at = open_page("pages/predict.py")
    at.multiselect(key="samples").set_value(["coffee", "chelsea"]).run()
    at.button(key="explain_1").click().run()  # the second image: Chelsea
    assert not at.exception, at.exception
    name, rgb = at.session_state[state.INSPECT_IMAGE]
    assert name == "Chelsea the cat" and rgb.shape == (300, 451, 3)
    assert at.session_state[state.CHOSEN_BACKBONE] == "efficientnet_lite0"
    assert at.session_state["inside_kind"] == "ImageNet backbone"
    # Now on Inside the network, looking at the same image with the same backbone.
    assert at.title[0].value.startswith("🔍 Inside the network")
    assert at.radio(key="inside_img_source").value == "Handed off"
    assert "From Predict: Chelsea the cat" in str(at.radio(key="inside_img_source").proto)
    assert at.selectbox(key="inside_backbone").value == "efficientnet_lite0"
    assert not at.error, [e.value for e in at.error]
    assert any("Chelsea the cat" in str(i.proto) for i in at.get("image"))
    # ...opened on the maps, for the predicted class of that image.
    assert at.session_state["inside_tab"] == "🔥 Where it looked"
    assert at.selectbox(key="cam_class").value == 285
    assert any("Grad-CAM at top_activation" in str(i.proto) for i in at.get("image"))


@pytest.mark.slow
def test_a_new_handoff_is_preselected_once(open_page):
    at = open_page("pages/inside.py")
    assert at.radio(key="inside_img_source").value == "Sample photo"  # nothing handed over yet
    assert "Handed off" not in at.radio(key="inside_img_source").options
    at.session_state[state.INSPECT_IMAGE] = ("grey.png", np.full((40, 60, 3), 128, np.uint8))
    at.session_state[state.INSPECT_SERIAL] = 1
    at.run()
    assert at.radio(key="inside_img_source").value == "Handed off"
    at.radio(key="inside_img_source").set_value("Sample photo").run()
    assert at.radio(key="inside_img_source").value == "Sample photo"  # the user's choice stands


@pytest.mark.slow
def test_the_chosen_backbone_is_the_default_elsewhere(open_page):
    at = open_page("pages/predict.py")
    at.multiselect(key="samples").set_value([]).run()  # nothing to classify: no model loads
    at.selectbox(key="backbone").set_value("efficientnet_lite1").run()
    assert at.session_state[state.CHOSEN_BACKBONE] == "efficientnet_lite1"
    at.switch_page("pages/datasets.py").run()
    at.session_state["explorer_tab"] = "🧭 Feature space"
    at.run()
    assert not at.exception, at.exception
    picker = at.selectbox(key="space_backbone")
    assert picker.value == "efficientnet_lite1"
    picker.set_value("efficientnet_lite2").run()
    at.switch_page("pages/predict.py").run()
    assert at.selectbox(key="backbone").value == "efficientnet_lite2"


@pytest.mark.slow
def test_predict_and_home_show_no_server_paths(open_page, tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # keras.applications weights: not downloaded
    at = open_page("pages/predict.py")
    at.multiselect(key="samples").set_value([]).run()
    greyed = " ".join(m.value for m in at.markdown)
    assert "MobileNetV2" in greyed and "not downloaded yet" in greyed
    assert_path_free(at, str(tmp_path), ".keras")
    at.switch_page("pages/home.py").run()
    assert_path_free(at)


def test_path_free_messages():
    from ui.widgets import path_free

    assert path_free("saved to /root/.keras/models; no SavedModel at ~/hub/mnv2") == (
        "saved to models; no SavedModel at mnv2"
    )
    kept = "download from https://storage.googleapis.com/x/y, class folders cats/*.jpg, unsafe ../ paths, a / b"
    assert path_free(kept) == kept


@pytest.mark.slow
def test_look_closer_can_pick_either_of_two_uploads_with_one_name(open_page):
    import io

    from PIL import Image

    def png(width: int, height: int) -> bytes:
        out = io.BytesIO()
        Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(out, format="PNG")
        return out.getvalue()

    at = open_page("pages/predict.py")
    at.radio(key="image_source").set_value("Upload").run()
    at.get("file_uploader")[0].set_value([("cat.png", png(40, 30), "image/png"), ("cat.png", png(50, 20), "image/png")])
    at.run()
    assert not at.exception, at.exception
    # The options were the bare file names: two equal labels, and a selectbox can reach only one of them.
    for pick, size in ((1, "from 50×20"), (0, "from 40×30"), (1, "from 50×20")):
        at.selectbox(key="closer").set_value(pick).run()
        captions = " ".join(str(i.proto) for i in at.get("image"))  # "As the network sees it … (from W×H)"
        assert size in captions, (pick, captions)
