"""Train: set up a run, watch it live, stop it, and find every run again.

Training happens in the engine's job registry (a background worker), never in
this script: the page only submits jobs and draws their snapshots. The job id
is in the URL (?job=...), so a refreshed or reopened tab finds it again.
"""

import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import streamlit as st

from engine import backbones, charts, jobs, runs
from engine.config import (
    DEFAULT_HEAD_L2,
    OPTIMIZERS,
    TRAIN_MODES,
    AugmentConfig,
    HeadConfig,
    TrainConfig,
    mode_defaults,
)
from engine.data import sources
from engine.data.splits import split_dataset
from engine.errors import ConvScopeError
from engine.training import fit, presets
from ui import cached, router, state, timeline_view, widgets

router.ensure_routed()
st.title("🏋️ Train")
registry = jobs.registry()

LEARNING_RATES = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 1.0, 10.0]
L2_PENALTIES = [0.0, 1e-4, 1e-3, 1e-2]
IMAGE_SIZES = [32, 48, 64, 96, 128, 160, 192, 224, 240, 260, 299, 320]
SCRATCH = ["small_cnn", "alexnet"]
FINETUNE_PAGE = Path(__file__).with_name("finetune.py")  # mentioned only once it exists
VAL_ABOVE_TRAIN = (
    "Training metrics are averaged over the epoch while the model is still learning, on augmented images "
    "and with dropout on; validation is measured at the end of the epoch on clean images. So the validation "
    "curve can sit above the training one, especially early on."
)

# ---- which job this tab shows: the URL first, then this session's last one -------------
job_id = st.query_params.get("job") or state.train_job()
if job_id:
    st.query_params["job"] = job_id
    state.set_train_job(job_id)


def _apply_preset() -> None:
    """Copy a preset's choices into the widgets (runs before they are drawn)."""
    name = st.session_state["train_preset"]
    if name not in presets.PRESETS:
        return
    p = presets.PRESETS[name]
    ss = st.session_state
    ss["train_mode"] = p.mode
    row = next(r for r in cached.backbone_rows() if r["name"] == p.backbone)
    if row["available"]:
        ss["train_backbone" if p.mode == "feature" else "train_scratch"] = p.backbone
        ss.pop("train_preset_note", None)
    else:  # keep a backbone that loads, and say why the recipe's own cannot
        ss["train_preset_note"] = (
            f"{p.name} uses {row['title']}, which cannot load here: {row['reason']}. "
            "Its other settings are applied; pick a backbone that loads below."
        )
    ss["train_size"], ss["train_epochs"], ss["train_batch"] = p.image_size, p.epochs, p.batch_size
    ss["train_optimizer"], ss["train_lr"] = p.optimizer, p.learning_rate
    ss["train_hidden"] = ",".join(map(str, p.head.hidden))
    ss["train_dropout"], ss["train_l2"] = p.head.dropout, p.head.l2
    ss["train_patience"], ss["train_class_weights"] = 0, False
    ss["train_size_for"], ss["train_defaults_for"] = p.backbone, p.mode
    ss["train_augment"] = p.augment.enabled
    data = state.data_config()
    state.set_data_config(replace(data, augment=p.augment, val_frac=p.val_frac, test_frac=p.test_frac))


