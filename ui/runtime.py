"""Process-wide adjustments of the Streamlit server, made once by app.py."""

from __future__ import annotations

from streamlit.runtime.scriptrunner import script_runner


def keep_keras_state() -> None:
    """Stop Streamlit from calling `keras.backend.clear_session()` after every script run.

    Streamlit does it for notebooks-turned-apps that rebuild their model on every rerun. Here every
    session of the server shares cached models (ui/cached.py), and `clear_session` resets Keras's
    global state for all threads (layer names, dtype policy, TensorFlow's kernel cache) while other
    sessions build gradient models from them, then runs a full `gc.collect()`: a page that polls a
    job every second spent about 0.3 s of the server's CPU per poll on it (issue 20). Matplotlib
    figures are still closed, as Streamlit does.
    """
    clean = script_runner._clean_problem_modules
    if getattr(clean, "keeps_keras", False):
        return

    def clean_but_keras() -> None:
        import sys

        if "matplotlib.pyplot" in sys.modules:
            try:
                sys.modules["matplotlib.pyplot"].close("all")
            except Exception:  # noqa: BLE001, S110 - as Streamlit: a figure left open must not fail the page
                pass

    clean_but_keras.keeps_keras = True
    clean_but_keras.streamlit_original = clean  # for the test that this still works around something
    script_runner._clean_problem_modules = clean_but_keras
