"""Errors in one place: every engine error class is in engine/errors.py, under ConvScopeError (not ValueError)."""

import ast
import inspect
from pathlib import Path

from engine import errors

ENGINE = Path(__file__).resolve().parents[1] / "engine"


def test_every_error_class_is_defined_in_errors_py():
    elsewhere = []
    for path in ENGINE.rglob("*.py"):
        if path.name == "errors.py" and path.parent == ENGINE:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and (
                node.name.endswith("Error") or any(ast.unparse(b).endswith("Error") for b in node.bases)
            ):
                elsewhere.append(f"{path.relative_to(ENGINE.parent)}:{node.lineno} {node.name}")
    assert elsewhere == [], "define error classes in engine/errors.py (import them where they are raised)"


def test_one_hierarchy_under_convscope_error():
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) > 10 and all(issubclass(c, errors.ConvScopeError) for c in classes)
    # A bare ValueError (a bug) must never pass for bad input, nor bad input for a ValueError.
    assert errors.ConvScopeError.__bases__ == (Exception,)
    assert issubclass(errors.TorchPickleError, errors.BackboneUnavailable)
