"""The Dataset Explorer's Health view: likely label mistakes, outliers, near-duplicates and leaks, and their fixes.

The analysis is engine.health.analysis.analyse (cached on disk per data fingerprint, so asking again
is a file read); the fixes are engine.data.corrections (a record beside the cache: the user's files
never change). After each fix the opened dataset is dropped, so every tab sees the corrected data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from engine import runs
from engine.config import DataConfig
from engine.data import corrections
from engine.data.ingest import Dataset
from engine.errors import ConvScopeError
from engine.explain.overlay import overlay
from engine.health.analysis import analyse
from engine.health.explain import where_it_looked
from ui import cached, state, widgets

PER_PAGE = 5  # cards per kind before "show more"
GROUP_SHOWN = 6  # images drawn of one near-duplicate group (a big group would draw them tiny)
KINDS = {
    "label_issues": "🏷️ Likely label mistakes",
    "outliers": "👽 Outliers",
    "near_duplicates": "👯 Near-duplicates",
    "leaks": "💧 Leaks across splits",
}
REPORT = "health_report"  # {"key": ..., "report": dict}
WANTED = "health_wanted"  # (backbone, run name): the analysis the user asked for; redone after each fix
FLASH = "health_flash"  # what the last fix did, said once after the reload
NO_RUN = "— none: the backbone with held-out heads —"


def show(dataset: Dataset, source: str, data_config: DataConfig) -> None:
    """The whole view for an opened (corrected) dataset; `data_config` is what Train gets from the Explorer."""
    st.markdown(
        "Find images that are probably **mislabelled**, **unlike the rest** (outliers) or **the same picture "
        "twice** (near-duplicates; a **leak** when the copies sit in different splits). Each image is scored "
        "by a linear head on backbone features that never saw it. Fixes are kept beside the cache: "
        "**your files never change**, and every page and training run sees the corrected data."
    )
    _flash(dataset, source)
    c1, c2 = st.columns(2)
    with c1:
        backbone = widgets.pretrained_backbone_picker("health_backbone")
    run = _run_choice(c2, dataset, source)
    if backbone is None:
        return
    wanted = (backbone, run.name if run else None)
    if st.button("🩺 Analyse", type="primary", key="health_go", help="Seconds once the features are cached"):
        st.session_state[WANTED] = wanted
        st.session_state.pop(REPORT, None)  # score the data as it is now, fixes included
    if st.session_state.get(WANTED) != wanted:
        st.info("Press **Analyse** to score every image (the features are computed once per dataset and backbone).")
        _corrections_panel(dataset, source, data_config, run)
        return
    report = _report(dataset, source, backbone, run, data_config)
    if report is None:
        _corrections_panel(dataset, source, data_config, run)
        return
    _summary(report)
    _gallery(dataset, source, report, run)
    _corrections_panel(dataset, source, data_config, run)


# ---- choosing and running the analysis --------------------------------------------------


def _runs_on(dataset: Dataset, source: str) -> list[runs.Run]:
    """Trained runs (with a saved model) on these files, newest first (corrections since are fine)."""
    return [
        r
        for r in runs.list_runs()
        if r.model_path.is_file()
        and (r.config().get("data") or {}).get("source") == source
        and runs.same_files(r.config(), dataset)
    ]


def _run_choice(col, dataset: Dataset, source: str) -> runs.Run | None:
    found = {r.name: r for r in _runs_on(dataset, source)}
    with col:
        name = st.selectbox(
            "Explain with a trained run (optional)",
            [NO_RUN, *found],
            format_func=lambda n: n if n == NO_RUN else found[n].title(),
            key="health_run",
            help="Its model draws the maps, and leaks are measured against its own train/validation/test split.",
            disabled=not found,
        )
    return found.get(name)


def _report(dataset: Dataset, source: str, backbone: str, run: runs.Run | None, data_config: DataConfig) -> dict | None:
    """The analysis, computed with a progress bar and kept in the session until Analyse is pressed again.

    Kept across fixes (keyed by the files, not their labels), so the list does not re-score and
    reorder under the student after each click; fixed images leave it (see `_gallery`).
    """
    split = (data_config.seed, data_config.val_frac, data_config.test_frac)
    key = (dataset.files_fingerprint, backbone, run.name if run else None, split)
    held = st.session_state.get(REPORT)
    if held and held["key"] == key:
        return held["report"]
    bar = st.progress(0.0, text="Starting the analysis…")

    def progress(stage: str, done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{stage}: {done:,} of {total:,}")

    try:
        report = analyse(
            source,
            backbone,
            run=run,
            progress=progress,
            extractor=cached.feature_extractor(backbone),
            # without a run, leaks are checked on the split Train will use (the Explorer's settings)
            seed=data_config.seed,
            val_frac=data_config.val_frac,
            test_frac=data_config.test_frac,
        )
    except ConvScopeError as exc:
        bar.empty()
        st.error(widgets.path_free(str(exc), source))
        return None
    bar.empty()
    st.session_state[REPORT] = {"key": key, "report": report}
    return report


def _summary(report: dict) -> None:
    counts = report["counts"]
    cols = st.columns(5)
    cols[0].metric("Likely label mistakes", counts["label_issues"])
    cols[1].metric("Outliers", counts["outliers"])
    cols[2].metric("Near-duplicate groups", counts["near_duplicate_groups"])
    cols[3].metric("Leaks across splits", counts["leaks"])
    cols[4].metric(
        "Health score",
        f"{report['score']:.0f} / 100",
        help="The share of images nothing was flagged on (label, outlier or a copy), in percent.",
    )
    took = "from the cache" if report.get("cached") else f"in {report['seconds']['total']:.1f} s"
    st.caption(
        f"Out-of-fold accuracy **{report['oof_accuracy']:.0%}**: a linear head on {report['backbone']} features, "
        f"each of the {report['num_images']:,} images scored by one of {report['folds']} heads that never saw it. "
        f"Analysed {took}."
    )
    st.markdown(_inflation_sentence(report))


def _inflation_sentence(report: dict) -> str:
    inf = report["inflation"]
    split = f"Split: {report['split']}."
    if not inf["test_images"]:
        text = f"No test split to leak into. {split}"
    elif not inf["leaked_test_images"]:
        text = f"No test image has a copy in training or validation, so no leak inflates the test accuracy. {split}"
    else:
        text = (
            f"**{inf['leaked_test_images']} of {inf['test_images']} test images** have a copy in training or "
            f"validation: the test accuracy may be up to **{inf['at_most_points']:.1f} points** too high. {split}"
        )
    if inf.get("accuracy") is not None:
        without = inf.get("accuracy_without_leaked")
        text += f" Run {inf['run']}: test accuracy {inf['accuracy']:.1%}"
        leaked = inf["leaked_test_images"] and without is not None
        text += f", {without:.1%} without the leaked images." if leaked else "."
    elif inf.get("accuracy_note"):  # the engine's reason ends with what to do on the command line: keep the reason
        reason = widgets.path_free(inf["accuracy_note"]).split(";")[0]
        text += f" (Run {inf['run']}'s test accuracy is not shown: {reason}.)"
    return text


# ---- the gallery ------------------------------------------------------------------------------


def _gallery(dataset: Dataset, source: str, report: dict, run: runs.Run | None) -> None:
    kept = corrections.kept_paths(dataset)
    c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
    kind = c1.segmented_control(
        "Show",
        list(KINDS),
        format_func=lambda k: f"{KINDS[k]} ({len(report[k])})",
        default="label_issues",
        key="health_kind",
    )
    kind = kind or "label_issues"
    show_reviewed = c2.toggle("Show reviewed", key="health_reviewed", help="Images you marked Keep are hidden.")
    fixed = corrections.paths_with(dataset, corrections.RELABEL, corrections.EXCLUDE)
    if report["fingerprint"] != dataset.fingerprint:
        st.info(
            "These scores are from before your latest fixes, so the list stays put while you work; the images you "
            "relabelled or excluded have left it. Press **Analyse** to score the corrected data again."
        )
    rows = [r for r in report[kind] if not ({r["path"]} if "path" in r else set(r["paths"])) & fixed]
    hidden = [r for r in rows if _reviewed(r, kept)]
    if not show_reviewed:
        rows = [r for r in rows if not _reviewed(r, kept)]
    if hidden:
        st.caption(f"{len(hidden)} reviewed {'shown' if show_reviewed else 'hidden'}.")
    if not rows:
        st.success(f"Nothing to look at here: no {KINDS[kind].split(' ', 1)[1].lower()} left.")
        return
    shown = st.session_state.setdefault(f"health_n_{kind}", PER_PAGE)
    model = _explainer(report, run)
    if kind in ("label_issues", "outliers"):
        who = f"run {run.name}" if run else "the held-out head that scored the image"
        st.caption(
            f"Worst first. The maps show where {who} looked for each label (red: most), with its probability; "
            "the scores beside them come from the held-out heads."
        )
        for n, row in enumerate(rows[:shown]):
            _image_card(dataset, source, kind, n, row, model, row["path"] in kept)
    else:
        st.caption("Largest groups first. The first image of a group is the one to keep.")
        for n, group in enumerate(rows[:shown]):
            _group_card(dataset, source, kind, n, group)
    if len(rows) > shown and st.button(f"Show {min(PER_PAGE, len(rows) - shown)} more", key=f"health_more_{kind}"):
        st.session_state[f"health_n_{kind}"] = shown + PER_PAGE
        st.rerun()


def _reviewed(row: dict, kept: set[str]) -> bool:
    if "paths" in row:  # a group: reviewed once every image in it is
        return all(p in kept for p in row["paths"])
    return row["path"] in kept


def _explainer(report: dict, run: runs.Run | None):
    """The model that draws the maps (a run's, or the backbone with the report's held-out heads); None if it can't."""
    try:
        with st.spinner("Loading the model for the maps…"):
            if run is not None:
                return cached.explainable_run(str(run.path), run.model_path.stat().st_mtime)
            return cached.health_model(report["head_file"], report)
    except (ConvScopeError, OSError) as exc:
        st.warning(f"No maps: {widgets.path_free(str(exc))}")
        return None


