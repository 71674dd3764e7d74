"""Everything a person reads: self-contained HTML pages (every image embedded, nothing fetched,
readable offline, at desktop and phone widths) and Markdown tables, for a run and for a comparison.

    write_test_outputs(run, config=..., history=..., report=..., x_test=..., y_test=..., proba=..., metrics=...)
    write_comparison_outputs(folder, results=..., summary=..., statements=..., histories=..., confusions=...)
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from fashionlab import plots
from fashionlab.errors import FashionlabError
from fashionlab.rundir import Run

# Phones get the page at their own width (the viewport meta tag); wide tables scroll sideways in
# their own box (.scroll) rather than widening the page; figures shrink to fit.
STYLE = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 0 auto; padding: 1rem; max-width: 1100px; color: #222;
       line-height: 1.4; }
h1 { font-size: 1.5rem; }
h1, h2 { overflow-wrap: anywhere; }
.scroll { overflow-x: auto; margin: 0.5rem 0 1.5rem; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
td { white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f3f3; vertical-align: bottom; }
table.text td, table.text th { text-align: left; }
table.text td { white-space: normal; overflow-wrap: anywhere; }
table.runs td:last-child { text-align: left; }
table.trials th, table.trials td { padding: 0.25rem 0.4rem; }
table.trials th:last-child, table.trials td:last-child { text-align: left; }
table.trials td:last-child { white-space: normal; overflow-wrap: anywhere; min-width: 10rem; }
img { max-width: 100%; height: auto; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; background: #f6f8fa; padding: 0.5rem; }
.note { color: #555; font-size: 0.9rem; }
.conclusion { background: #f6f8fa; border-left: 4px solid #4a7; padding: 0.5rem 1rem; }
.pairs { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 420px), 1fr)); gap: 1rem; }
.pairs > * { min-width: 0; }
.tiles { display: flex; flex-wrap: wrap; gap: 0.5rem; }
.tiles figure { margin: 0; width: 112px; text-align: center; font-size: 0.75rem; }
.tiles figcaption { white-space: pre-line; overflow-wrap: anywhere; }
.tiles img { image-rendering: pixelated; display: block; }
.right figcaption { color: #1a7f37; }
.wrong figcaption { color: #c62828; }
@media (max-width: 600px) {
  body { padding: 0.5rem; }
  table { font-size: 0.85rem; }
  th, td { padding: 0.2rem 0.35rem; }
}
"""
TILE_SCALE = 4  # 28x28 pixels shown as 112x112, sharp
TOP_LOSSES_SHOWN = 24
SAMPLES_SHOWN = 16
CONFUSED_PAIRS_SHOWN = 10
SECONDS_LABEL = "s/epoch (median after epoch 1)"
WALL_LABEL = "s per run"
SECONDS_NOTE = ("s/epoch: the median time of each run's epochs after the first, whose time includes compiling "
                "(a one-epoch run: that epoch), averaged over seeds. s per run: the whole train call (data, "
                "compilation, training, test predictions), averaged over seeds.")


def figure_tag(fig: Figure, alt: str) -> str:
    return png_tag(plots.png_bytes(fig), alt)


def png_tag(png: bytes, alt: str) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}" alt="{html.escape(alt)}">'


