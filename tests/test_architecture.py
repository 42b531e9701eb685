"""The engine's structure (issue 21): layers without circles, small files, imports at the top.

- the import-linter contracts in pyproject.toml hold (the layer order, drawn in the README);
- no import circle between engine modules at module level;
- an import inside a function body is only for a heavy optional dependency, and says so in a
  comment on its line ("# heavy: ..." or "# optional: ..."), never to dodge a circle;
- no engine file is over 500 lines, and engine/__main__.py is a few lines.
"""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENGINE = ROOT / "engine"
MAX_LINES = 500
REASONS = ("# heavy", "# optional")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _files() -> list[Path]:
    return sorted(ENGINE.rglob("*.py"))


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The engine modules an import statement names (a `from pkg import sub` names pkg.sub when it is one)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.startswith("engine")]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("engine"):
        return []
    subs = [f"{target}.{alias.name}" for alias in node.names]
    subs = [
        s
        for s in subs
        if (ROOT / Path(*s.split("."))).with_suffix(".py").is_file() or (ROOT / Path(*s.split("."))).is_dir()
    ]
    # `from pkg import sub` runs pkg/__init__ too, but a package that imports its own parts is no circle.
    return subs if len(subs) == len(node.names) else [target, *subs]


def _function_imports(tree: ast.AST) -> list[ast.stmt]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found += [sub for sub in ast.walk(node) if isinstance(sub, (ast.Import, ast.ImportFrom))]
    return found


def test_the_import_linter_contracts_hold():
    """lint-imports with pyproject.toml's contracts: the layers, and no streamlit in the engine."""
    cli = pytest.importorskip("importlinter.cli")
    assert cli.lint_imports(config_filename=str(ROOT / "pyproject.toml")) == 0, "lint-imports: a contract is broken"


def test_no_import_circle_between_engine_modules():
    graph: dict[str, set[str]] = {}
    for path in _files():
        module, tree = _module(path), ast.parse(path.read_text())
        inside = {id(n) for n in _function_imports(tree)}
        graph[module] = {
            target
            for node in ast.walk(tree)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in inside
            for target in _imported(node, module, path.name == "__init__.py")
            if target != module
        }
    # A package's __init__ that re-exports its submodules is not a circle with them: only
    # submodule -> package edges that the package's __init__ itself reaches back count.
    circles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt]
                if not all(b.startswith(a + ".") or a.startswith(b + ".") for a, b in pairwise(cycle)):
                    circles.append(" -> ".join(cycle))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_imports_inside_functions_are_only_commented_heavy_or_optional_dependencies():
    bad = []
    for path in _files():
        lines = path.read_text().splitlines()
        for node in _function_imports(ast.parse("\n".join(lines))):
            text = " ".join(lines[node.lineno - 1 : node.end_lineno])
            engine = any(n.startswith("engine") for n in _imported(node, _module(path), path.name == "__init__.py"))
            if engine or not any(reason in text for reason in REASONS):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {lines[node.lineno - 1].strip()}")
    assert not bad, (
        f"{len(bad)} imports inside functions (engine modules, or no '# heavy'/'# optional' reason):\n" + "\n".join(bad)
    )


def test_no_engine_file_is_over_500_lines_and_main_is_a_few():
    long = {str(p.relative_to(ROOT)): n for p in _files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"engine files over {MAX_LINES} lines: {long}"
    assert len((ENGINE / "__main__.py").read_text().splitlines()) < 50
