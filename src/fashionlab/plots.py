"""Figures, rendered headless, from numbers: a run's learning curves and validation accuracy
against training time, row-normalised confusion matrices, a comparison's curves.

    save_png(learning_curves_figure(history), "learning_curves.png")

Every figure is made without pyplot (`new_figure`): fashionlab never chooses a matplotlib backend
for the process it runs in, and its figures are never among pyplot's, so a notebook's own
`plt.plot()` and `%matplotlib inline` go on as before, and a figure a notebook call returns shows
itself once, as a PNG (`ShownFigure._repr_png_`).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

DPI = 100
TRAIN_COLOR, VALID_COLOR, BEST_COLOR = "tab:blue", "tab:orange", "tab:green"
LABELLED_CLASSES = 30  # a confusion matrix of more classes is drawn without names and percentages
LOG_RANGE = 30  # a positive series spanning more than this factor gets a log axis, or its small values flatten


class ShownFigure(Figure):
    """A figure that Jupyter shows as a PNG, whatever backend the notebook uses."""

    def _repr_png_(self) -> bytes:
        return png_bytes(self)


def new_figure(**options) -> Figure:
    """A figure of its own (not pyplot's): drawn by the Agg renderer when saved, shown once in Jupyter."""
    return ShownFigure(**options)


def save_png(fig: Figure, path: Path | io.BytesIO) -> None:
    fig.savefig(path, format="png", dpi=DPI)


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    save_png(fig, buffer)
    return buffer.getvalue()


def epochs_of(history: pd.DataFrame) -> np.ndarray:
    """The epoch numbers, from 1: history's own `epoch` column where it has one."""
    return history["epoch"].to_numpy() if "epoch" in history else np.arange(1, len(history) + 1)


def best_epoch(history: pd.DataFrame) -> int:
    """The epoch of the highest validation accuracy (the first, on a tie), numbered as history numbers it."""
    return int(epochs_of(history)[int(np.argmax(history["val_accuracy"].to_numpy()))])


def row_normalised(matrix: np.ndarray) -> np.ndarray:
    """Each true class' row as shares of that class (rows sum to 1; a class without images stays 0)."""
    counts = np.asarray(matrix, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _fit_y(ax: Axes, values: np.ndarray, label: str) -> None:
    """A y axis fitted to every value (matplotlib's autoscaling): linear, or log (and labelled so)
    when the values span orders of magnitude."""
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() / values.min() > LOG_RANGE:
        ax.set_yscale("log")
        ax.set_ylabel(f"{label} (log scale)")
        for set_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            set_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    else:
        ax.set_ylabel(label)


def _epoch_axis(ax: Axes, last: int) -> None:
    """Epochs 1..last, whole numbers only (a one-epoch run's axis too)."""
    ax.set_xlim(0.5, last + 0.5)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    ax.grid(True, alpha=0.4)


def learning_curves_figure(history: pd.DataFrame, title: str = "") -> Figure:
    """Loss and accuracy in their own panels, training and validation, the best validation epoch
    marked; a third, narrow panel for the learning rate when history records one that changes."""
    epochs, best = epochs_of(history), best_epoch(history)
    at_best = int(np.flatnonzero(epochs == best)[0])
    rates = history["learning_rate"].to_numpy(float) if "learning_rate" in history else np.array([])
    rates = rates[np.isfinite(rates)]
    panels = 3 if len(rates) and rates.min() != rates.max() else 2  # a constant rate is in the configuration
    fig = new_figure(figsize=(13 if panels == 3 else 11, 4.5))
    axes = fig.subplots(1, panels, gridspec_kw={"width_ratios": [1, 1, 0.6][:panels]})
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for column, label, color in ((metric, "training", TRAIN_COLOR), (f"val_{metric}", "validation", VALID_COLOR)):
            if column in history:
                ax.plot(epochs, history[column], marker="o", markersize=3, color=color, label=label)
        ax.axvline(best, color=BEST_COLOR, linestyle="--", linewidth=1, label=f"best validation accuracy: epoch {best}")
        ax.plot([best], [history[f"val_{metric}"].iloc[at_best]], marker="*", markersize=12, color=BEST_COLOR,
                linestyle="none")
        shown = history[[c for c in (metric, f"val_{metric}") if c in history]].to_numpy(float).ravel()
        _fit_y(ax, shown, metric)
        ax.set_title(metric)
        _epoch_axis(ax, int(epochs.max()))
    axes[0].legend(loc="best", fontsize=8)
    if panels == 3:
        axes[2].plot(epochs, history["learning_rate"], marker="o", markersize=3, color="tab:purple")
        _fit_y(axes[2], rates, "learning rate")
        axes[2].set_title("learning rate")
        _epoch_axis(axes[2], int(epochs.max()))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def accuracy_vs_seconds_figure(history: pd.DataFrame, marks: Sequence[float] = (0.85, 0.90, 0.93)) -> Figure:
    """Validation accuracy at the end of each epoch against the training seconds spent so far
    (summed epoch times, the first epoch's compilation included); the accuracy `marks` the data reaches
    are drawn as dotted lines."""
    elapsed, accuracy = history["seconds"].cumsum().to_numpy(float), history["val_accuracy"].to_numpy(float)
    fig = new_figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ax.plot(elapsed, accuracy, marker="o", markersize=3, color=VALID_COLOR, label="validation accuracy")
    for mark in marks:
        if mark <= accuracy.max():
            ax.axhline(mark, color="gray", linestyle=":", linewidth=1)
            ax.annotate(f"{mark:.2f}", (0, mark), xycoords=("axes fraction", "data"), xytext=(3, 2),
                        textcoords="offset points", fontsize=8, color="gray")
    ax.set_xlim(left=0)
    ax.set_xlabel("training seconds (summed epoch times)")
    ax.set_ylabel("validation accuracy")
    ax.set_title("validation accuracy against training time")
    ax.grid(True, alpha=0.4)
    fig.tight_layout()
    return fig


def confusion_figure(matrix: np.ndarray, class_names: Sequence[str],
                     title: str = "Confusion matrix (test set)") -> Figure:
    """Row-normalised: each cell is the % of its true class (rows) predicted as the column's class,
    so classes with fewer images read the same; each row's image count is in its label. Past
    LABELLED_CLASSES classes, names and percentages would not fit: the colours alone are drawn."""
    counts = np.asarray(matrix)
    if counts.shape != (len(class_names), len(class_names)):
        raise ValueError(f"a {counts.shape} confusion matrix cannot be labelled with {len(class_names)} class names")
    shares = row_normalised(counts)
    labelled = len(class_names) <= LABELLED_CLASSES
    fig = new_figure(figsize=(8, 7))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if labelled:
        ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
        ax.set_yticks(range(len(class_names)), [f"{name} ({n:,})" for name, n in zip(class_names, counts.sum(axis=1))])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (images)")
    ax.set_title(f"{title}\n% of each true class")
    for (i, j), share in np.ndenumerate(shares if labelled else np.zeros((0, 0))):
        if counts[i, j]:
            ax.text(j, i, f"{share * 100:.0f}" if share >= 0.005 else "<1", ha="center", va="center", fontsize=8,
                    color="white" if share > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, format=FuncFormatter(lambda value, _: f"{value:.0%}"))
    # twice: the first pass measures the y label where it stood before the wide tick labels moved
    # it, and leaves it cut by the figure's left edge
    fig.tight_layout()
    fig.tight_layout()
    return fig


def reliability_figure(bins: Sequence[Mapping[str, float]], ece: float, title: str = "",
                       temperature: float | None = None) -> Figure:
    """The reliability diagram: each confidence bin's accuracy (bars) against its mean confidence
    (the gap to it shaded), the diagonal a calibrated model follows, and below, the images per bin."""
    fig = new_figure(figsize=(6, 6))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    lows = np.array([b["low"] for b in bins], float)
    widths = np.array([b["high"] - b["low"] for b in bins], float)
    accuracy = np.array([b["accuracy"] for b in bins], float)
    confidence = np.array([b["confidence"] for b in bins], float)
    top.plot([0, 1], [0, 1], linestyle="--", color="gray", linewidth=1, label="calibrated")
    top.bar(lows, accuracy, width=widths, align="edge", color=TRAIN_COLOR, edgecolor="white", label="accuracy")
    top.bar(lows, confidence - accuracy, bottom=accuracy, width=widths, align="edge", fill=False, hatch="///",
            edgecolor="#d62728", linewidth=0.8, label="gap to the mean confidence")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("accuracy")
    scaled = "" if temperature is None else f", temperature {temperature:.2f}"
    top.set_title(f"{title + ': ' if title else ''}reliability (test set)\nexpected calibration error "
                  f"{100 * ece:.2f} %{scaled}")
    top.legend(loc="upper left", fontsize=8)
    top.grid(True, alpha=0.4)
    bottom.bar(lows, [b["count"] for b in bins], width=widths, align="edge", color="gray", edgecolor="white")
    bottom.set_yscale("log")
    bottom.set_xlabel("confidence (the top class' probability)")
    bottom.set_ylabel("images")
    fig.tight_layout()
    return fig


def lr_find_figure(rates: np.ndarray, losses: np.ndarray, smoothed: np.ndarray, *, suggestion: float,
                   minimum: float, steepest: float | None, title: str = "") -> Figure:
    """The learning-rate search: each step's loss (faint) and the smoothed loss against the learning
    rate (log axis), the lowest point, the suggestion (a tenth of it) and the steepest descent marked."""
    fig = new_figure(figsize=(8, 4.5))
    ax = fig.subplots()
    ax.plot(rates, losses, color=TRAIN_COLOR, alpha=0.25, linewidth=1, label="loss of each step")
    ax.plot(rates, smoothed, color=TRAIN_COLOR, linewidth=2, label="smoothed loss")
    ax.set_xscale("log")
    marks = [(minimum, "gray", ":", f"lowest smoothed loss: {minimum:.2g}"),
             (suggestion, BEST_COLOR, "-", f"suggested (lowest / 10): {suggestion:.2g}")]
    if steepest is not None:
        marks.append((steepest, VALID_COLOR, "--", f"steepest descent: {steepest:.2g}"))
    for rate, color, style, label in marks:
        ax.axvline(rate, color=color, linestyle=style, linewidth=1.5, label=label)
    finite, raw = smoothed[np.isfinite(smoothed)], losses[np.isfinite(losses)]
    if len(finite):  # the divergence at the end would squash the rest
        low, first = min(float(finite.min()), float(np.percentile(raw, 2))), float(finite[0])
        ax.set_ylim(low - 0.1 * abs(first - low) - 1e-3, max(first, low) + 0.5 * abs(first - low) + 1e-3)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.set_title(f"{title + ': ' if title else ''}learning-rate search, {len(losses)} steps")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.4, which="both")
    fig.tight_layout()
    return fig


def _seed_table(frames: Sequence[pd.DataFrame], column: str) -> pd.DataFrame:
    """One column per seed, one row per epoch."""
    return pd.concat([pd.Series(f[column].to_numpy(float), index=epochs_of(f)) for f in frames], axis=1)


def comparison_curves_figure(histories: Mapping[str, Sequence[pd.DataFrame]]) -> Figure:
    """Per variant: validation accuracy and loss per epoch (the mean over seeds, band = min..max),
    and validation accuracy against training seconds (each seed faint, the mean bold)."""
    fig = new_figure(figsize=(12, 9))
    grid = fig.add_gridspec(2, 2)
    accuracy_ax, loss_ax, time_ax = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1]), \
        fig.add_subplot(grid[1, :])
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    timed: list[float] = []  # every epoch's elapsed seconds
    for k, (variant, frames) in enumerate(histories.items()):
        color = colors[k % len(colors)]
        for ax, column in ((accuracy_ax, "val_accuracy"), (loss_ax, "val_loss")):
            table = _seed_table(frames, column)
            ax.plot(table.index, table.mean(axis=1), color=color, marker="o", markersize=3,
                    label=f"{variant} (n={len(frames)})")
            ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.2)
        if all("seconds" in f for f in frames):
            for f in frames:
                timed += f["seconds"].cumsum().tolist()
                time_ax.plot(f["seconds"].cumsum(), f["val_accuracy"], color=color, alpha=0.3, linewidth=1)
            elapsed = pd.concat([pd.Series(f["seconds"].cumsum().to_numpy(float), index=epochs_of(f))
                                 for f in frames], axis=1)
            time_ax.plot(elapsed.mean(axis=1), _seed_table(frames, "val_accuracy").mean(axis=1), color=color,
                         marker="o", markersize=3, linewidth=2, label=f"{variant} (n={len(frames)})")
    for ax, label in ((accuracy_ax, "validation accuracy"), (loss_ax, "validation loss")):
        ax.set_title(f"{label} per epoch: mean over seeds, band = min..max")
        _epoch_axis(ax, max((int(epochs_of(f).max()) for frames in histories.values() for f in frames), default=1))
        ax.set_ylabel(label)
    # A diverging variant (raw pixels) would flatten the others' curves: the loss is on a log axis.
    loss_ax.set_yscale("log")
    loss_ax.set_ylabel("validation loss (log scale)")
    for set_formatter in (loss_ax.yaxis.set_major_formatter, loss_ax.yaxis.set_minor_formatter):
        set_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    time_ax.set_title("validation accuracy against training seconds: each seed faint, mean over seeds bold")
    time_label = "training seconds (summed epoch times, compilation included)"
    time_ax.set_xlabel(time_label)
    time_ax.set_ylabel("validation accuracy")
    time_ax.grid(True, alpha=0.4)
    if timed:
        elapsed = np.asarray(timed)
        if elapsed.min() > 0 and elapsed.max() / elapsed.min() > LOG_RANGE:  # a 2 s recipe beside a 15 min one
            time_ax.set_xscale("log")
            time_ax.set_xlabel(f"{time_label} (log scale)")
            time_ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        else:
            time_ax.set_xlim(left=0)
        time_ax.legend(loc="lower right")
    else:
        time_ax.text(0.5, 0.5, "no epoch timings recorded", ha="center", va="center", transform=time_ax.transAxes)
    accuracy_ax.legend(loc="best")
    fig.tight_layout()
    return fig


