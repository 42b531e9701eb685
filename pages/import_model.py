"""Import a model: a Keras file from a notebook brought in as a run, and what ConvScope made of it."""

from pathlib import Path

import pandas as pd
import streamlit as st

from engine import charts, runs, settings
from engine.backbones.conventions import TITLES
from engine.errors import ConvScopeError
from engine.importing import NEEDS_PREPROCESS, NEEDS_SIZE, PREPROCESS_CHOICES, import_model
from engine.importing.upload import LABEL_SUFFIXES, MAX_LABELS_BYTES, MODEL_SUFFIXES, discard_upload, save_upload
from ui import router, widgets

router.ensure_routed()
st.title("📥 Import a model")
st.caption(
    "Bring the `.keras` file from your notebook: ConvScope checks it, loads it in Keras's safe mode and makes it "
    "a run that every page can use (predict, evaluate, look inside, fine-tune, export)."
)

RESULT = "import_result"  # the last import's summary (engine.importing.import_model's dict)
SIZE_ASKED = "import_needs_size"  # the upload (name, bytes) whose model takes any image size
OUTPUT_WORDS = {
    "softmax": "softmax probabilities. Maps and attributions use the score before the softmax (the logit), "
    "as the Grad-CAM paper does.",
    "logits": "raw logits (no softmax at the end). Probabilities are their softmax.",
    "binary_logit": "a single logit for two classes (`Dense(1)`, trained with `from_logits=True`). Class 1's score "
    "is the logit, class 0's its negative; probabilities are sigmoid(logit).",
    "sigmoid": "a sigmoid probability for two classes. Maps use the logit before the sigmoid: class 1's score is "
    "the logit, class 0's its negative.",
}


def _preprocess_title(name: str) -> str:
    if name == "auto":
        return "auto: the model's own rescaling, else the most accurate on a labelled dataset"
    return TITLES[name]


def import_form() -> None:
    """The upload and the import settings; runs the import on a click and keeps its summary in the session."""
    limit = settings.max_model_bytes() // 2**20
    upload = st.file_uploader(
        "The model file",
        type=[x.lstrip(".") for x in MODEL_SUFFIXES],  # .h5 too: the engine says why it is refused, and what to do
        key="import_file",
        max_upload_size=limit,
        help=f"A `.keras` file (`model.save('model.keras')`), up to {limit} MB. It is loaded in Keras's safe mode: "
        "a model with a Lambda layer (Python code) is refused.",
    )
    labels = st.file_uploader(
        "Its class names (optional)",
        type=[s.lstrip(".") for s in LABEL_SUFFIXES],
        key="import_labels",
        max_upload_size=max(1, MAX_LABELS_BYTES // 2**20),
        help="labels.txt with one class per line, or a JSON list, in the order of the model's outputs.",
    )
    c1, c2 = st.columns([3, 2])
    preprocess = c1.selectbox(
        "Preprocessing (what the model expects its pixels to be)",
        PREPROCESS_CHOICES,
        format_func=_preprocess_title,
        key="import_preprocess",
    )
    title = c2.text_input(
        "Display name (optional)", key="import_name", max_chars=80, placeholder=upload.name if upload else ""
    )
    source = None
    use_data = st.toggle(
        "Check it on a labelled dataset",
        key="import_use_data",
        help="Its class folders name the classes when no labels file is given, and the import measures the "
        "accuracy under each preprocessing on a sample, so `auto` picks the best and a wrong one is flagged.",
    )
    if use_data:
        source = widgets.dataset_picker("import_data")
    image_size = None
    asked = upload is not None and st.session_state.get(SIZE_ASKED) == (upload.name, upload.size)
    if asked:
        st.info("This model accepts images of any size: choose the size ConvScope should feed it.")
        image_size = st.number_input("Image size (pixels, square)", 16, 1024, 224, step=16, key="import_size")
    waiting = upload is None or (use_data and source is None)  # a dataset asked for but not chosen yet
    if not st.button("Import", key="import_go", type="primary", icon="📥", disabled=waiting):
        if upload is None:
            st.caption("Upload a model file to import it.")
        elif waiting:
            st.caption("Choose the labelled dataset to check it on, or turn the check off.")
        return
    bar = st.progress(0.0, text="Receiving the file…")

    def progress(stage: str, fraction: float) -> None:
        bar.progress(min(max(fraction, 0.0), 1.0), text=f"{stage}…")

    saved: list[Path] = []
    try:
        saved.append(save_upload(upload.name, upload.getvalue()))
        if labels is not None:
            saved.append(save_upload(labels.name, labels.getvalue()))
        result = import_model(
            saved[0],
            labels=saved[1] if labels is not None else None,
            preprocess=preprocess,
            source=source,
            image_size=int(image_size) if image_size else None,
            name=title.strip() or upload.name,
            progress=progress,
        )
    except ConvScopeError as exc:
        bar.empty()
        reason = getattr(exc, "reason", "")  # ImportModelError: a refusal answered with one more choice
        if reason == NEEDS_SIZE and not asked:
            st.session_state[SIZE_ASKED] = (upload.name, upload.size)
            st.rerun()  # show the size input (the finally below still removes the uploaded copy)
        message = str(exc)
        for path in saved:  # the server's copy has a safe name: say the user's own
            message = message.replace(path.name, upload.name if path == saved[0] else labels.name)
        st.error(f"Not imported: {widgets.path_free(message, source)}")
        if reason == NEEDS_PREPROCESS:
            st.info(
                "Choose its preprocessing above (how the notebook fed it: `/ 255` is [0, 1]), or turn on "
                "**Check it on a labelled dataset** to choose it by accuracy.",
                icon="👆",
            )
        st.session_state.pop(RESULT, None)
        return
    finally:
        for path in saved:  # imported (the run has its own copy) or refused: the upload is not kept
            discard_upload(path)
    bar.empty()
    if source:  # an uploaded archive's source is a server path: say it as the user knows it
        result["labels_from"] = widgets.path_free(result["labels_from"], source)
        result["warnings"] = [widgets.path_free(w, source) for w in result["warnings"]]
    st.session_state[RESULT] = {**result, "source": source or ""}
    st.toast(f"Imported {upload.name}")


def layer_table(layers: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "layer": [row["name"] for row in layers],
            "type": [row["type"] for row in layers],
            "output shape": [" × ".join("N" if d is None else str(d) for d in row["output_shape"]) for row in layers],
            "params": [row["params"] for row in layers],
            "feature maps": ["yes" if row["spatial"] else "" for row in layers],
        }
    )


