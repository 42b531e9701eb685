"""Inside the network: layers, feature maps, filters, CAMs and attributions, and how far to trust them."""

import time

import numpy as np
import pandas as pd
import streamlit as st

from engine import charts, settings
from engine.backbones.conventions import TITLES
from engine.data.report import draw_box
from engine.errors import ConvScopeError
from engine.explain import (
    CAM_METHODS,
    INPUT_METHODS,
    METHODS,
    checks,
    explain_image,
    image_digest,
    make,
    relative_to,
)
from engine.explain import activations as acts_mod
from engine.explain.overlay import COLORMAPS, colour_bar, overlay, to_png
from engine.model.explainable import list_runs
from engine.runs import RunError, is_imported, open_run, source_of
from ui import cached, channels_view, concepts_view, router, widgets

router.ensure_routed()

SLOW = 1.5  # seconds: methods expected to take longer show it before they are added, and a progress bar
SCALES = {"own": "each map to its own range", "relative": "relative to the predicted class"}


def run_config(name: str) -> dict:
    try:
        return open_run(name, allow_path=False).config()
    except RunError:
        return {}


def run_title(path) -> str:
    """A run in the picker: its display name and folder, and whether it was imported."""
    try:
        run = open_run(path.name, allow_path=False)
        imported = is_imported(run.config())
        return run.title() + (" · imported" if imported else "")
    except RunError:
        return path.name


SCORES = {  # what CAMs and attributions differentiate, by the imported model's output (engine.importing)
    "softmax": "the logit before its softmax",
    "logits": "its logits",
    "binary_logit": "its single logit z for class 1, and -z for class 0",
    "sigmoid": "the logit z before its sigmoid for class 1, and -z for class 0",
}


def imported_text(config: dict) -> str:
    """One line on an imported model: its file, its input and the score its maps use."""
    imported = config.get("imported") or {}
    output = str(imported.get("output", ""))
    gray = " grayscale" if int(imported.get("channels", 3)) == 1 else ""
    score = SCORES.get(output, "its class scores")
    return (
        f"Imported from {imported.get('file', 'a Keras file')}: a{gray} model whose maps use {score}; "
        f"its input: {TITLES.get(str(imported.get('preprocess')), 'raw pixels')}."
    )


def seconds_text(s: float) -> str:
    return f"{s:.1f} s" if s < 10 else f"{s:.0f} s"


st.title("🔍 Inside the network")
st.caption("Every layer's feature maps, and where the network looked for a class, by several methods.")

with st.sidebar:
    st.subheader("Model")
    wanted = st.query_params.get("run")  # from the Train page's "Look inside this model"
    if wanted and st.session_state.get("inside_wanted") != wanted:
        st.session_state.update(inside_wanted=wanted, inside_kind="Trained run")
        if source_of(run_config(wanted)).startswith("shapes"):
            st.session_state["inside_img_source"] = "Shapes image"  # show it what it was trained on
    kind = st.radio("Model", ["ImageNet backbone", "Trained run"], key="inside_kind", label_visibility="collapsed")
    model, model_key, run_mode, run_path, run_data = None, "", "", None, ""
    try:
        if kind == "ImageNet backbone":
            name = widgets.imagenet_backbone_picker("inside_backbone")
            if name:
                with st.spinner(f"Loading {name}…"):
                    model = cached.explainable_backbone(name)
                model_key = f"backbone:{name}"
        else:
            runs = list_runs(settings.runs_dir())
            if not runs:
                st.info("No runs yet: train one on the Train page, or import your own Keras model.")
            else:
                names = [p.name for p in runs]
                if wanted in names and st.session_state.get("inside_run_for") != wanted:
                    st.session_state.update(inside_run=runs[names.index(wanted)], inside_run_for=wanted)
                run = run_path = st.selectbox(
                    "Run", runs, format_func=run_title, key="inside_run", help="trained here, or imported"
                )
                mtime = open_run(run).model_path.stat().st_mtime
                with st.spinner(f"Loading {run.name}…"):
                    model = cached.explainable_run(str(run), mtime)
                model_key = f"run:{run.name}:{mtime}"
                config = run_config(run.name)
                run_mode = str(config.get("mode", ""))
                run_data = source_of(config)
                if run_mode == "imported":
                    st.caption(imported_text(config))
    except ConvScopeError as exc:
        st.error(str(exc))

# A run trained on a shapes set (a watermarked one, say) picks its images from that set, not the default one.
picked = widgets.image_picker("inside_img", run_data if run_data.startswith("shapes") else None)
if model is None:
    st.info("Pick a model in the sidebar to look inside.")
    st.stop()
