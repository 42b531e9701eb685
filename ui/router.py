"""Make every page go through app.py's st.navigation router.

Streamlit still supports the old `pages/` folder convention: in a fresh
server process, until some session has run app.py (which calls
st.navigation), a request for a page URL such as /datasets runs that page
file alone, without the shared sidebar and with the legacy page list.
Each page calls `ensure_routed()` first; in that case it switches the
process to the st.navigation behaviour and runs app.py in place (which runs
the page again, properly routed), then stops, so widget events such as a
button click are not lost to a rerun.
"""

from __future__ import annotations

import runpy
from pathlib import Path

import streamlit as st
from streamlit.runtime.pages_manager import PagesManager

APP = Path(__file__).resolve().parents[1] / "app.py"


def ensure_routed() -> None:
    if PagesManager.uses_pages_directory:
        PagesManager.uses_pages_directory = False  # what st.navigation itself sets
        runpy.run_path(str(APP), run_name="__main__")
        st.stop()
