"""Fine-tuning an imported Keras model (the TF tutorial's shape): data from a labelled source, unfreezing by layer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras_models
import numpy as np
import pytest

from conftest import runs_dir_set
from engine import jobs, runs
from engine.backbones import convention
from engine.config import FinetuneConfig
from engine.training import changes, finetune, fit

ROOT = Path(__file__).resolve().parents[1]
SHAPES = "shapes:per_class=12,classes=2,size=64"  # class folders circle, square
FROM = "base_model/block2_conv"

pytestmark = pytest.mark.slow  # every test loads a Keras model; the module fixture imports and fine-tunes once


def _load(path):
    import keras

    return keras.models.load_model(path, safe_mode=True)


def _weights(model) -> dict[str, np.ndarray]:
    return {w.path: np.asarray(w).copy() for w in model.weights}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The tutorial model imported with its labels in the other order than the folders', then fine-tuned 2 epochs."""
    from engine.importing import import_model

    tmp = tmp_path_factory.mktemp("import-ft")
    root = tmp / "runs"
    labels = tmp / "labels.json"
    labels.write_text(json.dumps(["square", "circle"]))  # the model's order; the folders sort circle, square
    with runs_dir_set(root):
        model_file = keras_models.tutorial(tmp / "tutorial.keras", size=64)
        imported = import_model(model_file, labels=labels, out=root / "imported")
        parent = finetune.parent_of(imported["run_dir"])
        config = finetune.finetune_config(parent, unfreeze_from=FROM, epochs=2, source=SHAPES)
        child = runs.create(str(root / "child"), backbone="", mode="finetune")
        result = fit.train(config, child)
    return {"root": root, "tmp": tmp, "parent": parent, "child": child, "result": result, "imported": imported}


@pytest.fixture(autouse=True)
def runs_root(world, monkeypatch):
    monkeypatch.setenv("CONVSCOPE_RUNS_DIR", str(world["root"]))
    return world["root"]


def test_the_import_takes_raw_pixels_and_the_two_classes():
    # 2-class shapes: folders circle and square (the test's labels name them the other way round)
    from engine.data import sources

    assert sources.open_dataset(SHAPES).classes == ["circle", "square"]


def test_only_block2_conv_and_the_head_change(world):
    result = world["result"]
    assert result["status"] == "finished", result["reason"]
    assert result["boundary"]["mode"] == "full" and result["boundary"]["why"].startswith("an imported model")
    before = _weights(_load(world["parent"].model_file))
    after = _weights(_load(world["child"].model_file))
    assert before.keys() == after.keys()
    for path in before:
        same = np.array_equal(before[path], after[path])
        if path.startswith(("block1_", "two_logits")):
            assert same, f"{path} changed"  # below the unfreeze point (BN statistics too), and the fixed map
        elif path.startswith(("block2_conv", "prediction")):
            assert not same, f"{path} did not train"
    two = after["two_logits/kernel"]
    np.testing.assert_array_equal(two, [[-0.5, 0.5]])
    assert result["params"]["trainable"] == 16 * 8 * 9 + 16 + 17  # block2_conv and prediction


def test_the_child_keeps_the_import_its_labels_and_its_own_split(world):
    config = world["child"].config()
    assert config["mode"] == "finetune" and config["backbone"] == ""
    assert config["imported"]["preprocess"] == "raw" and config["data"]["source"] == SHAPES
    assert config["labels"] == ["square", "circle"] == world["child"].labels()
    assert config["split_seed"] == config["seed"]
    assert "fingerprint" not in world["parent"].config()  # imported without data: nothing to compare


def test_the_child_predicts_with_the_imported_convention(world):
    from engine.model.explainable import Explainable

    child = Explainable.from_run(world["child"].path)
    assert child.labels == ["square", "circle"]
    images = np.random.default_rng(0).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    np.testing.assert_array_equal(child.preprocess(images), convention("raw")(images))
    model = _load(world["child"].model_file)
    np.testing.assert_allclose(child.logits(images), model.predict(images, verbose=0), atol=1e-4)


def test_the_folders_are_relabelled_to_the_models_classes(world):
    config = finetune.finetune_config(world["parent"], unfreeze_from="head", source=SHAPES)
    dataset, splits = finetune.open_data(config, world["parent"])
    assert dataset.classes == ["square", "circle"]
    for part in splits.values():
        for item in part:
            assert dataset.classes[item.label] == item.rel.split("/")[0]  # the class folder
    # the same split as every later reader makes of the data as it opens (Run.splits)
    child = runs.Run(world["child"].path)
    from engine.data import sources

    again = child.splits(sources.open_dataset(SHAPES))
    assert {k: [i.rel for i in v] for k, v in again.items()} == {k: [i.rel for i in v] for k, v in splits.items()}


