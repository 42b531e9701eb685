"""Inside the network's Channels view: what each channel of a layer looks for, and where it fires.

A grid of a layer's channels (their optimised pictures, ordered by activation on the current
image or by their share of the class's Grad-CAM); the chosen channel's picture, its map over
the image, its share of the CAM, its top dataset crops, and, for a fine-tune, the same channel
before fine-tuning.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from engine import runs
from engine.data.sources import DEFAULT_SOURCE
from engine.errors import ConvScopeError
from engine.explain import Explainable, channels, featurevis, image_digest, top_examples
from engine.explain import activations as acts_mod
from engine.explain.overlay import overlay
from ui import cached, state, widgets, wording

PER_PAGE = 8
SKETCH = featurevis.Settings(steps=128, size=96)  # grid thumbnails: a quarter of the full picture's work
FULL = featurevis.Settings()  # 256 steps at 128 px, the enlarged picture
EXAMPLES = 9
SCAN_LIMIT = 600  # images scanned for top examples: spread over the classes
OTHER = "<another>"  # the "Top examples from" choice that opens a dataset picker (never a source string)
OTHER_TITLE = "another dataset…"


def _pictures(model: Explainable, layer: str, chosen: list[int], settings: featurevis.Settings, what: str) -> list:
    """Optimised pictures with a progress bar that appears only when something is computed."""
    bar = None

    def progress(f: float) -> None:
        nonlocal bar
        if f >= 1.0 and bar is None:
            return  # everything came from the cache
        bar = bar or st.progress(0.0, text=what)
        bar.progress(min(1.0, f), text=f"{what}: {f:.0%}")

    try:
        return featurevis.visualize(model, layer, chosen, settings, progress)
    finally:
        if bar is not None:
            bar.empty()


def _examples(model: Explainable, source: str, layer: str) -> top_examples.TopExamples:
    bar = None

    def progress(done: int, total: int) -> None:
        nonlocal bar
        bar = bar or st.progress(0.0, text="Scanning the dataset")
        bar.progress(done / max(total, 1), text=f"Scanning the dataset for top examples: {done}/{total} images")

    try:
        return top_examples.top_examples(model, source, [layer], k=EXAMPLES, limit=SCAN_LIMIT, progress=progress)[layer]
    finally:
        if bar is not None:
            bar.empty()


def _source_title(source: str, run_source: str | None) -> str:
    return ("the run's data: " if source == run_source else "") + state.display_name(source)


def _sources(run_source: str | None) -> list[str]:
    """Where top examples can come from: the run's data, the Explorer's, the built-in dataset."""
    found = [run_source, state.data_config().source, DEFAULT_SOURCE]
    return list(dict.fromkeys(s for s in found if s))


def show(model: Explainable, x: np.ndarray, rgb: np.ndarray, top: np.ndarray, probs: np.ndarray, run: Path | None):
    """The view, for a prepared image `x` (S, S, 3) in [0, 255] shown as `rgb`, and its top classes."""
    spatial = model.spatial_layers()
    default = acts_mod.depth_layers(model, 5)[-2] if len(spatial) > 2 else spatial[-1]
    c1, c2, c3 = st.columns([3, 3, 2])
    layer = c1.selectbox("Layer", spatial, index=spatial.index(default), key="ch_layer")
    classes = [int(i) for i in top]
    target = c2.selectbox("Class", classes, format_func=lambda i: f"{model.labels[i]} ({probs[i]:.1%})", key="ch_class")
    order_by = c3.radio(
        "Order",
        ["active", "drives", "index"],
        format_func={"active": "most active", "drives": "drive the class", "index": "as stored"}.get,
        key="ch_order",
        help="most active: highest mean activation on this image; drive the class: largest share of the "
        "class's Grad-CAM at this layer (gradient weight × activation)",
    )
    digest = image_digest(x)
    acts = model.memo(("activations", layer, digest), lambda: model.activations(x[None], layer)[0])  # (h, w, C)
    drives = model.memo(("drivers", layer, digest, target), lambda: channels.drivers(model, x, layer, target))
    share = {d.channel: d.share for d in drives}
    if order_by == "active":
        order = acts_mod.channel_order(acts, "mean")
    elif order_by == "drives":
        order = np.array([d.channel for d in drives])
    else:
        order = np.arange(acts.shape[-1])
    pages = (len(order) + PER_PAGE - 1) // PER_PAGE
    labels = [f"{k * PER_PAGE + 1}–{min(len(order), (k + 1) * PER_PAGE)}" for k in range(pages)]
    page = st.select_slider(
        f"Channels (of {len(order)}, in this order)", list(range(pages)), format_func=labels.__getitem__, key="ch_page"
    )
    shown = [int(c) for c in order[page * PER_PAGE : (page + 1) * PER_PAGE]]
    try:
        sketches = _pictures(model, layer, shown, SKETCH, f"Drawing what {len(shown)} channels look for")
    except ConvScopeError as exc:
        st.error(str(exc))
        return
    if st.session_state.get("ch_selected") not in set(order.tolist()):
        st.session_state["ch_selected"] = shown[0]
    per_row = PER_PAGE // 2
    for k, (c, picture) in enumerate(zip(shown, sketches, strict=True)):
        if k % per_row == 0:
            cols = st.columns(per_row)  # a row at a time, so tiles read left to right, top to bottom
        col = cols[k % per_row]
        mean = float(acts[..., c].mean())
        col.image(picture.image, caption=f"#{c} · mean {mean:.2f} · CAM {wording.share(share[c])}", width="stretch")
        col.button(
            "Selected" if c == st.session_state["ch_selected"] else f"Open #{c}",
            key=f"ch_open_{c}",
            on_click=st.session_state.update,
            kwargs={"ch_selected": c},
            width="stretch",
            type="primary" if c == st.session_state["ch_selected"] else "secondary",
        )
    st.caption(
        f"Each picture is an image optimised from noise to excite one channel ({SKETCH.steps} steps at "
        f"{SKETCH.size} px, Lucid's recipe); captions give the channel's mean activation on this image and its "
        f"share of the Grad-CAM for {model.labels[target]!r}."
    )
    _class_picture(model, target)
    _detail(model, x, rgb, acts, layer, int(st.session_state["ch_selected"]), share, target, run)


def _class_picture(model: Explainable, target: int) -> None:
    """The picture optimised for the class's logit: what the whole network thinks the class looks like."""
    label = model.labels[target]
    with st.expander(f"What the network thinks {label!r} looks like"):
        if not st.toggle(f"Draw {label!r} ({FULL.steps} steps through the whole network)", key="ch_class_pic"):
            return
        try:
            picture = _pictures(model, featurevis.LOGITS, [target], FULL, f"Optimising the logit of {label!r}")[0]
        except ConvScopeError as exc:
            st.info(str(exc))
            return
        c1, c2 = st.columns([1, 2])
        c1.image(picture.image, caption=f"{label}: logit {picture.activation:.1f}", width="stretch")
        c2.caption(
            "An image optimised from noise to raise this class's logit, the same way as the channels' pictures. "
            "Pieces of the class (textures, parts) appear, repeated: the network needs no whole object."
        )