def _maps(model, dataset: Dataset, rel: str, labels: list[str]) -> list:
    if model is None:
        return []
    try:
        return where_it_looked(model, dataset, rel, labels)
    except ConvScopeError as exc:
        st.caption(f"No map: {widgets.path_free(str(exc))}")
        return []


def _image(dataset: Dataset, rel: str, px: int = 256) -> np.ndarray:
    return cached.preview(str(dataset.root / rel), None, px)


def _neighbours(dataset: Dataset, col, row: dict) -> None:
    if not row.get("neighbours"):
        return
    col.caption("Nearest in feature space:")
    cells = col.columns(len(row["neighbours"]))
    for cell, nb in zip(cells, row["neighbours"], strict=True):
        cell.image(_image(dataset, nb["path"], 96), caption=nb["label"], width="stretch")


def _image_card(dataset: Dataset, source: str, kind: str, n: int, row: dict, model, reviewed: bool) -> None:
    rel = row["path"]
    given = row.get("given") or row["label"]
    suggested = row.get("suggested")
    labels = [given] + ([suggested] if suggested and suggested != given else [])
    with st.container(border=True):
        cols = st.columns([1, 1, 1, 2])
        cols[0].image(_image(dataset, rel), caption=rel, width="stretch")
        for col, ex in zip(cols[1:3], _maps(model, dataset, rel, labels), strict=False):
            which = "given" if ex.label == given else "suggested"
            col.image(
                overlay(ex.model_input, ex.heatmap),
                caption=f"looked for {ex.label} ({which}) · {ex.probability:.0%}",
                width="stretch",
            )
        right = cols[3]
        if kind == "label_issues":
            right.markdown(f"Filed as **{given}**, looks like **{suggested}**")
            right.caption(
                f"Label quality {row['score']:.2f} (0 worst, 1 best) · {given} {row['p_given']:.0%}, "
                f"{suggested} {row['p_suggested']:.0%}" + (" · reviewed" if reviewed else "")
            )
        else:
            right.markdown(f"**{given}**, unlike its neighbours")
            right.caption(f"Outlier score {row['score']:.2f} (0 most unusual)" + (" · reviewed" if reviewed else ""))
        _neighbours(dataset, right, row)
        _actions(dataset, source, f"{kind}_{n}", rel, given, suggested or given)