def test_where_an_imported_model_starts_training(world):
    model = _load(world["parent"].model_file)
    names = [u.name for u in finetune.units(model)]

    def first(where: str) -> str:
        return names[finetune.first_trainable(model, "", FinetuneConfig(parent="-", unfreeze_from=where))]

    assert first(FROM) == FROM
    assert first("2") == "base_model/block1_bn"  # base_model.layers[2:], as the tutorial counts
    assert first("-1") == FROM
    assert first("head") == "global_average_pooling2d"
    assert first("base_model") == "base_model/block1_conv"
    with pytest.raises(finetune.FinetuneError, match="base_model/block1_conv.*prediction"):
        first("block9_conv")
    with pytest.raises(finetune.FinetuneError, match="outside base_model.layers"):
        first("40")
    with pytest.raises(finetune.FinetuneError, match="stays frozen"):
        first("two_logits")
    with pytest.raises(finetune.FinetuneError, match="no backbone blocks"):
        finetune.first_trainable(model, "", FinetuneConfig(parent="-", unfreeze_top=1))


def test_the_layer_map_names_nested_layers(world):
    model = _load(world["parent"].model_file)
    first = finetune.first_trainable(model, "", FinetuneConfig(parent="-", unfreeze_from=FROM))
    rows = {r["layer"]: r for r in finetune.layer_map(model, "", first)}
    assert rows[FROM]["block"] == "base_model" and rows[FROM]["trainable"]
    assert not rows["base_model/block1_conv"]["trainable"] and not rows["two_logits"]["trainable"]
    assert rows["prediction"]["block"] == "head" and rows["prediction"]["trainable"]
    counts = finetune.counts(model, first)
    assert counts["trainable"] == sum(r["params"] for r in rows.values() if r["trainable"])
    assert counts["total"] == model.count_params()
    with_bn = finetune.counts(model, finetune.first_trainable(model, "", FinetuneConfig("-", "base_model")), "train")
    assert with_bn["trainable"] == counts["trainable"] + 224 + 16  # block1_conv, block1_bn's gamma and beta


def test_blocks_and_layer_decay_are_refused(world):
    parent = world["parent"]
    with pytest.raises(finetune.FinetuneError, match="no backbone blocks"):
        finetune.finetune_config(parent, unfreeze_top=1, source=SHAPES)
    with pytest.raises(finetune.FinetuneError, match="layer-wise rate decay"):
        finetune.finetune_config(parent, unfreeze_from="head", layer_decay=0.8, source=SHAPES)
    with pytest.raises(finetune.FinetuneError, match="no backbone blocks"):
        finetune.model_blocks(_load(parent.model_file), "")


def test_data_that_does_not_name_the_models_classes_is_refused(world):
    parent = world["parent"]
    with pytest.raises(finetune.FinetuneError, match="imported without data"):
        finetune.finetune_config(parent, unfreeze_from="head")
    with pytest.raises(finetune.FinetuneError, match="circle, square, triangle.*square, circle"):
        finetune.check_data(parent, "shapes:per_class=12,classes=3,size=64")
    finetune.check_data(parent, SHAPES)  # the right names in another order: fine


def test_what_changed_per_layer(world):
    out = changes.what_changed(world["parent"], world["child"])
    rows = {r["block"]: r for r in out["blocks"]}
    assert rows["base_model/block1_conv"]["weight_change"] == 0 and rows["two_logits"]["weight_change"] == 0
    assert rows[FROM]["weight_change"] > 0
    assert rows["base_model/block1_conv"]["cka"] == pytest.approx(1.0)  # frozen: the same features
    assert rows[FROM]["cka"] is not None and rows["prediction"]["cka"] is None  # the head has none
    assert out["projection"]["layer"] == "global_average_pooling2d"


def test_bn_train_and_a_fine_tune_of_the_fine_tune(world):
    config = finetune.finetune_config(world["child"], unfreeze_from="base_model", epochs=1, bn="train")
    assert config.imported is not None and config.data.source == SHAPES
    grandchild = runs.create(str(world["root"] / "grandchild"), backbone="", mode="finetune")
    result = fit.train(config, grandchild)
    assert result["status"] == "finished", result["reason"]
    before, after = _weights(_load(world["child"].model_file)), _weights(_load(grandchild.model_file))
    assert not np.array_equal(before["block1_bn/moving_mean"], after["block1_bn/moving_mean"])
    np.testing.assert_array_equal(after["two_logits/kernel"], [[-0.5, 0.5]])
    saved = grandchild.config()
    assert saved["split_seed"] == world["child"].config()["split_seed"] and saved["imported"]["preprocess"] == "raw"