if picked is None:
    st.info("Pick an image above to look inside.")
    st.stop()
image_name, rgb, box = picked
x = model.prepare(rgb)
image_key = f"{model_key}|{image_digest(x)}"
if not model.opaque_reason and model.memo.get(("probabilities", image_digest(x[None]))) is None:
    # A new image: its first map (Grad-CAM at the default layer, the default tab's first) gives the
    # prediction too, in one forward-and-backward pass, instead of a forward pass and then the map.
    explain_image(model, rgb, "gradcam")
probs = model.memo(("probabilities", image_digest(x[None])), lambda: model.probabilities(x[None])[0])
top = np.argsort(-probs)[:5]
if st.session_state.get("inside_image_key") != image_key:
    # A new image or model: the class chosen for the old one must not carry over (its list, maps
    # and scores all belong to the image shown). Set, not deleted: setting also updates the browser's box.
    st.session_state["cam_class"] = int(top[0])
    st.session_state["ch_class"] = int(top[0])
    st.session_state.pop("trust_result", None)
    st.session_state["inside_image_key"] = image_key
if st.session_state.get("inside_model_key") != model_key:
    st.session_state.pop("loc_result", None)
    st.session_state["inside_model_key"] = model_key

left, right = st.columns([1, 2])
left.image(draw_box(rgb, box) if box else rgb, caption=f"{image_name} ({rgb.shape[1]}×{rgb.shape[0]})", width="stretch")
right.markdown(f"**{model.name}** predicts:")
right.dataframe(
    pd.DataFrame({"class": [model.labels[i] for i in top], "index": top, "probability": probs[top]}),
    column_config={"probability": st.column_config.ProgressColumn(format="percent", min_value=0, max_value=1)},
    hide_index=True,
    width="stretch",
)
if model.opaque_reason:
    st.warning(f"{model.opaque_reason}. Layer views and CAMs need inner layers; input attributions and occlusion work.")

tab_layers, tab_filters, tab_walk, tab_channels, tab_cam, tab_trust, tab_concepts = st.tabs(
    [
        "🧱 Layers & feature maps",
        "🎛️ First-layer filters",
        "🚶 Walk through",
        "🧩 Channels",
        "🔥 Where it looked",
        "✅ Trust",
        "💡 Concepts",
    ],
    key="inside_tab",
    on_change="rerun",  # only the open tab computes
)

with tab_layers:
    if tab_layers.open and not model.opaque_reason:
        infos = model.layers()
        nested = sorted({i.name.rpartition("/")[0] for i in infos} - {""})
        with st.expander(f"All {len(infos)} layers", expanded=False):
            table = pd.DataFrame([i.to_json() for i in infos]).assign(
                inside=[i.name.rpartition("/")[0] or "(top level)" for i in infos],
                output_shape=lambda d: d.output_shape.astype(str),
            )
            st.dataframe(
                table[["inside", *[c for c in table.columns if c != "inside"]]], hide_index=True, width="stretch"
            )
            if nested:
                st.caption(
                    f"Layers named `{nested[0]}/…` sit inside the nested model {nested[0]!r}"
                    + (f" (and {', '.join(repr(n) for n in nested[1:])})" if nested[1:] else "")
                    + ": every one of them has feature maps and can carry a CAM, as the top-level layers."
                )
        spatial = model.spatial_layers()
        c1, c2, c3 = st.columns([3, 1, 1])
        layer = c1.selectbox("Layer", spatial, index=spatial.index(model.default_layer()), key="fm_layer")
        sort = c2.radio(
            "Order", ["mean", "index"], format_func={"mean": "most active", "index": "as stored"}.get, key="fm_sort"
        )
        show = c3.select_slider("Channels", [16, 32, 64, 128], 32, key="fm_count")
        # This image first, then the probe images: "dead" means silent on all of them, not just on this one.
        batch = np.concatenate([x[None], cached.probe_images(model.input_size)])
        batch_acts = model.memo(("probe-activations", layer, image_digest(x)), lambda: model.activations(batch, layer))
        acts = batch_acts[0]
        stats = acts_mod.layer_stats(batch_acts)
        m = st.columns([2, 1, 1, 1, 1])
        m[0].metric("Output", f"{stats['height']}×{stats['width']}×{stats['channels']}")
        m[1].metric("Mean", f"{stats['mean']:.3f}", help="over this image")
        m[2].metric("Max", f"{stats['max']:.2f}", help="over this image")
        m[3].metric("Zeros", f"{stats['zero_fraction']:.0%}", help="share of this image's activations that are ≤ 0")
        m[4].metric(
            "Dead channels",
            f"{stats['dead_fraction']:.0%}",
            help=f"channels that are zero everywhere on all {stats['images']} images: this one, "
            "the sample photos and built-in shapes images",
        )
        order = acts_mod.channel_order(acts, sort)
        shown = order[: min(show, len(order))]
        st.image(
            acts_mod.channel_grid(acts, shown),
            caption=f"{len(shown)} channels of {layer}, numbered, each at its true {acts.shape[0]}×{acts.shape[1]} "
            "resolution and scaled to its own range (dark: low, yellow: high)",
            width="stretch",
        )
        c1, c2 = st.columns([1, 2])
        channel = c1.selectbox("Enlarge channel", list(map(int, shown)), key="fm_channel")
        c2.image(
            overlay(rgb, acts_mod.mean_map(acts[..., [channel]], 224), 0.6, "Viridis"),
            caption=f"channel {channel} of {layer} over the image",
            width="stretch",
        )

