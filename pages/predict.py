"""Predict: classify photos with an ImageNet backbone or a trained run, one or many at once."""

import streamlit as st

from engine import imaging
from engine.charts import topk_bar
from engine.errors import ConvScopeError
from engine.evaluate import labelled_set
from engine.runs import is_imported
from engine.samples import SAMPLE_PHOTOS
from engine.settings import max_upload_bytes
from ui import cached, router, widgets, wording

router.ensure_routed()
st.title("🔮 Predict")
st.caption("Classify photos into the 1000 ImageNet classes with a pretrained backbone, or with a model you trained.")

MAX_IMAGES = 300  # a page of tiles; Evaluate scores thousands
SHOWN = 48

with st.sidebar:
    kind = st.radio("Model", ["ImageNet backbone", "Trained run"], key="predict_kind", horizontal=True)
    backbone, run = None, None
    if kind == "ImageNet backbone":
        backbone = widgets.imagenet_backbone_picker()
    else:
        run = widgets.run_picker("predict_run")
    top_k = st.slider("Top classes to show", 1, 10, 5, key="top_k")
    unsure = st.slider(
        "Unsure below",
        0,
        100,
        50,
        step=5,
        format="%d%%",
        key="unsure_below",
        help="A prediction whose probability is below this shows as 'unsure' instead of as an answer.",
    )

# A run's own labelled images: its test split, or all the data an imported model was given at import (none without).
RUN_DATA = "Test split"
if run is not None and is_imported(run.config()):
    RUN_DATA = "Data given at import" if (run.config().get("data") or {}).get("source") else ""
choices = ["Sample photos", "Upload", "Camera", "Server folder"] + ([RUN_DATA] if run and RUN_DATA else [])
source = st.radio("Images", choices, horizontal=True, key="image_source")
images: list[tuple[str, object]] = []
truth: list[str | None] = []  # the true class of each image, where the source knows it
problems: list[str] = []
if source == "Upload":
    files = st.file_uploader(
        "Upload one or more images (JPEG, PNG, GIF, BMP, TIFF, WebP)",
        accept_multiple_files=True,
        key="uploads",
        help=f"Up to {max_upload_bytes() // 2**20} MB each. Files are checked by content, not by name.",
    )
    for f in files or []:
        try:
            images.append((f.name, imaging.load_rgb(f.getvalue(), name=f.name)))
        except imaging.ImageLoadError as exc:
            problems.append(widgets.path_free(str(exc)))
elif source == "Camera":
    shot = st.camera_input("Take a photo", key="camera")
    if shot is not None:
        try:
            images.append(("camera photo", imaging.load_rgb(shot.getvalue(), name="camera.jpg")))
        except imaging.ImageLoadError as exc:
            problems.append(widgets.path_free(str(exc)))
elif source == "Server folder":
    from engine.data import sources

    folders = sources.server_folders()
    if not folders:
        st.info("The operator has not allowed any server folders (CONVSCOPE_DATA_ROOTS). Upload images instead.")
    else:
        folder = st.selectbox(
            "Folder (one subfolder per class)", folders, format_func=widgets.folder_label, key="folder"
        )
        dataset = widgets.open_dataset(str(folder))
        if dataset is not None:
            for item in dataset.items[:MAX_IMAGES]:
                images.append((item.rel, dataset.path(item)))
                truth.append(dataset.classes[item.label])
elif source == RUN_DATA and run is not None:
    try:
        test = labelled_set(run)
    except ConvScopeError as exc:
        st.error(widgets.path_free(str(exc)))
    else:
        names = run.labels()
        for rel, path, label in list(zip(test.rels, test.paths, test.labels, strict=True))[:MAX_IMAGES]:
            images.append((rel, path))
            truth.append(names[int(label)])
else:
    picked = st.multiselect(
        "Sample photos (from scikit-image)",
        list(SAMPLE_PHOTOS),
        default=["chelsea"],
        format_func=SAMPLE_PHOTOS.get,
        key="samples",
    )
    images = [(SAMPLE_PHOTOS[name], cached.sample(name)) for name in picked]

for message in problems:
    st.warning(f"Skipped {message}")
if len(images) >= MAX_IMAGES:
    st.caption(f"The first {MAX_IMAGES} images; the Evaluate page scores a whole split or folder.")

if (backbone is None and run is None) or not images:
    st.info("Pick images above to see what the network thinks they are.")
    st.stop()

try:
    if run is not None:
        from engine.model.classifier import RunClassifier

        with st.spinner(f"Loading {widgets.run_title(run)}…"):
            model = cached.explainable_run(str(run.path), run.model_path.stat().st_mtime)
        classifier = RunClassifier(run.path, model=model)
        model_name = widgets.run_title(run)
    else:
        with st.spinner(f"Loading {backbone} (the first load converts and caches its weights)…"):
            classifier = cached.imagenet_classifier(backbone)
        model_name = backbone