# --- a sweep -------------------------------------------------------------------------------------

STATE_MARKERS = {"complete": ("o", "tab:blue"), "pruned": ("x", "tab:gray")}


def _accuracy_of(trials: pd.DataFrame) -> pd.Series:
    """Each trial's validation accuracy as plotted: a complete trial's score, a pruned one's best epoch."""
    return trials["val_accuracy"].astype(float).fillna(trials["best_val_accuracy"].astype(float))


def sweep_history_figure(trials: pd.DataFrame) -> Figure:
    """Validation accuracy per trial in trial order (pruned trials at their best epoch so far),
    and the best complete trial so far as a line."""
    fig = new_figure(figsize=(9, 4.5))
    ax = fig.subplots()
    accuracy = _accuracy_of(trials)
    for state, (marker, color) in STATE_MARKERS.items():
        chosen = trials["state"] == state
        if chosen.any():
            ax.scatter(trials.loc[chosen, "trial"], accuracy[chosen], marker=marker, color=color,
                       label=f"{state} ({int(chosen.sum())})")
    scores = trials["val_accuracy"].astype(float)
    if scores.notna().any():
        ax.step(trials["trial"], scores.cummax().ffill(), where="post", color=BEST_COLOR,
                label="best complete so far")  # a pruned or failed trial between two complete ones keeps the line
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("optimization history")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.4)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def sweep_slices_figure(trials: pd.DataFrame, scales: Mapping[str, str]) -> Figure:
    """One panel per searched key: each trial's validation accuracy against its value (`scales`:
    key -> "log", "linear" or "choice"), coloured by trial number."""
    keys = list(scales)
    columns = min(3, len(keys))
    rows = -(-len(keys) // columns)
    # constrained: tight_layout leaves the last tick label of the right panel cut by the edge
    fig = new_figure(figsize=(4.2 * columns, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False, sharey=True)
    accuracy = _accuracy_of(trials)
    for ax, key in zip(axes.flat, keys):
        values = trials[key]
        if scales[key] == "choice":
            labels = list(dict.fromkeys(str(v) for v in values))
            x = [labels.index(str(v)) for v in values]
            ax.set_xticks(range(len(labels)), labels)
        else:
            x = values.astype(float)
        pruned = (trials["state"] == "pruned").to_numpy()
        dots = ax.scatter(np.asarray(x)[~pruned], accuracy[~pruned], c=trials["trial"][~pruned], cmap="viridis",
                          marker="o")
        ax.scatter(np.asarray(x)[pruned], accuracy[pruned], c=trials["trial"][pruned], cmap="viridis", marker="x",
                   norm=dots.norm)
        if scales[key] == "log":
            _log_x_axis(ax)
        ax.set_xlabel(key + (" (log scale)" if scales[key] == "log" else ""))
        ax.grid(True, alpha=0.4)
    for ax in axes[:, 0]:
        ax.set_ylabel("validation accuracy")
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle("each searched value against validation accuracy" + (" " if columns == 3 else "\n")
                 + "(o complete, x pruned; colour: trial number)")  # on two lines, a narrower figure holds it
    return fig


def _log_x_axis(ax: Axes) -> None:
    """A log x axis labelled at a few round values (matplotlib labels every minor tick of a range
    under a decade or so, and their labels overlap)."""
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    chosen: list[float] = []
    for multiples in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):  # the densest with at most 5 labels
        ticks = [m * 10.0 ** d for d in decades for m in multiples if low <= m * 10.0 ** d <= high]
        if len(ticks) <= 5 and len(ticks) >= len(chosen):
            chosen = ticks
    if len(chosen) < 2:  # a range inside one step of the digits: three values rounded to two digits
        chosen = sorted({float(f"{v:.2g}") for v in np.geomspace(low, high, 5)[1:-1]})
    ax.set_xticks(chosen, [f"{t:g}" for t in chosen])
    ax.xaxis.set_minor_formatter(NullFormatter())


def importance_figure(importances: Mapping[str, float]) -> Figure:
    """Optuna's parameter importances as horizontal bars, the most important on top."""
    ordered = sorted(importances.items(), key=lambda item: item[1])
    fig = new_figure(figsize=(7, 0.5 * len(ordered) + 1.4))
    ax = fig.subplots()
    ax.barh([k for k, _ in ordered], [v for _, v in ordered], color="tab:blue")
    for y, (_, value) in enumerate(ordered):
        ax.text(value, y, f" {value:.2f}", va="center")
    ax.set_xlim(0, max(1.0, max(v for _, v in ordered) * 1.15))
    ax.set_xlabel("importance (share of the variation in validation accuracy)")
    ax.set_title("which searched keys mattered")
    fig.tight_layout()
    return fig