def setup_form() -> tuple[TrainConfig, int] | None:
    """The run's settings: (a validated TrainConfig, number of classes), or None while something is missing."""
    data = state.data_config()
    source = data.source
    c1, c2 = st.columns([3, 1])
    c1.markdown(f"**Data:** {state.display_name(source)} · validation {data.val_frac:.0%} · test {data.test_frac:.0%}")
    c2.page_link("pages/datasets.py", label="Explore or change", icon="🗂️")
    with st.expander("Choose other data here"):
        other = widgets.dataset_picker("train_data")
        if other and other != source and st.button("Use this data", key="train_use_data"):
            state.set_data_config(replace(data, source=other))
            st.rerun()
    dataset = widgets.open_dataset(source)
    if dataset is None:
        return None
    if dataset.corrections and dataset.corrections.changes_data:
        st.info(
            f"Training on corrected data: {dataset.corrections.sentence()} "
            "(fixed in the Dataset Explorer's Health tab; your files are unchanged)."
        )
    for p in dataset.problems():
        st.error(f"Not ready for training: {p}")
    for w in dataset.warnings():
        st.warning(w)
    if dataset.problems():
        return None

    names = ["custom", *presets.PRESETS]
    preset = st.selectbox(
        "Start from a classic recipe",
        names,
        format_func=lambda n: "Custom settings" if n == "custom" else f"{n} · {presets.PRESETS[n].title}",
        key="train_preset",
        on_change=_apply_preset,
    )
    if preset != "custom":
        p = presets.PRESETS[preset]
        st.caption(f"{p.note}. Published: {p.published}.")
        if p.followup and FINETUNE_PAGE.is_file():
            st.page_link("pages/finetune.py", label=f"Then: {p.followup}")
        if st.session_state.get("train_preset_note"):
            st.warning(st.session_state["train_preset_note"])
    augment = augment_choice(data.augment)

    left, mid, right = st.columns(3)
    with left:
        mode = st.radio(
            "Mode",
            TRAIN_MODES,
            format_func={"feature": "Feature extraction (frozen backbone)", "scratch": "From scratch"}.get,
            key="train_mode",
            help="Feature extraction trains only a new head on a frozen pretrained backbone (its features are "
            "computed once and cached). From scratch trains a whole CNN from random weights.",
        )
        if mode == "feature":
            backbone = widgets.pretrained_backbone_picker("train_backbone")
        else:
            backbone = st.selectbox("Network", SCRATCH, key="train_scratch", format_func=_title)
        if backbone is None:
            return None
        spec = backbones.get_spec(backbone)
        if st.session_state.get("train_size_for") != backbone:  # a new backbone: its own input size
            st.session_state["train_size"] = spec.input_size if mode == "feature" else 64
            st.session_state["train_size_for"] = backbone
        size = st.select_slider("Image size (px)", IMAGE_SIZES, key="train_size")
    ss = st.session_state
    if ss.get("train_defaults_for") != mode:  # a new mode: its own schedule (engine.config.MODE_DEFAULTS)
        d = mode_defaults(mode)
        ss["train_epochs"], ss["train_lr"], ss["train_patience"] = d["epochs"], d["learning_rate"], d["early_stopping"]
        ss["train_defaults_for"] = mode
    with mid:
        epochs = st.number_input(
            "Epochs (at most)",
            1,
            1000,
            key="train_epochs",
            help="With early stopping on, a run usually ends sooner, when the validation loss stops improving.",
        )
        batch = st.select_slider("Batch size", [4, 8, 16, 32, 64, 128, 256], 32, key="train_batch")
        optimizer = st.selectbox(
            "Optimizer",
            OPTIMIZERS,
            key="train_optimizer",
            format_func=lambda o: "sgd (momentum 0.9)" if o == "sgd" else o,
        )
        lr = st.select_slider("Learning rate", LEARNING_RATES, key="train_lr", format_func=lambda v: f"{v:g}")
    with right:
        hidden = st.text_input(
            "Hidden layers in the head",
            "",
            key="train_hidden",
            disabled=mode == "scratch",
            help="Dense ReLU layers between pooling and the logits, e.g. 256 or 512,512.",
        )
        dropout = st.slider("Dropout", 0.0, 0.8, 0.0, 0.05, key="train_dropout", disabled=mode == "scratch")
        ss.setdefault("train_l2", DEFAULT_HEAD_L2)
        l2 = st.select_slider(
            "L2 penalty on the head",
            L2_PENALTIES,
            key="train_l2",
            disabled=mode == "scratch",
            format_func=lambda v: f"{v:g}" if v else "off",
            help="Keeps the head's weights small, as a logistic-regression probe does, so training converges "
            "instead of drifting; the default suits most data.",
        )
        patience = st.number_input(
            "Early stopping patience (0 = off)",
            0,
            100,
            key="train_patience",
            help="Stop after this many epochs without a better validation loss, and keep the best epoch's weights.",
        )
        weights = st.checkbox("Class weights (for unbalanced data)", key="train_class_weights")
        views = 4
        if augment.enabled and mode == "feature":
            views = st.number_input(
                "Augmented views per image",
                1,
                16,
                4,
                key="train_views",
                help="Feature mode computes this many augmented versions of each training "
                "image once; every epoch draws one of them (or the original).",
            )
        seed = st.number_input("Seed", 0, 10_000, data.seed, key="train_seed")
        timeline = st.checkbox(
            "Record where it looked",
            True,
            key="train_timeline",
            help="After every epoch, Grad-CAM of two validation images per class, kept with the run and shown "
            "below the curves; it costs a few percent of an epoch.",
        )
    try:
        config = TrainConfig(
            data=replace(data, image_size=int(size), seed=int(seed), augment=augment),
            backbone=backbone,
            mode=mode,
            head=HeadConfig.parse(hidden, dropout, float(l2)) if mode == "feature" else HeadConfig(),
            epochs=int(epochs),
            batch_size=int(batch),
            optimizer=optimizer,
            learning_rate=float(lr),
            early_stopping=int(patience),
            class_weights=weights,
            aug_views=int(views),
            seed=int(seed),
            preset="" if preset == "custom" else preset,
            timeline=timeline,
        )
    except ConvScopeError as exc:
        st.error(str(exc))
        return None
    if mode == "scratch":  # say what to expect before the user spends minutes on it
        train_images = len(split_dataset(dataset, config.seed, data.val_frac, data.test_frac)["train"])
        outlook = fit.scratch_outlook(train_images, len(dataset.classes))
        if outlook:
            st.warning(outlook, icon="⚠️")
    return config, len(dataset.classes)