def _actions(dataset: Dataset, source: str, key: str, rel: str, given: str, default: str) -> None:
    a, b, c, d, _ = st.columns([2, 1, 1, 2, 1], vertical_alignment="bottom")
    new = a.selectbox("Relabel as", dataset.classes, index=dataset.classes.index(default), key=f"health_label_{rel}")
    if b.button("✏️ Relabel", key=f"health_relabel_{key}", disabled=new == given, type="primary"):
        _fix(dataset, source, [(rel, corrections.RELABEL, new)], f"{rel} relabelled {given} → {new}.")
    if c.button("🚫 Exclude", key=f"health_exclude_{key}", help="Leave it out of training and evaluation"):
        _fix(dataset, source, [(rel, corrections.EXCLUDE, "")], f"{rel} excluded.")
    if d.button(f"✅ Keep as {given}", key=f"health_keep_{key}", help="It is right as it is: stop showing it"):
        _fix(dataset, source, [(rel, corrections.KEEP, "")], f"{rel} kept as {given} (reviewed).")


def _group_card(dataset: Dataset, source: str, kind: str, n: int, group: dict) -> None:
    paths = group["paths"]
    with st.container(border=True):
        cells = st.columns(min(max(len(paths), 4), GROUP_SHOWN))
        shown = zip(cells, paths, group["labels"], group["splits"], strict=False)  # at most GROUP_SHOWN
        for cell, rel, label, split in shown:
            cell.image(_image(dataset, rel, 160), caption=f"{rel} · {label} · {split or 'no split'}", width="stretch")
        if len(paths) > GROUP_SHOWN:
            st.caption(f"… and {len(paths) - GROUP_SHOWN} more copies.")
        splits = sorted(set(group["splits"]) - {""})
        note = f"{len(paths)} copies of one picture"
        if len(splits) > 1:
            note += f", in {' and '.join(splits)}: a model tested on one has trained on the other"
        if len(set(group["labels"])) > 1:
            note += "; **with different labels**"
        st.markdown(note + f". Excluding keeps {paths[0]}.")
        c1, c2, _ = st.columns([3, 1, 2])
        copies = paths[1:]
        label = f"🚫 Exclude {copies[0]}" if len(copies) == 1 else f"🚫 Exclude the {len(copies)} copies"
        if c1.button(label, key=f"health_dups_{kind}_{n}"):
            _fix(
                dataset,
                source,
                [(p, corrections.EXCLUDE, "") for p in copies],
                f"{', '.join(copies)} excluded (a copy of {paths[0]}).",
            )
        if c2.button("✅ Keep all", key=f"health_keepall_{kind}_{n}", help="They are different pictures: stop showing"):
            _fix(dataset, source, [(p, corrections.KEEP, "") for p in paths], f"{len(paths)} images kept (reviewed).")


