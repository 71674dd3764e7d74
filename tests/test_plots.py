import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import assert_png

from fashionlab import CLASS_NAMES, plots


def history(offset: float = 0.0, seconds=(3.0, 1.0, 1.0)) -> pd.DataFrame:
    return pd.DataFrame({"epoch": [1, 2, 3], "loss": [1.0, 0.7, 0.5], "accuracy": [0.6, 0.7, 0.8],
                         "val_loss": [0.9, 0.6 + offset, 0.5], "val_accuracy": [0.6, 0.75 + offset, 0.8],
                         "seconds": list(seconds)})


def lines(ax) -> dict:
    return {line.get_label(): line for line in ax.get_lines()}


def test_loss_and_accuracy_have_their_own_panels_with_training_and_validation(tmp_path):
    fig = plots.learning_curves_figure(history(), "t")
    loss_ax, accuracy_ax = fig.axes
    np.testing.assert_allclose(lines(loss_ax)["training"].get_ydata(), [1.0, 0.7, 0.5])
    np.testing.assert_allclose(lines(loss_ax)["validation"].get_ydata(), [0.9, 0.6, 0.5])
    np.testing.assert_allclose(lines(accuracy_ax)["validation"].get_ydata(), [0.6, 0.75, 0.8])
    assert (loss_ax.get_ylabel(), accuracy_ax.get_ylabel()) == ("loss", "accuracy")
    assert accuracy_ax.get_xlim() == (0.5, 3.5)
    plots.save_png(fig, tmp_path / "c.png")
    assert_png(tmp_path / "c.png", 700, 400)


def test_a_one_epoch_loss_above_1_is_on_the_axis():
    one = pd.DataFrame({"epoch": [1], "loss": [2.3], "accuracy": [0.3], "val_loss": [1.7], "val_accuracy": [0.45],
                        "seconds": [4.0]})
    loss_ax, accuracy_ax = plots.learning_curves_figure(one).axes
    low, high = loss_ax.get_ylim()
    assert low < 1.7 and high > 2.3 and loss_ax.get_yscale() == "linear"
    assert accuracy_ax.get_ylim()[0] < 0.3 < 0.45 < accuracy_ax.get_ylim()[1]
    assert accuracy_ax.get_xlim() == (0.5, 1.5)  # whole epochs, not 0.95..1.05
    assert [tick for tick in accuracy_ax.get_xticks() if 0.5 <= tick <= 1.5] == [1]


def test_the_best_validation_epoch_is_marked_where_validation_accuracy_peaks():
    frame = history().assign(val_accuracy=[0.6, 0.82, 0.8])  # peaks at epoch 2, the second row
    assert plots.best_epoch(frame) == 2
    assert plots.best_epoch(frame.assign(val_accuracy=[0.7, 0.9, 0.9])) == 2  # a tie: the first
    for ax in plots.learning_curves_figure(frame).axes:
        marker = lines(ax)["best validation accuracy: epoch 2"]
        assert list(marker.get_xdata()) == [2, 2]  # the vertical line
    star = [line for line in plots.learning_curves_figure(frame).axes[1].get_lines() if line.get_marker() == "*"]
    assert [(x, y) for x, y in zip(star[0].get_xdata(), star[0].get_ydata())] == [(2, 0.82)]


def test_a_loss_over_orders_of_magnitude_gets_a_log_axis_labelled_so():
    diverging = history().assign(loss=[400.0, 30.0, 2.0], val_loss=[300.0, 20.0, 1.0])
    loss_ax = plots.learning_curves_figure(diverging).axes[0]
    assert loss_ax.get_yscale() == "log" and loss_ax.get_ylabel() == "loss (log scale)"


def test_a_changing_learning_rate_gets_its_own_panel_and_a_constant_one_none():
    assert len(plots.learning_curves_figure(history().assign(learning_rate=0.01)).axes) == 2
    fig = plots.learning_curves_figure(history().assign(learning_rate=[0.1, 0.05, 0.001]))
    assert len(fig.axes) == 3 and fig.axes[2].get_title() == "learning rate"
    np.testing.assert_allclose(fig.axes[2].get_lines()[0].get_ydata(), [0.1, 0.05, 0.001])
    assert fig.axes[2].get_ylabel() == "learning rate (log scale)"


