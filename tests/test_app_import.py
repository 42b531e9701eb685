"""The Import a model page through AppTest: a plain-Keras model becomes a run shown on Runs; refused files leave
nothing behind (no run folder, no uploaded copy)."""

import json

import keras_models
import pytest

from engine import runs, settings
from engine.importing.upload import uploads_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {
        "tutorial": keras_models.tutorial(folder / "tutorial.keras"),
        "softmax": keras_models.softmax_rescaling(folder / "softmax.keras"),
        "lambda": keras_models.lambda_layer(folder / "lambda.keras"),
        "not_keras": keras_models.not_keras_zip(folder / "notes.keras"),
        "any_size": keras_models.any_size(folder / "any_size.keras"),
        "unit": keras_models.unit_cnn(folder / "unit.keras"),
    }


@pytest.fixture
def page(runs_dir, cache_dir, open_page):
    return open_page("pages/import_model.py")


def upload(page, path, name=None, labels: list[str] | None = None):
    page.file_uploader(key="import_file").set_value((name or path.name, path.read_bytes(), "application/zip"))
    if labels is not None:
        data = json.dumps(labels).encode()
        page.file_uploader(key="import_labels").set_value(("labels.json", data, "application/json"))
    page.run()
    page.button(key="import_go").click().run()
    assert not page.exception, page.exception
    return page


def texts(page, kind: str) -> str:
    return " ".join(e.value for e in page.get(kind))


def run_folders(runs_dir) -> list:
    return [p for p in runs_dir.iterdir() if p.is_dir()] if runs_dir.exists() else []


def test_the_tutorial_model_is_imported_summarised_and_listed_on_runs(page, models, runs_dir, open_page):
    upload(page, models["tutorial"], labels=["cats", "dogs"])
    assert not page.error, [e.value for e in page.error]
    (folder,) = run_folders(runs_dir)
    shown = texts(page, "markdown")
    assert "single logit for two classes" in shown, shown
    assert "cats, dogs" in shown and "the labels file" in shown
    assert "raw pixels 0-255" in shown and "scales its input itself" in shown  # preprocess_input inside
    assert [m.value for m in page.metric][:2] == ["64 × 64 × 3", "2"]
    assert "inactive outside training" in texts(page, "info")  # RandomFlip / RandomRotation
    assert not page.warning, [w.value for w in page.warning]  # labels given: nothing to warn about
    layers = page.dataframe[0].value
    assert "base_model/block1_conv" in list(layers["layer"])  # the nested base's layers, named with the nesting
    assert not list(uploads_dir().iterdir())  # the run has its copy: the upload is gone

    at = open_page("pages/runs.py", run=folder.name)
    table = next(d for d in at.dataframe if "folder" in d.value.columns).value
    row = table[table["folder"] == folder.name].iloc[0]
    assert row["mode"] == "imported" and row["backbone"] == "imported: tutorial.keras", dict(row)
    assert at.selectbox(key="manage_run").value == folder.name  # the Import page's link opens this run
    at.text_input(key=f"rename_{folder.name}").set_value("Cats vs dogs")
    at.button(key="rename").click().run()
    assert runs.Run(folder).display_name() == "Cats vs dogs"
    assert any("Imported from tutorial.keras" in c.value for c in at.caption), [c.value for c in at.caption]
    at.checkbox(key=f"sure_{folder.name}").check().run()
    at.button(key="delete").click().run()
    assert not at.exception, at.exception
    assert not folder.exists()


def test_no_labels_is_warned_and_a_dataset_compares_the_conventions(page, models, runs_dir):
    page.toggle(key="import_use_data").set_value(True).run()
    page.radio(key="import_data_kind").set_value("Built-in shapes").run()
    page.number_input(key="import_data_classes").set_value(3).run()
    page.number_input(key="import_data_per_class").set_value(12).run()
    page.select_slider(key="import_data_size").set_value(64).run()
    upload(page, models["softmax"])
    assert not page.error, [e.value for e in page.error]
    assert "class folders" in texts(page, "markdown")  # the shapes' class names, not "class 0..2"
    chart = page.get("plotly_chart")
    assert chart and "top-1 accuracy" in chart[0].proto.spec


def test_a_model_without_labels_gets_a_visible_warning(page, models, runs_dir):
    upload(page, models["softmax"])
    assert any("no labels given" in w.value.lower() for w in page.warning), [w.value for w in page.warning]


@pytest.mark.parametrize(
    ("model", "words"),
    [("lambda", "Lambda"), ("not_keras", "not a Keras archive")],
)
def test_a_refused_file_says_why_and_leaves_nothing(page, models, runs_dir, model, words):
    upload(page, models[model])
    errors = [e.value for e in page.error]
    assert len(errors) == 1 and words in errors[0], errors
    assert models[model].name in errors[0]  # the user's file name, not the server copy's
    assert str(settings.cache_dir()) not in errors[0]  # no server paths
    assert not run_folders(runs_dir)
    assert not list(uploads_dir().iterdir())
    assert not page.get("metric")  # no summary


def test_a_model_of_any_size_asks_for_one(page, models, runs_dir):
    upload(page, models["any_size"])
    assert not page.error, [e.value for e in page.error]
    assert not run_folders(runs_dir)
    page.number_input(key="import_size").set_value(40).run()
    page.button(key="import_go").click().run()
    assert not page.error, [e.value for e in page.error]
    assert page.metric[0].value == "40 × 40 × 3"
    assert len(run_folders(runs_dir)) == 1


def test_a_model_without_rescaling_asks_for_its_preprocessing(page, models, runs_dir):
    upload(page, models["unit"])
    (error,) = page.error
    assert "Rescaling" in error.value and not run_folders(runs_dir)
    assert "Choose its preprocessing above" in texts(page, "info")  # the engine's words are what the page answers
    page.selectbox(key="import_preprocess").set_value("unit").run()
    page.button(key="import_go").click().run()
    assert not page.error, [e.value for e in page.error]
    assert "[0, 1] (pixels / 255): chosen by you" in texts(page, "markdown")


def test_a_legacy_h5_file_is_refused_with_what_to_do(page, runs_dir):
    page.file_uploader(key="import_file").set_value(
        ("model.h5", b"\x89HDF\r\n\x1a\n" + bytes(100), "application/x-hdf5")
    )
    page.run()
    page.button(key="import_go").click().run()
    (error,) = page.error
    assert "legacy .h5" in error.value and "model.save('model.keras')" in error.value, error.value
    assert not run_folders(runs_dir) and not list(uploads_dir().iterdir())