# ---- fixes, undo, history, CSV, reset ---------------------------------------------------------


def _reload(source: str, message: str) -> None:
    """Say what changed, drop the opened dataset (its fingerprint changed) and draw everything again."""
    st.session_state[FLASH] = message
    _forget_dataset(source)
    st.rerun()


def _forget_dataset(source: str) -> None:
    """Drop the session's opened dataset, so the next run opens it with the record applied."""
    st.session_state.get(state.DATASETS, {}).pop(source, None)


def _fix(dataset: Dataset, source: str, changes: list[tuple[str, str, str]], message: str) -> None:
    try:
        corrections.edit(dataset, changes)
    except ConvScopeError as exc:
        st.error(widgets.path_free(str(exc), source))
        return
    _reload(source, message)


def _undo(root, source: str) -> None:
    """An Undo button's callback: it runs before the next run, so it works where that run draws no button."""
    undone = corrections.undo(root)
    if undone:
        st.session_state[FLASH] = "Undone: " + "; ".join(_change_text(c.to_json()) for c in undone) + "."
        _forget_dataset(source)


def _change_text(c: dict) -> str:
    what = {"relabel": f"relabelled as {c['label']}", "exclude": "excluded", "keep": "kept", "clear": "back as filed"}
    return f"{c['path']} {what.get(c['action'], c['action'])}"


