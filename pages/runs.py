"""Runs: every training run in one table; rename, delete, compare side by side, and a backbone bake-off."""

from pathlib import Path

import pandas as pd
import streamlit as st

from engine import charts, jobs, runs
from engine.backbones.conventions import TITLES
from engine.config import TrainConfig
from engine.data.ingest import Summary
from engine.errors import ConvScopeError
from engine.jobs import bakeoff
from ui import router, state, widgets, wording

router.ensure_routed()
st.title("🗃️ Runs")
c1, c2 = st.columns([4, 1], vertical_alignment="center")
c1.caption("Every run with its numbers; compare runs side by side, or train several backbones on the same data.")
c2.page_link("pages/import_model.py", label="Import a model", icon="📥", help="Bring a .keras file from a notebook")

STATUS_ICONS = {"finished": "✅", "running": "🏃", "queued": "⏳", "stopped": "⏸️", "failed": "❌"}


def title_of(row: dict) -> str:
    return row["display_name"] or row["name"]


def epochs_text(row: dict) -> str:
    """ "3/10" epochs run of those planned; "—" for an imported model (trained elsewhere)."""
    return "—" if row["mode"] == "imported" else f"{row['epochs_run']}/{row['epochs'] or '?'}"


def fixes_text(row: dict) -> str:
    """What the Health tab's corrections changed in the run's data: "2 relabelled, 1 excluded", or "none"."""
    c = row.get("corrections") or {}
    return Summary(int(c.get("relabelled", 0)), int(c.get("excluded", 0))).sentence() or "none"


def frame(rows: list[dict]) -> pd.DataFrame:
    """Summary rows as the table users read: their words, percentages, no server paths."""
    return pd.DataFrame(
        {
            "run": [title_of(r) for r in rows],
            "status": [f"{STATUS_ICONS.get(r['status'], '')} {r['status']}" for r in rows],
            "backbone": [r["backbone"] for r in rows],
            "mode": [r["mode"] for r in rows],
            "parent": [r["parent"] or "" for r in rows],
            "image px": [r["image_size"] for r in rows],
            "data fixes": [fixes_text(r) for r in rows],
            "epochs": [epochs_text(r) for r in rows],
            "val acc (kept model)": [r["kept_val_accuracy"] for r in rows],
            "best val acc": [r["best_val_accuracy"] for r in rows],
            "final val acc": [r["final_val_accuracy"] for r in rows],
            "test acc": [r["test_accuracy"] for r in rows],
            "params (M)": [(r["params"] or {}).get("total", 0) / 1e6 or None for r in rows],
            "train time (s)": [r["train_seconds"] for r in rows],
            "latency (ms)": [r["latency_ms"] for r in rows],
            "folder": [r["name"] for r in rows],
        }
    )


def side_by_side(rows: list[dict]) -> pd.DataFrame:
    """One column per run, one row per fact, formatted for reading across."""

    def pct(v) -> str:
        return "–" if v is None else f"{v:.1%}"

    def num(v, unit: str, digits: int = 0) -> str:
        return "–" if v is None else f"{v:,.{digits}f} {unit}"

    facts = {
        "status": lambda r: r["status"],
        "backbone": lambda r: r["backbone"],
        "mode": lambda r: r["mode"],
        "parent": lambda r: r["parent"] or "–",
        "image size": lambda r: num(r["image_size"], "px"),
        "data corrections": fixes_text,
        "epochs": lambda r: "—" if r["mode"] == "imported" else f"{r['epochs_run']} of {r['epochs'] or '?'}",
        "validation accuracy (kept model)": lambda r: pct(r["kept_val_accuracy"]),
        "best validation accuracy": lambda r: pct(r["best_val_accuracy"]),
        "final validation accuracy": lambda r: pct(r["final_val_accuracy"]),
        "test accuracy": lambda r: pct(r["test_accuracy"]),
        "parameters": lambda r: num((r["params"] or {}).get("total", 0) / 1e6 or None, "M", 2),
        "trainable parameters": lambda r: (
            f"{r['params']['trainable']:,}" if "trainable" in (r["params"] or {}) else "–"
        ),
        "training time": lambda r: num(r["train_seconds"], "s"),
        "latency per image": lambda r: num(r["latency_ms"], "ms", 1),
    }
    return pd.DataFrame({title_of(r): [f(r) for f in facts.values()] for r in rows}, index=list(facts))


