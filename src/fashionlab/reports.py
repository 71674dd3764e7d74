"""Everything a person reads: self-contained HTML pages (every image embedded, nothing fetched,
readable offline) and Markdown tables, for a run and for a comparison.

    write_test_outputs(run, config=..., history=..., report=..., x_test=..., y_test=..., proba=...)
    write_comparison_outputs(folder, results=..., summary=..., statements=..., histories=..., confusions=...)
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

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
.pairs { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
.tiles { display: flex; flex-wrap: wrap; gap: 0.5rem; }
.tiles figure { margin: 0; width: 112px; text-align: center; font-size: 0.75rem; }
.tiles img { image-rendering: pixelated; display: block; }
.right figcaption { color: #1a7f37; }
.wrong figcaption { color: #c62828; }
"""
TILE_SCALE = 4  # 28x28 pixels shown as 112x112, sharp
MISCLASSIFIED_SHOWN = 32
SAMPLES_SHOWN = 16


def figure_tag(fig: Figure, alt: str) -> str:
    return png_tag(plots.png_bytes(fig), alt)


def png_tag(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{html.escape(alt)}">'


def image_tiles(images: np.ndarray, captions: list[str], right: np.ndarray) -> str:
    """28x28 images as embedded PNG tiles with HTML captions, green when right, red when wrong.

    Written as HTML rather than a matplotlib grid: ~100x faster, and the captions stay text.
    """
    tiles = []
    for image, caption, ok in zip(images, captions, right):
        buffer = io.BytesIO()
        Image.fromarray(image).resize((28 * TILE_SCALE,) * 2, Image.Resampling.NEAREST).save(buffer, "PNG")
        tiles.append(f'<figure class="{"right" if ok else "wrong"}">{png_tag(buffer.getvalue(), caption)}'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return '<div class="tiles">' + "".join(tiles) + "</div>"


def table_tag(frame: pd.DataFrame, index: bool = True) -> str:
    return frame.to_html(index=index, border=0, escape=True, float_format=lambda v: f"{v:.4f}")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (=, +, -, @ first) prefixed with '."""
    def safe(value: Any) -> Any:
        return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value

    return frame.apply(lambda column: column if pd.api.types.is_numeric_dtype(column) else column.map(safe))


def page(title: str, sections: Iterable[tuple[str, str]]) -> str:
    body = "\n".join(f"<h2>{html.escape(heading)}</h2>\n{content}" for heading, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def _caption(true: int, pred: int, p: float) -> str:
    return f"{CLASS_NAMES[pred]} {p:.2f}" + ("" if true == pred else f" (true: {CLASS_NAMES[true]})")


def run_report_html(title: str, *, config: Mapping[str, Any], report: Mapping[str, Any], x_test: np.ndarray,
                    y_test: np.ndarray, proba: np.ndarray, curves_png: bytes, confusion_png: bytes) -> str:
    """One run: config, learning curves, test metrics, confusion matrix, mistakes, sample predictions."""
    pred, confidence = proba.argmax(axis=1), proba.max(axis=1)
    mistakes = np.flatnonzero(pred != y_test)
    wrong = mistakes[np.argsort(-confidence[mistakes], kind="stable")][:MISCLASSIFIED_SHOWN]  # most confident first
    samples = np.arange(min(SAMPLES_SHOWN, len(y_test)))
    per_class = pd.DataFrame(report["per_class"]).T.rename_axis("class").astype({"support": int})
    summary = pd.DataFrame({"value": [f"{report['test_accuracy']:.4f}", f"{report['test_loss']:.4f}",
                                      f"{len(mistakes):,}", f"{len(y_test):,}"]},
                           index=["test accuracy", "test loss", "misclassified", "test images"])
    config_table = pd.DataFrame({"value": [str(v) for v in config.values()]}, index=list(config))

    def grid(indices: np.ndarray) -> str:
        if not len(indices):
            return "<p>None.</p>"
        captions = [_caption(int(y_test[i]), int(pred[i]), float(confidence[i])) for i in indices]
        return image_tiles(x_test[indices], captions, pred[indices] == y_test[indices])

    return page(title, [
        ("Test metrics", table_tag(summary)),
        ("Learning curves", png_tag(curves_png, "learning curves")),
        ("Per-class precision and recall", table_tag(per_class)),
        ("Confusion matrix", png_tag(confusion_png, "confusion matrix")),
        (f"Misclassified test images (the {len(wrong)} most confident mistakes of {len(mistakes):,})",
         grid(wrong)),
        (f"Sample predictions (test images 0..{len(samples) - 1})", grid(samples)),
        ("Configuration", table_tag(config_table)),
    ])


def write_test_outputs(run: Run, *, config: Mapping[str, Any], history: pd.DataFrame, report: Mapping[str, Any],
                       x_test: np.ndarray, y_test: np.ndarray, proba: np.ndarray,
                       metrics: Mapping[str, Any] | None = None) -> None:
    """`metrics`: what metrics.json will hold. learning_curves.png, confusion_matrix.csv/.png and report.html; each figure is rendered once."""
    matrix = np.asarray(report["confusion_matrix"])
    curves = plots.png_bytes(plots.learning_curves_figure(history, config.get("name", "")))
    confusion = plots.png_bytes(plots.confusion_figure(matrix))
    frame = pd.DataFrame(matrix, index=pd.Index(CLASS_NAMES, name="true"), columns=CLASS_NAMES)
    run.write_with("learning_curves.png", lambda tmp: tmp.write_bytes(curves))
    run.write_with("confusion_matrix.csv", lambda tmp: frame.to_csv(tmp))
    run.write_with("confusion_matrix.png", lambda tmp: tmp.write_bytes(confusion))
    text = run_report_html(f"fashionlab run: {run.path.name}", config=config, report=report, x_test=x_test,
                           y_test=y_test, proba=proba, curves_png=curves, confusion_png=confusion)
    run.write_text("report.html", text)


# --- a comparison ------------------------------------------------------------------------------

def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """The per-variant table as people read it, for summary.md and report.html alike."""
    return pd.DataFrame({
        "seeds": summary["seeds"].map(str),
        "test accuracy (mean ± std)": [f"{m:.4f} ± {s:.4f}" for m, s in
                                       zip(summary["test_accuracy_mean"], summary["test_accuracy_std"])],
        "worst seed": summary["test_accuracy_worst"].map("{:.4f}".format),
        "val accuracy after epoch 1": summary["first_epoch_val_accuracy"].map("{:.4f}".format),
        "best val accuracy": summary["best_val_accuracy"].map("{:.4f}".format),
        "epoch of best val": summary["best_epoch"].map("{:.1f}".format),
        "s/epoch": summary["seconds_per_epoch"].map("{:.2f}".format),
        "parameters": summary["parameters"].map("{:,}".format),
    }, index=summary.index.rename("variant"))


def summary_markdown(summary: pd.DataFrame) -> str:
    table = summary_display(summary)
    lines = ["| variant | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
    lines += [f"| {variant} | " + " | ".join(row) + " |" for variant, row in table.iterrows()]
    return "\n".join(lines) + "\n"


def comparison_report_html(*, summary: pd.DataFrame, results: pd.DataFrame, curves_png: bytes,
                           confusions: Mapping[str, np.ndarray], statements: Sequence[str]) -> str:
    """Conclusion, per-variant table, validation curves, summed confusion matrices, every run."""
    conclusion_html = '<div class="conclusion">' + "".join(f"<p>{html.escape(s)}</p>" for s in statements) + "</div>"
    matrices = '<div class="pairs">' + "".join(
        figure_tag(plots.confusion_figure(m, f"{v}: test set, all seeds summed"), f"confusion matrix {v}")
        for v, m in confusions.items()) + "</div>"
    return page("fashionlab comparison", [
        ("Conclusion", conclusion_html),
        ("Summary per variant", table_tag(summary_display(summary))),
        ("Validation curves", png_tag(curves_png, "validation curves")),
        ("Confusion matrices", matrices),
        ("Every run", table_tag(results.drop(columns=["run_dir"]), index=False)),
    ])


def write_comparison_outputs(folder: Run, *, results: pd.DataFrame, summary: pd.DataFrame, statements: Sequence[str],
                             histories: Mapping[str, Sequence[pd.DataFrame]],
                             confusions: Mapping[str, np.ndarray]) -> None:
    """results.csv, summary.md (table and conclusion), curves.png and report.html, each written atomically."""
    curves = plots.png_bytes(plots.comparison_curves_figure(histories))
    folder.write_with("results.csv", lambda tmp: csv_safe(results).to_csv(tmp, index=False))
    folder.write_text("summary.md", summary_markdown(summary) + "\n" + "\n\n".join(statements) + "\n")
    folder.write_with("curves.png", lambda tmp: tmp.write_bytes(curves))
    folder.write_text("report.html", comparison_report_html(summary=summary, results=results, curves_png=curves,
                                                            confusions=confusions, statements=statements))