def augment_choice(augment: AugmentConfig) -> AugmentConfig:
    """The augmentation this run will use, shown, and switchable off: it comes from the Explorer or a recipe."""
    if not augment.enabled:
        st.caption(
            "Augmentation: none. Set one up in the Dataset Explorer (“Use this augmentation when training”) "
            "or start from a recipe that uses one."
        )
        return augment
    st.session_state.setdefault("train_augment", True)
    on = st.toggle(
        "Augment the training images",
        key="train_augment",
        help="Random changes to the training images, new ones every epoch; validation and test images are "
        "never augmented. Chosen in the Dataset Explorer or by a recipe; turn it off here for this run.",
    )
    st.caption(f"Augmentation {'used' if on else 'off for this run'}: {_augment_text(augment)}")
    return augment if on else AugmentConfig()


def _title(name: str) -> str:
    return backbones.get_spec(name).title


def _augment_text(augment) -> str:
    on = {k: v for k, v in augment.__dict__.items() if v not in (0, 0.0, "none")}
    return ", ".join(f"{k} {v}" for k, v in on.items()) or "none"


def show_summary(config: TrainConfig, num_classes: int) -> None:
    try:
        with st.spinner("Building the model…"):
            summary = cached.model_summary(json.dumps(config.to_json()), num_classes)
    except ConvScopeError as exc:
        st.error(str(exc))
        return
    c1, c2, c3 = st.columns(3)
    c1.metric("Parameters", f"{summary['total']:,}")
    c2.metric("Trainable", f"{summary['trainable']:,}")
    c3.metric("Non-trainable (frozen)", f"{summary['non_trainable']:,}")
    with st.expander("Model summary"):
        st.dataframe(pd.DataFrame(summary["layers"]), hide_index=True, width="stretch")


# ---- one job, live ------------------------------------------------------------------


