"""The example notebooks, run top to bottom in a real Jupyter kernel, in their quick setting
(FASHIONLAB_QUICK=1: one epoch on 2,000 training images per run); a failing cell fails the test."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.realdata

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def execute(path: Path, cwd: Path):
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return notebook


def text_of(cell) -> str:
    """What a code cell printed or showed as text."""
    parts = []
    for output in cell.get("outputs", []):
        parts.append(output.get("text", ""))
        parts.append(output.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_the_tutorial_notebook_runs_and_prints_the_tutorials_figures(tmp_path, monkeypatch, real_data):
    monkeypatch.setenv("FASHIONLAB_QUICK", "1")
    notebook = execute(EXAMPLES / "tutorial.ipynb", tmp_path)
    shown = "\n".join(text_of(cell) for cell in notebook.cells if cell.cell_type == "code")
    for printed in ("(5000, 28, 28) (5000,)", "(55000, 28, 28) (55000,)", "(10000, 28, 28) (10000,)",
                    "2.0231433 -0.8105136", "279,410", "275,410", "4,000", "backend: jax"):
        assert printed in shown
    training = next(cell for cell in notebook.cells if cell.source.startswith("run = fl.train("))
    assert "━" in text_of(training) and "val_accuracy" in text_of(training)  # a line per epoch, updated in place
    lines = [o["data"]["text/plain"] for o in training.outputs if o.get("output_type") == "display_data"
             and o.get("data", {}).get("text/plain", "").startswith("epoch ")]
    assert len(lines) == 1 and lines[0].startswith("epoch 1/1 ━━━━━━━━━━━━━━━━━━━━ ")  # quick: one epoch
    for cell in notebook.cells:  # saved as readable text: no backspaces or carriage returns (colours render)
        colourless = re.sub(r"\x1b\[[0-9;]*m", "", text_of(cell))
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", colourless), cell.source
    figures = [cell for cell in notebook.cells if cell.cell_type == "code" and ".mistakes(" in cell.source]
    assert figures and all(any("image/png" in o.get("data", {}) for o in cell.outputs) for cell in figures)
    cards = [cell for cell in notebook.cells if any("text/html" in o.get("data", {}) for o in cell.get("outputs", []))]
    assert len(cards) >= 3  # the run, the CNN run and the comparison show themselves
    assert (tmp_path / "runs" / "notebook-bn" / "results.csv").is_file()


def test_figures_show_once_inline_and_leave_the_notebooks_own_matplotlib_alone(tmp_path, tiny_run, synthetic):
    """A figure a notebook call returns shows once, as an image, with `%matplotlib inline` or
    without; a card does not switch the kernel's backend: the user's own plt.plot() still shows."""
    import nbformat

    cells = ["import fashionlab as fl\nimport matplotlib\nbefore = matplotlib.get_backend()",
             f"run = fl.Run.open({str(tiny_run.run.path)!r})\nrun",
             "run.plot()",
             "import matplotlib.pyplot as plt\nprint(before == matplotlib.get_backend(), plt.get_fignums())",
             "%matplotlib inline\nrun.plot()",
             "plt.plot([1, 2, 3])\nplt.show()"]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    nbformat.write(notebook, tmp_path / "figures.ipynb")
    ran = execute(tmp_path / "figures.ipynb", tmp_path)
    images = [sum("image/png" in o.get("data", {}) for o in cell.outputs) for cell in ran.cells]
    assert images == [0, 0, 1, 0, 1, 1]  # the card is HTML with its figure inside; each figure once
    assert text_of(ran.cells[3]).strip() == "True []"  # the kernel's backend as it was, no figure of pyplot's