def test_accuracy_against_seconds_uses_the_summed_epoch_times():
    fig = plots.accuracy_vs_seconds_figure(history(seconds=(3.0, 1.0, 1.5)), marks=(0.75, 0.9))
    ax = fig.axes[0]
    curve = lines(ax)["validation accuracy"]
    np.testing.assert_allclose(curve.get_xdata(), [3.0, 4.0, 5.5])
    np.testing.assert_allclose(curve.get_ydata(), [0.6, 0.75, 0.8])
    marks = [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert marks == [0.75]  # 0.9 is above every value: not drawn, the axis stays on the data
    assert "seconds" in ax.get_xlabel() and ax.get_xlim()[0] == 0
    assert_png(plots.png_bytes(fig), 600, 350)


def test_rows_are_normalised_by_the_true_class():
    matrix = np.zeros((10, 10), dtype=int)
    matrix[0, 0], matrix[0, 1] = 90, 10  # 100 T-shirts: 90% right
    matrix[1, 1], matrix[1, 0] = 10, 30  # 40 trousers: 25% right, 75% called T-shirts
    shares = plots.row_normalised(matrix)
    np.testing.assert_allclose(shares[0, :2], [0.9, 0.1])
    np.testing.assert_allclose(shares[1, :2], [0.75, 0.25])  # by column it would read 30/120 and 10/20
    assert (shares[2:] == 0).all()  # classes without images: zeros, not NaN
    fig = plots.confusion_figure(matrix, CLASS_NAMES)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), shares)
    assert ax.images[0].get_clim() == (0, 1)
    cells = {text.get_position(): text.get_text() for text in ax.texts}
    assert (cells[(0, 1)], cells[(1, 0)], cells[(1, 1)]) == ("75", "10", "25")  # (x=column, y=row)
    assert (2, 2) not in cells  # empty cells stay blank
    assert [label.get_text() for label in ax.get_yticklabels()][:2] == [f"{CLASS_NAMES[0]} (100)",
                                                                         f"{CLASS_NAMES[1]} (40)"]
    assert_png(plots.png_bytes(fig), 600, 500)


def test_comparison_curves_show_mean_and_band_per_epoch_and_accuracy_against_seconds():
    fig = plots.comparison_curves_figure({"a": [history(), history(0.05, seconds=(5.0, 2.0, 2.0))],
                                          "b": [history(-0.1)]})
    accuracy_ax, loss_ax, time_ax = fig.axes
    np.testing.assert_allclose(lines(accuracy_ax)["a (n=2)"].get_ydata(), [0.6, 0.775, 0.8])
    assert len(accuracy_ax.collections) == 2  # one band per variant
    assert loss_ax.get_yscale() == "log" and loss_ax.get_ylabel() == "validation loss (log scale)"
    mean_a = lines(time_ax)["a (n=2)"]
    np.testing.assert_allclose(mean_a.get_xdata(), [4.0, 5.5, 7.0])  # the mean of the seeds' summed seconds
    np.testing.assert_allclose(mean_a.get_ydata(), [0.6, 0.775, 0.8])
    faint = [line for line in time_ax.get_lines() if line.get_alpha() is not None and line.get_alpha() < 1]
    assert len(faint) == 3  # one per seed
    assert_png(plots.png_bytes(fig), 1000, 700)


def test_comparison_time_axis_is_log_when_runs_take_seconds_to_minutes():
    quick, slow = history(seconds=(1.0, 1.0, 1.0)), history(seconds=(300.0, 300.0, 300.0))
    time_ax = plots.comparison_curves_figure({"quick": [quick], "slow": [slow]}).axes[2]
    assert time_ax.get_xscale() == "log" and time_ax.get_xlabel().endswith("(log scale)")
    np.testing.assert_allclose(lines(time_ax)["slow (n=1)"].get_xdata(), [300, 600, 900])
    time_ax = plots.comparison_curves_figure({"quick": [quick], "slower": [history(seconds=(5.0, 5.0, 5.0))]}).axes[2]
    assert time_ax.get_xscale() == "linear" and "log" not in time_ax.get_xlabel() and time_ax.get_xlim()[0] == 0


def test_comparison_curves_without_timings_still_draw():
    fig = plots.comparison_curves_figure({"a": [history().drop(columns=["seconds"])]})
    assert "no epoch timings" in fig.axes[2].texts[0].get_text()


