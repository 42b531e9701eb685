"""Evaluate: how good a trained run is, per class; from any confusion cell to its images and their CAMs."""

import numpy as np
import pandas as pd
import streamlit as st

from engine import charts
from engine.errors import ConvScopeError
from engine.evaluate import SPLITS, save_temperature
from engine.explain import heatmaps
from engine.explain.overlay import overlay
from engine.runs import is_imported
from ui import cached, router, widgets, wording

router.ensure_routed()
st.title("📊 Evaluate")
st.caption(
    "A trained run on its test split or any labelled data: accuracy per class, where it confuses classes "
    "and why (Grad-CAM of each mistake), and how far its confidence can be trusted."
)

PAGE = 8  # images per gallery page: each needs two Grad-CAMs

OTHER = "Other labelled data"
with st.sidebar:
    run = widgets.run_picker("eval_run")
if run is None:
    st.stop()
# An imported model was trained elsewhere: ConvScope never split its data, so it scores all of any source.
imported = is_imported(run.config())
has_data = bool((run.config().get("data") or {}).get("source"))
with st.sidebar:
    if imported and not has_data:
        data_kind = OTHER
        st.caption("This model was imported without labelled data: pick a labelled dataset to evaluate it on.")
    elif imported:
        data_kind = st.radio("Data", ["The data given at import", OTHER], key="eval_data_kind_imported")
    else:
        data_kind = st.radio("Data", ["The run's own data", OTHER], key="eval_data_kind")

source = None
if data_kind == OTHER:
    st.caption("Class folders named as the run's classes (a subset is fine); all their images are scored.")
    source = widgets.dataset_picker("eval_src")
    if source is None:
        st.stop()
default_split = "all" if imported or source is not None else "test"
if imported:
    st.caption(
        "An imported model: ConvScope cannot tell which images it was trained on, so all the images are "
        "scored by default; an accuracy on images it learned from says little about new ones."
    )
split = st.sidebar.selectbox(
    "Split",
    SPLITS,
    index=SPLITS.index(default_split),
    key=f"eval_split_{data_kind}",
    help="'all': every image" + ("; the other splits are ConvScope's own split of the data" if imported else ""),
)