with tab_filters:
    if tab_filters.open and not model.opaque_reason:
        size = st.select_slider(
            "Filter size", ["small", "medium", "large"], "small", key="filter_size", help="enlarge the kernels"
        )
        tile, per_row = {"small": (32, 16), "medium": (64, 8), "large": (128, 4)}[size]
        try:
            fname, tiles = acts_mod.first_layer_filters(model, tile=tile)
            st.caption(f"{len(tiles)} kernels of {fname}, each scaled to its own range: colour and edge detectors.")
            cols = st.columns(per_row)
            for k, tile_img in enumerate(tiles):
                cols[k % per_row].image(tile_img, caption=f"#{k}", width="stretch")
        except ConvScopeError as exc:
            st.info(str(exc))

with tab_walk:
    if tab_walk.open and not model.opaque_reason:
        spatial = model.spatial_layers()
        chosen = st.multiselect("Depths", spatial, default=acts_mod.depth_layers(model, 5), key="walk_layers")
        cols = st.columns(max(1, len(chosen)))
        for col, name in zip(cols, chosen, strict=False):
            acts = model.activations(x[None], name)[0]
            strongest = acts_mod.channel_order(acts)[:4]
            col.image(
                acts_mod.channel_grid(acts, strongest, tile=96, columns=2),
                width="stretch",
                caption=f"{name} · {acts.shape[0]}×{acts.shape[1]}×{acts.shape[2]}",
            )
        st.caption(
            "The four most active channels at each depth, at their true resolution: edges and textures early, "
            "parts in the middle, whole objects late."
        )

with tab_channels:
    if tab_channels.open and not model.opaque_reason:
        channels_view.show(model, x, rgb, top, probs, run_path)

with tab_concepts:
    if tab_concepts.open:
        concepts_view.show(model, model_key, run_path)


def expected(method: str, layer: str | None) -> float:
    """Seconds the method should take on this model (from its measured pass times; kept per model)."""
    return model.memo(("expected", method), lambda: make(method, model, layer).expected_seconds())


def explanation(method: str, target: int, layer: str | None):
    """A cached map, or one computed now with a progress bar when it is slow."""
    layer = layer if method in CAM_METHODS else None
    eta = expected(method, layer)
    if eta < SLOW:
        return explain_image(model, rgb, method, target, layer)
    bar = st.progress(0.0, text=f"{METHODS[method].title}: about {seconds_text(eta)}…")
    try:
        return explain_image(
            model,
            rgb,
            method,
            target,
            layer,
            progress=lambda f: bar.progress(min(1.0, f), text=f"{METHODS[method].title}: {f:.0%}"),
        )
    finally:
        bar.empty()