def summary(result: dict) -> None:
    """What a user needs to trust the import: input, output kind, classes, preprocessing, layers, then links."""
    name = result["name"]
    st.success(f"Imported **{result['file']}** as the run **{runs.Run(Path(result['run_dir'])).title()}**.")
    c1, c2, c3, c4 = st.columns(4)
    size, channels = result["input_size"], result["channels"]
    c1.metric(
        "Input",
        f"{size} × {size} × {channels}",
        "RGB" if channels == 3 else "grayscale",
        delta_color="off",
        delta_arrow="off",
    )
    c2.metric("Classes", len(result["classes"]))
    c3.metric("Parameters", f"{result['params']:,}")
    c4.metric(
        "Layers",
        len(result["layers"]),
        f"{len(result['conv_layers'])} convolutional",
        delta_color="off",
        delta_arrow="off",
    )
    st.markdown(f"**Output:** {OUTPUT_WORDS.get(result['output'], result['output'])}")
    classes = ", ".join(result["classes"])
    origin = "no labels given" if result["labels_from"] == "none given" else f"from {result['labels_from']}"
    st.markdown(f"**Classes** ({origin}): {classes}")
    choice = result["preprocess"]
    st.markdown(f"**Preprocessing:** {choice['title']}: {choice['reason']}.")
    for warning in result["warnings"]:
        st.warning(warning[:1].upper() + warning[1:], icon="⚠️")
    if choice["accuracy"]:
        st.markdown("**Accuracy under each preprocessing**, on a balanced labelled sample:")
        st.plotly_chart(
            charts.convention_accuracy(choice["accuracy"], choice["name"], choice["flagged"]),
            width="stretch",
            key="import_conventions",
        )
        wrong = [  # the chosen one's flag is among the warnings above
            f"- {TITLES.get(convention, convention)}: {why}"
            for convention, why in choice["flagged"].items()
            if convention != choice["name"]
        ]
        if wrong:
            st.warning("Clearly wrong for this model (red in the chart):\n" + "\n".join(wrong), icon="⚠️")
    if result["augmentation"]:
        st.info(
            f"Augmentation layers ({', '.join(result['augmentation'])}): inactive outside training, so predictions "
            "and maps are the same every time.",
            icon="🔁",
        )
    st.markdown(
        "**Layers** (a nested model's layers are named `outer/inner`; those with feature maps can be seen "
        "and explained on Inside the network):"
    )
    st.dataframe(
        layer_table(result["layers"]),
        hide_index=True,
        width="stretch",
        height=min(560, 35 * (len(result["layers"]) + 1) + 3),
        column_config={"params": st.column_config.NumberColumn(format="localized")},
        key="import_layers",
    )
    if result["output"] in ("binary_logit", "sigmoid"):
        st.caption(
            "`two_logits` is ConvScope's: a frozen layer that turns the single logit z into the two classes' "
            "scores [-z/2, z/2], so softmax of them is sigmoid(z), as the file's model said."
        )
    st.markdown("**Use it:**")
    links = st.columns(5, vertical_alignment="center")
    if links[0].button("Predict", key="import_to_predict", icon="🔮", type="tertiary"):
        st.session_state["predict_kind"] = "Trained run"  # Predict opens on its ImageNet backbone otherwise
        st.session_state["predict_run"] = name
        st.switch_page("pages/predict.py", query_params={"run": name})
    links[1].page_link("pages/evaluate.py", label="Evaluate", icon="📊", query_params={"run": name})
    links[2].page_link("pages/inside.py", label="Inside the network", icon="🔍", query_params={"run": name})
    links[3].page_link("pages/finetune.py", label="Fine-tune", icon="🎚️", query_params={"run": name})
    links[4].page_link("pages/runs.py", label="Runs (rename, delete)", icon="🗃️", query_params={"run": name})
    if not result.get("source"):
        classes = result["classes"]
        shown = ", ".join(classes[:5]) + (", …" if len(classes) > 5 else "")
        st.caption(
            "It came without data: to evaluate or fine-tune it, choose a labelled dataset there whose class "
            f"folders are its classes ({shown})."
        )


import_form()
result = st.session_state.get(RESULT)
if result and Path(result["run_dir"]).is_dir():  # deleted since on Runs: nothing to show
    st.divider()
    summary(result)
