"""Fine-tune: continue a finished run with the top of its backbone unfrozen.

The page picks a parent run, shows which layers will train (the layer map),
advises where to unfreeze and at which rate, finds a learning rate, and
submits the fine-tune to the engine's job registry like any training run;
the job id is in the URL (?job=...), so a refreshed tab finds it again.

An imported Keras model (the Import page) can be a parent too: it came without
data, so the page asks for a labelled dataset (the Train page's picker), and it
has no backbone blocks, so training starts at a layer (by name or index, those
of its nested base model listed as "base_model/layer") or at its head.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from engine import charts, jobs, runs
from engine.config import OPTIMIZERS, TrainConfig
from engine.errors import ConvScopeError
from engine.explain.overlay import overlay
from engine.training import blocks, changes, finetune, presets
from ui import cached, router, timeline_view, widgets, wording

router.ensure_routed()
st.title("🎚️ Fine-tune")
st.caption(
    "Fine-tuning unfreezes the top of a trained run's backbone and trains it on at a low learning rate, so "
    "the pretrained features adapt to your data. The frozen part below is computed once per image."
)
registry = jobs.registry()
LR_MIN = 1e-7
BN_WARNING = (
    "The Keras guide's advice: keep BatchNormalization in inference mode when fine-tuning. Training it updates "
    "its moving mean and variance from your small batches, which are noisy, and undoes what the pretrained "
    "statistics learned; accuracy often drops sharply in the first epochs."
)


def _run(name: str) -> runs.Run | None:
    try:
        return runs.open_run(name, allow_path=False)
    except ConvScopeError:
        return None


def _tunable(run: runs.Run) -> bool:
    if run.status().get("status") != "finished" or not run.model_file.is_file():
        return False
    try:
        config = run.train_config
    except ConvScopeError:
        return False  # a damaged config.json: nothing to continue from
    if config is None or config.mode not in ("feature", "finetune", "imported"):
        return False
    return config.imported is None or config.imported.format == "keras"  # an imported SavedModel is opaque


@st.cache_data(show_spinner="Checking the data's classes…", max_entries=16, ttl=300)
def _imported_data_problem(path: str, mtime: float, source: str) -> str | None:
    """Why `source` cannot serve a fine-tune of the imported run at `path` (its class names), or None."""
    try:
        finetune.check_data(runs.Run(Path(path)), source)
    except ConvScopeError as exc:
        return str(exc)
    return None


def _mtime(run: runs.Run) -> float:
    return run.model_file.stat().st_mtime


# ---- which run, which job ----------------------------------------------------------

job_id = st.query_params.get("job")
child = _run(job_id) if job_id else None
wanted = st.query_params.get("run") or (child.parent_name if child else None)
candidates = [r for r in runs.list_runs() if _tunable(r)]
names = [r.name for r in candidates]
if wanted and wanted not in names:
    asked = _run(wanted)
    if asked is None:
        st.error(f"No run called {wanted!r} here.")
    else:
        try:
            finetune.parent_of(str(asked.path))
            st.warning(f"{wanted} has not finished yet; pick a finished run.")
        except ConvScopeError as exc:
            st.error(widgets.path_free(str(exc)))
if not candidates:
    st.info(
        "No finished run to fine-tune yet: train one on the Train page first (feature extraction), "
        "or import a Keras model of your own."
    )
    st.page_link("pages/train.py", label="Train a run", icon="🏋️")
    st.stop()


def _label(name: str) -> str:
    s = runs.summary(runs.Run(Path(next(r.path for r in candidates if r.name == name))))
    val = f", val {s['val_accuracy']:.1%}" if s.get("val_accuracy") is not None else ""
    return f"{name} ({s['mode']}{val})"


def _picked() -> None:
    st.query_params["run"] = st.session_state["ft_parent"]


if wanted in names and st.session_state.get("ft_parent") != wanted:
    st.session_state["ft_parent"] = wanted  # the URL (a link from Train, a refresh) picks the run
name = st.selectbox("Run to fine-tune", names, format_func=_label, key="ft_parent", on_change=_picked)
parent = next(r for r in candidates if r.name == name)
config = parent.train_config
backbone = config.backbone
imported = config.imported is not None  # a model of the user's (or a fine-tune of one): no blocks, layers by name
try:
    finetune.parent_of(str(parent.path))
    model = cached.run_classifier(str(parent.path), _mtime(parent))
except ConvScopeError as exc:
    st.error(widgets.path_free(str(exc)))
    st.stop()
source = ""  # the labelled data an imported model is fine-tuned on ("": the parent's own)
if config.mode == "imported":
    st.subheader("Data")
    st.caption(
        f"This model came without its training data: choose a labelled dataset whose class folders are named as "
        f"its classes ({', '.join(parent.labels())}), in any order. The fine-tune splits it into training, "
        "validation and test images with its own seed."
    )
    use_import = bool(config.data.source) and st.toggle(
        f"Use the data given at import ({widgets.path_free(config.data.source)})", True, key="ft_import_data"
    )
    source = config.data.source if use_import else (widgets.dataset_picker("ft_data") or "")
    if source:
        data_problem = _imported_data_problem(str(parent.path), _mtime(parent), source)
    else:
        data_problem = "choose a labelled dataset to fine-tune on"
        st.info("Choose a labelled dataset above to fine-tune this model on.")
else:
    data_problem = cached.parent_data_problem(str(parent.path), _mtime(parent))
if data_problem and (source or config.mode != "imported"):
    st.error(f"This run cannot be fine-tuned now: {widgets.path_free(data_problem)}")
metrics = parent.metrics()
parent_lr = config.learning_rate
units = finetune.units(model)
if imported:
    # where training may start: the head, or any layer with weights (two_logits, a fixed map, never trains)
    trainable_blocks = ["head", *(u.name for u in units if u.layer.weights and u.name != "two_logits")]
    base = finetune.base_of(model)
    inside = [u.name for u in units if base is not None and u.outer == base.name and u.layer.weights]
    default_from = inside[-1] if inside else "head"
else:
    groups = finetune.model_blocks(model, backbone)
    trainable_blocks = [g.name for g in groups if g.name != blocks.STEM]  # the last is the head
    default_from = trainable_blocks[-3] if len(trainable_blocks) > 2 else trainable_blocks[0]
c1, c2, c3 = st.columns(3)
if imported:
    c1.metric("Imported model", config.imported.file)
else:
    c1.metric("Backbone", backbone)
if metrics.get("val_accuracy") is not None:
    c2.metric("Validation accuracy now", f"{metrics['val_accuracy']:.1%}")
if metrics.get("test_accuracy") is not None:
    c3.metric("Test accuracy now", f"{metrics['test_accuracy']:.1%}")

# ---- the advice ----------------------------------------------------------------------

k = f"_{parent.name}"  # per-parent widget keys: another run starts from its own defaults


def _fill_from(job_config: TrainConfig) -> None:
    """Set the form to a fine-tune's own settings (a reattached job's: after a reload the form had defaults)."""
    ft = job_config.finetune
    ss = st.session_state
    top = ft.unfreeze_top
    where = trainable_blocks[-1 - top] if 0 < top < len(trainable_blocks) else ft.unfreeze_from
    if where in trainable_blocks:
        ss["ft_from" + k], ss["ft_layer" + k] = where, ""
    elif where:
        ss["ft_layer" + k] = where
    ss["ft_lr" + k] = min(max(job_config.learning_rate, LR_MIN), 1.0)
    ss["ft_optimizer" + k] = job_config.optimizer
    ss["ft_bn" + k] = ft.bn == "train"
    ss["ft_epochs"] = min(max(job_config.epochs, 1), 200)
    ss["ft_decay"] = min(max(ft.layer_decay, 0.5), 1.0)
    ss["ft_warmup"] = min(max(ft.warmup, 0.0), 0.3)
    ss["ft_preset" + k] = job_config.preset


job_config = child.train_config if child else None
ours = job_config is not None and job_config.finetune is not None and child.parent_name == parent.name
if ours and st.session_state.get("ft_filled") != child.name:
    st.session_state["ft_filled"] = child.name  # once: the user may change the form for a next fine-tune
    _fill_from(job_config)
st.session_state.setdefault("ft_from" + k, default_from)
st.session_state.setdefault("ft_lr" + k, parent_lr / 10)

st.subheader("Strategy")
if job_config and job_config.finetune:
    st.caption(
        f"The form starts from the settings of fine-tune {child.name}; changing it sets up a new fine-tune. "
        "The settings that fine-tune uses are listed in its panel below."
    )
if imported:
    advice = None  # the advice counts backbone blocks, which an imported model does not have
    st.caption(
        "An imported model has no backbone blocks: choose the first layer that trains below, as the TensorFlow "
        "tutorial does (`base_model.layers[fine_tune_at:]`), or train only its head."
    )
else:
    try:
        advice = cached.finetune_advice(str(parent.path), _mtime(parent))
    except ConvScopeError as exc:
        advice = None
        st.caption(f"No advice for this run: {widgets.path_free(str(exc))}")
if advice is not None:
    top = max(1, min(advice["unfreeze_top"], len(trainable_blocks) - 1))

    def _use_advice() -> None:
        st.session_state["ft_from" + k] = trainable_blocks[-1 - top]
        st.session_state["ft_lr" + k] = parent_lr * advice["lr_factor"]
        st.session_state["ft_layer" + k] = ""
        st.session_state["ft_bn" + k] = False
        st.session_state["ft_preset" + k] = ""

    box = st.container(border=True)
    box.markdown(f"**{advice['title']}**")
    box.write(advice["reason"])
    box.button(
        f"Use this advice: the top {top} block{'s' if top > 1 else ''}, rate {parent_lr * advice['lr_factor']:.0e}",
        key="ft_use_advice",
        on_click=_use_advice,
    )
fits = [p for p in presets.FINETUNE_PRESETS.values() if p.backbone == backbone]
for preset in fits:

    def _use_recipe(preset=preset) -> None:
        st.session_state["ft_layer" + k] = preset.unfreeze_from
        st.session_state["ft_lr" + k] = preset.learning_rate or parent_lr / 10
        st.session_state["ft_optimizer" + k] = preset.optimizer or config.optimizer
        st.session_state["ft_epochs"] = preset.epochs
        st.session_state["ft_preset" + k] = preset.name

    r1, r2 = st.columns([3, 1])
    r1.caption(f"Recipe for {backbone}: **{preset.title}** ({preset.note}). Published: {preset.published}.")
    r2.button("Use this recipe", key=f"ft_recipe_{preset.name}", on_click=_use_recipe)

# ---- what will train -------------------------------------------------------------------

st.subheader("What will train")
left, right = st.columns([2, 3])
with left:
    if imported:
        start_block = st.selectbox(
            "Train from this layer up",
            trainable_blocks,
            key="ft_from" + k,
            help="Everything below stays frozen. Layers of a nested model are named `model/layer`; "
            "`head` trains only what comes after the base model.",
        )
        index_help = (
            f"An index into {base.name}.layers, as the tutorial's `{base.name}.layers[fine_tune_at:]`"
            if base is not None
            else "An index into the model's layers"
        ) + "; negative counts from the end."
    else:
        start_block = st.select_slider(
            "Train from this block up",
            trainable_blocks,
            key="ft_from" + k,
            help="Everything below stays frozen, as it was pretrained. The head always trains.",
        )
        index_help = "As the Keras tutorial counts layers: 100 trains layers 100 and up; -15 the backbone's last 15."
    layer_text = st.text_input(
        "…or from a layer (name or index)",
        key="ft_layer" + k,
        placeholder=f"e.g. {units[len(units) * 3 // 4].name} or 100",
        help=index_help,
    )
    train_bn = st.toggle("Train BatchNorm statistics", key="ft_bn" + k)
    if train_bn:
        st.warning(BN_WARNING)
bn = "train" if train_bn else "frozen"
where = layer_text.strip() or start_block
try:
    first = finetune.first_trainable(model, backbone, finetune.FinetuneConfig(parent="-", unfreeze_from=where))
except ConvScopeError as exc:
    # A typo in the layer box must not hide the rest of the page (a running fine-tune's live panel):
    # say so, and show the block slider's choice until it is fixed; Start stays off meanwhile.
    st.error(f"{widgets.path_free(str(exc))}. Showing the choice above, {start_block}, until it is fixed.")
    where, bad_layer = start_block, True
    first = finetune.first_trainable(model, backbone, finetune.FinetuneConfig(parent="-", unfreeze_from=where))
else:
    bad_layer = False
counts = finetune.counts(model, first, bn)
rows = finetune.layer_map(model, backbone, first, bn)
with left:
    m1, m2 = st.columns(2)
    m1.metric("Trainable parameters", f"{counts['trainable']:,}")
    m2.metric("Frozen parameters", f"{counts['non_trainable']:,}")
    st.caption(f"Training starts at layer {first}: `{units[first].name}`.")
with right:
    st.plotly_chart(charts.layer_map(finetune.block_rows(rows)), width="stretch", key="ft_layer_map")
with st.expander(f"Every layer ({len(rows)}), grouped by {'nested model' if imported else 'block'}"):
    table = pd.DataFrame(rows)[["index", "block", "layer", "type", "output_shape", "params", "trainable"]]
    grey = "color: #9e9e9e"
    st.dataframe(
        table.style.apply(lambda r: ["" if r["trainable"] else grey] * len(r), axis=1),
        hide_index=True,
        width="stretch",
        column_config={"trainable": st.column_config.CheckboxColumn("trains")},
    )

# ---- how fast ---------------------------------------------------------------------------

st.subheader("How fast")
c1, c2, c3 = st.columns(3)
epochs = c1.number_input("Epochs", 1, 200, 10, key="ft_epochs", help="Counted on from the parent's epochs.")
optimizer = c2.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(config.optimizer), key="ft_optimizer" + k)
lr = c3.number_input(
    "Learning rate (peak)",
    LR_MIN,
    1.0,
    key="ft_lr" + k,
    format="%.1e",
    step=1e-5,
    help=f"Default: the parent's rate ({parent_lr:g}) / 10. It warms up over the first steps, then decays.",
)
with st.expander("Advanced"):
    a1, a2 = st.columns(2)
    if imported:
        decay = 1.0
        a1.caption("Layer-wise rate decay scales the rate per backbone block; an imported model has none.")
    else:
        decay = a1.slider(
            "Layer-wise rate decay",
            0.5,
            1.0,
            1.0,
            0.05,
            key="ft_decay",
            help="The head trains at the full rate, each block below at this factor of the one above. 1: off.",
        )
    warmup = a2.slider("Warm-up (share of the steps)", 0.0, 0.3, 0.1, 0.05, key="ft_warmup")
    timeline = a1.checkbox(
        "Record where it looked",
        True,
        key="ft_timeline",
        help="After every epoch, Grad-CAM of the parent's timeline images (or two validation images per class), "
        "kept with the run and shown below the curves; it costs a few percent of an epoch.",
    )


def _config():
    config = finetune.finetune_config(
        parent,
        unfreeze_from=where,
        epochs=int(epochs),
        learning_rate=float(lr),
        optimizer=optimizer,
        bn=bn,
        layer_decay=float(decay),
        warmup=float(warmup),
        preset=st.session_state.get("ft_preset" + k, ""),
        source=source,
    )
    return replace(config, timeline=bool(timeline))


finder_key = (parent.name, first, bn, optimizer, source)
found = st.session_state.get("ft_finder")
if st.button(
    "🔎 Find a learning rate",
    key="ft_find",
    disabled=bool(data_problem),
    help="A sweep of up to 100 batches on a copy (this run is not changed). The first time, the frozen part "
    "runs once over every image; the fine-tune reuses that cache.",
):
    bar = st.progress(0.0, text="Learning-rate sweep…")

    def _sweep_progress(p: dict) -> None:
        if "done" in p and p.get("total"):
            what = "Learning-rate sweep: step" if p.get("stage") == "sweep" else p.get("message", p.get("stage"))
            bar.progress(min(p["done"] / p["total"], 1.0), text=f"{what} {p['done']} of {p['total']}")

    try:
        # In a worker process like training (engine.jobs.worker): never in this server.
        result = registry.call("lr_find", {"config": _config().to_json(), "steps": 100}, _sweep_progress)
    except ConvScopeError as exc:
        bar.empty()
        st.error(widgets.path_free(str(exc)))
    else:
        bar.empty()
        found = st.session_state["ft_finder"] = {"key": finder_key, "result": result}
if found and found["key"] == finder_key:
    result = found["result"]
    st.plotly_chart(
        charts.lr_finder(result["lrs"], result["losses"], result["steepest"], result["min_over_10"], chosen=lr),
        width="stretch",
        key="ft_finder_chart",
    )

    def _use(value: float) -> None:
        st.session_state["ft_lr" + k] = min(max(float(value), LR_MIN), 1.0)  # within the rate box's range

    b1, b2 = st.columns(2)
    for col, name, label, value in (
        (b1, "steepest", "steepest descent", result["steepest"]),
        (b2, "min", "minimum ÷ 10", result["min_over_10"]),
    ):
        if value:
            col.button(f"Use {label}: {value:.1e}", key=f"ft_use_{name}", on_click=_use, args=(value,))
    st.caption("The loss against the learning rate on this setup, smoothed. Pick a rate where it falls fastest.")

# ---- start -----------------------------------------------------------------------------

busy = bool(child and child.status().get("status") in runs.ACTIVE)
if st.button("🎚️ Start fine-tuning", type="primary", key="ft_start", disabled=busy or bad_layer or bool(data_problem)):
    try:
        job = registry.submit(_config())
    except ConvScopeError as exc:
        st.error(widgets.path_free(str(exc)))
    else:
        st.query_params["job"] = job.id
        st.query_params["run"] = parent.name
        st.rerun()

# ---- the fine-tune, live and finished -------------------------------------------------------


def _panel(job: str) -> None:
    snap = widgets.job_snapshot(job)
    if snap is None:
        st.warning(f"No fine-tune called {job!r} here any more.")
        return
    run = runs.Run(Path(snap["run_dir"]))
    child_config = run.train_config  # None while it is queued
    parent_run = run.parent or parent
    active = snap["status"] in runs.ACTIVE
    head, stop_col = st.columns([4, 1])
    head.subheader(f"Fine-tune {snap['id']}")
    if active and not snap.get("on_disk"):
        stop_col.button("⏹ Stop", key=f"ft_stop_{job}", on_click=registry.stop, args=(job,), type="primary")
    if active:
        widgets.job_progress(snap)
    else:
        icon = {"finished": "✅", "stopped": "⏹", "failed": "❌"}.get(snap["status"], "")
        text = f"{icon} {snap['status'].capitalize()}" + (f": {snap['reason']}" if snap["reason"] else "")
        (st.error if snap["status"] == "failed" else st.success)(text)
        widgets.following_caption(snap)
    if child_config and child_config.finetune:  # what this job really uses, from its run (not the form above)
        with st.container(border=True, key=f"ft_settings_{job}"):
            st.markdown(f"**Settings of this fine-tune** ({snap['id']})")
            used = finetune.settings_of(run.config())
            st.markdown(" · ".join(f"{name}: **{value}**" for name, value in used.items()))
    before = run.parent_epochs()
    history = snap["history"] or {}
    own = {key: values[before:] for key, values in history.items()}
    st.plotly_chart(
        charts.finetune_curves(
            parent_run.history(),
            own,
            parent_run.metrics().get("val_accuracy"),
            child_epochs=child_config.epochs if child_config else None,
        ),
        width="stretch",
        key=f"ft_curves_{job}",
    )
    timeline_view.timeline_section(run.path, history, key=f"ft_{job}")
    widgets.rerun_when_done(snap, "ft_seen")


def _results(parent_run: runs.Run, run: runs.Run, following: bool = False) -> None:
    before, after = parent_run.metrics(), run.metrics()
    st.subheader("Before and after")
    cols = st.columns(2)
    shown = ((cols[0], "val_accuracy", "Validation accuracy"), (cols[1], "test_accuracy", "Test accuracy"))
    for col, key, label in shown:
        if after.get(key) is not None:
            delta = None if before.get(key) is None else wording.points(before[key], after[key])
            was = (
                f"before fine-tuning: {before[key]:.1%}"
                if before.get(key) is not None
                else "not measured before fine-tuning (an imported model came without this data's splits)"
            )
            col.metric(label, f"{after[key]:.1%}", delta, help=was)
    changed = None
    if following and not (run.path / "changes.json").is_file():
        # the worker measures it right after the run finished: not twice, and not in the server
        st.info("⏳ Measuring what changed in each block, in the background: it shows here when done.")
    else:
        with st.spinner("Measuring what changed in each block…"):
            try:
                changed = changes.what_changed(parent_run, run)
            except (ConvScopeError, OSError) as exc:
                st.error(widgets.path_free(str(exc)))
    if changed:
        st.markdown("**What changed, block by block**")
        st.plotly_chart(charts.what_changed(changed["blocks"]), width="stretch", key="ft_changed")
        st.caption(
            "Weight change: how far each block's weights moved, relative to their size. CKA: how similar the "
            "block's features are before and after on the same images (1 = the same)."
        )
        proj, names = changed["projection"], run.labels()
        st.plotly_chart(
            charts.projection_pair(
                np.asarray(proj["before"]["xy"]),
                np.asarray(proj["after"]["xy"]),
                [names[i] for i in proj.get("labels", [])],  # class names; changes.json keeps indices
                names,
                proj["before"]["knn"],
                proj["after"]["knn"],
            ),
            width="stretch",
            key="ft_projection",
        )
        st.caption("The features the head sees, projected to 2-D, before and after: the classes should separate.")
    _cams(parent_run, run)
    _pointing(parent_run, run)
    l1, l2, l3 = st.columns(3)
    l1.page_link("pages/inside.py", label="Look inside the fine-tuned model", icon="🔍", query_params={"run": run.name})
    l2.page_link(
        "pages/inside.py", label="Look inside the model before", icon="🔍", query_params={"run": parent_run.name}
    )
    l3.page_link("pages/evaluate.py", label="Evaluate the fine-tuned model", icon="📊", query_params={"run": run.name})


def _cams(parent_run: runs.Run, run: runs.Run) -> None:
    from engine.explain import explain_image

    st.markdown("**Where it looked (Grad-CAM), before and after**")
    images, labels = cached.probe_images_of(str(run.path), 4)
    models = [cached.explainable_run(str(r.path), _mtime(r)) for r in (parent_run, run)]
    cols, names = st.columns(len(images)), run.labels()
    for col, rgb, label in zip(cols, images, labels, strict=True):
        for model, when in zip(models, ("before", "after"), strict=True):
            target = model.labels.index(names[label])
            result = explain_image(model, rgb, "gradcam", target)
            col.image(
                overlay(result.model_input, result.heatmap, 0.5),
                caption=f"{when}: {result.label} {result.probability:.0%}",
                width="stretch",
            )


def _pointing(parent_run: runs.Run, run: runs.Run) -> None:
    source = run.train_config.data.source
    if not source.startswith("shapes"):
        return
    from engine.explain import checks

    st.markdown("**Pointing game on the shapes** (does the map's peak fall inside the object's box?)")
    kept = st.session_state.get("ft_pointing")
    if st.button("Measure it before and after", key="ft_point"):
        shapes, items = cached.shapes_test_items(str(run.path))
        bar = st.progress(0.0, text="Grad-CAM on the test images…")
        rates = []
        for i, r in enumerate((parent_run, run)):
            model = cached.explainable_run(str(r.path), _mtime(r))
            out = checks.localisation(
                model,
                shapes,
                items,
                ["gradcam"],
                progress=lambda d, t, i=i: bar.progress((i + d / t) / 2, text=f"Model {i + 1} of 2: image {d} of {t}"),
            )
            rates.append(out)
        bar.empty()
        kept = st.session_state["ft_pointing"] = {"run": run.name, "rates": rates}
    if kept and kept["run"] == run.name:
        b, a = (x["hit_rate"]["gradcam"] for x in kept["rates"])
        p1, p2, p3 = st.columns(3)
        p1.metric("Before", f"{b:.0%}")
        p2.metric("After", f"{a:.0%}", wording.points(b, a, digits=0))
        p3.metric("Chance", f"{kept['rates'][1]['chance']:.0%}", help="the boxes' mean share of the image")
        st.caption(f"On {kept['rates'][1]['n']} test images of the shapes set.")


if job_id:
    snap = widgets.job_snapshot(job_id)
    st.fragment(_panel, run_every=1.0 if widgets.job_live(snap) else None)(job_id)
    if snap and snap["status"] == "finished" and child is not None:
        parent_of_child = child.parent
        if parent_of_child is not None:
            _results(parent_of_child, child, bool(snap.get("following")))