def test_the_finder_and_the_settings_of_an_imported_fine_tune(world):
    from engine.training import lr_finder

    config = finetune.finetune_config(world["parent"], unfreeze_from=FROM, source=SHAPES)
    found = lr_finder.lr_find(config, steps=4)
    assert 1 <= len(found["lrs"]) <= 4 and found["boundary"]["mode"] == "full"
    settings = finetune.settings_of(world["child"].config())
    assert settings["trains from"] == FROM and settings["data"] == SHAPES


def test_a_savedmodel_import_is_refused(world):
    run = runs.create(str(world["root"] / "opaque"), backbone="", mode="imported")
    saved = world["parent"].config()
    runs.write_json(run.path / "config.json", {**saved, "imported": {**saved["imported"], "format": "savedmodel"}})
    run.model_file.write_bytes(b"x")
    run.set_status("finished")
    with pytest.raises(finetune.FinetuneError, match="opaque"):
        finetune.parent_of(str(run.path))


def _cli(*args: str, root: Path) -> tuple[int, dict]:
    env = {**os.environ, "CONVSCOPE_RUNS_DIR": str(root)}
    proc = subprocess.run(
        [sys.executable, "-m", "engine", *args, "--json"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_cli_finetune_of_an_imported_run(world):
    parent = str(world["parent"].path)
    code, out = _cli("finetune", parent, "--unfreeze-top", "1", "--source", SHAPES, root=world["root"])
    assert code == 2 and "no backbone blocks" in out["error"]
    code, out = _cli(
        "finetune", parent, "--unfreeze-from", "head", "--source", SHAPES, "--epochs", "1", root=world["root"]
    )
    assert code == 0, out
    assert out["status"] == "finished" and out["boundary"]["mode"] == "full"
    assert out["trainable_params"] == 17 and out["parent"] == "imported"
    assert {c["block"] for c in out["changes"]} >= {FROM, "prediction"}


# ---- the Fine-tune page ---------------------------------------------------------------


def test_the_page_offers_an_imported_parent_and_asks_for_data(open_page):
    at = open_page("pages/finetune.py", run="imported")
    assert at.selectbox(key="ft_parent").value == "imported"
    assert "imported (imported)" in at.selectbox(key="ft_parent").options
    assert at.radio(key="ft_data_kind").value == "Built-in shapes"  # the Train page's dataset picker
    # its default shapes have five classes, not the model's two: refused, Start off
    assert any("square, circle" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="ft_start").disabled
    at.number_input(key="ft_data_classes").set_value(2).run()
    at.number_input(key="ft_data_per_class").set_value(12).run()
    at.select_slider(key="ft_data_size").set_value(64).run()
    assert not at.error, [e.value for e in at.error]
    assert not at.button(key="ft_start").disabled
    assert at.selectbox(key="ft_from_imported").value == FROM  # the base model's last layer with weights
    assert "`base_model/block2_conv`" in " ".join(c.value for c in at.caption)
    at.text_input(key="ft_layer_imported").set_value("2").run()  # base_model.layers[2:]
    assert "`base_model/block1_bn`" in " ".join(c.value for c in at.caption)
    at.text_input(key="ft_layer_imported").set_value("block9").run()
    assert any("no layer named 'block9'" in e.value for e in at.error)
    assert at.button(key="ft_start").disabled
    # to the end, through the job registry as any fine-tune
    at.text_input(key="ft_layer_imported").set_value("").run()
    at.number_input(key="ft_epochs").set_value(1).run()
    at.button(key="ft_start").click().run()
    assert not at.exception, at.exception
    job = at.query_params["job"]
    snap = jobs.registry().wait(job[0] if isinstance(job, list) else job, 300)
    assert snap["status"] == "finished", snap["reason"]
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    shown = " ".join(str(e.value) for kind in ("markdown", "caption") for e in at.get(kind))
    assert "What changed" in shown and "base_model/block2_conv" in shown


def test_the_page_fine_tunes_a_fine_tune_of_an_imported_run_on_its_data(open_page):
    at = open_page("pages/finetune.py", run="child")
    assert at.selectbox(key="ft_parent").value == "child"
    assert not at.error, [e.value for e in at.error]
    assert not [r for r in at.radio if r.key == "ft_data_kind"]  # its data is its parent fine-tune's
    assert "Imported model" in [m.label for m in at.metric]
    assert not at.button(key="ft_start").disabled
