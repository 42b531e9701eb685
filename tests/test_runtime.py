"""The server's process-wide settings: Streamlit must not reset Keras or collect all garbage after every
script run (issue 20: a page polling a job each second cost the server about 0.3 s of CPU a poll)."""

import re
import sys
import types
from pathlib import Path

from streamlit.runtime.scriptrunner import script_runner

from ui import runtime

ROOT = Path(__file__).resolve().parents[1]


def test_streamlit_no_longer_clears_keras_after_a_script_run(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(backend=types.SimpleNamespace(clear_session=lambda: calls.append("cleared")))
    monkeypatch.setitem(sys.modules, "keras", fake)
    current = script_runner._clean_problem_modules
    streamlit_own = getattr(current, "streamlit_original", current)
    monkeypatch.setattr(script_runner, "_clean_problem_modules", streamlit_own)
    streamlit_own()
    assert calls == ["cleared"], "Streamlit clears Keras after each run: if not any more, drop ui/runtime.py"
    runtime.keep_keras_state()
    runtime.keep_keras_state()  # twice is once
    assert script_runner._clean_problem_modules.streamlit_original is streamlit_own
    script_runner._clean_problem_modules()
    assert calls == ["cleared"]


def test_app_py_keeps_keras_state_and_the_config_turns_off_the_collection_after_each_run():
    assert "runtime.keep_keras_state()" in (ROOT / "app.py").read_text()
    config = (ROOT / ".streamlit" / "config.toml").read_text()
    runner = re.search(r"^\[runner\]\n(.*?)(?=^\[|\Z)", config, re.S | re.M)
    assert runner and re.search(r"^postScriptGC\s*=\s*false\s*$", runner.group(1), re.M)