def _flash(dataset: Dataset, source: str) -> None:
    message = st.session_state.pop(FLASH, None)
    if not message:
        return
    c1, c2 = st.columns([5, 1], vertical_alignment="center")
    c1.success(message)
    if not message.startswith("Undone"):  # the message is said once: the click is handled by the callback
        c2.button("↩️ Undo", key="health_undo_flash", on_click=_undo, args=(dataset.root, source))


def _corrections_panel(dataset: Dataset, source: str, data_config: DataConfig, run: runs.Run | None) -> None:
    st.divider()
    made = corrections.history(dataset.root)
    summary = dataset.corrections
    head = summary.sentence() if summary and summary.sentence() else "no image relabelled or excluded"
    kept = f", {summary.kept} reviewed" if summary and summary.kept else ""
    st.markdown(f"**Corrections:** {head}{kept}. Your files are unchanged.")
    if summary and summary.stale:
        st.warning(
            f"{len(summary.stale)} correction(s) no longer match a file (changed or gone since): "
            + ", ".join(summary.stale[:5])
        )
    c1, c2, c3 = st.columns(3)
    c1.button("↩️ Undo the last fix", key="health_undo", disabled=not made, on_click=_undo, args=(dataset.root, source))
    c2.download_button(
        "⬇️ Corrections as CSV",
        corrections.to_csv(dataset),
        file_name="corrections.csv",
        mime="text/csv",
        key="health_csv_out",
        disabled=not made,
        help="Apply them to another copy of this data (upload below there).",
    )
    changed = bool(summary and summary.changes_data)
    if c3.button(
        "🏋️ Train on the corrected data",
        key="health_train",
        type="primary",
        disabled=not changed,
        help="Opens Train with these data settings" if changed else "Relabel or exclude an image first",
    ):
        _train(data_config, run)
    if made:
        with st.expander(f"Fixes made ({len(made)})"):
            st.dataframe(
                pd.DataFrame(
                    [
                        {"fix": e["edit"], "image": c["path"], "action": c["action"], "new label": c["label"]}
                        for e in made
                        for c in e["changes"]
                    ]
                ),
                hide_index=True,
                width="stretch",
            )
    with st.expander("Apply a corrections CSV"):
        upload = st.file_uploader("corrections.csv", type=["csv"], key="health_csv_in")
        if upload is not None and st.button("Apply", key="health_csv_apply"):
            try:
                number, skipped = corrections.from_csv(dataset, upload.getvalue().decode("utf-8", "replace"))
            except ConvScopeError as exc:
                st.error(widgets.path_free(str(exc), source))
            else:
                note = f" {len(skipped)} row(s) skipped (no such file here, or other content)." if skipped else ""
                if number:
                    _reload(source, f"Applied the CSV.{note}")
                st.warning(f"Nothing applied.{note}")
    if made:
        with st.expander("Reset all corrections"):
            st.warning("This forgets every relabel, exclusion and review of this dataset.")
            sure = st.checkbox("Yes, forget them all", key="health_reset_sure")
            if st.button("Reset all", key="health_reset", disabled=not sure):
                n = corrections.reset(dataset.root)
                st.session_state.pop("health_reset_sure", None)
                _reload(source, f"Reset: {n} correction(s) forgotten; the data is as filed.")


def _train(data_config: DataConfig, run: runs.Run | None) -> None:
    """Open Train with the Explorer's data settings; a chosen run's split and augmentation, so the two compare."""
    config = data_config
    if run is not None and run.train_config is not None:
        config = run.train_config.data
        state.set_chosen_backbone(run.train_config.backbone)
    state.set_data_config(config)
    state.set_train_job(None)  # Train opens on "Set up a run", not on an old job
    st.switch_page("pages/train.py")
