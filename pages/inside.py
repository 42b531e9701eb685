"""Inside the network: layers, feature maps, filters, CAMs and attributions, and how far to trust them."""

import time

import numpy as np
import pandas as pd
import streamlit as st

from engine import charts, settings
from engine.data.report import draw_box
from engine.errors import ConvScopeError
from engine.explain import CAM_METHODS, INPUT_METHODS, METHODS, checks, explain_image, make
from engine.explain import activations as acts_mod
from engine.explain.model import list_runs
from engine.explain.overlay import COLORMAPS, overlay, to_png
from engine.runs import RunError, open_run
from ui import cached, router, widgets

router.ensure_routed()


def run_config(name: str) -> dict:
    try:
        return open_run(name, allow_path=False).config()
    except RunError:
        return {}


st.title("🔍 Inside the network")
st.caption("Every layer's feature maps, and where the network looked for a class, by several methods.")

with st.sidebar:
    st.subheader("Model")
    wanted = st.query_params.get("run")  # from the Train page's "Look inside this model"
    if wanted and st.session_state.get("inside_wanted") != wanted:
        st.session_state.update(inside_wanted=wanted, inside_kind="Trained run")
        if str(run_config(wanted).get("data", {}).get("source", "")).startswith("shapes"):
            st.session_state["inside_img_source"] = "Shapes image"  # show it what it was trained on
    kind = st.radio("Model", ["ImageNet backbone", "Trained run"], key="inside_kind", label_visibility="collapsed")
    model = None
    try:
        if kind == "ImageNet backbone":
            name = widgets.imagenet_backbone_picker("inside_backbone")
            if name:
                with st.spinner(f"Loading {name}…"):
                    model = cached.explainable_backbone(name)
        else:
            runs = list_runs(settings.runs_dir())
            if not runs:
                st.info(f"No trained runs in {settings.runs_dir()} yet (CONVSCOPE_RUNS_DIR).")
            else:
                names = [p.name for p in runs]
                if wanted in names and st.session_state.get("inside_run_for") != wanted:
                    st.session_state.update(inside_run=runs[names.index(wanted)], inside_run_for=wanted)
                run = st.selectbox("Run", runs, format_func=lambda p: p.name, key="inside_run")
                with st.spinner(f"Loading {run.name}…"):
                    model = cached.explainable_run(str(run), (run / "model.keras").stat().st_mtime)
    except ConvScopeError as exc:
        st.error(str(exc))

picked = widgets.image_picker("inside_img")
if model is None or picked is None:
    st.info("Pick a model in the sidebar and an image to look inside.")
    st.stop()
image_name, rgb, box = picked
x = model.prepare(rgb)
probs = model.probabilities(x[None])[0]
top = np.argsort(-probs)[:5]

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

tab_layers, tab_filters, tab_walk, tab_cam, tab_trust = st.tabs(
    ["🧱 Layers & feature maps", "🎛️ First-layer filters", "🚶 Walk through", "🔥 Where it looked", "✅ Trust"],
    key="inside_tab",
    on_change="rerun",  # only the open tab computes
)

with tab_layers:
    if tab_layers.open and not model.opaque_reason:
        infos = model.layers()
        with st.expander(f"All {len(infos)} layers", expanded=False):
            st.dataframe(
                pd.DataFrame([i.to_json() for i in infos]).assign(output_shape=lambda d: d.output_shape.astype(str)),
                hide_index=True,
                width="stretch",
            )
        spatial = model.spatial_layers()
        c1, c2, c3 = st.columns([3, 1, 1])
        layer = c1.selectbox("Layer", spatial, index=spatial.index(model.default_layer()), key="fm_layer")
        sort = c2.radio(
            "Order", ["mean", "index"], format_func={"mean": "most active", "index": "as stored"}.get, key="fm_sort"
        )
        show = c3.select_slider("Channels", [16, 32, 64, 128], 32, key="fm_count")
        acts = model.activations(x[None], layer)[0]
        stats = acts_mod.layer_stats(acts)
        m = st.columns(5)
        m[0].metric("Output", f"{stats['height']}×{stats['width']}×{stats['channels']}")
        m[1].metric("Mean", f"{stats['mean']:.3f}")
        m[2].metric("Max", f"{stats['max']:.2f}")
        m[3].metric("Zeros", f"{stats['zero_fraction']:.0%}")
        m[4].metric(
            "Dead channels", f"{stats['dead_fraction']:.0%}", help="channels that are zero everywhere on this image"
        )
        order = acts_mod.channel_order(acts, sort)
        shown = order[: min(show, len(order))]
        st.image(
            acts_mod.channel_grid(acts, shown), caption=f"channels {', '.join(map(str, shown[:12]))}…", width="stretch"
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
        try:
            fname, tiles = acts_mod.first_layer_filters(model)
            st.caption(f"{len(tiles)} kernels of {fname}, each scaled to its own range: colour and edge detectors.")
            cols = st.columns(16)
            for k, tile in enumerate(tiles):
                cols[k % 16].image(tile, width="stretch")
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
            "The four most active channels at each depth: edges and textures early, parts in the middle, "
            "whole objects late."
        )

