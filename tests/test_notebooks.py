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


FIGURES = (".plot(", ".mistakes(")  # the calls that return a matplotlib figure


def check_shown(notebook, figures: int):
    """Each epoch is one line updated in place, saved as readable text, and every figure cell holds an image."""
    training = next(cell for cell in notebook.cells if cell.source.startswith("run = fl.train("))
    assert "━" in text_of(training) and "val_accuracy" in text_of(training)  # a line per epoch, updated in place
    for cell in notebook.cells:  # saved as readable text: no backspaces or carriage returns (colours render)
        colourless = re.sub(r"\x1b\[[0-9;]*m", "", text_of(cell))
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", colourless), cell.source
    cells = [cell for cell in notebook.cells if cell.cell_type == "code" and any(f in cell.source for f in FIGURES)]
    assert len(cells) == figures
    assert all(any("image/png" in o.get("data", {}) for o in cell.outputs) for cell in cells)


def check_quick_epoch(notebook):
    training = next(cell for cell in notebook.cells if cell.source.startswith("run = fl.train("))
    lines = [o["data"]["text/plain"] for o in training.outputs if o.get("output_type") == "display_data"
             and o.get("data", {}).get("text/plain", "").startswith("epoch ")]
    assert len(lines) == 1 and lines[0].startswith("epoch 1/1 ━━━━━━━━━━━━━━━━━━━━ ")  # quick: one epoch


def test_the_tutorial_notebook_runs_and_prints_the_tutorials_figures(tmp_path, monkeypatch, real_data):
    monkeypatch.setenv("FASHIONLAB_QUICK", "1")
    notebook = execute(EXAMPLES / "tutorial.ipynb", tmp_path)
    shown = "\n".join(text_of(cell) for cell in notebook.cells if cell.cell_type == "code")
    for printed in ("(5000, 28, 28) (5000,)", "(55000, 28, 28) (55000,)", "(10000, 28, 28) (10000,)",
                    "2.0231433 -0.8105136", "279,410", "275,410", "4,000", "backend: jax"):
        assert printed in shown
    check_quick_epoch(notebook)
    check_shown(notebook, figures=1)
    cards = [cell for cell in notebook.cells if any("text/html" in o.get("data", {}) for o in cell.get("outputs", []))]
    assert len(cards) >= 3  # the run, the CNN run and the comparison show themselves
    assert (tmp_path / "runs" / "notebook-bn" / "results.csv").is_file()


# The tutorial's own sections, in its own words (/work/shared/reference/tutorial.md), each present in order.
TUTORIAL_SECTIONS_ZH = ("导入库", "加载数据集", "数据归一化", "model 结构搭建", "编译 model", "查看 model 信息",
                        "训练", "学习曲线", "评估 model", "预测")


def test_the_chinese_tutorial_notebook_runs_its_sections_and_prints_the_tutorials_figures(tmp_path, monkeypatch,
                                                                                        real_data):
    monkeypatch.setenv("FASHIONLAB_QUICK", "1")
    notebook = execute(EXAMPLES / "tutorial.zh-CN.ipynb", tmp_path)
    headings = [line for cell in notebook.cells if cell.cell_type == "markdown"
                for line in cell.source.splitlines() if line.startswith("#")]
    at = 0
    for section in TUTORIAL_SECTIONS_ZH:  # each after the one before
        at = next((i for i in range(at, len(headings)) if section in headings[i]), None)
        assert at is not None, f"no heading {section!r} after the previous section"
        at += 1
    shown = "\n".join(text_of(cell) for cell in notebook.cells if cell.cell_type == "code")
    for printed in ("(5000, 28, 28) (5000,)", "(55000, 28, 28) (55000,)", "(10000, 28, 28) (10000,)", "255 0",
                    "2.0231433 -0.8105136", "279,410", "275,410", "4,000", "backend: jax",
                    "sparse_categorical_crossentropy SGD 0.01"):
        assert printed in shown
    check_quick_epoch(notebook)
    check_shown(notebook, figures=3)  # the tutorial's learning curves, fashionlab's, the mistakes
    predictions = next(cell for cell in notebook.cells if cell.source.startswith("run.predict([0, 1, 2])"))
    assert re.search(r"test\[0\].*\ntest\[1\].*\ntest\[2\]", text_of(predictions))  # one row per image


@pytest.mark.parametrize("name", ["tutorial.ipynb", "tutorial.zh-CN.ipynb"])
def test_the_committed_notebooks_hold_the_outputs_of_a_whole_run(name):
    """As committed: every code cell ran, in order, every figure is there as an image, and training ran its
    10 epochs (not the quick setting)."""
    import nbformat

    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    check_shown(notebook, figures={"tutorial.ipynb": 1, "tutorial.zh-CN.ipynb": 3}[name])
    training = next(cell for cell in notebook.cells if cell.source.startswith("run = fl.train("))
    assert "epoch 10/10 " in text_of(training)
    predictions = next(cell for cell in notebook.cells if cell.source.startswith("run.predict([0, 1, 2])"))
    assert re.search(r"test\[0\] +Ankle boot.*\ntest\[1\] +Pullover.*\ntest\[2\] +Trouser", text_of(predictions))


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