model_file = run.model_path
key = (run.name, model_file.stat().st_mtime, source, split)
kept = st.session_state.setdefault("evaluations", {})
if key not in kept:
    bar = st.progress(0.0, text="Opening the data…")
    words = {"data": "Opening the data", "scoring": "Scoring images", "calibrating": "Scoring the validation split"}

    def progress(stage: str, done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{words.get(stage, stage)}: {done:,} of {total:,}")

    try:
        model = cached.explainable_run(str(run.path), model_file.stat().st_mtime)
        from engine.evaluate import evaluate

        kept.clear()  # one evaluation per session: they hold every image's scores
        kept[key] = evaluate(run, source, split, model=model, progress=progress)
    except ConvScopeError as exc:
        bar.empty()
        st.error(widgets.path_free(str(exc), source))
        st.stop()
    bar.empty()
result = kept[key]
model = cached.explainable_run(str(run.path), model_file.stat().st_mtime)
m = result.metrics
names = result.class_names

where = (
    "its test split" if source is None and split == "test" else f"{widgets.path_free(source or 'its data')} [{split}]"
)
st.markdown(
    f"**{widgets.run_title(run)}** on {where}: {m['count']:,} images"
    + (" · scores from the run's cache" if result.cached else f" · scored in {result.seconds:.1f} s")
)
c1, c2, c3, c4 = st.columns(4)
c1.metric("Accuracy", f"{m['accuracy']:.1%}")
c2.metric(f"Top-{m['top_k']} accuracy", f"{m['top_k_accuracy']:.1%}")
c3.metric("Mistakes", f"{len(result.mistake_indices()):,}")
if result.temperature is None:
    c4.metric("Calibration error (ECE)", f"{result.ece:.3f}")
else:
    c4.metric(
        "Calibration error (ECE)",
        f"{result.ece:.3f}",
        delta=f"{wording.change(result.ece, result.ece_calibrated, 3)} with temperature {result.temperature:.2f}",
        delta_color="inverse",
    )


def show_gallery(indices: np.ndarray, key: str, empty: str) -> None:
    """Images of `indices`, each with Grad-CAM for its predicted class and, if wrong, for its true class."""
    if not len(indices):
        st.info(empty)
        return
    pages = (len(indices) + PAGE - 1) // PAGE
    page = 1
    if pages > 1:
        page = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{key}_page")
    chosen = indices[(page - 1) * PAGE : page * PAGE]
    size = model.input_size
    from engine.data.pipeline import load_resized

    policy = run.resize_policy
    from engine.imaging import ImageLoadError

    try:
        images = np.stack([load_resized(result.data.paths[k], size, policy) for k in chosen])
    except (ImageLoadError, OSError) as exc:
        st.warning(f"An image changed or went since it was scored: {widgets.path_free(str(exc))}. Evaluate again.")
        kept.clear()
        return
    wrong = [int(k) for k in chosen if result.labels[k] != result.predicted[k]]
    batch = np.concatenate([images, images[[list(chosen).index(k) for k in wrong]]]) if wrong else images
    classes = [int(result.predicted[k]) for k in chosen] + [int(result.labels[k]) for k in wrong]
    try:
        with st.spinner(f"Grad-CAM for {len(classes)} image-class pairs…"):
            maps = heatmaps(model, batch.astype(np.float32), classes, "gradcam")
    except ConvScopeError as exc:
        st.warning(f"No Grad-CAM for this model: {widgets.path_free(str(exc))}")
        maps = None
    for j, k in enumerate(chosen):
        k = int(k)
        row = result.row(k, "relative")
        ok = row["true"] == row["predicted"]
        with st.container(border=True):
            cols = st.columns([1, 1, 1, 2])
            cols[0].image(images[j], caption=row["image"], width="stretch")
            if maps is not None:
                cols[1].image(
                    overlay(images[j], maps[j]), caption=f"looked for {row['predicted']} (predicted)", width="stretch"
                )
                if not ok:
                    w = len(chosen) + wrong.index(k)
                    cols[2].image(
                        overlay(images[j], maps[w]), caption=f"looked for {row['true']} (true)", width="stretch"
                    )
            verdict = "right" if ok else "wrong"
            cols[3].markdown(
                f"**{row['predicted']}** at {row['probability']:.0%} · {verdict}"
                + ("" if ok else f" · true class **{row['true']}** at {result.probs[k, result.labels[k]]:.0%}")
            )
            top = np.argsort(-result.probs[k])[:3]
            cols[3].caption(" · ".join(f"{names[c]} {result.probs[k, c]:.0%}" for c in top))
            if cols[3].button("Inside the network", key=f"{key}_inside_{k}", icon="🔍"):
                from engine import imaging

                widgets.open_inside(row["image"], imaging.load_rgb(result.data.paths[k]), run=run)


tab_cm, tab_class, tab_cal, tab_mistakes = st.tabs(
    ["🧩 Confusion", "📋 Per class", "🎯 Calibration", "❌ Mistakes"], key="eval_tab", on_change="rerun"
)

with tab_cm:
    if tab_cm.open:
        norm = st.segmented_control(
            "Show",
            ["counts", "row-normalised"],
            default="counts",
            key="cm_norm",
            help="Row-normalised: recall per class",
        )
        left, right = st.columns([3, 2])
        matrix = np.asarray(m["confusion_matrix"])
        cells = [(t, p) for t in range(len(names)) for p in range(len(names)) if matrix[t, p]]
        if st.session_state.get("cm_cell") not in cells:
            off = sorted((c for c in cells if c[0] != c[1]), key=lambda c: -matrix[c])
            st.session_state["cm_cell"] = off[0] if off else cells[0]  # the largest confusion first
        with left:
            event = st.plotly_chart(
                charts.confusion_grid(matrix, names, norm == "row-normalised"),
                on_select="rerun",
                selection_mode="points",
                key=f"cm_chart_{run.name}_{split}",
                width="stretch",
            )
            points = (event or {}).get("selection", {}).get("points", []) if event else []
            if points and points[0].get("point_index") is not None:
                clicked = divmod(int(points[0]["point_index"]), len(names))  # the grid is row-major: (true, predicted)
                if clicked != st.session_state.get("cm_clicked") and clicked in cells:
                    st.session_state["cm_clicked"] = clicked
                    st.session_state["cm_cell"] = clicked
        with right:
            st.caption("Click a cell, or pick it here, to see exactly those images.")
            cell = st.selectbox(
                "Cell",
                cells,
                format_func=lambda c: f"true {names[c[0]]} → predicted {names[c[1]]} ({matrix[c]})",
                key="cm_cell",
            )
            per = m["per_class"][names[cell[0]]]
            st.markdown(
                f"Class **{names[cell[0]]}**: recall {per['recall']:.0%} ({matrix[cell[0], cell[0]]} of "
                f"{per['support']}), precision {per['precision']:.0%}."
            )
        t, p = cell
        kind = wording.plural(int(matrix[t, p]), "right answer" if t == p else "mistake")
        st.subheader(f"{names[t]} predicted as {names[p]}: {kind}, most confident first")
        show_gallery(result.cell(t, p), f"cell_{t}_{p}", "No images in this cell.")

with tab_class:
    if tab_class.open:
        table = pd.DataFrame(m["per_class"]).T.reset_index(names="class")
        st.dataframe(
            table,
            hide_index=True,
            column_config={
                c: st.column_config.ProgressColumn(c, format="percent", min_value=0, max_value=1)
                for c in ("precision", "recall", "f1")
            },
            width="stretch",
        )
        st.plotly_chart(charts.per_class_bars(m["per_class"]), width="stretch", key="per_class_bars")

with tab_cal:
    if tab_cal.open:
        st.markdown(
            "A model is **calibrated** when, of the images it calls at 80%, 80% are right. The gap, averaged over "
            "confidence bins and weighted by their images, is the expected calibration error (ECE)."
        )
        st.plotly_chart(
            charts.reliability_diagram(result.reliability, result.reliability_calibrated, result.temperature),
            width="stretch",
            key="reliability",
        )
        if m["count"] < 300:
            st.caption(
                f"{m['count']} images over 15 bins: a few per bin, so the curve is noisy and the ECE a rough "
                "figure; more test images make both steadier."
            )
        if result.temperature is None:
            st.info("These data have no validation split, so no temperature can be fitted.")
        else:
            from engine.model.classifier import saved_temperature

            fitted_on = "a validation split ConvScope made of these data" if imported else "the validation split"
            st.markdown(
                f"**Temperature scaling** (fitted on {fitted_on}): dividing the logits by "
                f"**{result.temperature:.2f}** changes the ECE here from {result.ece:.3f} "
                f"to {result.ece_calibrated:.3f}. "
                "It never changes which class wins, only how sure the model says it is."
            )
            saved = saved_temperature(run.path)
            if saved:
                st.caption(f"Saved with the run: temperature {saved:.2f}; Predict uses it.")
            helps = result.ece_calibrated < result.ece and 0.05 < result.temperature < 20
            if not helps:
                st.caption(
                    "Not worth saving here: it does not lower the calibration error on these images "
                    "(or the validation split was too easy or too small to fit it)."
                )
            if st.button("Save this temperature with the run", key="save_temperature", icon="💾", disabled=not helps):
                save_temperature(run, result.temperature, ece=result.ece, ece_calibrated=result.ece_calibrated)
                st.toast(f"Saved: Predict now divides {widgets.run_title(run)}'s logits by {result.temperature:.2f}")
                st.rerun()

with tab_mistakes:
    if tab_mistakes.open:
        view = st.radio(
            "View",
            ["Most confident mistakes", "Least confident right answers"],
            horizontal=True,
            key="mistakes_view",
        )
        if view == "Most confident mistakes":
            show_gallery(result.mistake_indices(), "mistakes", "No mistakes on these images.")
        else:
            show_gallery(result.unsure_correct(), "unsure", "No right answers on these images.")
        st.download_button(
            "Download the mistakes (CSV)",
            result.mistakes_csv(),
            file_name=f"{run.name}-{split}-mistakes.csv",
            mime="text/csv",
            icon="⬇️",
            key="mistakes_csv",
        )
