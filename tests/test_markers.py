"""The fast tier stays fast: a test that trains, loads an ImageNet backbone, runs AppTest, opens a browser
or spawns a process is marked `slow` or `browser`, so `pytest -m "not slow and not browser"` skips it.

Read from the tests' source (AST), not by running them: a test is heavy when its body, a helper or
fixture it uses (in its module or conftest.py, followed through), or an autouse fixture does one of
the things in `_heavy`. The patterns are the common ways in; `--durations` finds the rest.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent
MARKS = {"slow", "browser"}
IMAGENET = re.compile(r"^(efficientnet_|mobilenet|inception|vgg|resnet|hub_)")  # backbones with ImageNet weights
# CLI commands that train, or load a backbone (the ImageNet one unless given a run).
CLI_HEAVY = ("train", "finetune", "lr-find", "predict", "explain", "activations", "visualize", "top-examples")
# Functions that look heavy but are not, each with why.
ALLOWED = {
    ("test_runs.py", "dead_pid"): "a `python -c pass` child, for a pid that surely is dead: a few ms",
    ("test_distribute.py", "test_a_cluster_run_cannot_be_resumed_and_says_so"): "refused before training: exit 2",
}


def _dotted(node: ast.AST) -> str:
    """`a.b.c` for a Name/Attribute chain, '' for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else ""
    return ""


def _walk(node: ast.AST):
    """ast.walk, less the bodies of `with pytest.raises(...)`: a call there is refused before it does the work."""
    yield node
    if isinstance(node, ast.With) and any(
        _dotted(getattr(i.context_expr, "func", i.context_expr)) == "pytest.raises" for i in node.items
    ):
        return
    for child in ast.iter_child_nodes(node):
        yield from _walk(child)


def _heavy(func: ast.FunctionDef) -> str:
    """What in this function's own body makes it slow, or ''."""
    for node in _walk(func):
        name = _dotted(node) if isinstance(node, ast.Name | ast.Attribute) else ""
        if name.endswith("AppTest"):
            return "runs AppTest"
        if name.startswith("subprocess.") or name in ("Popen", "sync_playwright"):
            return "spawns a process"
        if name in ("fit.train", "fit.resume", "finetune.lr_find", "lr_finder.lr_find"):
            return f"trains ({name})"
        if name.endswith(("ImageNetClassifier", "from_backbone", "explainable_backbone")):
            return f"loads an ImageNet backbone ({name})"
        if isinstance(node, ast.Call):
            called = _dotted(node.func)
            if called.endswith("JobRegistry") and not any(k.arg == "train_fn" for k in node.keywords):
                return "starts a worker process that trains"
            first = node.args[0] if node.args else None
            if (
                called.split(".")[-1] in ("load", "FeatureExtractor", "ImageNetClassifier")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
                and IMAGENET.match(first.value)
                and not any(k.arg == "weights" for k in node.keywords)
            ):
                return f"loads an ImageNet backbone ({called}({first.value!r}))"
            if isinstance(first, ast.List) and first.elts and isinstance(first.elts[0], ast.Constant):
                if called.endswith("main") and first.elts[0].value in CLI_HEAVY:
                    return f"trains or loads a backbone through the CLI ({called}([{first.elts[0].value!r}, ...]))"
    return ""


def _marks(decorators: list[ast.expr]) -> set[str]:
    """The `pytest.mark.X` names among decorators (called or not)."""
    found = set()
    for d in decorators:
        name = _dotted(d.func if isinstance(d, ast.Call) else d)
        if name.startswith("pytest.mark."):
            found.add(name.removeprefix("pytest.mark."))
    return found


def _module_marks(tree: ast.Module) -> set[str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets):
            values = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
            return _marks(values)
    return set()


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _autouse(func: ast.FunctionDef) -> bool:
    return any(
        isinstance(d, ast.Call) and any(k.arg == "autouse" and getattr(k.value, "value", False) for k in d.keywords)
        for d in func.decorator_list
    )


def unmarked(source: str, filename: str, conftest: str = "") -> list[str]:
    """'FILENAME::test_name: why' for each heavy test in `source` that has no slow or browser mark."""
    tree, shared = ast.parse(source), ast.parse(conftest)
    if _module_marks(tree) & MARKS:
        return []
    funcs = {**_functions(shared), **_functions(tree)}  # a module's own fixture wins over conftest's
    own = {name: ("" if (filename, name) in ALLOWED else _heavy(f)) for name, f in funcs.items()}
    autouse = [name for name, f in funcs.items() if _autouse(f)]

    uses = {
        name: ({n.id for n in ast.walk(f) if isinstance(n, ast.Name)} | {a.arg for a in f.args.args}) & funcs.keys()
        for name, f in funcs.items()
    }
    memo: dict[str, str] = {}

    def reason(name: str) -> str:
        """Why function `name` is heavy ('helper -> spawns a process'), following the helpers it names and the
        fixtures it asks for; '' when it is not."""
        if name not in memo:
            memo[name] = ""  # meanwhile: a circle of helpers adds nothing
            found = ((other, reason(other)) for other in sorted(uses[name] - {name}))
            memo[name] = own[name] or next((f"{other} -> {why}" for other, why in found if why), "")
        return memo[name]

    out = []
    for name, func in _functions(tree).items():
        if not name.startswith("test_") or _marks(func.decorator_list) & MARKS:
            continue
        found = reason(name) or next((f"autouse {a}: {reason(a)}" for a in autouse if reason(a)), "")
        if found:
            out.append(f"{filename}::{name}: {found}")
    return out


def test_every_heavy_test_is_marked_slow_or_browser():
    conftest = (TESTS / "conftest.py").read_text()
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        found += unmarked(path.read_text(), path.name, conftest)
    assert not found, "mark these @pytest.mark.slow (or browser) to keep the fast tier fast:\n" + "\n".join(found)


def test_the_check_finds_heavy_tests_through_helpers_and_fixtures_and_accepts_a_mark():
    conftest = "import pytest\n@pytest.fixture\ndef page():\n    return AppTest.from_file('app.py')\n"
    source = (
        "import pytest\n"
        "def helper():\n    subprocess.run(['x'])\n"
        "def test_page(page):\n    assert page\n"
        "def test_helper():\n    helper()\n"
        "def test_cli():\n    assert main(['train', 'x']) == 0\n"
        "def test_lite0():\n    load('efficientnet_lite0', image_size=96)\n"
        "def test_lite0_shape_only():\n    load('efficientnet_lite0', weights=False)\n"
        "def test_refused():\n    with pytest.raises(ValueError):\n        fit.train(bad, run)\n"
        "@pytest.mark.slow\ndef test_marked(page):\n    assert page\n"
        "def test_plain():\n    assert 1\n"
    )
    found = [line.split(":")[2] for line in unmarked(source, "test_x.py", conftest)]
    assert found == ["test_page", "test_helper", "test_cli", "test_lite0"], found
    assert unmarked("import pytest\npytestmark = pytest.mark.slow\n" + source, "test_x.py", conftest) == []