SMALL = st.column_config.Column(width="small")
COLUMNS = {
    "run": st.column_config.Column(width="medium"),
    **{c: SMALL for c in ("status", "mode", "parent", "image px", "epochs")},
    "data fixes": st.column_config.Column(
        help="Corrections made in the Dataset Explorer's Health tab to the data this run trained on"
    ),
    "val acc (kept model)": st.column_config.Column(
        help="The saved model's validation accuracy: early stopping keeps the epoch with the lowest validation loss"
    ),
    "best val acc": st.column_config.Column(help="The best epoch's validation accuracy (a fine-tune's own epochs)"),
    "final val acc": st.column_config.Column(help="The last epoch's validation accuracy"),
    "latency (ms)": st.column_config.Column(help="one image at a time, on this machine"),
}
# Number formats (the table is a Styler, so a missing value reads "—", not "None")
FORMATS = {
    **dict.fromkeys(("val acc (kept model)", "best val acc", "final val acc", "test acc"), "{:.1%}"),
    "image px": "{:.0f}",
    "params (M)": "{:.2f}",
    "train time (s)": "{:.0f}",
    "latency (ms)": "{:.1f}",
}

all_runs = runs.list_runs()
rows = [runs.summary(r) for r in all_runs]
by_name = {r["name"]: r for r in rows}


def export_section(row: dict, name: str) -> None:
    """Export the run in a chosen format, check it against the Keras model, and offer the file."""
    from engine.export import EXPORT_FORMATS, ExportUnavailable, as_download, export_run

    with st.expander("Export this model", icon="📦"):
        c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
        fmt = c1.selectbox(
            "Format", list(EXPORT_FORMATS), format_func=lambda f: EXPORT_FORMATS[f].title, key=f"export_format_{name}"
        )
        title = EXPORT_FORMATS[fmt].title
        done = st.session_state.setdefault("exports", {})
        if c2.button("Export and check", key="export_go", icon="📦"):
            bar = st.progress(0.0, text=f"Converting to {title}…")

            def checking(k: int, n: int) -> None:
                bar.progress(k / max(n, 1), text=f"Checking against the Keras model: {k}/{n} test images")

            try:
                done[(name, fmt)] = export_run(row["path"], fmt, progress=checking)
            except ExportUnavailable as exc:
                done[(name, fmt)] = {"unavailable": str(exc)}
            except ConvScopeError as exc:
                st.error(widgets.path_free(str(exc)))
            finally:
                bar.empty()
        result = done.get((name, fmt))
        if result is None:
            st.caption("The file is reloaded and compared with the Keras model on the run's test split.")
            return
        if "unchecked" in result:
            st.warning(widgets.path_free(result["unchecked"]))
        if "unavailable" in result:
            reason = widgets.path_free(result["unavailable"])
            st.info(f"{title} is unavailable for this model here: {reason}")
            return
        if "agreement" in result:
            m = st.columns(4)
            images = result["images"]
            m[0].metric("Top-1 agreement", f"{result['agreement']:.1%}", help=f"with Keras on {images} test images")
            change = wording.points(result["accuracy_keras"], result["accuracy"])  # percentage points, not relative
            m[1].metric("Accuracy", f"{result['accuracy']:.1%}", f"{change} vs Keras")
            m[2].metric("Size", f"{result['bytes'] / 1e6:.1f} MB")
            m[3].metric(
                "Latency",
                f"{result['latency_ms']:.1f} ms",
                f"{result['latency_ms'] - result['latency_ms_keras']:+.1f} ms vs Keras",
                delta_color="inverse",
                help="one image at a time on this server",
            )
            st.caption(f"Largest probability difference from Keras: {result['max_abs_diff']:.2g}")
            if result.get("warning"):
                st.warning(result["warning"])
        path = Path(result["path"])
        if not path.exists():  # deleted, or the run replaced since
            done.pop((name, fmt), None)
            st.info("That export is gone: export it again.")
            return
        key = (str(path), path.stat().st_mtime_ns)
        packed = st.session_state.setdefault("export_bytes", {})
        if key not in packed:  # zipping a SavedModel takes a second: once per export, not per rerun
            packed.clear()
            packed[key] = as_download(path)
        data, file_name = packed[key]
        d1, d2 = st.columns(2)
        d1.download_button(f"Download {file_name}", data, file_name=file_name, key="export_download", icon="⬇️")
        labels = Path(result.get("labels", ""))
        if labels.is_file():  # the class names, line k = output k: apps need them beside the model
            d2.download_button(
                "Download labels.txt", labels.read_bytes(), file_name="labels.txt", key="labels_download", icon="🏷️"
            )