except ConvScopeError as exc:
    st.error(widgets.path_free(str(exc)))
    st.stop()

# Files are decoded here, in batches, so a folder of hundreds shows progress from the start.
progress = st.progress(0.0, text="Classifying…") if len(images) > 1 else None
results, shown_images = [], []
for start in range(0, len(images), 32):
    batch = []
    for name, rgb in images[start : start + 32]:
        if not hasattr(rgb, "shape"):
            try:
                rgb = imaging.load_rgb(rgb)
            except imaging.ImageLoadError as exc:
                st.warning(f"Skipped {widgets.path_free(str(exc))}")
                continue
        batch.append((name, rgb))
    results += classifier.predict(batch, top_k=top_k) if batch else []
    shown_images += batch
    if progress:
        progress.progress(min(1.0, (start + 32) / len(images)), text=f"Classified {len(results)} of {len(images)}")
if progress:
    progress.empty()
truth = truth if len(truth) == len(images) == len(results) else [None] * len(results)
# A folder's class names count as truth only where the model has a class of that name.
known_labels = set(classifier.labels)
truth = [t if t in known_labels else None for t in truth]


def short(label: str) -> str:
    return label.split(",")[0]


right = [t is not None and r.top[0].label == t for r, t in zip(results, truth, strict=True)]
doubtful = [r.top[0].probability < unsure / 100 for r in results]
known = sum(t is not None for t in truth)
facts = [f"{len(results)} image(s) · {model_name}"]
if known:
    facts.append(f"{sum(right)} of {known} right ({sum(right) / known:.0%})")
facts.append(f"{sum(doubtful)} unsure (below {unsure}%)")
if run is not None and getattr(classifier, "calibrated", False):
    facts.append(f"calibrated: temperature {classifier.temperature:.2f}")
st.markdown(" · ".join(facts))

order = list(range(len(results)))
if len(results) > 1:
    show = st.radio(
        "Show", ["All", "Wrong", "Unsure"] if known else ["All", "Unsure"], horizontal=True, key="predict_show"
    )
    if show == "Wrong":
        order = [i for i in order if truth[i] is not None and not right[i]]
    elif show == "Unsure":
        order = [i for i in order if doubtful[i]]
    if len(order) > SHOWN:
        st.caption(f"Showing {SHOWN} of {len(order)}.")
        order = order[:SHOWN]

columns = 4 if len(results) > 1 else 1
for row_start in range(0, len(order), columns):
    cols = st.columns(columns)
    for col, i in zip(cols, order[row_start : row_start + columns], strict=False):
        result, best = results[i], results[i].top[0]
        with col.container(border=True):
            st.image(result.model_input, width="stretch" if columns > 1 else 224)
            if doubtful[i]:
                shown = wording.percent_below(best.probability, unsure / 100)  # 49.6% is not "50%" under 50%
                st.badge(f"unsure: {short(best.label)}? {shown}", color="orange")
            elif truth[i] is None:
                st.badge(f"{short(best.label)} {best.probability:.0%}", color="blue")
            elif right[i]:
                st.badge(f"✓ {short(best.label)} {best.probability:.0%}", color="green")
            else:
                st.badge(f"✗ {short(best.label)} {best.probability:.0%}", color="red")
            truth_text = f" · true: {truth[i]}" if truth[i] is not None and not right[i] else ""
            st.caption(f"{result.image}{truth_text}")
            if st.button("Explain", key=f"explain_{i}", icon="🔍", help="Open Inside the network on this image"):
                widgets.open_inside(result.image, shown_images[i][1], backbone=backbone, run=run)

st.divider()
names = [r.image for r in results]
pick = 0
if len(results) > 1:
    # Numbered: a selectbox tells options apart by their labels, and two uploads may share a file name.
    numbered = [f"{k + 1}. {name}" for k, name in enumerate(names)]
    pick = st.selectbox("Look closer at", range(len(results)), format_func=numbered.__getitem__, key="closer")
result = results[pick]
best = result.top[0]
st.subheader(f"{result.image}: {short(best.label)} ({best.probability:.0%})")
left, chart = st.columns([1, 2])
rgb = shown_images[pick][1]
left.image(
    result.model_input,
    caption=f"As the network sees it: {classifier.input_size}×{classifier.input_size} px "
    f"(from {rgb.shape[1]}×{rgb.shape[0]})",
    width="stretch",
)
chart.plotly_chart(topk_bar(result), width="stretch", key="closer_chart")
chart.caption(f"Prediction took {result.seconds * 1000:.0f} ms per image on this machine · {model_name}")
