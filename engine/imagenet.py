"""The 1000 ImageNet class names, read from the copy tensorflow-datasets ships.

The file is parsed as data (ast.literal_eval), without importing
tensorflow_datasets, which would pull in TensorFlow just for names.
"""

from __future__ import annotations

import ast
import importlib.util
from functools import lru_cache
from pathlib import Path

_LABELS_FILE = ("datasets", "siscore", "labels.py")
_LIST_NAME = "IMAGENET_LABELS_LIST"


@lru_cache(maxsize=1)
def imagenet_labels() -> tuple[str, ...]:
    """ImageNet-1k class names, index-aligned with the classifiers' outputs."""
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or spec.origin is None:
        raise RuntimeError("tensorflow-datasets is not installed; it ships the ImageNet class names")
    path = Path(spec.origin).parent.joinpath(*_LABELS_FILE)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == _LIST_NAME for t in node.targets):
            labels = tuple(ast.literal_eval(node.value))
            if len(labels) != 1000:
                raise RuntimeError(f"{path}: expected 1000 ImageNet names, found {len(labels)}")
            return labels
    raise RuntimeError(f"{path} has no {_LIST_NAME}; the tensorflow-datasets layout changed")


def short_label(label: str) -> str:
    """'tabby, tabby cat' -> 'tabby': the first synonym, for charts."""
    return label.split(",")[0]
