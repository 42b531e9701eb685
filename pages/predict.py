"""Predict: classify uploaded or sample photos with an ImageNet backbone."""

import streamlit as st

from engine import imaging
from engine.charts import topk_bar
from engine.errors import ConvScopeError
from engine.samples import SAMPLE_PHOTOS
from engine.settings import max_upload_bytes
from ui import cached, router, state, widgets

router.ensure_routed()
st.title("🔮 Predict")
st.caption("Classify photos into the 1000 ImageNet classes with a pretrained backbone.")

with st.sidebar:
    backbone = widgets.imagenet_backbone_picker()
    top_k = st.slider("Top classes to show", 1, 10, 5, key="top_k")

source = st.radio("Images", ["Sample photos", "Upload"], horizontal=True, key="image_source")
images: list[tuple[str, object]] = []
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

if backbone is None or not images:
    st.info("Pick a sample photo or upload an image to see what the network thinks it is.")
    st.stop()

try:
    with st.spinner(f"Loading {backbone} (the first load converts and caches its weights)…"):
        classifier = cached.imagenet_classifier(backbone)
except ConvScopeError as exc:
    st.error(widgets.path_free(str(exc)))
    st.stop()


def explain(name: str, rgb) -> None:
    """Open Inside the network on the same backbone and image."""
    state.set_chosen_backbone(backbone)
    state.set_inspect_image(name, rgb)
    st.session_state["inside_kind"] = "ImageNet backbone"
    st.session_state["inside_backbone"] = backbone
    st.session_state["inside_tab"] = "🔥 Where it looked"  # what "explain" means: open on the maps
    st.switch_page("pages/inside.py")


progress = st.progress(0.0, text="Classifying…") if len(images) > 1 else None
for i, (name, rgb) in enumerate(images):
    (result,) = classifier.predict([(name, rgb)], top_k=top_k)
    best = result.top[0]
    st.subheader(f"{name}: {best.label.split(',')[0]} ({best.probability:.0%})")
    left, right = st.columns([1, 2])
    with left:
        st.image(
            result.model_input,
            caption=f"As the network sees it: {classifier.input_size}×{classifier.input_size} px "
            f"(from {rgb.shape[1]}×{rgb.shape[0]})",
            width="stretch",
        )
    with right:
        st.plotly_chart(topk_bar(result), width="stretch", key=f"chart_{i}")
        st.caption(f"Prediction took {result.seconds * 1000:.0f} ms on this machine · backbone {backbone}")
        if st.button(
            "Explain this prediction",
            key=f"explain_{i}",
            icon="🔍",
            help="Open Inside the network with this image and backbone: feature maps, and where it looked",
        ):
            explain(name, rgb)
    if progress:
        progress.progress((i + 1) / len(images), text=f"Classified {i + 1} of {len(images)}")
if progress:
    progress.empty()
