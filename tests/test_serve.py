"""The serve package (src/fashionlab/serve) as a whole: light to import, apart from the other
sub-systems, used only by the CLI and the notebook API, in functions short enough to read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "fashionlab"
PACKAGE = SRC / "serve"
HEAVY = ("fastapi", "starlette", "uvicorn", "keras", "jax", "jaxlib", "onnxruntime", "optuna")
MAX_FUNCTION_LINES = 60


def imported_modules(path: Path) -> set[str]:
    """The modules a source file imports, wherever the import stands (in functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_importing_the_package_imports_no_web_framework_nor_model_library():
    code = f"import sys, fashionlab.serve; print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)}))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert loaded.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_the_package_imports_no_sweep_module(path):
    sweeps = {m for m in imported_modules(path) if m.startswith(("fashionlab.sweeps", "fashionlab.sweep"))}
    assert not sweeps, f"serve/{path.name} imports {sorted(sweeps)}"


def test_only_the_cli_and_the_notebook_api_import_the_package():
    users = {path.relative_to(SRC).as_posix() for path in SRC.rglob("*.py")
             if PACKAGE not in path.parents and any(m == "fashionlab.serve" or m.startswith("fashionlab.serve.")
                                                    for m in imported_modules(path))}
    assert users <= {"cli.py", "notebook.py"}, users


@pytest.mark.parametrize("path", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_no_function_of_the_package_is_over_60_lines(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [f"{node.name} ({node.end_lineno - node.lineno + 1} lines)" for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"serve/{path.name}: {long}"