def job_panel(job_id: str) -> None:
    snap = widgets.job_snapshot(job_id)
    if snap is None:
        st.warning(f"No run called {job_id!r} here any more.")
        return
    active = snap["status"] in runs.ACTIVE
    head, stop_col = st.columns([4, 1])
    head.subheader(f"Run {snap['id']}")
    if active:
        if snap.get("on_disk"):
            stop_col.caption("Running in another process (the CLI?)")
        elif snap.get("stopping"):
            stop_col.caption("⏹ Stopping…")
        else:  # a callback: it runs before the page redraws, which then already shows the stop
            stop_col.button(
                "⏹ Stop",
                key=f"stop_{job_id}",
                type="primary",
                help="Stops within one batch",
                on_click=registry.stop,
                args=(job_id,),
            )
        if snap.get("stopping") and snap["status"] == "running":
            st.info("⏹ Stopping: the current batch finishes, then the weights reached so far are saved…")
        widgets.job_progress(snap)
    else:
        icon = {"finished": "✅", "stopped": "⏹", "failed": "❌"}.get(snap["status"], "")
        message = f"{icon} {snap['status'].capitalize()}" + (f": {snap['reason']}" if snap["reason"] else "")
        (st.error if snap["status"] == "failed" else st.success)(message)
        widgets.following_caption(snap)
    live = snap["progress"].get("logs") if snap["progress"].get("stage") == "training" and active else None
    # While it runs the curves grow into the planned epochs (with early stopping: into the epochs done and a few
    # more); once it ended, they fill the chart.
    done = len(snap["history"].get("loss", []))
    run_config = runs.Run(Path(snap["run_dir"])).train_config if active else None  # None while queued
    patience = run_config.early_stopping if run_config else 0
    shown_epochs = charts.curve_epochs(done, snap["epochs"], patience) if active else max(1, done)
    st.plotly_chart(
        charts.training_curves(snap["history"], shown_epochs, live), width="stretch", key=f"curves_{job_id}"
    )
    st.caption("Why can validation sit above training?", help=VAL_ABOVE_TRAIN)
    if snap.get("run_dir"):
        timeline_view.timeline_section(Path(snap["run_dir"]), snap["history"], key=f"train_{job_id}")
    if not active:
        _results(runs.Run(Path(snap["run_dir"])))
    # When a job ends, and when its follow-up ends, refresh the whole page once (the runs table, the Start button).
    widgets.rerun_when_done(snap, "train_seen_status")


def _results(run: runs.Run) -> None:
    metrics = run.metrics()
    if metrics:
        c1, c2 = st.columns(2)
        for col, key, name in ((c1, "val_accuracy", "Validation accuracy"), (c2, "test_accuracy", "Test accuracy")):
            if metrics.get(key) is not None:
                col.metric(name, f"{metrics[key]:.1%}")
        split = "test" if metrics.get("test_confusion") else "validation"
        if metrics.get(f"{split}_confusion"):
            st.plotly_chart(
                charts.confusion_matrix(metrics[f"{split}_confusion"], metrics["classes"], f"Confusion ({split})"),
                width="stretch",
                key=f"confusion_{run.name}",
            )
    if run.model_file.is_file():
        st.page_link("pages/inside.py", label="Look inside this model", icon="🔍", query_params={"run": run.name})
        st.page_link(
            "pages/evaluate.py",
            label="Evaluate: per class, mistakes, calibration",
            icon="📊",
            query_params={"run": run.name},
        )
        run_config = run.train_config
        if snap_status(run) == "finished" and run_config and run_config.mode in ("feature", "finetune"):
            st.page_link("pages/finetune.py", label="Fine-tune this run", icon="🎚️", query_params={"run": run.name})
    if run.resumable():
        done = run.checkpoint_epoch()
        total = st.number_input(
            "Epochs in total",
            done + 1,
            1000,
            max(run.planned_epochs() or 10, done + 1),
            key=f"resume_epochs_{run.name}",
            help=f"{done} epoch(s) finished and checkpointed; the run goes on from there up to this many.",
        )
        if st.button(continue_label(done, int(total)), key=f"resume_{run.name}"):
            try:
                registry.resume(run, int(total))
            except ConvScopeError as exc:
                st.error(str(exc))
            else:
                st.rerun()
    elif snap_status(run) in ("stopped", "failed") and not run.checkpoint.is_file() and run.path.is_dir():
        st.caption("No epoch finished before it ended, so there is nothing to continue from: start a new run.")
    if run.path.is_dir():
        st.caption(
            f"Run name: `{run.name}` (model, checkpoints and TensorBoard logs are stored with it on the server; "
            "`python -m engine runs` there shows where)."
        )


