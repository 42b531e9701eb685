"""Dataset Explorer: open data four ways, see what is in it and what was skipped."""

from collections import Counter
from dataclasses import replace

import numpy as np
import pandas as pd
import streamlit as st

from engine import charts
from engine.config import FLIP_MODES, AugmentConfig, DataConfig
from engine.data import pipeline, report
from engine.data.ingest import load_item
from engine.data.layout import DUPLICATE
from engine.data.splits import SPLITS, split_dataset
from engine.errors import ConvScopeError
from engine.training.features import knn_accuracy, pca_2d
from ui import cached, health_view, router, state, widgets

# Augmentation sliders in the units people think in; AugmentConfig keeps the Keras factors.
# key: (label, widget units per factor unit, slider maximum, format, help)
AUG_SLIDERS = {
    "rotation": ("Rotation", 360, 180, "±%d°", "Rotate each image by a random angle up to this many degrees."),
    "zoom": ("Zoom", 100, 50, "±%d%%", "Zoom in or out by up to this share of the image size."),
    "translation": ("Shift", 100, 50, "±%d%%", "Move the image by up to this share of its size, each way."),
    "contrast": ("Contrast", 100, 50, "±%d%%", "Change the contrast by up to this much."),
    "brightness": ("Brightness", 100, 50, "±%d%%", "Brighten or darken by up to this share of the value range."),
}


def _aug_widget_values(augment: AugmentConfig) -> dict:
    """An AugmentConfig as the Explorer's widget values (degrees, percent)."""
    values = {k: min(round(getattr(augment, k) * scale), top) for k, (_, scale, top, _, _) in AUG_SLIDERS.items()}
    return {"flip": augment.flip, **values}


def _augment_text(augment: AugmentConfig) -> str:
    parts = [f"flip {augment.flip}"] if augment.flip != "none" else []
    for k, (label, scale, _, fmt, _) in AUG_SLIDERS.items():
        if getattr(augment, k):
            parts.append(f"{label.lower()} {fmt % round(getattr(augment, k) * scale)}")
    return ", ".join(parts)


def _use_augment_changed() -> None:
    """The "use when training" box: ticked, training takes the previewed augmentation; cleared, none."""
    chosen = state.augment_preview() if st.session_state.get("aug_use") else AugmentConfig()
    state.set_data_config(replace(state.data_config(), augment=chosen))


router.ensure_routed()
st.title("🗂️ Dataset Explorer")
st.caption("Every file is decoded once and checked before any training; bad files are reported and skipped.")

source = widgets.dataset_picker()
if source is None:
    st.stop()
dataset = widgets.open_dataset(source)
if dataset is None:
    st.stop()

with st.sidebar:
    st.subheader("Splits")
    old = state.data_config()
    seed = st.number_input("Split seed", 0, 10_000, old.seed, key="split_seed")
    val_pct = st.slider("Validation %", 5, 40, round(old.val_frac * 100), key="val_pct")
    test_pct = st.slider("Test %", 0, 40, round(old.test_frac * 100), key="test_pct")
    if dataset.has_splits:
        st.caption("This source has its own splits; only missing ones are carved from its training part.")

splits = split_dataset(dataset, int(seed), val_pct / 100, test_pct / 100)
split_of = {i.rel: s for s, items in splits.items() for i in items}
counts = dataset.counts()
duplicates = [s for s in dataset.skipped if s.reason == DUPLICATE]

st.subheader(widgets.path_free(state.display_name(source)))
c1, c2, c3, c4 = st.columns(4)
c1.metric("Classes", len(dataset.classes))
c2.metric("Usable images", f"{len(dataset.items):,}")
c3.metric("Skipped files", len(dataset.skipped))
c4.metric("Duplicates", len(duplicates))
if dataset.corrections and dataset.corrections.sentence():
    st.caption(f"Corrected in 🩺 Health: {dataset.corrections.sentence()} (your files are unchanged).")
problems = dataset.problems()
for p in problems:
    st.error(f"Not ready for training: {p}")
for w in dataset.warnings():
    st.warning(w)
if not problems:
    st.success(
        f"Ready for training: train {len(splits['train'])}, validation {len(splits['validation'])}, "
        f"test {len(splits['test'])} images."
    )

tab_overview, tab_samples, tab_report, tab_aug, tab_space, tab_health = st.tabs(
    ["📊 Balance & sizes", "🖼️ Samples", "🧾 Ingest report", "🎲 Augmentation", "🧭 Feature space", "🩺 Health"],
    key="explorer_tab",
    on_change="rerun",  # only the open tab runs, and a rerun keeps it open
)
augment = old.augment

