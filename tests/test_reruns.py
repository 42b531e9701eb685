"""RELIABILITY 29: broad `except` blocks never swallow Streamlit's rerun and stop exceptions.

Streamlit stops or restarts a script by raising RerunException / StopException inside any st.* call,
and engine code calls back into the page (progress callbacks), so a handler anywhere on that path
that caught them would keep a stale script running. They derive from BaseException only, so
`except Exception` is safe; a bare `except:` or `except BaseException` must raise again.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOO_BROAD = {"BaseException", "ScriptControlException", "RerunException", "StopException"}


def test_streamlits_control_exceptions_are_not_caught_by_except_exception():
    from streamlit.runtime.scriptrunner import RerunException, StopException

    for kind in (RerunException, StopException):
        assert issubclass(kind, BaseException) and not issubclass(kind, Exception), kind


def _caught(handler: ast.ExceptHandler) -> set[str]:
    if handler.type is None:
        return {"BaseException"}  # a bare except
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {k.attr if isinstance(k, ast.Attribute) else getattr(k, "id", "") for k in kinds}


def broad_handlers_that_swallow(source: str, name: str = "<string>") -> list[int]:
    """Line numbers of handlers catching BaseException (or Streamlit's control exceptions) without a bare raise."""
    out = []
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.ExceptHandler) and _caught(node) & TOO_BROAD:
            reraises = any(isinstance(s, ast.Raise) and s.exc is None for s in node.body)
            if not reraises:
                out.append(node.lineno)
    return out


def test_the_scan_finds_a_swallowing_handler():
    assert broad_handlers_that_swallow("try:\n    f()\nexcept:\n    pass\n") == [3]
    assert broad_handlers_that_swallow("try:\n    f()\nexcept (ValueError, BaseException):\n    log()\n") == [3]
    assert broad_handlers_that_swallow("try:\n    f()\nexcept BaseException:\n    clean()\n    raise\n") == []
    assert broad_handlers_that_swallow("try:\n    f()\nexcept Exception:\n    pass\n") == []


def test_no_handler_in_the_app_or_the_engine_swallows_a_rerun():
    files = [ROOT / "app.py", *(p for d in ("engine", "ui", "pages") for p in (ROOT / d).rglob("*.py"))]
    found = {
        f"{p.relative_to(ROOT)}:{line}" for p in files for line in broad_handlers_that_swallow(p.read_text(), str(p))
    }
    assert not found, f"these handlers catch Streamlit's rerun/stop exceptions and do not raise again: {sorted(found)}"