def _detail(model, x, rgb, acts, layer: str, channel: int, share: dict, target: int, run: Path | None) -> None:
    st.subheader(f"Channel {channel} of {layer}")
    try:
        picture = _pictures(model, layer, [channel], FULL, f"Optimising channel {channel}")[0]
    except ConvScopeError as exc:
        st.error(str(exc))
        return
    d1, d2, d3 = st.columns([2, 2, 1])
    d1.image(picture.image, caption=f"What it looks for ({FULL.steps} steps at {FULL.size} px)", width="stretch")
    heat = acts_mod.mean_map(acts[..., [channel]], x.shape[0])
    seen = x.astype(np.uint8)  # the image as the model saw it (resized by its policy): the map's frame
    d2.image(overlay(seen, heat, 0.6, "Viridis"), caption="Where it fires on this image", width="stretch")
    mean = float(acts[..., channel].mean())
    d3.metric("On this image", f"{mean:.2f}", help="the channel's mean activation over the map")
    d3.metric(
        "Share of the CAM",
        wording.share(share[channel]),  # as in the grid above
        help=f"its part of the Grad-CAM for {model.labels[target]!r} at this layer: its gradient weight × its "
        "mean activation, over the sum of the positive parts (negative: it counts against the class)",
    )
    d3.metric("Picture", f"{picture.activation:.2f}", help="the channel's mean activation on its own picture")

    run_source = (runs.source_of(runs.Run(run).config()) or None) if run else None
    if run and not run_source:
        st.caption(
            "This model came without data of its own (imported): choose a dataset for its channels' top examples, "
            "best one like the data it was trained on."
        )
    choice = st.selectbox(
        "Top examples from",
        [*_sources(run_source), OTHER],
        format_func=lambda s: OTHER_TITLE if s == OTHER else _source_title(s, run_source),
        key="ch_source",
    )
    source = widgets.dataset_picker("ch_data") if choice == OTHER else choice
    found = None
    if source:
        try:
            found = _examples(model, source, layer)
        except ConvScopeError as exc:
            st.warning(f"No top examples from this data: {widgets.path_free(str(exc), source)}")
    if found is not None:
        natural = float(found.natural_mean[channel])
        ratio = f" ({picture.activation / natural:.1f}× on its picture)" if natural > 0 else ""
        d3.metric("Natural mean", f"{natural:.2f}", help=f"mean over {len(found.rels)} images of this data{ratio}")
        examples = found.examples(channel)
        if not examples:
            st.info(f"Channel {channel} never fires on these {len(found.rels)} images: no example to show.")
        else:
            st.markdown(
                f"**Where it fires most in this data** ({len(found.rels)} images scanned): each crop is the "
                "receptive field of the strongest position; where that field is most of the image, the whole "
                "image with the position outlined. Numbers: the peak (before a ReLU6's cap)."
            )
            cols = st.columns(min(len(examples), 9))
            for rank, (col, ex) in enumerate(zip(cols, examples, strict=False)):
                col.image(found.view(channel, rank), caption=f"{ex['activation']:.2f}", width="stretch")
    parent = channels.parent_run(run) if run else None
    if parent is not None:
        _before_after(model, parent, layer, channel, picture)


def _before_after(model: Explainable, parent: Path, layer: str, channel: int, picture) -> None:
    st.markdown("**Before and after fine-tuning**")
    try:
        before = cached.explainable_run(str(parent), (parent / "model.keras").stat().st_mtime)
        old = _pictures(before, layer, [channel], FULL, f"Optimising channel {channel} of the parent run")[0]
    except (ConvScopeError, OSError) as exc:
        st.info(f"The parent run cannot be shown: {exc}")
        return
    change = channels.weight_change(before, model, layer, channel)
    b1, b2, b3 = st.columns([2, 2, 1])
    b1.image(old.image, caption=f"before: {parent.name}", width="stretch")
    b2.image(picture.image, caption="after: this run", width="stretch")
    if change is not None:
        b3.metric("Weights changed", f"{change:.1%}", help="relative change of the kernel that makes this channel")
