"""The Dataset Explorer page through AppTest: the four kinds of data, the report, the tabs."""

import pytest
from test_app_predict import assert_path_free

import datafactory as f

TABS = {
    "overview": "📊 Balance & sizes",
    "samples": "🖼️ Samples",
    "report": "🧾 Ingest report",
    "aug": "🎲 Augmentation",
    "space": "🧭 Feature space",
}


@pytest.fixture
def page(open_page):
    return open_page("pages/datasets.py")


def metrics(at) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def open_tab(at, name: str):
    at.session_state["explorer_tab"] = TABS[name]
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.mark.slow
def test_default_is_the_shapes_set(page):
    page.number_input(key="data_per_class").set_value(6).run()
    assert metrics(page) == {"Classes": "5", "Usable images": "30", "Skipped files": "0", "Duplicates": "0"}
    assert "Ready for training: train 20, validation 5, test 5" in page.success[0].value
    assert len(page.get("plotly_chart")) == 2  # class balance and image sizes


@pytest.mark.slow
def test_a_watermarked_class_is_chosen_for_the_concept_demonstration(page):
    page.number_input(key="data_per_class").set_value(6).run()
    page.selectbox(key="data_mark").set_value("square").run()
    assert not page.exception, page.exception
    assert any("every square carries a watermark" in c.value for c in page.caption)
    assert metrics(page)["Usable images"] == "30"
    from ui.state import DATA_CONFIG

    assert page.session_state[DATA_CONFIG].source.endswith(",mark=1")  # what Train will use


@pytest.mark.slow
def test_samples_grid_filters_by_class_and_split(page):
    page.number_input(key="data_per_class").set_value(6).run()
    open_tab(page, "samples")
    page.selectbox(key="grid_class").set_value("star").run()
    captions = [str(i.proto) for i in page.get("image")]
    assert captions and all("star" in c for c in captions)
    page.selectbox(key="grid_split").set_value("test").run()
    assert all("star · test" in str(i.proto) for i in page.get("image"))


@pytest.mark.slow
def test_uploaded_zip_report_lists_every_skipped_file(page, tmp_path):
    f.messy_folder(tmp_path / "src" / "pets")
    data = f.zip_folder(tmp_path / "src", tmp_path / "pets.zip").read_bytes()
    page.radio(key="data_kind").set_value("Upload an archive").run()
    page.file_uploader(key="data_upload").set_value(("pets.zip", data, "application/zip")).run()
    assert not page.exception
    assert page.subheader[0].value == "pets.zip"
    assert_path_free(page, str(tmp_path))
    m = metrics(page)
    assert m["Classes"] == "2" and m["Usable images"] == "18" and m["Duplicates"] == "2"
    open_tab(page, "report")
    table = page.dataframe[0].value
    reasons = dict(zip(table["file"], table["reason"], strict=True))
    assert reasons["cats/truncated.jpg"] == "truncated or corrupt"
    assert reasons["dogs/bomb.png"] == "too many pixels"
    assert reasons["dogs/notes.jpg"] == "not an image"
    assert all(t.startswith("data:image/jpeg;base64,") for t in table["thumbnail"])
    assert_path_free(page, str(tmp_path))  # no cache folder, no upload path


@pytest.mark.slow
def test_bad_archive_shows_an_error_not_a_traceback(page):
    page.radio(key="data_kind").set_value("Upload an archive").run()
    page.file_uploader(key="data_upload").set_value(("x.zip", b"not a zip at all", "application/zip")).run()
    assert not page.exception
    assert "not a readable zip archive" in page.error[0].value
    assert page.error[0].value.startswith("x.zip ")  # the user's file name, not the cached copy's
    assert_path_free(page)


@pytest.mark.slow
def test_server_folders_only_under_data_roots(page, tmp_path, monkeypatch):
    page.radio(key="data_kind").set_value("Server folder").run()
    assert "has not allowed any server folders" in page.info[0].value
    f.messy_folder(tmp_path / "root" / "pets")
    monkeypatch.setenv("CONVSCOPE_DATA_ROOTS", str(tmp_path / "root"))
    page.run()
    box = page.selectbox(key="data_folder")
    assert box.options == ["root", "root/pets"]  # named below the data root, never by server path
    box.set_value(tmp_path / "root" / "pets").run()
    assert metrics(page)["Usable images"] == "18"
    assert page.subheader[0].value == "root/pets"
    open_tab(page, "report")
    assert_path_free(page, str(tmp_path))


@pytest.mark.slow
def test_one_class_is_not_ready_for_training(page, tmp_path):
    for i in range(3):
        f.write(tmp_path / "src" / "cats" / f"{i}.png", f.png_bytes(i))
    data = f.zip_folder(tmp_path / "src", tmp_path / "one.zip").read_bytes()
    page.radio(key="data_kind").set_value("Upload an archive").run()
    page.file_uploader(key="data_upload").set_value(("one.zip", data, "application/zip")).run()
    assert not page.exception
    assert "Not ready for training" in page.error[0].value and "at least 2 classes" in page.error[0].value