def report_section(row: dict, name: str) -> None:
    """One click: a self-contained HTML report of the run, to download and hand on."""
    from engine.export.report import write_report

    with st.expander("One-file report", icon="📄"):
        st.caption(
            "Data, configuration, curves of every phase, test metrics, per-class table, confusion matrix, "
            "calibration, the most confident mistakes with their Grad-CAMs, and the checked exports, in one HTML "
            "file that opens offline."
        )
        written = st.session_state.setdefault("reports", {})
        if st.button("Write the report", key="report_go", icon="📄"):
            bar = st.progress(0.0, text="Writing the report…")

            def step(stage: str, k: int, n: int) -> None:
                bar.progress(k / max(n, 1), text=f"Writing the report: {stage} {k}/{n}")

            try:
                written[name] = write_report(row["path"], progress=step)["path"]
            except ConvScopeError as exc:
                st.error(widgets.path_free(str(exc)))
            finally:
                bar.empty()
        if name in written and not Path(written[name]).is_file():
            written.pop(name)  # deleted since
        if name in written:
            data = Path(written[name]).read_bytes()
            st.download_button(
                f"Download the report ({len(data) / 1e6:.1f} MB)",
                data,
                file_name=f"{name}-report.html",
                mime="text/html",
                key="report_download",
                icon="⬇️",
            )


tab_table, tab_compare, tab_bake = st.tabs(["📋 All runs", "⚖️ Compare", "🏁 Bake-off"], key="runs_tab")

