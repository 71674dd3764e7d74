"""Self-contained HTML reports: every image embedded, nothing fetched, readable offline.

    write_run_report(run, config, history, report, x_test, y_test, proba)
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fashionlab import CLASS_NAMES, plots
from fashionlab.runs import Run

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; }
.conclusion { background: #f6f8fa; border-left: 4px solid #4a7; padding: 0.5rem 1rem; }
"""
MISCLASSIFIED_SHOWN = 32
SAMPLES_SHOWN = 16


def figure_tag(fig: Figure, alt: str) -> str:
    data = base64.b64encode(plots.png_bytes(fig)).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def table_tag(frame: pd.DataFrame, index: bool = True) -> str:
    return frame.to_html(index=index, border=0, escape=True, float_format=lambda v: f"{v:.4f}")


def page(title: str, sections: Iterable[tuple[str, str]]) -> str:
    body = "\n".join(f"<h2>{html.escape(heading)}</h2>\n{content}" for heading, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _caption(true: int, pred: int, p: float) -> str:
    return f"{CLASS_NAMES[pred]} {p:.2f}" + ("" if true == pred else f"\n(true: {CLASS_NAMES[true]})")


def run_report_html(title: str, config: Mapping[str, Any], history: pd.DataFrame, report: Mapping[str, Any],
                    x_test: np.ndarray, y_test: np.ndarray, proba: np.ndarray) -> str:
    """One run: config, learning curves, test metrics, confusion matrix, mistakes, sample predictions."""
    pred, confidence = proba.argmax(axis=1), proba.max(axis=1)
    wrong = np.flatnonzero(pred != y_test)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")][:MISCLASSIFIED_SHOWN]  # most confident first
    samples = np.arange(min(SAMPLES_SHOWN, len(y_test)))
    per_class = pd.DataFrame(report["per_class"]).T.rename_axis("class")
    summary = pd.DataFrame({"value": [report["test_accuracy"], report["test_loss"],
                                      int((pred != y_test).sum()), len(y_test)]},
                           index=["test accuracy", "test loss", "misclassified", "test images"])
    config_table = pd.DataFrame({"value": [str(v) for v in config.values()]}, index=list(config))

    def grid(indices: np.ndarray, alt: str) -> str:
        if not len(indices):
            return "<p>None.</p>"
        captions = [_caption(int(y_test[i]), int(pred[i]), float(confidence[i])) for i in indices]
        return figure_tag(plots.image_grid_figure(x_test[indices], captions, pred[indices] == y_test[indices]), alt)

    return page(title, [
        ("Test metrics", table_tag(summary)),
        ("Learning curves", figure_tag(plots.learning_curves_figure(history), "learning curves")),
        ("Per-class precision and recall", table_tag(per_class)),
        ("Confusion matrix", figure_tag(plots.confusion_figure(np.asarray(report["confusion_matrix"])),
                                        "confusion matrix")),
        (f"Misclassified test images (the {len(wrong)} most confident mistakes of "
         f"{int((pred != y_test).sum())})", grid(wrong, "misclassified test images")),
        (f"Sample predictions (test images 0..{len(samples) - 1})", grid(samples, "sample predictions")),
        ("Configuration", table_tag(config_table)),
    ])


def write_run_report(run: Run, config: Mapping[str, Any], history: pd.DataFrame, report: Mapping[str, Any],
                     x_test: np.ndarray, y_test: np.ndarray, proba: np.ndarray) -> None:
    text = run_report_html(f"fashionlab run: {run.path.name}", config, history, report, x_test, y_test, proba)
    run.write_text("report.html", text)