with tab_cam:
    if tab_cam.open:
        offered = INPUT_METHODS if model.opaque_reason else list(METHODS)
        default = [m for m in ("gradcam", "gradcam++", "layercam", "eigencam", "saliency") if m in offered] or offered[
            :1
        ]
        c1, c2 = st.columns(2)
        classes = [int(i) for i in top] + [i for i in range(len(model.labels)) if i not in set(top)]
        target = c1.selectbox(
            "Class",
            classes,
            format_func=lambda i: f"{model.labels[i]} ({probs[i]:.1%})",
            key="cam_class",
            help="any class; the predicted ones come first",
        )
        layer = None
        if not model.opaque_reason:
            spatial = model.spatial_layers()
            layer = c2.selectbox("Layer for CAMs", spatial, index=spatial.index(model.default_layer()), key="cam_layer")

        def method_title(m: str) -> str:
            # Labels must not change between reruns (Streamlit would reset the widget), so the
            # estimate stays even once a map is kept.
            eta = expected(m, layer)
            return f"{METHODS[m].title} · ~{seconds_text(eta)}" if eta >= SLOW else METHODS[m].title

        methods = st.multiselect(
            "Methods",
            offered,
            default=default,
            format_func=method_title,
            key="cam_methods",
            help="Slow methods show their expected time on this model; a computed map is kept, "
            "so switching back to it is instant.",
        )
        c1, c2, c3 = st.columns([2, 1, 1])
        scale = c1.radio(
            "Scale",
            list(SCALES),
            format_func=SCALES.get,
            horizontal=True,
            key="cam_scale",
            help="Each map to its own range shows the shape of every map; relative to the predicted class keeps a "
            "class the model barely sees dark instead of glowing as brightly as the prediction.",
        )
        opacity = c2.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="cam_opacity")
        cmap = c3.selectbox("Colour map", COLORMAPS, key="cam_cmap")
        score = st.toggle(
            "Score each map (deletion / insertion areas)",
            value=True,
            key="cam_score",
            help="How fast the class probability falls when the map's top pixels are blurred away (deletion, "
            "lower is better) and rises when only they are kept (insertion, higher is better).",
        )
        predicted = int(top[0])
        legend = (
            ("0", "0.5", "1 = this map's peak")
            if scale == "own"
            else ("0", "0.5", f"the peak for {model.labels[predicted][:24]} (or more)")
        )
        st.image(colour_bar(cmap, 360, legend), caption=f"map value, {SCALES[scale]}", width=360)
        cols = st.columns(3)
        scored = []
        for k, method in enumerate(methods):
            with cols[k % 3]:
                try:
                    result = explanation(method, target, layer)
                    shown = result.display
                    if scale == "relative":
                        shown = relative_to(result, explanation(method, predicted, layer))
                except ConvScopeError as exc:
                    st.warning(f"{METHODS[method].title}: {exc}")
                    continue
                picture = overlay(rgb, shown, opacity, cmap)
                where = f" at {result.layer}" if result.layer else ""
                timing = "kept from before" if result.cached else seconds_text(result.seconds)
                st.image(picture, caption=f"{METHODS[method].title}{where} · {timing}", width="stretch")
                if score:
                    curves = checks.faithfulness(model, result)
                    scored.append(curves)
                    st.caption(f"deletion {curves.deletion_auc:.2f} ↓ · insertion {curves.insertion_auc:.2f} ↑")
                st.download_button(
                    "PNG",
                    to_png(picture),
                    file_name=f"{method}-{result.class_index}.png",
                    mime="image/png",
                    key=f"dl_{method}",
                )
        if len(scored) > 1 and checks.indistinct(scored):
            st.info(checks.INDISTINCT_TEXT.format(spread=checks.SEPARATION))

SANITY_TEXT = """
**What the sanity check tests** (Adebayo et al. 2018). An explanation should depend on what
the model learned. The check draws the method's map twice: for this model, and for a copy
whose top layers get random weights. If the map barely changes (high rank correlation), the
method is showing the image's edges or the early layers' features, not the trained
decision, and it *fails*.
"""

FROZEN_TEXT = """
**Why a frozen-backbone model can fail it, and what to do.** In feature extraction only the
head was trained; the backbone is ImageNet's. Randomising the top layers mostly replaces the
head, while a map taken at the backbone's last convolution still shows where the unchanged
ImageNet features fire. A failure then says the map is driven by the backbone's features
more than by your head. Randomise more layers (into the backbone) to test the method itself,
compare the maps of two classes (alike maps mean the head's decision is not what you see),
or fine-tune the backbone so its features become your classes'.
"""