with tab_overview:
    if tab_overview.open:
        per_split = {s: {c: 0 for c in dataset.classes} for s in SPLITS}
        for s, items in splits.items():
            for i in items:
                per_split[s][dataset.classes[i.label]] += 1
        left, right = st.columns(2)
        with left:
            st.markdown("**Class balance** (stacked by split)")
            st.plotly_chart(charts.class_balance_bar(per_split), width="stretch", key="balance")
        with right:
            st.markdown("**Image sizes** (before resizing)")
            items = report.balanced_sample(dataset.items, 400)  # enough to see the spread, fast to draw
            st.plotly_chart(
                charts.size_scatter(
                    [i.width for i in items],
                    [i.height for i in items],
                    [dataset.classes[i.label] for i in items],
                    [i.rel for i in items],
                ),
                width="stretch",
                key="sizes",
            )
            if dataset.items:
                aspects = np.array([i.width / i.height for i in dataset.items])
                st.caption(
                    f"Median {int(np.median([i.width for i in dataset.items]))}×"
                    f"{int(np.median([i.height for i in dataset.items]))} px; aspect ratio "
                    f"{aspects.min():.2f}–{aspects.max():.2f}."
                )

with tab_samples:
    if tab_samples.open:
        c1, c2, c3, c4 = st.columns([2, 2, 1, 1])
        pick_class = c1.selectbox("Class", ["all", *dataset.classes], key="grid_class")
        pick_split = c2.selectbox("Split", ["all", *SPLITS], key="grid_split")
        how_many = c3.select_slider("Images", [12, 24, 48], 24, key="grid_n")
        show_boxes = c4.toggle("Object boxes", value=dataset.boxes is not None, disabled=dataset.boxes is None)
        chosen = [
            i
            for i in dataset.items
            if pick_class in ("all", dataset.classes[i.label]) and pick_split in ("all", split_of[i.rel])
        ]
        chosen = report.balanced_sample(chosen, how_many if pick_class != "all" else max(1, how_many // len(counts)))
        chosen = chosen[:how_many]
        if not chosen:
            st.info("No images match this class and split.")
        cols = st.columns(6)
        for k, item in enumerate(chosen):
            box = dataset.boxes.get(item.rel) if show_boxes and dataset.boxes else None
            rgb = cached.preview(str(dataset.path(item)), tuple(box) if box else None)
            cols[k % 6].image(rgb, caption=f"{dataset.classes[item.label]} · {split_of[item.rel]}", width="stretch")

with tab_report:
    if tab_report.open:
        if not dataset.skipped:
            st.success("Nothing was skipped: every file is a readable, unique image in a class folder.")
        else:
            by_reason = Counter(s.reason for s in dataset.skipped)
            st.markdown("**Skipped, by reason:** " + ", ".join(f"{r} {n}" for r, n in by_reason.most_common()))
            rows = [
                {
                    "thumbnail": report.skipped_thumbnail(dataset, s),
                    "file": s.path,
                    "class": s.cls or "",
                    "reason": s.reason,
                    "detail": s.detail,
                }
                for s in dataset.skipped
            ]
            st.dataframe(
                pd.DataFrame(rows),
                column_config={"thumbnail": st.column_config.ImageColumn("", width="small")},
                hide_index=True,
                width="stretch",
            )
        if duplicates:
            st.markdown(f"**Duplicates** ({len(duplicates)}): the same bytes more than once; the first copy is kept.")
            st.dataframe(
                pd.DataFrame(
                    [
                        {
                            "kept": report.file_thumbnail(dataset.root / d.duplicate_of),
                            "kept file": d.duplicate_of,
                            "dropped file": d.path,
                            "note": d.detail,
                        }
                        for d in duplicates
                    ]
                ),
                column_config={"kept": st.column_config.ImageColumn("", width="small")},
                hide_index=True,
                width="stretch",
            )
        st.caption(f"Content fingerprint `{dataset.fingerprint[:16]}`")

with tab_aug:
    if tab_aug.open:
        training = old.augment  # what the Train page will use; previewing alone never changes it
        c1, c2 = st.columns([1, 2])
        with c1:
            # Widgets take their values from session state only, so the presets can set them.
            for k, v in _aug_widget_values(training).items():
                st.session_state.setdefault(f"aug_{k}", v)
            p1, p2 = st.columns(2)
            if p1.button("Standard preset", help="flip, rotate ±36°, zoom ±10%", key="aug_preset"):
                st.session_state.update(
                    {f"aug_{k}": v for k, v in _aug_widget_values(AugmentConfig.standard()).items()}
                )
            if p2.button("All off", key="aug_off"):
                st.session_state.update({f"aug_{k}": v for k, v in _aug_widget_values(AugmentConfig()).items()})
            flip = st.selectbox("Flip", FLIP_MODES, key="aug_flip")
            values = {
                k: st.slider(label, 0, top, step=1, format=fmt, help=helptext, key=f"aug_{k}")
                for k, (label, _, top, fmt, helptext) in AUG_SLIDERS.items()
            }
            views = st.slider("Views", 4, 16, 8, key="aug_views")
            preview = AugmentConfig(flip=flip, **{k: v / AUG_SLIDERS[k][1] for k, v in values.items()})
            state.set_augment_preview(preview)
            st.session_state.setdefault("aug_use", training.enabled and training == preview)
            if st.session_state["aug_use"] and training != preview:  # ticked: training follows the sliders
                training = preview
            st.checkbox(
                "Use this augmentation when training",
                key="aug_use",
                on_change=_use_augment_changed,
                help="Off: these sliders only preview. On: the Train page trains with them.",
            )
            if st.session_state["aug_use"]:
                st.caption("Training will use this augmentation (the Train page shows it and can turn it off).")
            else:
                used = _augment_text(training) if training.enabled else "no augmentation"
                st.caption(f"Preview only: training uses {used}.")
        augment = training
        with c2:
            if not dataset.items:
                st.info("No usable images to preview.")
            else:
                options = report.balanced_sample(dataset.items, 4)
                item = st.selectbox(
                    "Image", options, format_func=lambda i: f"{dataset.classes[i.label]} · {i.rel}", key="aug_image"
                )
                try:
                    with st.spinner("Augmenting…"):
                        rgb = load_item(dataset, item)
                        shown = pipeline.preview(rgb, preview, n=views, size=160, seed=int(seed))
                except ConvScopeError as exc:  # the file changed on disk since ingest
                    st.error(widgets.path_free(str(exc), source))
                    shown = []
                cols = st.columns(4)
                for k, img in enumerate(shown):
                    cols[k % 4].image(img, width="stretch")
                if not preview.enabled:
                    st.caption("All augmentations are off: every view is the same. Move a slider.")

with tab_space:
    if tab_space.open:
        st.markdown(
            "Embed images with a pretrained backbone and project the features to 2-D (PCA). "
            "If the classes form separate clouds, a classifier head on this backbone will learn them easily."
        )
        c1, c2 = st.columns([2, 1])
        with c1:
            backbone = widgets.pretrained_backbone_picker("space_backbone")
        per_class = c2.slider("Images per class", 5, 100, 30, 5, key="space_per_class")
        key = (dataset.fingerprint, backbone, per_class)
        result = st.session_state.get("feature_space")
        if backbone and st.button("Embed and project", type="primary", key="space_go"):
            sample = report.balanced_sample(dataset.items, per_class)
            bar = st.progress(0.0, text=f"Loading {backbone}…")
            try:
                extractor = cached.feature_extractor(backbone)
                feats = extractor.embed(
                    lambda k: pipeline.load_resized(str(dataset.path(sample[k])), extractor.input_size),
                    len(sample),
                    progress=lambda d, t: bar.progress(d / t, text=f"Embedding {d} of {t} images"),
                )
            except ConvScopeError as exc:
                st.error(widgets.path_free(str(exc)))
                feats = None
            bar.empty()
            if feats is not None and len(sample) >= 2:
                labels = np.array([i.label for i in sample])
                result = {
                    "key": key,
                    "xy": pca_2d(feats),
                    "knn": knn_accuracy(feats, labels),
                    "classes": [dataset.classes[i.label] for i in sample],
                    "paths": [i.rel for i in sample],
                    "thumbs": [report.file_thumbnail(dataset.path(i), 96) for i in sample],
                    "dim": feats.shape[1],
                }
                st.session_state["feature_space"] = result
        if result and result["key"] == key:
            c1, c2 = st.columns([3, 1])
            c2.metric(
                "5-NN accuracy",
                f"{result['knn']:.0%}",
                help="Leave-one-out nearest-neighbour accuracy in feature space",
            )
            c2.markdown(charts.read_knn(result["knn"], len(dataset.classes)))
            c2.caption(
                f"{len(result['paths'])} images, {result['dim']}-D features from {backbone}. "
                "Hover a point to see its image."
            )
            c1.altair_chart(
                charts.feature_scatter(
                    result["xy"], result["classes"], result["paths"], result["thumbs"], "PCA of features"
                ),
                width="stretch",
            )


def _data_config() -> DataConfig:
    """The Explorer's choices, as the Train page takes them."""
    return DataConfig(source=source, val_frac=val_pct / 100, test_frac=test_pct / 100, seed=int(seed), augment=augment)


with tab_health:
    if tab_health.open:
        health_view.show(dataset, source, _data_config())

# Remember the choices for the Train page.
state.set_data_config(_data_config())