@pytest.mark.slow
def test_tfds_needs_a_click_and_fails_clearly_offline(page, tmp_path, monkeypatch):
    from engine.data import tfds_source

    monkeypatch.setenv("CONVSCOPE_TFDS_DIR", str(tmp_path / "tfds"))
    monkeypatch.setattr(tfds_source, "network_ok", lambda *a, **k: False)
    page.radio(key="data_kind").set_value("TensorFlow Datasets").run()
    assert not page.error and not page.metric  # nothing is downloaded before the click
    assert_path_free(page, str(tmp_path))
    page.button(key="data_tfds_load").click().run()
    assert not page.exception
    assert "no network to download it" in page.error[0].value


@pytest.mark.slow
def test_augmentation_preview_and_preset(page):
    from engine.config import AugmentConfig
    from ui import state

    page.number_input(key="data_per_class").set_value(6).run()
    open_tab(page, "aug")
    assert any("All augmentations are off" in c.value for c in page.caption)
    page.button(key="aug_preset").click().run()
    assert page.selectbox(key="aug_flip").value == "horizontal"
    rotation, zoom = page.slider(key="aug_rotation"), page.slider(key="aug_zoom")
    assert rotation.value == 36 and zoom.value == 10  # degrees and percent, not Keras factors
    assert "°" in rotation.proto.format and "%" in zoom.proto.format
    assert len(page.get("image")) == 8
    # Previewing does not switch augmentation on for training...
    assert page.session_state[state.DATA_CONFIG].augment == AugmentConfig()
    assert page.checkbox(key="aug_use").value is False
    assert any("Preview only: training uses no augmentation" in c.value for c in page.caption)
    # ...ticking the box does, and training follows the sliders while it is ticked.
    page.checkbox(key="aug_use").check().run()
    assert page.session_state[state.DATA_CONFIG].augment == AugmentConfig.standard()
    page.slider(key="aug_rotation").set_value(18).run()
    assert page.session_state[state.DATA_CONFIG].augment.rotation == pytest.approx(0.05)
    page.checkbox(key="aug_use").uncheck().run()
    assert page.session_state[state.DATA_CONFIG].augment == AugmentConfig()


@pytest.mark.slow
def test_augmentation_chosen_elsewhere_is_kept(page):
    """Training augmentation set before (a Train preset) survives a visit to the Explorer's tab."""
    from dataclasses import replace

    from engine.config import AugmentConfig
    from ui import state

    page.number_input(key="data_per_class").set_value(6).run()
    chosen = AugmentConfig(flip="horizontal", rotation=0.05, zoom=0.2)
    page.session_state[state.DATA_CONFIG] = replace(page.session_state[state.DATA_CONFIG], augment=chosen)
    open_tab(page, "aug")
    assert page.slider(key="aug_rotation").value == 18 and page.slider(key="aug_zoom").value == 20
    assert page.checkbox(key="aug_use").value is True
    page.button(key="aug_off").click().run()  # previewing "all off" while ticked: training follows
    assert page.session_state[state.DATA_CONFIG].augment == AugmentConfig()


@pytest.mark.slow
def test_feature_space(page):
    page.number_input(key="data_per_class").set_value(6).run()
    page.number_input(key="data_classes").set_value(3).run()
    open_tab(page, "space")
    page.slider(key="space_per_class").set_value(5).run()
    page.button(key="space_go").click().run()
    assert not page.exception and not page.error
    assert metrics(page)["5-NN accuracy"].endswith("%")
    assert len(page.get("vega_lite_chart")) == 1
    (reading,) = [m.value for m in page.markdown if m.value.startswith("k-NN accuracy")]
    assert "(chance 33%)" in reading


def test_class_colours_have_distinct_hues():
    import json

    import numpy as np

    from engine import charts

    classes = ["circle", "square", "triangle", "star", "cross"]
    colours = charts.class_colours(classes * 3)
    assert list(colours) == classes
    hues = [charts.hue(c) for c in colours.values()]
    gaps = [min(abs(a - b), 360 - abs(a - b)) for i, a in enumerate(hues) for b in hues[i + 1 :]]
    assert min(gaps) >= 25, hues  # no two classes in shades of one hue (the theme palette pairs them)
    spec = charts.feature_scatter(np.zeros((15, 2)), classes * 3, ["f"] * 15, [""] * 15, "t").to_dict()
    scale = spec["encoding"]["color"]["scale"]
    assert scale["domain"] == classes and scale["range"] == list(colours.values())
    assert len(set(charts.class_colours([str(i) for i in range(12)]).values())) == 12
    json.dumps(spec)


@pytest.mark.parametrize(
    "accuracy, classes, words",
    [(0.92, 5, "separate well"), (0.7, 5, "mostly separate"), (0.45, 5, "overlap a lot"), (0.25, 5, "barely")],
)
def test_knn_reading(accuracy, classes, words):
    from engine.charts import read_knn

    text = read_knn(accuracy, classes)
    assert text.startswith(f"k-NN accuracy {accuracy:.0%} (chance 20%): ") and words in text