with tab_trust:
    if tab_trust.open:
        offered = INPUT_METHODS if model.opaque_reason else list(METHODS)
        st.markdown(SANITY_TEXT)
        c1, c2, c3 = st.columns(3)
        method = c1.selectbox("Method", offered, format_func=lambda m: METHODS[m].title, key="trust_method")
        depth = c2.slider("Layers to randomise", 1, 8, 3, key="trust_depth", help="the last layers that have weights")
        target = int(top[0])
        c3.markdown(f"Class: **{model.labels[target]}** (the prediction)")
        names = checks.randomised_layers(model, depth)
        st.caption(f"Randomised for {model.name}: {', '.join(names)} (their weights redrawn at the same scale).")
        if run_mode == "feature":
            st.info(FROZEN_TEXT)
        trust_key = (image_key, method, depth)
        if st.button("Run the checks", type="primary", key="trust_go"):
            bar = st.progress(0.0, text="Randomising the top layers…")
            t0 = time.perf_counter()
            try:
                rand = cached.randomised(model, model_key, depth)
                bar.progress(0.3, text="Sanity check…")
                sanity = checks.sanity_check(model, method, x, target, randomised=rand)
                bar.progress(0.6, text="Deletion and insertion…")
                result = explain_image(model, rgb, method, target)
                curves = checks.faithfulness(model, result)  # the same numbers as on Where it looked
            except ConvScopeError as exc:
                bar.empty()
                st.error(str(exc))
                st.stop()
            bar.empty()
            shown = make(method, model).for_display(np.stack([result.heatmap, sanity.randomised_map]))
            st.session_state["trust_result"] = {
                "key": trust_key,
                "sanity": sanity,
                "curves": curves,
                "shown": shown,
                "seconds": time.perf_counter() - t0,
            }
        kept = st.session_state.get("trust_result")
        if kept and kept["key"] == trust_key:  # kept across reruns: the localisation run does not erase it
            sanity, curves, shown = kept["sanity"], kept["curves"], kept["shown"]
            c1, c2, c3 = st.columns(3)
            c1.image(overlay(rgb, shown[0], 0.5), caption="trained model", width="stretch")
            c2.image(
                overlay(rgb, shown[1], 0.5),
                caption=f"top {depth} layer{'s' if depth > 1 else ''} randomised",
                width="stretch",
            )
            verdict = "passes" if sanity.passed else "FAILS"
            c3.metric("Rank correlation", f"{sanity.correlation:.2f}", help="1: the same map; 0: unrelated maps")
            (c3.success if sanity.passed else c3.error)(
                f"Sanity check {verdict}: the map {'changes' if sanity.passed else 'barely changes'} when the "
                f"model's top {depth} layer{'s are' if depth > 1 else ' is'} randomised "
                f"(threshold {checks.SANITY_THRESHOLD})."
            )
            st.plotly_chart(
                charts.faithfulness_curves(
                    curves.fractions, curves.deletion, curves.insertion, curves.deletion_auc, curves.insertion_auc
                ),
                width="stretch",
                key="curves",
            )
            if checks.indistinct([curves]):
                st.info(checks.INDISTINCT_TEXT.format(spread=checks.SEPARATION))
            st.caption(f"Checks took {kept['seconds']:.1f} s.")

        st.markdown("**Localisation on the shapes set** (for a run trained on the built-in shapes)")
        shapes = cached.builtin_shapes()
        known = [i for i in shapes.items if shapes.classes[i.label] in model.labels]
        if not known:
            st.caption("This model was not trained on the shapes classes, so there is no box to compare with.")
        else:
            n = st.slider("Images", 10, len(known), min(60, len(known)), 10, key="loc_n")
            loc_methods = st.multiselect(
                "Methods",
                offered,
                default=[m for m in ("gradcam", "layercam", "eigencam") if m in offered],
                format_func=lambda m: METHODS[m].title,
                key="loc_methods",
            )
            if st.button("Measure localisation", key="loc_go"):
                from engine.data.report import balanced_sample

                items = balanced_sample(known, max(1, n // len({i.label for i in known})))
                bar = st.progress(0.0, text="Localising…")
                result = checks.localisation(
                    model,
                    shapes,
                    items,
                    loc_methods,
                    progress=lambda d, t: bar.progress(d / t, text=f"Image {d} of {t}"),
                )
                bar.empty()
                st.session_state["loc_result"] = {"methods": loc_methods, **result}
            loc = st.session_state.get("loc_result")
            if loc:
                st.dataframe(
                    pd.DataFrame(
                        {
                            "method": [METHODS[m].title for m in loc["methods"]],
                            "peak inside the box": [loc["hit_rate"][m] for m in loc["methods"]],
                            "chance": loc["chance"],
                        }
                    ),
                    column_config={
                        "peak inside the box": st.column_config.ProgressColumn(format="percent", max_value=1),
                        "chance": st.column_config.NumberColumn(format="percent"),
                    },
                    hide_index=True,
                )
                st.caption(
                    f"Over {loc['n']} shapes images: how often each map's peak falls inside the object's box; "
                    "chance is the boxes' mean share of the image."
                )