with tab_cam:
    if tab_cam.open:
        offered = INPUT_METHODS if model.opaque_reason else list(METHODS)
        default = [m for m in ("gradcam", "gradcam++", "layercam", "eigencam", "saliency") if m in offered] or offered[
            :1
        ]
        c1, c2 = st.columns([2, 1])
        methods = c1.multiselect(
            "Methods", offered, default=default, format_func=lambda m: METHODS[m].title, key="cam_methods"
        )
        classes = [int(i) for i in top] + [i for i in range(len(model.labels)) if i not in set(top)]
        target = c2.selectbox(
            "Class",
            classes,
            format_func=lambda i: f"{model.labels[i]} ({probs[i]:.1%})",
            key="cam_class",
            help="any class; the predicted ones come first",
        )
        c1, c2, c3 = st.columns([2, 1, 1])
        layer = None
        if not model.opaque_reason:
            spatial = model.spatial_layers()
            layer = c1.selectbox("Layer for CAMs", spatial, index=spatial.index(model.default_layer()), key="cam_layer")
        opacity = c2.slider("Opacity", 0.0, 1.0, 0.5, 0.05, key="cam_opacity")
        cmap = c3.selectbox("Colour map", COLORMAPS, key="cam_cmap")
        score = st.toggle(
            "Score each map (deletion / insertion areas)",
            value=True,
            key="cam_score",
            help="How fast the class probability falls when the map's top pixels are blurred away (deletion, "
            "lower is better) and rises when only they are kept (insertion, higher is better).",
        )
        cols = st.columns(3)
        for k, method in enumerate(methods):
            with cols[k % 3]:
                try:
                    with st.spinner(f"{METHODS[method].title}…"):
                        result = explain_image(model, rgb, method, target, layer if method in CAM_METHODS else None)
                except ConvScopeError as exc:
                    st.warning(f"{METHODS[method].title}: {exc}")
                    continue
                picture = overlay(rgb, result.display, opacity, cmap)
                where = f" at {result.layer}" if result.layer else ""
                st.image(picture, caption=f"{METHODS[method].title}{where} · {result.seconds:.2f} s", width="stretch")
                if score:
                    curves = checks.deletion_insertion(model, x, result.heatmap, result.class_index, steps=8)
                    st.caption(f"deletion {curves.deletion_auc:.2f} ↓ · insertion {curves.insertion_auc:.2f} ↑")
                st.download_button(
                    "PNG",
                    to_png(picture),
                    file_name=f"{method}-{result.class_index}.png",
                    mime="image/png",
                    key=f"dl_{method}",
                )

with tab_trust:
    if tab_trust.open:
        offered = INPUT_METHODS if model.opaque_reason else list(METHODS)
        c1, c2 = st.columns(2)
        method = c1.selectbox("Method", offered, format_func=lambda m: METHODS[m].title, key="trust_method")
        target = int(top[0])
        c2.markdown(f"Class: **{model.labels[target]}** (the prediction)")
        if st.button("Run the checks", type="primary", key="trust_go"):
            bar = st.progress(0.0, text="Randomising the top layers…")
            t0 = time.perf_counter()
            try:
                rand = cached.randomised(model, f"{model.name}:{id(model)}")
                bar.progress(0.3, text="Sanity check…")
                sanity = checks.sanity_check(model, method, x, target, randomised=rand)
                bar.progress(0.6, text="Deletion and insertion…")
                explainer = make(method, model)
                heat = explainer(x[None], [target])[0]
                curves = checks.deletion_insertion(model, x, heat, target)
            except ConvScopeError as exc:
                bar.empty()
                st.error(str(exc))
                st.stop()
            bar.empty()
            c1, c2, c3 = st.columns(3)
            shown = explainer.for_display(np.stack([heat, sanity.randomised_map]))
            c1.image(overlay(rgb, shown[0], 0.5), caption="trained model", width="stretch")
            c2.image(overlay(rgb, shown[1], 0.5), caption="top 3 layers randomised", width="stretch")
            verdict = "passes" if sanity.passed else "FAILS"
            c3.metric("Rank correlation", f"{sanity.correlation:.2f}")
            (c3.success if sanity.passed else c3.error)(
                f"Sanity check {verdict}: the map {'changes' if sanity.passed else 'barely changes'} when the "
                f"model's top layers are randomised (threshold {checks.SANITY_THRESHOLD})."
            )
            st.plotly_chart(
                charts.faithfulness_curves(
                    curves.fractions, curves.deletion, curves.insertion, curves.deletion_auc, curves.insertion_auc
                ),
                width="stretch",
                key="curves",
            )
            st.caption(f"Checks took {time.perf_counter() - t0:.1f} s.")

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
                st.dataframe(
                    pd.DataFrame(
                        {
                            "method": [METHODS[m].title for m in loc_methods],
                            "peak inside the box": [result["hit_rate"][m] for m in loc_methods],
                            "chance": result["chance"],
                        }
                    ),
                    column_config={
                        "peak inside the box": st.column_config.ProgressColumn(format="percent", max_value=1),
                        "chance": st.column_config.NumberColumn(format="percent"),
                    },
                    hide_index=True,
                )