def image_tiles(images: np.ndarray, captions: list[str], right: np.ndarray) -> str:
    """28x28 images as embedded PNG tiles with HTML captions (a line each), green when right, red when wrong.

    Written as HTML rather than a matplotlib grid: ~100x faster, and the captions stay text.
    """
    tiles = []
    for image, caption, ok in zip(images, captions, right):
        buffer = io.BytesIO()
        Image.fromarray(image).resize((28 * TILE_SCALE,) * 2, Image.Resampling.NEAREST).save(buffer, "PNG")
        tiles.append(f'<figure class="{"right" if ok else "wrong"}">{png_tag(buffer.getvalue(), caption)}'
                     f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    return '<div class="tiles">' + "".join(tiles) + "</div>"


def table_html(frame: pd.DataFrame, index: bool = True, classes: str | None = None, header: bool = True,
               digits: int = 4) -> str:
    return frame.to_html(index=index, border=0, escape=True, classes=classes, header=header,
                         float_format=lambda v: f"{v:.{digits}f}")


def table_tag(frame: pd.DataFrame, index: bool = True, classes: str | None = None, header: bool = True,
              digits: int = 4) -> str:
    """A table in a box of its own, which scrolls sideways where the screen is narrower than the table.
    `classes="text"`: cells left-aligned, long ones wrapped."""
    return f'<div class="scroll">{table_html(frame, index, classes, header, digits)}</div>'


def key_values(rows: Mapping[str, Any]) -> str:
    """A two-column table of names and values (long values wrap)."""
    frame = pd.DataFrame({"value": [str(v) for v in rows.values()]}, index=list(rows))
    return table_tag(frame, classes="text", header=False)


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """Text cells that a spreadsheet would run as a formula (=, +, -, @ first) prefixed with '."""
    def safe(value: Any) -> Any:
        return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value

    return frame.apply(lambda column: column if pd.api.types.is_numeric_dtype(column) else column.map(safe))


def page(title: str, sections: Iterable[tuple[str, str]]) -> str:
    body = "\n".join(f"<h2>{html.escape(heading)}</h2>\n{content}" for heading, content in sections)
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n"
            f"<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


# --- a run -------------------------------------------------------------------------------------

def class_scores(matrix: np.ndarray, class_names: Sequence[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class from a confusion matrix (rows: true class), then
    the macro average (each class counts the same) and the support-weighted average."""
    counts = np.asarray(matrix, dtype=float)
    correct, support, predicted = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)

    def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.divide(a, b, out=np.zeros_like(a), where=b > 0)

    precision, recall = ratio(correct, predicted), ratio(correct, support)
    f1 = ratio(2 * precision * recall, precision + recall)
    frame = pd.DataFrame({"precision": precision, "recall": recall, "F1": f1, "support": support},
                         index=pd.Index(class_names, name="class"))
    weights = support / support.sum() if support.sum() else np.zeros_like(support)
    frame.loc["macro average"] = [precision.mean(), recall.mean(), f1.mean(), support.sum()]
    frame.loc["weighted average"] = [precision @ weights, recall @ weights, f1 @ weights, support.sum()]
    return frame.astype({"support": int})


def confused_pairs(matrix: np.ndarray, class_names: Sequence[str],
                   shown: int = CONFUSED_PAIRS_SHOWN) -> pd.DataFrame:
    """The largest off-diagonal cells: which true class was most often predicted as which other."""
    counts = np.asarray(matrix)
    shares = plots.row_normalised(counts)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    cells = [np.unravel_index(flat, off.shape) for flat in np.argsort(-off, axis=None, kind="stable")[:shown]]
    cells = [(i, j) for i, j in cells if off[i, j] > 0]
    return pd.DataFrame({"true class": [class_names[i] for i, _ in cells],
                         "predicted as": [class_names[j] for _, j in cells],
                         "images": [int(off[i, j]) for i, j in cells],
                         "% of the true class": [f"{shares[i, j]:.1%}" for i, j in cells]})


def seconds_text(seconds: float) -> str:
    """2 decimals, or 2 significant digits below 0.1 s (a tiny run's epochs); "n/a" for a run
    made before fashionlab recorded it."""
    if not np.isfinite(seconds):
        return "n/a"
    return f"{seconds:.2f}" if seconds >= 0.1 else f"{seconds:.2g}"


def _duration(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    return f"{seconds_text(seconds)} s" + (f" ({int(minutes)} min {rest:.0f} s)" if minutes else "")


def _when(timestamp: Any) -> str:
    return str(timestamp).replace("T", " ").replace("+00:00", " UTC") if timestamp else "unknown"


def training_rows(config: Mapping[str, Any], history: pd.DataFrame, metrics: Mapping[str, Any]) -> dict[str, str]:
    """What was trained, how long it took and how far it got: from history, and from metrics.json where given."""
    best = plots.best_epoch(history)
    seconds = history["seconds"].to_numpy(float) if "seconds" in history else np.array([])
    rows = {"name": str(config.get("name", ""))}
    if "recipe" in metrics:
        rows["recipe"] = str(metrics["recipe"]) if metrics["recipe"] else "none"
    if "engine" in metrics:
        rows["engine"] = str(metrics["engine"])
    if isinstance(metrics.get("parameters"), Mapping):
        p = metrics["parameters"]
        rows["parameters"] = (f"{p.get('total', 0):,} ({p.get('trainable', 0):,} trainable, "
                              f"{p.get('non_trainable', 0):,} non-trainable)")
    if isinstance(metrics.get("max_norm"), Mapping):
        m = metrics["max_norm"]
        rows["max-norm at the end"] = (f"{m['at_bound']:,} of {m['units']:,} hidden units at the bound "
                                       f"{m['max_norm']:g}; the largest norm {m['largest']:.3f}")
    rows |= {"epochs": str(len(history)),
             "best validation accuracy": f"{history['val_accuracy'].max():.4f} (epoch {best})",
             "final validation accuracy": f"{history['val_accuracy'].iloc[-1]:.4f}"}
    if len(seconds):
        rows["training time"] = _duration(metrics.get("train_seconds", seconds.sum())) + " (summed epoch times)"
        rows["first epoch"] = f"{seconds_text(seconds[0])} s (includes compiling)"
        if len(seconds) > 1:
            rows["s/epoch after the first (median)"] = f"{seconds_text(float(np.median(seconds[1:])))} s"
    for mark, reached in (metrics.get("seconds_to_val_accuracy") or {}).items():
        rows[f"validation accuracy ≥ {mark} after"] = "not reached" if reached is None else _duration(reached)
    if "started" in metrics or "finished" in metrics:
        rows["started"], rows["finished"] = _when(metrics.get("started")), _when(metrics.get("finished"))
    return rows


def environment_rows(metrics: Mapping[str, Any]) -> dict[str, str]:
    """Where the run was made, from metrics.json: data, machine, library versions."""
    rows: dict[str, str] = {}
    if isinstance(metrics.get("data"), Mapping):
        d = metrics["data"]
        rows["data"] = (f"{d.get('dir', '?')} ({'checksums verified' if d.get('verified') else 'not verified'}): "
                        f"{d.get('train', '?')} training, {d.get('valid', '?')} validation, "
                        f"{d.get('test', '?')} test images")
    for key, value in (metrics.get("machine") or {}).items():
        rows[f"machine: {key}"] = str(value)
    if metrics.get("versions"):
        rows["versions"] = ", ".join(f"{name} {version}" for name, version in metrics["versions"].items())
    return rows


SHOWN_VERSIONS = ("fashionlab", "keras", "keras_backend", "jax", "tensorflow", "torch", "python")


def environment_line(metrics: Mapping[str, Any]) -> dict[str, str]:
    """The machine and the main library versions, one line each, from metrics.json (the Environment
    section has them all)."""
    rows = {}
    machine = dict(metrics.get("machine") or {})
    backend, _, kind = str(machine.get("device") or "").partition(": ")
    if backend and backend == kind:  # "cpu: cpu"
        machine["device"] = backend
    if machine:
        rows["machine"] = ", ".join(str(v) for v in (machine.get("cpu"), machine.get("cores") and
                                                     f"{machine['cores']} cores", machine.get("device") and
                                                     f"computing on {machine['device']}") if v)
    versions = metrics.get("versions") or {}
    if versions:
        rows["versions"] = ", ".join(f"{name} {versions[name]}" for name in SHOWN_VERSIONS if name in versions)
    return rows


SHOWN_COMMAND = 2000  # characters of a recorded command a page shows


def shortened(text: str, limit: int = SHOWN_COMMAND) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text) - limit:,} more characters)"


def data_line(dataset: str, data: Mapping[str, Any]) -> str:
    """The data a run trained on, as its pages say it (metrics.json's `data`)."""
    return (f"{dataset}: {data.get('train', 0):,} training, {data.get('valid', 0):,} validation, "
            f"{data.get('test', 0):,} test images")


def what_was_run_rows(config: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, str]:
    """The top of a run's page: the command, its recipe and the settings changed from it, the data,
    the machine and versions."""
    from fashionlab.config import from_dict
    from fashionlab.recipes import changes_from, changes_text

    recipe = metrics.get("recipe")
    rows = {"command": shortened(str(metrics.get("command") or "not recorded")),
            "recipe": f"{recipe}" if recipe else "none (the tutorial's settings are the defaults)"}
    try:
        changed = changes_from(from_dict(dict(config)), recipe)
    except FashionlabError:  # a config from another version of fashionlab
        changed = {}
    rows["changed from " + (f"the {recipe} recipe" if recipe else "the tutorial")] = changes_text(changed) or "nothing"
    rows["seed"] = str(config.get("seed", "?"))
    if metrics.get("data"):
        rows["data"] = data_line(config.get("dataset", "fashion-mnist"), metrics["data"])
    return rows | environment_line(metrics)


def _caption(names: Sequence[str], true: int, pred: int, p: float) -> str:
    return f"{names[pred]} {p:.2f}" + ("" if true == pred else f" (true: {names[true]})")


def _loss_caption(names: Sequence[str], true: int, pred: int, p_pred: float, p_true: float, loss: float) -> str:
    """fast.ai's top-losses caption: the prediction, the true class' probability, the loss."""
    truth = "right" if true == pred else f"true: {names[true]} {p_true:.2f}"
    return f"{names[pred]} {p_pred:.2f}\n{truth}\nloss {loss:.2f}"


class PageFigures(NamedTuple):
    """The PNGs of a model's test predictions, rendered once for the files and the page."""

    confusion: bytes
    reliability: bytes


def calibration_section(report: Mapping[str, Any], reliability_png: bytes,
                        temperature: Mapping[str, float] | None) -> str:
    """The reliability diagram, what it says, and what temperature scaling changed when a run did it."""
    bins = report["calibration"]["bins"]
    said = note(f"Expected calibration error {100 * report['calibration']['ece']:.2f} %: the gap between "
                f"confidence and accuracy, averaged over the {round(1 / (bins[0]['high'] - bins[0]['low']))} "
                f"confidence bins by their images ({len(bins)} hold any). Of the images the model gives p % to, "
                f"p % should be right: each bar is a bin's accuracy, the hatched gap its distance from the bin's "
                f"mean confidence." if bins else "No test images: no calibration.")
    if temperature:
        rows = {"temperature": f"{temperature['temperature']:.3f}, fitted on the validation split and folded into "
                               f"the last layer (the saved and exported model include it)",
                "validation split": f"ECE {100 * temperature['val_ece_before']:.2f} % -> "
                                    f"{100 * temperature['val_ece_after']:.2f} %, loss "
                                    f"{temperature['val_loss_before']:.4f} -> {temperature['val_loss_after']:.4f}"}
        if "test_ece_before" in temperature:
            rows["test set"] = (f"ECE {100 * temperature['test_ece_before']:.2f} % -> "
                                f"{100 * report['calibration']['ece']:.2f} %, loss "
                                f"{temperature['test_loss_before']:.4f} -> {report['test_loss']:.4f}, accuracy "
                                f"{temperature['test_accuracy_before']:.4f} -> {report['test_accuracy']:.4f}")
        said += key_values(rows)
    return said + png_tag(reliability_png, "reliability diagram: accuracy per confidence bin")


def test_sections(report: Mapping[str, Any], *, x_test: np.ndarray, y_test: np.ndarray, proba: np.ndarray,
                  figures: PageFigures, temperature: Mapping[str, float] | None = None
                  ) -> dict[str, list[tuple[str, str]]]:
    """The sections of a page that come from a model's test predictions: its summary ("metrics"), and
    per-class scores, the confusion matrix and its largest confusions, calibration, top losses, sample
    predictions ("details"); `temperature`: what the run's temperature scaling recorded, if it did."""
    matrix, names = np.asarray(report["confusion_matrix"]), list(report["per_class"])
    pred, confidence = proba.argmax(axis=1), proba.max(axis=1)
    p_true = proba[np.arange(len(y_test)), y_test]
    losses = -np.log(np.clip(p_true, 1e-7, 1.0))  # the clip keeps a 0 probability's loss finite, as Keras does
    mistakes = int((pred != y_test).sum())
    top = np.argsort(-losses, kind="stable")[:TOP_LOSSES_SHOWN]
    samples = np.arange(min(SAMPLES_SHOWN, len(y_test)))
    scores = class_scores(matrix, names)
    summary = {"test accuracy": f"{report['test_accuracy']:.4f}", "test loss": f"{report['test_loss']:.4f}",
               "macro F1": f"{scores.loc['macro average', 'F1']:.4f}",
               "expected calibration error": f"{100 * report['calibration']['ece']:.2f} %",
               "misclassified": f"{mistakes:,}", "test images": f"{len(y_test):,}"}
    pairs = confused_pairs(matrix, names)
    top_captions = [_loss_caption(names, int(y_test[i]), int(pred[i]), float(confidence[i]), float(p_true[i]),
                                  float(losses[i])) for i in top]
    sample_captions = [_caption(names, int(y_test[i]), int(pred[i]), float(confidence[i])) for i in samples]
    return {"metrics": [("Test metrics", key_values(summary))], "details": [
        ("Per-class precision, recall and F1", table_tag(scores.reset_index(), index=False, digits=3)),
        ("Confusion matrix", png_tag(figures.confusion, "confusion matrix, % of each true class")),
        ("Most confused pairs", table_tag(pairs, index=False, classes="text") if len(pairs)
         else "<p>None: no mistakes.</p>"),
        ("Calibration", calibration_section(report, figures.reliability, temperature)),
        (f"Top losses (the {len(top)} test images with the highest loss)",
         note("Each: the predicted class and its probability, the true class' probability, the loss "
              "(-log of that probability).") + image_tiles(x_test[top], top_captions, pred[top] == y_test[top])),
        (f"Sample predictions (test images 0..{len(samples) - 1})",
         image_tiles(x_test[samples], sample_captions, pred[samples] == y_test[samples])),
    ]}


def run_report_html(title: str, *, config: Mapping[str, Any], history: pd.DataFrame, report: Mapping[str, Any],
                    x_test: np.ndarray, y_test: np.ndarray, proba: np.ndarray, metrics: Mapping[str, Any],
                    curves_png: bytes, seconds_png: bytes | None, figures: PageFigures) -> str:
    """One run: test metrics, learning curves, training times, per-class scores, the confusion
    matrix and its largest confusions, top losses, sample predictions, configuration, environment."""
    tested = test_sections(report, x_test=x_test, y_test=y_test, proba=proba, figures=figures,
                           temperature=metrics.get("temperature"))
    environment = environment_rows(metrics)
    sections = [
        ("What was run", key_values(what_was_run_rows(config, metrics))),
        *tested["metrics"],
        ("Learning curves", png_tag(curves_png, "loss and accuracy per epoch, training and validation")),
        ("Training", key_values(training_rows(config, history, metrics))),
    ]
    if seconds_png is not None:
        sections.append(("Validation accuracy against training time",
                         png_tag(seconds_png, "validation accuracy against training seconds")))
    sections += [*tested["details"], ("Configuration", key_values(config))]
    if environment:
        sections.append(("Environment", key_values(environment)))
    return page(title, sections)


def _write_test_figures(run: Run, report: Mapping[str, Any], title: str,
                        temperature: Mapping[str, float] | None = None) -> PageFigures:
    """confusion_matrix.csv and .png, reliability.png; the PNGs' bytes, for the page."""
    matrix, names = np.asarray(report["confusion_matrix"]), list(report["per_class"])
    confusion = plots.png_bytes(plots.confusion_figure(matrix, names))
    reliability = plots.png_bytes(plots.reliability_figure(
        report["calibration"]["bins"], report["calibration"]["ece"], title,
        temperature["temperature"] if temperature else None))
    frame = pd.DataFrame(matrix, index=pd.Index(names, name="true"), columns=names)
    run.write_with("confusion_matrix.csv", lambda tmp: frame.to_csv(tmp))
    run.write_with("confusion_matrix.png", lambda tmp: tmp.write_bytes(confusion))
    run.write_with("reliability.png", lambda tmp: tmp.write_bytes(reliability))
    return PageFigures(confusion, reliability)


def write_test_outputs(run: Run, *, config: Mapping[str, Any], history: pd.DataFrame, report: Mapping[str, Any],
                       x_test: np.ndarray, y_test: np.ndarray, proba: np.ndarray,
                       metrics: Mapping[str, Any] | None = None) -> None:
    """learning_curves.png, confusion_matrix.csv/.png and report.html; each figure is rendered once.
    `metrics`: what metrics.json holds (dates, times to accuracy, engine, versions...); the page
    leaves out what it does not give."""
    metrics = metrics or {}
    curves = plots.png_bytes(plots.learning_curves_figure(history, config.get("name", "")))
    marks = tuple(float(mark) for mark in metrics.get("seconds_to_val_accuracy") or (0.85, 0.90, 0.93))
    seconds = plots.png_bytes(plots.accuracy_vs_seconds_figure(history, marks)) if "seconds" in history else None
    run.write_with("learning_curves.png", lambda tmp: tmp.write_bytes(curves))
    figures = _write_test_figures(run, report, config.get("name", ""), metrics.get("temperature"))
    text = run_report_html(f"fashionlab run: {run.path.name}", config=config, history=history, report=report,
                           x_test=x_test, y_test=y_test, proba=proba, metrics=metrics, curves_png=curves,
                           seconds_png=seconds, figures=figures)
    run.write_text("report.html", text)


def gains(accuracy: float, members: Sequence[float]) -> str:
    """How an ensemble's test accuracy compares with its members' mean and with its best member."""
    each = np.asarray(members, dtype=float)
    said = (f"{100 * (accuracy - each.mean()):+.2f} points over the members' mean, "
            f"{100 * (accuracy - each.max()):+.2f} over the best member")
    return said + (" (the ensemble is worse than its best member)" if accuracy < each.max() else "")


def members_table(members: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """An ensemble's members, a row each: the run, its name, recipe and seed, its test accuracy."""
    return pd.DataFrame({
        "run": [str(m["run"]) for m in members], "name": [str(m["name"]) for m in members],
        "recipe": [str(m.get("recipe") or "none") for m in members],
        "seed": [m["config"].get("seed") for m in members],
        "test accuracy": [float(m["test_accuracy"]) for m in members]})


def ensemble_report_html(title: str, *, ensemble: Mapping[str, Any], report: Mapping[str, Any],
                         x_test: np.ndarray, y_test: np.ndarray, proba: np.ndarray, metrics: Mapping[str, Any],
                         dataset: str, figures: PageFigures) -> str:
    """An ensemble: what it averages and how much it gains over its members, then the test sections."""
    tested = test_sections(report, x_test=x_test, y_test=y_test, proba=proba, figures=figures)
    members = ensemble["members"]
    accuracies = np.array([m["test_accuracy"] for m in members], dtype=float)
    made = {"command": shortened(str(metrics.get("command") or "not recorded")),
            "averages": f"the class probabilities of {len(members)} runs, with equal weights",
            "members' test accuracy": (f"mean {accuracies.mean():.4f} ± {accuracies.std(ddof=1):.4f} (std), "
                                       f"worst {accuracies.min():.4f}, best {accuracies.max():.4f}"),
            "against its members": gains(report["test_accuracy"], accuracies),
            "data": f"{dataset}: {len(y_test):,} test images"}
    environment = environment_rows(metrics)
    sections = [("What was made", key_values(made | environment_line(metrics))), *tested["metrics"],
                ("Members", table_tag(members_table(members), index=False, classes="text")), *tested["details"]]
    if environment:
        sections.append(("Environment", key_values(environment)))
    return page(title, sections)


def write_ensemble_outputs(run: Run, *, ensemble: Mapping[str, Any], report: Mapping[str, Any], x_test: np.ndarray,
                           y_test: np.ndarray, proba: np.ndarray, metrics: Mapping[str, Any], dataset: str) -> None:
    """An ensemble's confusion_matrix.csv/.png, reliability.png and report.html."""
    figures = _write_test_figures(run, report, run.path.name)
    run.write_text("report.html", ensemble_report_html(
        f"fashionlab ensemble: {run.path.name}", ensemble=ensemble, report=report, x_test=x_test, y_test=y_test,
        proba=proba, metrics=metrics, dataset=dataset, figures=figures))


def write_learning_curves(run: Run, history: pd.DataFrame, title: str) -> None:
    """learning_curves.png alone: the figure of a run kept away from the test set."""
    curves = plots.png_bytes(plots.learning_curves_figure(history, title))
    run.write_with("learning_curves.png", lambda tmp: tmp.write_bytes(curves))


# --- a comparison ------------------------------------------------------------------------------

# Short headers: the every-run table has many columns (the summary's note says what s/epoch is).
RESULT_LABELS = {"test_accuracy": "test acc.", "test_loss": "test loss",
                 "first_epoch_val_accuracy": "val acc. epoch 1", "best_val_accuracy": "best val acc.",
                 "best_epoch": "best epoch", "final_val_accuracy": "final val acc.",
                 "seconds_per_epoch": "s/epoch", "wall_seconds": WALL_LABEL}


def summary_display(summary: pd.DataFrame) -> pd.DataFrame:
    """The per-variant table as people read it, for summary.md and report.html alike."""
    return pd.DataFrame({
        "seeds": summary["seeds"].map(str),
        "test accuracy (mean ± std)": [f"{m:.4f} ± {s:.4f}" for m, s in
                                       zip(summary["test_accuracy_mean"], summary["test_accuracy_std"])],
        "worst seed": summary["test_accuracy_worst"].map("{:.4f}".format),
        "test ECE (mean)": summary["test_ece_mean"].map(lambda v: f"{100 * v:.2f} %" if v == v else "–"),
        "val accuracy after epoch 1": summary["first_epoch_val_accuracy"].map("{:.4f}".format),
        "best val accuracy": summary["best_val_accuracy"].map("{:.4f}".format),
        "epoch of best val": summary["best_epoch"].map("{:.1f}".format),
        SECONDS_LABEL: summary["seconds_per_epoch"].map(seconds_text),
        WALL_LABEL: summary["wall_seconds"].map(seconds_text),
        "parameters": summary["parameters"].map("{:,}".format),
    }, index=summary.index.rename("variant"))


def summary_markdown(summary: pd.DataFrame) -> str:
    """The per-variant table, then what its s/epoch means."""
    table = summary_display(summary)
    lines = ["| variant | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
    lines += [f"| {variant} | " + " | ".join(row) + " |" for variant, row in table.iterrows()]
    return "\n".join(lines) + "\n\n" + SECONDS_NOTE + "\n"


def _shown(column: str, value: Any) -> str:
    if column in ("seconds_per_epoch", "wall_seconds"):
        return seconds_text(value)
    if column == "parameters":
        return f"{value:,}"
    if isinstance(value, (float, np.floating)):
        return f"{value:.4f}"
    return str(value)


def runs_table(results: pd.DataFrame, pages: Sequence[str] | None = None) -> str:
    """Every run, a row each, with readable headers and, given `pages` (each run's report.html,
    relative to this page), a link to the run's own page. Every cell is escaped here."""
    # each run's ECE is on its page and the variants' mean in the summary: 1,280 px fit the rest
    shown = results.drop(columns=["run_dir", "test_ece"], errors="ignore")
    header = [RESULT_LABELS.get(c, str(c).replace("_", " ")) for c in shown.columns] + (["run"] if pages else [])
    rows = []
    for k, (_, row) in enumerate(shown.iterrows()):
        cells = [html.escape(_shown(c, row[c])) for c in shown.columns]
        if pages:
            cells.append(f'<a href="{html.escape(quote(pages[k]))}">'
                         f'{html.escape(pages[k].removesuffix("/report.html"))}</a>')
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    return f'<div class="scroll"><table class="runs"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></div>'


def comparison_report_html(*, summary: pd.DataFrame, results: pd.DataFrame, curves_png: bytes,
                           confusions: Mapping[str, np.ndarray], class_names: Sequence[str],
                           statements: Sequence[str], pages: Sequence[str] | None = None,
                           setup: Mapping[str, str] | None = None,
                           variant_changes: Mapping[str, str] | None = None) -> str:
    """Conclusion, per-variant table, validation curves (per epoch and against seconds),
    row-normalised summed confusion matrices, every run linked to its own page."""
    conclusion_html = '<div class="conclusion">' + "".join(f"<p>{html.escape(s)}</p>" for s in statements) + "</div>"

    def matrix(variant: str, summed: np.ndarray) -> str:
        figure = plots.confusion_figure(summed, class_names, f"{variant}: test set, all seeds summed")
        return f"<div>{figure_tag(figure, f'confusion matrix {variant}')}</div>"

    matrices = '<div class="pairs">' + "".join(matrix(v, m) for v, m in confusions.items()) + "</div>"
    what = key_values(setup or {}) + (table_tag(pd.DataFrame({"variant": list(variant_changes),
                                                              "what it changes": list(variant_changes.values())}),
                                                index=False, classes="text") if variant_changes else "")
    return page("fashionlab comparison", [
        *([("What was run", what)] if setup or variant_changes else []),
        ("Conclusion", conclusion_html),
        ("Summary per variant", table_tag(summary_display(summary).reset_index(), index=False)
         + note(SECONDS_NOTE)),
        ("Validation curves", png_tag(curves_png, "validation accuracy and loss per epoch, and accuracy against "
                                                  "training seconds, per variant")),
        ("Confusion matrices", matrices),
        ("Every run", runs_table(results, pages)),
    ])


def run_pages(folder: Path, run_dirs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Each run's report.html as a link from the comparison's own page: relative, so the folder can move."""
    return [Path(os.path.relpath(Path(d) / "report.html", folder)).as_posix() for d in run_dirs]


def write_comparison_outputs(folder: Run, *, results: pd.DataFrame, summary: pd.DataFrame, statements: Sequence[str],
                             histories: Mapping[str, Sequence[pd.DataFrame]],
                             confusions: Mapping[str, np.ndarray], class_names: Sequence[str],
                             setup: Mapping[str, str] | None = None,
                             variant_changes: Mapping[str, str] | None = None) -> None:
    """results.csv, summary.md (table and conclusion), curves.png and report.html, each written atomically.
    `histories` with their `seconds` give the accuracy-against-time curves; `results`' run_dir the links;
    `confusions` (one summed matrix per variant) are labelled with `class_names`."""
    curves = plots.png_bytes(plots.comparison_curves_figure(histories))
    pages = run_pages(folder.path, results["run_dir"]) if "run_dir" in results else None
    folder.write_with("results.csv", lambda tmp: csv_safe(results).to_csv(tmp, index=False))
    folder.write_text("summary.md", summary_markdown(summary) + "\n" + "\n\n".join(statements) + "\n")
    folder.write_with("curves.png", lambda tmp: tmp.write_bytes(curves))
    folder.write_text("report.html", comparison_report_html(summary=summary, results=results, curves_png=curves,
                                                            confusions=confusions, class_names=class_names,
                                                            statements=statements, pages=pages, setup=setup,
                                                            variant_changes=variant_changes))


# --- a sweep -------------------------------------------------------------------------------------

def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_, str)):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{float(value):.4g}"


def sweep_display(table: pd.DataFrame, searched: Sequence[str]) -> pd.DataFrame:
    """The trials table as people read it, for summary.md and report.html alike."""
    def epochs(row: pd.Series) -> str:
        return "" if pd.isna(row["epochs"]) else f"{int(row['epochs'])}/{int(row['epochs_planned'])}"

    return pd.DataFrame({
        "trial": table["trial"].map(str), "state": table["state"],
        **{key: table[key].map(_number) for key in searched},
        "val acc.": table["val_accuracy"].map(lambda v: "" if pd.isna(v) else f"{v:.4f}"),
        "best val acc.": table["best_val_accuracy"].map(lambda v: "" if pd.isna(v) else f"{v:.4f}"),
        "epochs": table.apply(epochs, axis=1) if len(table) else pd.Series(dtype=str),
        "train s": table["seconds"].map(lambda v: "" if pd.isna(v) else seconds_text(v)),
        "saved s": table["seconds_saved"].map(lambda v: "" if pd.isna(v) or not v else seconds_text(v)),
        "note": table["reason"].fillna(""),
    })


def sweep_statements(*, table: pd.DataFrame, searched: Mapping[str, str], settings: str, trials: int,
                     best: Mapping[str, Any] | None, tests: Sequence[Mapping[str, Any]], note_text: str,
                     wall: float, jobs: int, ran: int, best_path: str, description: str = "") -> list[str]:
    """What the sweep did and found, in plain sentences that say how far each figure can be trusted."""
    counts = table["state"].value_counts()
    states = ", ".join(f"{int(counts[s])} {s}" for s in ("complete", "pruned", "failed", "running", "waiting")
                       if s in counts)
    count = f"{len(table)} of {trials} trials" if len(table) <= trials else \
        f"{len(table)} trials (this command asked for {trials})"
    lines = [*([description.rstrip(".") + "."] if description else []), f"{count}: {states or 'none yet'}.",
             "Searched: " + "; ".join(f"{k} {v}" for k, v in searched.items()) + f". {settings}."]
    if best is None:
        lines.append("No trial has completed yet: there is nothing to choose.")
    else:
        values = ", ".join(f"{k} {_number(best[k])}" for k in searched)
        scored = int((table["state"] == "complete").sum())
        lines.append(f"Chosen on validation accuracy alone: trial {best['trial']} ({values}), validation accuracy "
                     f"{best['val_accuracy']:.4f}. That is the maximum over {scored} complete trial(s), so it "
                     f"flatters the configuration: expect a little less on new data.")
    chosen = [t for t in tests if best is not None and t["trial"] == best["trial"]]
    if chosen:
        t = chosen[0]
        lines.append(f"Test set, evaluated once, for trial {t['trial']} only: test accuracy {t['test_accuracy']:.4f} "
                     f"(loss {t['test_loss']:.4f}).")
    if len(tests) > 1:
        lines.append(f"This study has looked at the test set {len(tests)} times, once per chosen trial as trials "
                     f"were added: " + "; ".join(f"trial {t['trial']} ({t['test_accuracy']:.4f}, chosen among "
                                                 f"{t['trials']})" for t in tests) + ".")
    if note_text:
        lines.append(note_text[0].upper() + note_text[1:] + ".")
    pruned = table[table["state"] == "pruned"]
    if len(pruned):
        skipped = int((pruned["epochs_planned"] - pruned["epochs"]).sum())
        planned = int(table["epochs_planned"].dropna().sum())
        lines.append(f"Pruning stopped {len(pruned)} trial(s) early: {skipped} of the {planned} planned epochs "
                     f"({skipped / max(planned, 1):.0%}) were not trained, about "
                     f"{_duration(float(pruned['seconds_saved'].sum()))} of training saved.")
    lines.append(f"Training time over all trials: {_duration(float(table['seconds'].fillna(0).sum()))}; this "
                 f"command trained {ran} trial(s) with {jobs} job(s) in {_duration(wall)} of wall time.")
    if best is not None:
        lines.append(f"Train the chosen configuration again: fashionlab train --config {best_path}")
    return lines


def sweep_markdown(title: str, statements: Sequence[str], display: pd.DataFrame) -> str:
    lines = [f"# {title}", "", *(f"{s}\n" for s in statements),
             "| " + " | ".join(display.columns) + " |", "|---" * len(display.columns) + "|"]
    lines += ["| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in display.itertuples(False)]
    return "\n".join(lines) + "\n"


def write_sweep_outputs(folder: Run, *, title: str, table: pd.DataFrame, searched: Mapping[str, str],
                        scales: Mapping[str, str], statements: Sequence[str], best_text: str | None,
                        importances: Mapping[str, float] | None, setup: Mapping[str, str] | None = None) -> str:
    """trials.csv, summary.md, report.html (history, slices, importances, the best config) and
    best.toml, each written atomically; returns summary.md's text."""
    display = sweep_display(table, list(searched))
    summary = sweep_markdown(title, statements, display)
    figures = []
    if len(table):
        figures.append(("Optimization history", figure_tag(plots.sweep_history_figure(table),
                                                           "validation accuracy per trial")))
        figures.append(("Each searched value", figure_tag(plots.sweep_slices_figure(table, scales),
                                                          "validation accuracy against each searched value")))
    if importances:
        figures.append(("Importance", figure_tag(plots.importance_figure(importances), "parameter importances")
                        + note("Optuna's importance (PED-ANOVA) over the complete trials: how much of the "
                               "variation in validation accuracy each key explains; with few trials, a rough guide.")))
    links = [Path(run, "learning_curves.png").as_posix() if state in ("complete", "pruned") else ""
             for run, state in zip(table["run"], table["state"])]  # a failed trial may have no curves
    linked = display.assign(trial=[f'<a href="{html.escape(quote(link))}">{html.escape(t)}</a>' if link else
                                   html.escape(t) for t, link in zip(display["trial"], links)])
    rows = linked.assign(**{c: linked[c].map(lambda v: html.escape(str(v))) for c in linked.columns if c != "trial"})
    trials_html = ('<div class="scroll"><table class="trials"><thead><tr>'
                   + "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in rows.columns)
                   + "</tr></thead><tbody>"
                   + "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
                             for row in rows.itertuples(False)) + "</tbody></table></div>")
    sections = [*([("What was run", key_values(setup))] if setup else []),
                ("What the sweep found", '<div class="conclusion">'
                 + "".join(f"<p>{html.escape(s)}</p>" for s in statements) + "</div>"), *figures]
    if best_text is not None:
        sections.append(("The chosen configuration (best.toml)", f"<pre>{html.escape(best_text)}</pre>"))
    sections.append(("Every trial", trials_html + note("Each trial's name links to its learning curves; the chosen "
                                                       "trial's run also has a report.html with its test result.")))
    folder.write_with("trials.csv", lambda tmp: csv_safe(table).to_csv(tmp, index=False))
    folder.write_text("summary.md", summary)
    if best_text is not None:
        folder.write_text("best.toml", best_text)
    folder.write_text("report.html", page(title, sections))
    return summary