with tab_table:
    if not rows:
        st.info("No runs yet: train one on the Train page, import a model of your own, or start a bake-off.")
    else:
        c1, c2, c3 = st.columns([2, 2, 2])
        text = c1.text_input("Filter", key="runs_filter", placeholder="name, backbone, mode…")
        statuses = sorted({r["status"] for r in rows})
        keep = c2.multiselect("Status", statuses, default=statuses, key="runs_status")
        modes = sorted({r["mode"] for r in rows if r["mode"]})
        keep_modes = c3.multiselect("Mode", modes, default=modes, key="runs_mode")
        shown = [
            r
            for r in rows
            if r["status"] in keep
            and (r["mode"] in keep_modes or not r["mode"])
            and text.lower() in " ".join([title_of(r), r["name"], r["backbone"], r["mode"]]).lower()
        ]
        st.caption(f"{len(shown)} of {len(rows)} runs · click a column header to sort")
        table = frame(shown)
        if not table["parent"].any():
            table = table.drop(columns=["parent"])  # no fine-tunes: an empty column is only noise
        busy = [r["status"] in runs.ACTIVE for r in shown]
        st.dataframe(
            widgets.dashed(table, FORMATS, busy, ("val acc (kept model)", "test acc", "train time (s)")),
            hide_index=True,
            column_config=COLUMNS,
            width="stretch",
            key="runs_table",
        )

        missing = [r for r in rows if r["has_model"] and r["latency_ms"] is None]
        if missing and st.button(f"Measure the latency of {len(missing)} run(s)", key="measure_latency", icon="⏱️"):
            bar = st.progress(0.0, text="Measuring…")
            for k, r in enumerate(missing):
                try:
                    # In a worker process, as after training: a timing inside the busy server is wrong.
                    jobs.registry().call("latency", {"run_dir": str(r["path"])})
                except (ConvScopeError, OSError) as exc:
                    st.warning(f"{title_of(r)}: not measured ({widgets.path_free(str(exc))})")
                bar.progress((k + 1) / len(missing), text=f"Measured {k + 1} of {len(missing)}")
            st.rerun()

        st.subheader("One run")
        names = [r["name"] for r in rows]
        wanted = st.query_params.get("run")  # another page's link (Import a model) names a run: open it once
        if wanted in names and st.session_state.get("manage_run_wanted") != wanted:
            st.session_state["manage_run_wanted"] = wanted
            st.session_state["manage_run"] = wanted
        if st.session_state.get("manage_run") not in names:
            st.session_state["manage_run"] = names[0]
        name = st.selectbox("Run", names, format_func=lambda n: title_of(by_name[n]), key="manage_run")
        row = by_name[name]
        run = runs.Run(all_runs[names.index(name)].path)
        if row["imported"] and row["status"] == "finished":
            found = row["imported"]
            preprocess = TITLES.get(found.get("preprocess", ""), found.get("preprocess", "?"))
            st.caption(
                f"Imported from {found.get('file', '?')}: preprocessing {preprocess} "
                f"({found.get('preprocess_reason', '')})"
            )
        elif row["reason"] or row["detail"]:
            st.caption(widgets.path_free(row["detail"] or row["reason"]))
        links = st.columns(4)
        if row["has_model"]:
            links[0].page_link("pages/evaluate.py", label="Evaluate", icon="📊", query_params={"run": name})
            links[1].page_link("pages/inside.py", label="Look inside", icon="🔍", query_params={"run": name})
            if row["status"] == "finished":
                links[2].page_link("pages/finetune.py", label="Fine-tune", icon="🎚️", query_params={"run": name})
        if row["mode"] == "imported":  # not trained here: where it came from instead of the Train page
            links[3].page_link("pages/import_model.py", label="Import another", icon="📥")
        else:
            links[3].page_link("pages/train.py", label="Open in Train", icon="🏋️", query_params={"job": name})

        # A form: the name and the click arrive together (a button disabled until the text box committed
        # its value took two clicks in a browser: the first only committed the text).
        with st.form(f"rename_form_{name}", border=False):
            c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
            new_name = c1.text_input("Display name", value=row["display_name"], key=f"rename_{name}", max_chars=80)
            renamed = c2.form_submit_button("Rename", key="rename")
        if renamed and new_name.strip() != row["display_name"]:
            try:
                runs.rename(run, new_name)
            except ConvScopeError as exc:
                st.error(widgets.path_free(str(exc)))
            else:
                st.toast(f"Renamed to {new_name.strip()}")
                st.rerun()

        if row["has_model"] and row["status"] in ("finished", "stopped"):
            export_section(row, name)
            report_section(row, name)

        active = row["status"] in runs.ACTIVE
        with st.expander("Delete this run", icon="🗑️"):
            if active:
                st.info("This run is queued or training: stop it on the Train page first.")
            else:
                st.warning(f"This deletes **{title_of(row)}**: its model, curves and checkpoints. It cannot be undone.")
                sure = st.checkbox("Yes, delete it", key=f"sure_{name}")
                if st.button("Delete", key="delete", type="primary", disabled=not sure):
                    try:
                        runs.delete(run)
                    except ConvScopeError as exc:
                        st.error(widgets.path_free(str(exc)))
                    else:
                        st.session_state.pop("manage_run", None)
                        st.toast(f"Deleted {title_of(row)}")
                        st.rerun()

