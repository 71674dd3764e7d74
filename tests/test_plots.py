import numpy as np
import pandas as pd
from helpers import assert_png

from fashionlab import plots


def history(offset: float = 0.0) -> pd.DataFrame:
    return pd.DataFrame({"epoch": [1, 2, 3], "loss": [1.0, 0.7, 0.5], "accuracy": [0.6, 0.7, 0.8],
                         "val_loss": [0.9, 0.6 + offset, 0.5], "val_accuracy": [0.6, 0.75 + offset, 0.8]})


def test_learning_curves_have_the_tutorial_axes(tmp_path):
    fig = plots.learning_curves_figure(history(), "t")
    ax = fig.axes[0]
    assert ax.get_ylim() == (0.0, 1.0)
    assert [line.get_label() for line in ax.get_lines()] == ["loss", "accuracy", "val_loss", "val_accuracy"]
    plots.save_png(fig, tmp_path / "c.png")
    assert_png(tmp_path / "c.png", 700, 450)


def test_comparison_curves_show_mean_and_band():
    fig = plots.comparison_curves_figure({"a": [history(), history(0.05)], "b": [history(-0.1)]})
    accuracy_axes = fig.axes[0]
    mean_a = accuracy_axes.get_lines()[0].get_ydata()
    np.testing.assert_allclose(mean_a, [0.6, 0.775, 0.8])
    assert len(accuracy_axes.collections) == 2  # one band per variant
    assert fig.axes[1].get_yscale() == "log"
    assert_png(plots.png_bytes(fig), 1000, 400)


def test_confusion_matrix_renders():
    assert_png(plots.png_bytes(plots.confusion_figure(np.eye(10, dtype=int) * 5)), 600, 500)
