"""'Where it looked, epoch by epoch': a run's timeline as a slider over epochs and a grid of maps (Train, Fine-tune).

The recording is engine.training.timeline's; reading it, the grid and the pointing game are
engine.explain.timeline's; the chart is engine.charts'. This only draws them.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from engine import charts, runs
from engine.explain import timeline as reader
from engine.runs import timeline as store

COLUMNS = 6
EXPLAINED = (
    "After every epoch, Grad-CAM of the model being trained for the same few validation images (two per "
    "class, chosen when the run started), at the class it predicted then: drag the slider to see when the "
    "maps moved onto the object. A caption is green when the prediction was right."
)


@st.cache_data(max_entries=8, show_spinner=False)
def _load(run_dir: str, stamp: tuple) -> reader.Timeline:
    """The timeline as of `stamp` (its epochs and the newest file's time): a running run's grows, so it is reread."""
    return reader.load(Path(run_dir))


@st.cache_data(max_entries=64, show_spinner=False)
def _tiles(run_dir: str, stamp: tuple, index: int) -> list:
    """The overlays at one epoch, drawn once: a watched run's page redraws every second."""
    return reader.tiles(run_dir, _load(run_dir, stamp), index)


@st.cache_data(max_entries=8, show_spinner=False)
def _pointing_chart(run_dir: str, stamp: tuple, history: dict):
    """The pointing game beside the accuracy, built once per recorded epoch (a plotly figure takes ~15 ms)."""
    tl = _load(run_dir, stamp)
    return charts.pointing_curve([int(e) for e in tl.epochs], reader.pointing_game(tl), history)


def _stamp(run_dir: Path) -> tuple:
    epochs = store.recorded_epochs(run_dir)
    last = store.folder(run_dir) / f"epoch_{epochs[-1]:04d}.npz" if epochs else None
    return tuple(epochs), last.stat().st_mtime_ns if last is not None and last.exists() else 0


def _follow_last(key: str, epochs: list[int]) -> str:
    """The slider's key, its value moved to the newest epoch while it was on the newest one before (or new).

    A widget keeps its value across reruns, so without this the slider would stay at the epoch it first
    showed while the run goes on; a user who picked an earlier epoch keeps it.
    """
    shown_last = f"{key}_last"
    if st.session_state.get(key) in (None, st.session_state.get(shown_last)) or st.session_state[key] not in epochs:
        st.session_state[key] = epochs[-1]
    st.session_state[shown_last] = epochs[-1]
    return key


def timeline_section(run_dir: Path, history: dict[str, list[float]], key: str) -> None:
    """The section for the run in `run_dir`; a caption when it recorded none. `key` keeps widgets apart."""
    st.subheader("Where it looked, epoch by epoch")
    if not store.has_timeline(run_dir):
        run = runs.Run(run_dir)
        if run.config().get("timeline") is False:
            st.caption("No timeline for this run: it was trained with the timeline switched off.")
        elif run.status().get("status") in runs.ACTIVE:
            st.caption("No timeline yet: the maps appear here after the first epoch.")
        else:
            st.caption("No timeline for this run: trained before timelines existed, or ended in its first epoch.")
        return
    try:
        stamp = _stamp(run_dir)
        tl = _load(str(run_dir), stamp)
        best = runs.Run(run_dir).metrics().get("best_epoch")
    except (OSError, ValueError, reader.NoTimeline) as exc:  # a file being replaced as it is read: next redraw
        st.caption(f"The timeline could not be read just now ({type(exc).__name__}).")
        return
    st.caption(EXPLAINED)
    if best is not None and best < int(tl.epochs[-1]):
        st.caption(f"Early stopping kept the weights of epoch {best}: the saved model looks as it did then.")
    epochs = [int(e) for e in tl.epochs]
    epoch = epochs[-1]
    if len(epochs) > 1:
        epoch = st.select_slider("Epoch", epochs, key=_follow_last(f"{key}_timeline_epoch", epochs))
    index = epochs.index(epoch)
    try:
        tiles = _tiles(str(run_dir), stamp, index)
    except OSError as exc:  # the run was deleted or restarted while the page showed it
        st.caption(f"The timeline could not be read just now ({type(exc).__name__}).")
        return
    cols = st.columns(min(COLUMNS, len(tiles)))
    for k, (tile, cell) in enumerate(zip(tiles, reader.grid(tl, index), strict=True)):
        col = cols[k % len(cols)]
        col.image(tile, width="stretch")
        colour = "green" if cell["right"] else "red"
        col.markdown(f":{colour}[{cell['predicted']} {cell['probability']:.0%}]  \n:gray[is {cell['label']}]")
    pointing = reader.pointing_game(tl)
    if pointing is not None:
        chart = _pointing_chart(str(run_dir), stamp, history)
        st.plotly_chart(chart, width="stretch", key=f"{key}_timeline_pointing")
        st.caption(
            f"Pointing game at epoch {epoch}: {pointing[index]:.0%} of the images' maps peak inside the object's box."
        )
    cost = reader.cost(tl)
    if cost["share"] is not None:
        st.caption(f"Recording it cost {cost['share']:.1%} of the training time per epoch.")
