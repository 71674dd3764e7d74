"""Figures, rendered headless: learning curves, confusion matrices, comparison curves.

    save_png(learning_curves_figure(history), "learning_curves.png")
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed, ever

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

from fashionlab import CLASS_NAMES  # noqa: E402

DPI = 100


def save_png(fig: Figure, path: Path) -> None:
    fig.savefig(path, format="png", dpi=DPI)
    plt.close(fig)


def png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    save_png(fig, buffer)
    return buffer.getvalue()


def learning_curves_figure(history: pd.DataFrame, title: str = "") -> Figure:
    """The tutorial's figure: every metric per epoch, grid on, y from 0 to 1."""
    frame = history.set_index("epoch") if "epoch" in history else history
    frame = frame[[c for c in ("loss", "accuracy", "val_loss", "val_accuracy") if c in frame]]
    ax = frame.plot(figsize=(8, 5), marker="o", markersize=3)
    ax.grid(True)
    ax.set_ylim(0, 1)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        ax.set_title(title)
    ax.figure.tight_layout()
    return ax.figure


def confusion_figure(matrix: np.ndarray, title: str = "Confusion matrix (test set)") -> Figure:
    """Counts per true (rows) and predicted (columns) class, annotated."""
    fig, ax = plt.subplots(figsize=(8, 7))
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(10), CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(range(10), CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > threshold else "black")
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def comparison_curves_figure(histories: Mapping[str, Sequence[pd.DataFrame]]) -> Figure:
    """Validation accuracy and loss per epoch: per variant the mean line and the seed range band."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for color, (variant, frames) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], histories.items()):
        for ax, column in zip(axes, ("val_accuracy", "val_loss")):
            table = pd.concat([f.set_index("epoch")[column] for f in frames], axis=1)
            ax.plot(table.index, table.mean(axis=1), color=color, marker="o", markersize=3,
                    label=f"{variant} (n={len(frames)})")
            ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=color, alpha=0.2)
    for ax, label in zip(axes, ("validation accuracy", "validation loss")):
        ax.set_title(f"{label}: mean over seeds, band = min..max")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.4)
    axes[1].set_yscale("log")  # a diverging variant (raw pixels) would flatten the others' curves
    for axis in (axes[1].yaxis.set_major_formatter, axes[1].yaxis.set_minor_formatter):
        axis(FuncFormatter(lambda value, _: f"{value:g}"))
    axes[0].legend(loc="best")
    fig.tight_layout()
    return fig
