"""Inside the network's Concepts tab: does a class rely on a concept (TCAV), at a few layers, tested for significance.

The user picks a concept (a built-in set such as the watermark, or a zip of example images), a class and
its images, the random counterexamples, the layers and the number of CAVs; the engine's test runs with a
progress bar and its result is kept in the session per (model, concept, class, images, layers, runs).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import streamlit as st

from engine import charts, runs
from engine.data import sources
from engine.data.shapes import CONCEPTS, ShapesConfig
from engine.errors import ConvScopeError, ExplainError
from engine.explain import Explainable, concepts
from ui import cached, widgets

KEEP = 8  # concept tests kept per session: a rerun or a switch back shows them without recomputing
RESULTS = "cav_results"
BUILTIN, UPLOAD = "Built-in set", "Upload a zip"
RUN_DATA, DATASET, CLASS_ZIP = "The run's data", "A labelled dataset", "A zip of this class's images"
PHOTO_CROPS = "Built-in photo crops"
CONCEPT_TITLES = {
    "mark": "mark: a small watermark (a boxed X) on photo crops",
    "random": "random: photo crops alone (a control: never significant)",
}

INTRO = (
    "**Does the model rely on a concept for a class?** A concept is a set of example images: a watermark, "
    "stripes, a background. At each layer a linear classifier (a *concept activation vector*, CAV) separates "
    "the concept's activations from random images'; the *TCAV score* is the share of the class's images whose "
    "class score rises along that direction. Random directions give scores too, so the test compares "
    "several concept CAVs with as many random ones (a t-test, corrected for the number of layers). "
    "Grad-CAM answers another question, where one image's score comes from: a model can look at the shape "
    "and still score higher wherever the concept is, which only this test shows."
)
ALL_OR_NOTHING = (
    "At {layers}, only pooling and the classifier's head follow, so the class score's gradient is the same "
    "for every image: each direction scores 0% or 100%, and the random baseline's spread is large."
)
OPAQUE_TEXT = (
    "{reason}. A concept test needs the model's inner layers: a concept is a direction among a layer's "
    "activations, and the test follows the class score's gradient at that layer. Load the model as a "
    "Keras file (.keras) to test concepts; input attributions and occlusion work on this one."
)


def show(model: Explainable, model_key: str, run: Path | None) -> None:
    """The tab for `model` (its identity `model_key` keys the kept results); `run`: its folder, None for a backbone."""
    if model.opaque_reason:
        st.info(OPAQUE_TEXT.format(reason=model.opaque_reason))
        return
    st.markdown(INTRO)
    run_source = runs.source_of(runs.Run(run).config()) if run else ""
    if st.session_state.get("cav_model_key") != model_key:
        # Another model: its own layers and classes (the old ones may not exist in it).
        st.session_state["cav_model_key"] = model_key
        for name in ("cav_layers", "cav_class", "cav_images_kind", "cav_random_kind"):
            st.session_state.pop(name, None)
    # Set when missing: Streamlit also drops a widget's value while its tab is closed.
    try:
        st.session_state.setdefault("cav_layers", concepts.default_layers(model))
    except ExplainError as exc:  # no spatial layer at all: nothing to test a concept at
        st.info(str(exc))
        return
    st.session_state.setdefault("cav_class", _marked_class(run_source, model.labels))
    c1, c2 = st.columns(2)
    with c1:
        concept = _concept_picker()
    with c2:
        index = st.selectbox(
            "Class",
            range(len(model.labels)),
            format_func=lambda i: model.labels[i],
            key="cav_class",
            help="type to search; the test asks whether this class's score relies on the concept",
        )
    readable = bool(concept) and _strip(concept, model)
    images = _class_images(model.labels[index], run_source)
    random = _random_picker()
    c1, c2 = st.columns([4, 1])
    layers = c1.multiselect(
        "Layers",
        model.spatial_layers(),
        key="cav_layers",
        help="three depths over the second half of the network by default, the last the layer Grad-CAM uses",
    )
    count = c2.number_input(
        "CAVs each way",
        2,
        50,
        concepts.RUNS,
        key="cav_runs",
        help="concept-vs-random and random-vs-random CAVs per layer; the paper uses at least 10",
    )
    key = (model_key, concept, index, images, random, tuple(layers), int(count))
    results = st.session_state.setdefault(RESULTS, {})
    ready = bool(readable and images and layers)
    if st.button("Run the concept test", type="primary", key="cav_go", disabled=not ready) and key not in results:
        found = _run(model, concept, model.labels[index], images, layers, int(count), random)
        if found is None:
            return
        results[key] = found
        while len(results) > KEEP:
            results.pop(next(iter(results)))
    if not layers:
        st.caption("Choose at least one layer.")
    result = results.get(key)
    if result is None:
        if ready:
            st.caption("Run the test to see whether the class relies on the concept (kept for this session).")
        return
    _result(result)


def _marked_class(run_source: str, labels: list[str]) -> int:
    """The class carrying the watermark in a run trained on marked shapes (`mark=K`), else the first."""
    try:
        parsed = sources.parse(run_source) if run_source else None
        if parsed and parsed.kind == "shapes":
            config: ShapesConfig = sources.shapes_config(parsed.value)
            if config.mark >= 0 and config.class_names[config.mark] in labels:
                return labels.index(config.class_names[config.mark])
    except ConvScopeError:
        pass  # an unreadable source: the first class will do
    return 0


def _concept_picker() -> str | None:
    kind = st.radio("Concept", [BUILTIN, UPLOAD], horizontal=True, key="cav_concept_kind")
    if kind == BUILTIN:
        name = st.selectbox(
            "Built-in concept",
            CONCEPTS,
            format_func=lambda n: CONCEPT_TITLES.get(n, f"{n}: the shape alone, no mark"),
            key="cav_concept",
            label_visibility="collapsed",
        )
        return concepts.BUILTIN + name
    return widgets.archive_upload(
        f"A zip of {concepts.MIN_IMAGES} to {concepts.MAX_IMAGES} images of the concept",
        "cav_concept_upload",
        f"Upload a zip of {concepts.MIN_IMAGES}-{concepts.MAX_IMAGES} example images of the concept "
        "(any folders inside; more are sampled down).",
    )


def _strip(concept: str, model: Explainable) -> bool:
    """A few of the concept's images; False (the error shown) when the set cannot serve a test."""
    try:
        with st.spinner("Reading the concept's images…"):
            shown, total, skipped = cached.concept_strip(concept, model.input_size, model.resize_policy)
    except ConvScopeError as exc:
        st.error(widgets.path_free(str(exc), concept))
        return False
    unread = f", {skipped} unreadable files skipped" if skipped else ""
    st.image(list(shown), width=72)
    st.caption(f"{len(shown)} of the concept's {total} images{unread}, at the model's {model.input_size} px input.")
    return True


