"""The sweeps package as a whole: the names it gives, its layers (each module imports only those
below it), and what a sweep says without Optuna. tests/test_architecture.py keeps its place among
the others (light to import, used only by the CLI and the notebook API, apart from serve)."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent.parent / "src" / "fashionlab"
# The package's modules from the bottom up: each imports only those before it.
LAYERS = ["space", "storage", "study", "trials", "results", "recovery", "claims", "run", "sharing"]


def imported(path: Path) -> set[str]:
    """The fashionlab modules (and names in them) a file imports, anywhere in it, functions included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name == "fashionlab" or name.startswith("fashionlab.")}


def test_the_package_gives_the_names_its_users_take():
    import fashionlab.sweeps as package
    from fashionlab.sweeps.results import load_sweep
    from fashionlab.sweeps.run import MAX_TRIALS, sweep

    assert (package.sweep, package.load_sweep, package.MAX_TRIALS) == (sweep, load_sweep, MAX_TRIALS)
    assert set(package.SAMPLERS) == {"tpe", "random"} and set(package.PRUNERS) == {"median", "halving", "none"}
    with pytest.raises(AttributeError, match="has no attribute 'swep'"):
        package.swep  # noqa: B018


def test_each_module_imports_only_the_layers_below_it_and_never_the_server_or_uploads():
    assert sorted(p.stem for p in (SOURCE / "sweeps").glob("*.py") if p.stem != "__init__") == sorted(LAYERS)
    for i, name in enumerate(LAYERS):
        uses = imported(SOURCE / "sweeps" / f"{name}.py")
        below = {use.split(".")[2] for use in uses if use.startswith("fashionlab.sweeps.")}
        assert below <= set(LAYERS[:i]), f"sweeps/{name}.py imports {sorted(below - set(LAYERS[:i]))}"
        assert "fashionlab.sweeps" not in uses, f"sweeps/{name}.py imports its own package"
        banned = [use for use in uses if use.startswith(("fashionlab.serve", "fashionlab.uploads"))]
        assert not banned, f"sweeps/{name}.py imports {banned}"


def test_fl_sweep_is_the_notebook_call_once_the_package_is_imported():
    import fashionlab as fl
    import fashionlab.sweeps  # noqa: F401  (Python puts an imported package on its parent under its name)
    from fashionlab import notebook
    from fashionlab.errors import ConfigError

    assert fl.sweep is notebook.sweep  # the package's name is not the function's
    with pytest.raises(ConfigError, match="`space` must be a path \\(str or Path\\), got int 42"):
        fl.sweep(42)


def test_without_optuna_a_sweep_says_which_extra_to_install(tmp_path):
    space = tmp_path / "space.toml"
    space.write_text('[search]\nwidth = [8, 16]\n')
    code = ("import sys; sys.modules['optuna'] = None; from fashionlab.cli import main; "
            f"sys.exit(main(['sweep', {str(space)!r}, '--out', {str(tmp_path / 'out')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.strip() == ("fashionlab: error: a sweep needs the optuna package: "
                                                          "pip install 'fashionlab[sweep]'")
    assert not (tmp_path / "out").exists()
