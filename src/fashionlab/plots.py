"""Figures, rendered headless: learning curves and confusion matrices.

    plot_learning_curves(history_frame, "learning_curves.png")
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed, ever

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import pandas as pd  # noqa: E402

from fashionlab import CLASS_NAMES  # noqa: E402


def plot_learning_curves(history: pd.DataFrame, path: Path, title: str = "") -> None:
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
    ax.figure.savefig(path, format="png", dpi=100)
    plt.close(ax.figure)


def plot_confusion_matrix(matrix: np.ndarray, path: Path, title: str = "Confusion matrix (test set)") -> None:
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
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
