"""The layers of ARCHITECTURE.md, kept by a test: read from the source's imports (every import,
at the top of a module or inside a function), not from what a run happens to load."""

from __future__ import annotations

import ast
import functools
import subprocess
import sys
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src" / "fashionlab"

# Each module's layer, lowest first: a module imports only from its own layer or below.
LAYERS = [
    ("foundation", {"errors", "interrupts", "records", "files", "arguments", "deadlines", "provenance", "datasets",
                    "config", "recipes", "preprocessing", "layers", "plots", "onnxshapes", "images",
                    "orientation", "urls"}),
    ("files and models", {"data", "rundir", "catalog", "modelfiles", "model", "engine", "tensorboard", "progress",
                          "onnxrun", "reports"}),
    ("stages", {"training", "calibration", "evaluation", "prediction", "runner", "export", "comparison", "ensembles",
                "tracking", "mlflowmodel", "uncertainty", "lrfind"}),
    ("packages behind extras", {"sweeps", "serve"}),
    ("front", {"cli", "notebook", "__main__"}),
]
PACKAGES = ("sweeps", "serve")  # each behind its extra; neither imports the other
FRONT = {"cli", "notebook"}  # the only modules outside a package that may import one
HEAVY = ("keras", "jax", "optuna", "fastapi", "uvicorn", "onnxruntime", "tensorflow", "pandas", "matplotlib", "mlflow")
MAX_FUNCTION_LINES = 60
NUMBERS_ONLY = {"plots", "reports"}  # they take numbers, never the workflows that make them
WORKFLOWS = {"training", "evaluation", "prediction", "runner", "comparison", "ensembles", "export", "engine", "model",
             "sweeps", "serve", "data"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "fashionlab"


def top(name: str) -> str:
    """The module or package a dotted name under fashionlab belongs to: sweeps.space -> sweeps."""
    return name.split(".")[0]


@functools.cache
def imports() -> dict[str, set[tuple[str, bool]]]:
    """Every module's fashionlab imports: (the module imported, whether at the top of the file)."""
    found: dict[str, set[tuple[str, bool]]] = {}
    for path in sorted(SOURCE.rglob("*.py")):
        here = module_name(path)
        package = here.rsplit(".", 1)[0] if "." in here or path.name == "__init__.py" else ""
        taken = found.setdefault(here, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level:  # relative: within its package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names = [".".join([*base, node.module or ""]).strip(".")]
            elif isinstance(node, ast.ImportFrom) and node.module == "fashionlab":
                names = [a.name for a in node.names]  # modules, or names the package itself holds
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fashionlab."):
                names = [node.module.removeprefix("fashionlab.")]
            elif isinstance(node, ast.Import):
                names = [a.name.removeprefix("fashionlab.") for a in node.names if a.name.startswith("fashionlab.")]
            else:
                continue
            taken |= {(name, node.col_offset == 0) for name in names if name}
    return found


def layer_of(name: str) -> int | None:
    return next((rank for rank, (_, members) in enumerate(LAYERS) if top(name) in members), None)


def test_every_module_has_a_layer():
    unplaced = [m for m in imports() if m != "fashionlab" and layer_of(m) is None]
    assert not unplaced, f"put {unplaced} in a layer of LAYERS (and of ARCHITECTURE.md)"


def test_nothing_imports_upward():
    upward = []
    for here, taken in imports().items():
        rank = layer_of(here)
        for name, _ in taken:
            there = layer_of(name)
            if rank is not None and there is not None and there > rank:
                upward.append(f"{here} ({LAYERS[rank][0]}) imports {name} ({LAYERS[there][0]})")
    assert not upward, upward


def test_packages_are_imported_only_by_the_front_and_never_by_each_other():
    wrong = [f"{here} imports {name}" for here, taken in imports().items() for name, _ in taken
             if top(name) in PACKAGES and top(here) != top(name) and here not in FRONT]
    assert not wrong, wrong


def test_plots_and_reports_take_numbers_not_workflows():
    wrong = [f"{here} imports {name}" for here, taken in imports().items() if here in NUMBERS_ONLY
             for name, _ in taken if top(name) in WORKFLOWS]
    assert not wrong, wrong


def test_no_module_takes_the_class_names_from_the_package():
    wrong = [here for here, taken in imports().items() if ("CLASS_NAMES", True) in taken or ("CLASS_NAMES", False)
             in taken]
    assert not wrong, f"{wrong}: class names come from the run, the model or the data set"


def test_no_import_cycle_among_the_modules_imported_at_the_top():
    modules = imports()
    graph = {here: {top(n) if top(n) in PACKAGES else n for n, at_top in taken if at_top and n in modules}
             for here, taken in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if not state.get(nxt) and (cycle := visit(nxt, [*path, node])):
                return cycle
        state[node] = 2
        return None

    for node in graph:
        if not state.get(node):
            assert (cycle := visit(node, [])) is None, " -> ".join(cycle)


def test_importing_the_package_and_its_packages_loads_nothing_heavy():
    code = ("import sys, fashionlab, fashionlab.cli" + "".join(f", fashionlab.{p}" for p in PACKAGES
                                                              if (SOURCE / p).is_dir())
            + f"; print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_no_function_is_over_60_lines():
    long = [f"{path.relative_to(SOURCE)}: {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for path in sorted(SOURCE.rglob("*.py")) for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, long