def assert_legible(fig) -> None:
    """All the drawn figure lies inside it, and no two drawn tick labels of an axis overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    drawn, edge = fig.get_tightbbox(renderer), fig.bbox_inches  # both in inches
    assert (drawn.x0 >= -0.01 and drawn.y0 >= -0.01 and drawn.x1 <= edge.x1 + 0.01
            and drawn.y1 <= edge.y1 + 0.01), f"the figure's edge cuts what it shows: {drawn} in {edge}"
    for ax in (ax for ax in fig.axes if ax.get_visible()):
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            ticks = [*zip(axis.get_majorticklocs(), axis.get_majorticklabels()),
                     *zip(axis.get_minorticklocs(), axis.get_minorticklabels())]
            labels = [label for at, label in ticks  # slanted labels' boxes overlap by design
                      if low <= at <= high and label.get_text() and not label.get_rotation()]
            boxes = [label.get_window_extent(renderer) for label in labels]
            for i, box in enumerate(boxes):
                for j in range(i + 1, len(boxes)):
                    assert not box.overlaps(boxes[j]), f"{labels[i].get_text()} over {labels[j].get_text()}"


def test_a_confusion_matrixs_labels_all_lie_inside_the_figure():
    for names in (CLASS_NAMES, [f"class {i}" for i in range(7)]):
        assert_legible(plots.confusion_figure(np.full((len(names), len(names)), 1000), names))


@pytest.mark.parametrize("low, high", [(1e-4, 1e-3), (3e-4, 3e-3), (1e-3, 1.8e-3), (1e-5, 1e-1), (0.5, 3.0)])
def test_the_sweep_slices_label_any_log_range_without_overlapping_ticks(low, high):
    rng = np.random.default_rng(0)
    trials = pd.DataFrame({"trial": range(30), "state": ["complete"] * 30, "val_accuracy": rng.uniform(0.8, 0.9, 30),
                           "learning_rate": np.exp(rng.uniform(np.log(low), np.log(high), 30)),
                           "width": rng.integers(1, 7, 30) * 256, "best_val_accuracy": 0.9})
    for scales in ({"learning_rate": "log"}, {"learning_rate": "log", "width": "linear"}):
        fig = plots.sweep_slices_figure(trials, scales)
        assert_legible(fig)
        ticks = fig.axes[0].get_xticks()
        assert len([t for t in ticks if low * 0.9 <= t <= high * 1.1]) >= 2  # and it says where the values are


@pytest.mark.parametrize("matrix", [np.eye(10, dtype=int) * 5, np.zeros((10, 10), dtype=int)])
def test_confusion_matrix_renders(matrix):
    assert_png(plots.png_bytes(plots.confusion_figure(matrix, CLASS_NAMES)), 600, 500)


TRIALS = pd.DataFrame({
    "trial": [0, 1, 2, 3, 4], "state": ["complete", "pruned", "complete", "failed", "complete"],
    "learning_rate": [0.001, 0.01, 0.003, 0.1, 0.002], "optimizer": ["adam", "sgd", "adam", "sgd", "nadam"],
    "val_accuracy": [0.80, None, 0.85, None, 0.83], "best_val_accuracy": [0.81, 0.70, 0.86, None, 0.84]})


def test_the_sweep_history_shows_each_trial_and_the_best_so_far_without_gaps(tmp_path):
    fig = plots.sweep_history_figure(TRIALS)
    ax = fig.axes[0]
    best = lines(ax)["best complete so far"]
    np.testing.assert_allclose(best.get_ydata(), [0.80, 0.80, 0.85, 0.85, 0.85])  # through pruned and failed
    dots = {c.get_label(): c.get_offsets() for c in ax.collections}
    np.testing.assert_allclose(dots["complete (3)"], [[0, 0.80], [2, 0.85], [4, 0.83]])
    np.testing.assert_allclose(dots["pruned (1)"], [[1, 0.70]])  # at its best epoch before it stopped
    assert_legible(fig)
    plots.save_png(fig, tmp_path / "h.png")
    assert_png(tmp_path / "h.png", 800, 400)


def test_the_sweep_slices_put_log_keys_on_a_log_axis_and_choices_as_categories(tmp_path):
    fig = plots.sweep_slices_figure(TRIALS, {"learning_rate": "log", "optimizer": "choice"})
    rate_ax, choice_ax = [ax for ax in fig.axes if ax.get_visible()][:2]
    assert rate_ax.get_xscale() == "log" and rate_ax.get_xlabel() == "learning_rate (log scale)"
    assert [t.get_text() for t in choice_ax.get_xticklabels()] == ["adam", "sgd", "nadam"]
    complete = choice_ax.collections[0].get_offsets()
    np.testing.assert_allclose(complete[:, 0], [0, 0, 1, 2])  # adam, adam, sgd (failed: no accuracy), nadam
    plots.save_png(fig, tmp_path / "s.png")
    assert_png(tmp_path / "s.png", 600, 250)


def test_the_importances_are_bars_most_important_on_top():
    fig = plots.importance_figure({"width": 0.2, "learning_rate": 0.7, "dropout": 0.1})
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["dropout", "width", "learning_rate"]
    assert [round(p.get_width(), 2) for p in ax.patches] == [0.1, 0.2, 0.7]
    assert_legible(ax.figure)


def test_a_confusion_matrix_names_its_own_classes_and_past_thirty_only_colours_them():
    seven = [f"class {i}" for i in range(7)]
    ax = plots.confusion_figure(np.eye(7, dtype=int) * 5, seven).axes[0]
    assert [label.get_text() for label in ax.get_xticklabels()] == seven and len(ax.texts) == 7
    many = [f"class {i}" for i in range(plots.LABELLED_CLASSES + 1)]
    ax = plots.confusion_figure(np.eye(len(many), dtype=int), many).axes[0]
    assert ax.images[0].get_array().shape == (len(many), len(many)) and not ax.texts
    assert not [label.get_text() for label in ax.get_xticklabels() if label.get_text().startswith("class")]


def test_drawing_leaves_the_processs_matplotlib_as_it_was():
    """fashionlab chooses no backend and registers no figure with pyplot; its figures show as PNG."""
    code = ("import matplotlib, matplotlib.pyplot as plt, pandas as pd; from fashionlab import plots; "
            "fig = plots.learning_curves_figure(pd.DataFrame({'epoch': [1, 2], 'loss': [1.0, 0.5], "
            "'val_loss': [1.1, 0.6], 'accuracy': [0.5, 0.7], 'val_accuracy': [0.4, 0.6]})); "
            "print(matplotlib.get_backend(), plt.get_fignums(), fig._repr_png_()[:4])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MPLBACKEND": "svg"})
    assert done.stdout.strip() == "svg [] b'\\x89PNG'", done.stderr