def continue_label(done: int, total: int) -> str:
    """What the button after a stop does: 'Continue from epoch 2 of 10' after 1 finished epoch."""
    return f"▶ Continue from epoch {done + 1} of {total}"


def snap_status(run: runs.Run) -> str:
    return str(run.status().get("status", ""))


def show_job(job_id: str) -> None:
    snap = widgets.job_snapshot(job_id)
    # Redraw every second while the job is queued, running or following up; a finished job is drawn once.
    st.fragment(job_panel, run_every=1.0 if widgets.job_live(snap) else None)(job_id)


# ---- the page -----------------------------------------------------------------------

current = widgets.job_snapshot(job_id) if job_id else None
busy = bool(current and current["status"] in runs.ACTIVE)
with st.expander("Set up a run", expanded=not busy and current is None):
    picked = setup_form()
    if picked is not None:
        config, num_classes = picked
        show_summary(config, num_classes)
        others = registry.active()
        if others and not busy:
            st.caption(f"{len(others)} job(s) are training or queued on this server; yours will queue behind them.")
        if st.button(
            "🚀 Start training",
            type="primary",
            disabled=busy,
            key="train_start",
            help="Training runs on the server; you can leave this page and come back."
            if not busy
            else "Your run is still going: stop it or wait for it to finish.",
        ):
            job = registry.submit(config)
            state.set_train_job(job.id)
            st.query_params["job"] = job.id
            st.rerun()

if job_id:
    show_job(job_id)
    if not busy and st.button("Set up another run", key="train_new"):
        state.set_train_job(None)
        del st.query_params["job"]
        st.rerun()

st.subheader("Runs")
rows = [runs.summary(r) for r in runs.list_runs()]
if not rows:
    st.caption("No runs yet.")
else:
    table = pd.DataFrame(rows)[
        ["name", "status", "backbone", "mode", "epochs_run", "val_accuracy", "test_accuracy", "source", "reason"]
    ]
    # an upload's name (this session's, else the one saved beside the upload), never its cache path
    table["source"] = [
        state.display_name(r["source"]) if r["source"] in state.display_names() else sources.source_title(r["source"])
        for r in rows
    ]
    table["reason"] = [widgets.path_free(r["reason"] or "") for r in rows]
    pct = "{:.1%}"
    busy = [r["status"] in runs.ACTIVE for r in rows]
    st.dataframe(
        widgets.dashed(table, {"val_accuracy": pct, "test_accuracy": pct}, busy, ("val_accuracy", "test_accuracy")),
        hide_index=True,
        width="stretch",
        column_config={
            "val_accuracy": st.column_config.Column("val acc"),
            "test_accuracy": st.column_config.Column("test acc"),
            "epochs_run": st.column_config.NumberColumn("epochs"),
            "source": st.column_config.Column("data"),
        },
    )

    def _open_run() -> None:
        name = st.session_state.get("train_open")
        if name:
            state.set_train_job(name)
            st.query_params["job"] = name
        st.session_state["train_open"] = None

    st.selectbox(
        "Open a run",
        [r["name"] for r in rows],
        index=None,
        placeholder="Choose a run to see its curves and results",
        key="train_open",
        on_change=_open_run,
    )