with tab_compare:
    finished = [r["name"] for r in rows if r["epochs_run"]]
    if len(finished) < 2:
        st.info("Compare needs at least two runs with finished epochs.")
    else:
        picked = st.multiselect(
            "Runs to compare",
            finished,
            default=finished[: min(3, len(finished))],
            format_func=lambda n: title_of(by_name[n]),
            key="compare_runs",
        )
        if picked:
            chosen = [by_name[n] for n in picked]
            histories, starts = {}, {}
            for r in chosen:
                run = runs.Run(all_runs[[x["name"] for x in rows].index(r["name"])].path)
                # A fine-tune's history.json starts with its parent's epochs: draw its own, after them.
                histories[title_of(r)] = run.own_history()
                starts[title_of(r)] = run.parent_epochs()
            st.plotly_chart(charts.runs_curves(histories, starts), width="stretch", key="compare_curves")
            facts = side_by_side(chosen)
            st.dataframe(facts, width="stretch", height=36 * (len(facts) + 1) + 2, key="compare_table")
            if len({fixes_text(r) for r in chosen}) > 1:
                st.caption(
                    "These runs trained on differently corrected data, so each test accuracy was measured on its "
                    "own labels (and an excluded image left its test split). For a like-for-like figure, evaluate "
                    "each run on the data as it is now on the Predict & evaluate page: the test images are the same."
                )
            scatter = [
                {
                    "title": title_of(r),  # as the curves name it (a name suffix can be the same for two runs)
                    "accuracy": r["test_accuracy"] if r["test_accuracy"] is not None else r["val_accuracy"],
                    "latency_ms": r["latency_ms"],
                    "backbone": r["backbone"],
                }
                for r in chosen
            ]
            if any(s["latency_ms"] for s in scatter):
                st.plotly_chart(charts.accuracy_latency(scatter), width="stretch", key="compare_scatter")
                st.caption("Test accuracy (validation where a run has no test split) against latency per image.")
            else:
                st.caption("No latency measured for these runs yet: measure it under All runs.")

with tab_bake:
    st.markdown(
        "Train a head on each backbone with **the same data and settings**, as queued jobs, "
        "then compare accuracy and speed. The data is the one chosen in the Dataset Explorer."
    )
    usable = bakeoff.usable()
    data = state.data_config()
    st.caption(f"Data: {widgets.path_free(state.display_name(data.source), data.source)} · {data.image_size} px")
    picked = st.multiselect("Backbones", usable, default=usable, key="bake_backbones")
    c1, c2 = st.columns(2)
    epochs = c1.number_input("Epochs at most (early stopping on)", 1, 500, 200, key="bake_epochs")
    seed = c2.number_input("Seed", 0, 10_000, 0, key="bake_seed")
    if st.button("Start the bake-off", key="bake_start", icon="🏁", disabled=len(picked) < 2, type="primary"):
        try:
            record = bakeoff.start(TrainConfig(data=data, epochs=int(epochs), seed=int(seed)), picked)
        except ConvScopeError as exc:
            st.error(widgets.path_free(str(exc)))
        else:
            st.session_state["bakeoff"] = record["id"]
            st.toast(f"Queued {len(record['runs'])} runs")
    records = bakeoff.list_bakeoffs()
    if records:
        ids = [r["id"] for r in records]
        if st.session_state.get("bakeoff") not in ids:
            st.session_state["bakeoff"] = ids[0]
        chosen_id = st.selectbox("Bake-off", ids, key="bakeoff")
        live = any(r["status"] in runs.ACTIVE for r in bakeoff.table(bakeoff.load(chosen_id)))

        @st.fragment(run_every=3 if live else None)
        def bake_table() -> None:
            rows = bakeoff.table(bakeoff.load(chosen_id))
            st.dataframe(
                frame(rows).drop(columns=["parent", "mode"]),
                hide_index=True,
                column_config=COLUMNS,
                width="stretch",
                key="bake_table",
            )
            done = [r for r in rows if r["status"] == "finished"]
            waiting = len(rows) - len(done)
            if waiting:
                st.caption(f"{len(done)} of {len(rows)} finished; the table fills in as they do.")
            points = [
                {
                    "title": r["backbone"],
                    "accuracy": r["test_accuracy"],
                    "latency_ms": r["latency_ms"],
                    "backbone": r["backbone"],
                }
                for r in done
            ]
            if any(p["latency_ms"] for p in points):
                st.plotly_chart(charts.accuracy_latency(points), width="stretch", key="bake_scatter")

        bake_table()