def _class_images(class_name: str, run_source: str) -> str | None:
    """The class's images as a source: the run's data, a labelled dataset, or a zip of just this class."""
    if not run_source:
        st.info(
            f"This model comes without its training images here, so give images of {class_name!r} yourself: "
            f"a zip of them, or a labelled dataset with a folder named exactly {class_name!r}."
        )
    options = [RUN_DATA, DATASET, CLASS_ZIP] if run_source else [CLASS_ZIP, DATASET]
    kind = st.radio(
        f"Images of {class_name!r}",
        options,
        horizontal=True,
        key="cav_images_kind",
        format_func=lambda o: f"{o} ({sources.source_title(run_source)})" if o == RUN_DATA else o,
    )
    if kind == RUN_DATA:
        return run_source
    if kind == DATASET:
        return widgets.dataset_picker("cav_data")
    return widgets.archive_upload(
        f"A zip of {class_name!r} images",
        "cav_images_upload",
        f"Upload a zip of images of {class_name!r} (flat, or in one folder of any name).",
    )


def _random_picker() -> str:
    kind = st.radio(
        "Random counterexamples",
        [PHOTO_CROPS, UPLOAD],
        horizontal=True,
        key="cav_random_kind",
        help="the images the concept is told apart from; each CAV gets a different random set",
    )
    if kind == PHOTO_CROPS:
        return ""
    return (
        widgets.archive_upload(
            "A zip of random images",
            "cav_random_upload",
            "Upload a zip of varied images (more than the concept has): the sets are drawn from it.",
        )
        or ""
    )


def _run(model: Explainable, concept: str, class_name: str, images: str, layers: list, count: int, random: str):
    """The test with a progress bar: its JSON and the seconds it took, or None after showing the error."""
    bar = st.progress(0.0, text="Reading the images…")
    t0 = time.perf_counter()
    try:
        test = concepts.tcav(
            model,
            concept,
            class_name,
            images,
            layers,
            count,
            random,
            progress=lambda f: bar.progress(min(1.0, f), text=f"Concept test: {f:.0%} (CAVs and TCAV scores)"),
        )
    except ConvScopeError as exc:
        text = str(exc)
        for source in (concept, images, random):
            text = widgets.path_free(text, source) if source else text
        st.error(widgets.path_free(text))
        return None
    finally:
        bar.empty()
    return {**test.to_json(), "seconds": round(time.perf_counter() - t0, 1)}


def _result(result: dict) -> None:
    text = concepts.summary(result)
    if any(r["direction"] == "raises" for r in result["layers"]):
        st.success(text)
    else:
        st.info(text)
    st.plotly_chart(
        charts.tcav_scores(result["layers"], result["concept"], result["class_name"], concepts.SEPARABLE),
        width="stretch",
        key="cav_chart",
    )
    st.markdown("\n".join(f"- {r['meaning']}" for r in result["layers"]))
    flat = [r["layer"] for r in result["layers"] if set(r["random_scores"]) <= {0.0, 1.0}]
    if flat:
        st.caption(ALL_OR_NOTHING.format(layers=", ".join(flat)))
    used = result["images"]
    c1, c2 = st.columns([4, 1])
    c1.caption(
        f"{used['concept']} concept images, {used['class']} images of {result['class_name']!r}, random sets of "
        f"{used['random']}; {used['runs']} CAVs each way per layer; bars: mean ± one standard deviation, points: "
        f"each CAV's score; significance at {result['alpha']:g} after Bonferroni. Took {result['seconds']:.0f} s."
    )
    c2.download_button(
        "JSON",
        json.dumps(result, indent=2),
        file_name=f"tcav-{result['concept']}-{result['class_name']}.json",
        mime="application/json",
        key="cav_json",
    )
