import html
import json
import re
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, Page, assert_png, assert_self_contained

from fashionlab import CLASS_NAMES
from fashionlab.comparison import summarize
from fashionlab.evaluation import metrics_from_proba
from fashionlab.reports import (
    SAMPLES_SHOWN,
    TOP_LOSSES_SHOWN,
    class_scores,
    confused_pairs,
    csv_safe,
    image_tiles,
    key_values,
    page,
    runs_table,
    seconds_text,
    summary_markdown,
    table_tag,
    write_comparison_outputs,
    write_test_outputs,
)
from fashionlab.rundir import Run

VIEWPORT = '<meta name="viewport" content="width=device-width, initial-scale=1">'


def section(text: str, heading: str) -> str:
    """The HTML between the <h2> whose text starts with `heading` and the next <h2>."""
    start = text.index(f"<h2>{html.escape(heading)}")
    end = text.find("<h2>", start + 4)
    return text[start:end if end > 0 else None]


def rows_of(table: list[list[str]]) -> dict[str, str]:
    return {row[0]: row[1] for row in table if len(row) == 2}


def captions(text: str) -> list[str]:
    return [html.unescape(c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", text, re.S)]


# --- a run's page --------------------------------------------------------------------------------

def test_run_report_is_self_contained_and_complete(tiny_run):
    page = assert_self_contained(tiny_run.run.path / "report.html")
    text = (tiny_run.run.path / "report.html").read_text()
    assert VIEWPORT in text
    assert page.headings[1:] == [
        "What was run", "Test metrics", "Learning curves", "Training", "Validation accuracy against training time",
        "Per-class precision, recall and F1", "Confusion matrix", "Most confused pairs", "Calibration",
        f"Top losses (the {TOP_LOSSES_SHOWN} test images with the highest loss)",
        "Sample predictions (test images 0..15)", "Configuration", "Environment"]
    tiles = page.images[4:]  # after the learning curves, accuracy against time, confusion matrix, reliability
    assert len(tiles) == TOP_LOSSES_SHOWN + SAMPLES_SHOWN
    metrics = rows_of(page.tables[1])
    assert float(metrics["test accuracy"]) == round(tiny_run.metrics["test_accuracy"], 4)
    mistakes = round((1 - tiny_run.metrics["test_accuracy"]) * 100)  # 100 synthetic test images
    assert metrics["misclassified"] == str(mistakes)


def test_run_page_shows_what_metrics_json_knows(tiny_run):
    path = tiny_run.run.path
    metrics = json.loads((path / "metrics.json").read_text())
    history = pd.read_csv(path / "history.csv")
    page = Page((path / "report.html").read_text())
    training, environment = rows_of(page.tables[2]), rows_of(page.tables[-1])
    assert training["best validation accuracy"] == f"{metrics['best_val_accuracy']:.4f} (epoch {metrics['best_epoch']})"
    assert training["epochs"] == str(len(history)) and training["engine"] == metrics["engine"]
    assert training["parameters"].startswith(f"{metrics['parameters']['total']:,} (")
    assert training["recipe"] == (metrics["recipe"] or "none")
    assert training["first epoch"] == f"{seconds_text(history['seconds'][0])} s (includes compiling)"
    assert training["s/epoch after the first (median)"] == f"{seconds_text(history['seconds'][1:].median())} s"
    assert training["training time"].startswith(seconds_text(metrics["train_seconds"]) + " s")
    for mark, reached in metrics["seconds_to_val_accuracy"].items():
        assert training[f"validation accuracy ≥ {mark} after"] == ("not reached" if reached is None else
                                                                    f"{seconds_text(reached)} s")
    assert training["started"] == metrics["started"].replace("T", " ").replace("+00:00", " UTC")
    assert training["finished"].startswith(metrics["finished"][:10])
    assert f"keras {metrics['versions']['keras']}" in environment["versions"]
    assert environment["machine: cores"] == str(metrics["machine"]["cores"])


def test_per_class_table_reads_back_from_the_confusion_matrix(tiny_run):
    matrix = pd.read_csv(tiny_run.run.path / "confusion_matrix.csv", index_col=0).to_numpy()
    page = Page((tiny_run.run.path / "report.html").read_text())
    table = next(t for t in page.tables if t[0][:5] == ["class", "precision", "recall", "F1", "support"])
    rows = {row[0]: [float(v) for v in row[1:]] for row in table[1:]}
    f1 = []
    for i, name in enumerate(CLASS_NAMES):
        precision, recall = matrix[i, i] / max(matrix[:, i].sum(), 1), matrix[i, i] / matrix[i].sum()
        f1.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        assert rows[name] == pytest.approx([precision, recall, f1[-1], matrix[i].sum()], abs=5e-4)  # 3 decimals
    assert rows["macro average"][2] == pytest.approx(np.mean(f1), abs=5e-4)


def test_macro_f1_averages_the_classes_and_the_weighted_one_their_images():
    matrix = np.diag([10] * 10)
    matrix[0, 0], matrix[0, 1] = 90, 10  # class 0: 100 images, 90 right; 10 taken for class 1
    matrix[1, 1], matrix[1, 0] = 5, 5  # class 1: 10 images, 5 right
    scores = class_scores(matrix, CLASS_NAMES)
    p0, r0, p1, r1 = 90 / 95, 0.9, 5 / 15, 0.5
    f1 = np.array([2 * p0 * r0 / (p0 + r0), 2 * p1 * r1 / (p1 + r1)] + [1.0] * 8)
    np.testing.assert_allclose(scores.loc[list(CLASS_NAMES), "F1"], f1)
    assert scores.loc["macro average", "F1"] == pytest.approx(f1.mean())  # 0.903, not the accuracy 0.95
    support = np.array([100, 10] + [10] * 8)
    assert scores.loc["weighted average", "F1"] == pytest.approx(f1 @ support / support.sum())
    assert scores.loc["macro average", "precision"] == pytest.approx((p0 + p1 + 8) / 10)
    assert scores.loc["macro average", "support"] == 190


def test_most_confused_pairs_are_the_largest_mistakes_as_shares_of_the_true_class():
    matrix = np.diag([50] * 10)
    matrix[6, 0] = 20  # 20 shirts called T-shirts
    matrix[0, 6] = 5
    matrix[4, 2], matrix[4, 4] = 12, 8  # 12 of the 20 coats called pullovers
    pairs = confused_pairs(matrix, CLASS_NAMES, shown=2)
    assert pairs.values.tolist() == [["Shirt", "T-shirt/top", 20, "28.6%"], ["Coat", "Pullover", 12, "60.0%"]]
    assert confused_pairs(np.diag([5] * 10), CLASS_NAMES).empty


def test_top_losses_come_first_with_the_true_class_probability(tmp_path):
    y_test = np.arange(30) % 10
    proba = np.full((30, 10), 0.02)
    proba[np.arange(30), y_test] = 0.82  # right, all with the same loss
    proba[3], proba[3, 9] = 0.05, 0.55  # a Dress (3) called Ankle boot, 0.05 on the truth
    proba[17], proba[17, 9], proba[17, 7] = 0.04, 0.45, 0.23  # a Sneaker (7) called Ankle boot, 0.23 on the truth
    history = pd.DataFrame({"epoch": [1, 2], "loss": [2.5, 1.2], "accuracy": [0.3, 0.6], "val_loss": [2.0, 1.1],
                            "val_accuracy": [0.4, 0.7], "seconds": [5.0, 1.0]})
    # no `metrics`, as evaluate calls it
    write_test_outputs(Run(tmp_path), config={"name": "<i>t</i>", "epochs": 2}, history=history,
                       report=metrics_from_proba(y_test, proba, CLASS_NAMES), x_test=np.zeros((30, 28, 28), np.uint8),
                       y_test=y_test, proba=proba)
    text = (tmp_path / "report.html").read_text()
    top = captions(section(text, "Top losses"))
    assert len(top) == min(TOP_LOSSES_SHOWN, 30)
    p_true = proba[np.arange(30), y_test]
    loss = -np.log(p_true)
    first, second = top[0].splitlines(), top[1].splitlines()
    assert first == [f"Ankle boot {proba[3].max():.2f}", f"true: {CLASS_NAMES[3]} {p_true[3]:.2f}",
                     f"loss {loss[3]:.2f}"]
    assert second[1] == f"true: {CLASS_NAMES[7]} {p_true[17]:.2f}"
    assert top[2].splitlines()[1] == "right"
    losses = [float(c.splitlines()[-1].split()[-1]) for c in top]
    assert losses == sorted(losses, reverse=True)
    page = assert_self_contained(tmp_path / "report.html")
    assert "Environment" not in page.headings and "<i>" not in text  # what metrics.json would tell is left out
    assert rows_of(page.tables[2])["best validation accuracy"] == "0.7000 (epoch 2)"
    assert_png(tmp_path / "learning_curves.png", 600, 400)


def test_run_pngs_are_valid(tiny_run):
    assert_png(tiny_run.run.path / "learning_curves.png", 600, 400)
    assert_png(tiny_run.run.path / "confusion_matrix.png", 600, 500)


def test_pages_show_markup_in_names_and_values_as_text():
    hostile = "<script>alert(1)</script>"
    frame = pd.DataFrame({"value": [hostile]}, index=["<b>key</b>"])
    tiles = image_tiles(np.zeros((1, 28, 28), np.uint8), [hostile], np.array([True]))
    text = page("<i>run</i>", [("<u>section</u>", table_tag(frame) + tiles + key_values({"<s>k</s>": hostile}))])
    assert "<script>" not in text and "<i>" not in text and "<b>" not in text and "<u>" not in text
    assert "<s>" not in text
    parsed = Page(text)
    assert parsed.headings == ["<i>run</i>", "<u>section</u>"]
    assert parsed.tables[0][-1] == ["<b>key</b>", hostile]
    assert parsed.tables[1] == [["<s>k</s>", hostile]]


def test_the_runs_table_escapes_every_cell_and_link():
    results = pd.DataFrame({"variant": ["<b>v</b>"], "seed": [1], "test_accuracy": [0.5], "run_dir": ["x"]})
    text = runs_table(results, ['"><script>alert(1)</script>/report.html'])
    assert "<script>" not in text and "<b>" not in text
    href = re.search(r'href="([^"]*)"', text).group(1)
    assert "<" not in href and '"' not in href and ">" not in href
    assert Page(text).tables[0][1][0] == "<b>v</b>"


# --- a comparison's page -------------------------------------------------------------------------

def fake_comparison(folder: Path) -> pd.DataFrame:
    """What runner.results gives for 2 variants x 2 seeds, with each run's page in place."""
    rows = []
    for variant, accuracy in (("scaled", 0.85), ("fast-mlp:shift=2 #1", 0.86)):  # a spec's name, as a folder
        for seed in (1, 2):
            run_dir = folder / variant / f"seed-{seed}"
            run_dir.mkdir(parents=True)
            (run_dir / "report.html").write_text("<h1>run</h1>")
            rows.append({"variant": variant, "seed": seed, "test_accuracy": accuracy + seed / 1000,
                         "test_loss": 0.4, "first_epoch_val_accuracy": 0.7, "best_val_accuracy": 0.87,
                         "best_epoch": 2, "final_val_accuracy": 0.86, "seconds_per_epoch": 1.25 * seed,
                         "parameters": 13130, "run_dir": str(run_dir)})
    return pd.DataFrame(rows)


def test_the_comparison_page_has_readable_headers_and_links_to_every_run(tmp_path):
    folder = tmp_path / "cmp"
    results = fake_comparison(folder)
    summary = summarize(results)
    histories = {v: [pd.DataFrame({"epoch": [1, 2], "val_accuracy": [0.7, 0.87], "val_loss": [0.8, 0.4],
                                   "seconds": [3.0, 1.0]})] * 2 for v in summary.index}
    write_comparison_outputs(Run(folder), results=results, summary=summary, statements=["<b>a</b> wins."],
                             histories=histories, confusions={v: np.diag([10] * 10) for v in summary.index},
                             class_names=CLASS_NAMES)
    text = (folder / "report.html").read_text()
    page = assert_self_contained(folder / "report.html")
    assert VIEWPORT in text and "<b>a</b>" not in text
    assert page.headings == ["fashionlab comparison", "Conclusion", "Summary per variant", "Validation curves",
                             "Confusion matrices", "Every run"]
    assert len(page.images) == 1 + 2  # the curves, then a confusion matrix per variant
    summary_table, runs = page.tables
    assert summary_table[0][0] == "variant" and "s/epoch (median after epoch 1)" in summary_table[0]
    assert runs[0] == ["variant", "seed", "test acc.", "test loss", "val acc. epoch 1", "best val acc.", "best epoch",
                       "final val acc.", "s/epoch", "parameters", "run"]
    assert runs[1] == ["scaled", "1", "0.8510", "0.4000", "0.7000", "0.8700", "2", "0.8600", "1.25", "13,130",
                       "scaled/seed-1"]
    links = re.findall(r'<a href="([^"]+)">', section(text, "Every run"))
    assert links == ["scaled/seed-1/report.html", "scaled/seed-2/report.html",
                     "fast-mlp%3Ashift%3D2%20%231/seed-1/report.html", "fast-mlp%3Ashift%3D2%20%231/seed-2/report.html"]
    assert all((folder / unquote(link)).is_file() for link in links)  # relative: the folder can move
    assert "median time of each run's epochs after the first" in (folder / "summary.md").read_text()
    assert pd.read_csv(folder / "results.csv")["run_dir"].tolist() == results["run_dir"].tolist()


def test_summary_markdown_has_one_row_per_variant_and_says_what_s_per_epoch_is():
    summary = pd.DataFrame({"seeds": [2, 2], "test_accuracy_mean": [0.85, 0.8], "test_accuracy_std": [0.01, 0.02],
                            "test_accuracy_worst": [0.84, 0.78], "test_ece_mean": [0.0123, float("nan")],
                            "first_epoch_val_accuracy": [0.7, 0.6],
                            "best_val_accuracy": [0.86, 0.81], "best_epoch": [9.0, 8.5],
                            "seconds_per_epoch": [1.5, 0.0123], "wall_seconds": [31.25, float("nan")],
                            "parameters": [279410, 271410]},
                           index=pd.Index(["bn-after", "raw"], name="variant"))
    lines = summary_markdown(summary).splitlines()
    assert lines[0].startswith("| variant | seeds | test accuracy (mean ± std) |")
    assert "| s/epoch (median after epoch 1) |" in lines[0]
    assert "| s per run |" in lines[0]
    assert lines[2] == ("| bn-after | 2 | 0.8500 ± 0.0100 | 0.8400 | 1.23 % | 0.7000 | 0.8600 | 9.0 | 1.50 | 31.25 "
                        "| 279,410 |")
    assert lines[3].startswith("| raw | 2 | 0.8000 ± 0.0200 | 0.7800 | – |")  # a comparison of runs made before ECE
    assert "| 0.012 | n/a |" in lines[3]  # not 0.01
    assert lines[4] == "" and lines[5].startswith("s/epoch: the median time of each run's epochs after the first")


def test_text_cells_a_spreadsheet_would_run_are_defused():
    frame = pd.DataFrame({"run_dir": ["=1+1", "+x", "-y", "@z", "\tq", "runs/a"], "value": [-1.5, 2, 3, 4, 5, 6]})
    safe = csv_safe(frame)
    assert safe["run_dir"].tolist() == ["'=1+1", "'+x", "'-y", "'@z", "'\tq", "runs/a"]
    assert safe["value"].tolist() == frame["value"].tolist()  # numbers, negative ones too, stay numbers


def test_a_run_of_seven_classes_is_reported_in_its_own_names(tmp_path):
    """The class names come from the report (metrics_from_proba's per_class), never from Fashion-MNIST's."""
    names = ("zero", "one", "two", "three", "four", "five", "six")
    y_test = np.arange(21) % 7
    proba = np.full((21, 7), 0.05)
    proba[np.arange(21), (y_test + 1) % 7] = 0.7  # every image called the next class
    history = pd.DataFrame({"epoch": [1], "loss": [1.0], "accuracy": [0.5], "val_loss": [1.0], "val_accuracy": [0.5]})
    write_test_outputs(Run(tmp_path), config={"name": "seven"}, history=history,
                       report=metrics_from_proba(y_test, proba, names), x_test=np.zeros((21, 28, 28), np.uint8),
                       y_test=y_test, proba=proba)
    matrix = pd.read_csv(tmp_path / "confusion_matrix.csv", index_col=0)
    assert list(matrix.index) == list(matrix.columns) == list(names) and matrix.loc["six", "zero"] == 3
    text = (tmp_path / "report.html").read_text()
    assert "zero 0.70 (true: six)" in captions(section(text, "Sample predictions"))
    assert not any(name in text for name in CLASS_NAMES)
    pairs = confused_pairs(np.asarray(metrics_from_proba(y_test, proba, names)["confusion_matrix"]), names)
    assert list(pairs["true class"])[:2] == ["zero", "one"] and list(pairs["predicted as"])[:2] == ["one", "two"]


def test_a_run_page_opens_with_what_was_run(tiny_run, tmp_path, synthetic):
    from fashionlab.training import train

    config = TINY.replace(epochs=1, train_samples=200, name="short")
    result = train(config, tmp_path / "run", data=synthetic, verbose=0, recipe="fast-mlp",
                   command="fashionlab train --recipe fast-mlp --epochs 1")
    page = Page((tmp_path / "run" / "report.html").read_text())
    assert page.headings[1] == "What was run"
    rows = rows_of(page.tables[0])
    assert rows["command"] == "fashionlab train --recipe fast-mlp --epochs 1"
    assert json.loads((tmp_path / "run" / "run.json").read_text())["command"] == rows["command"]
    assert result.metrics["command"] == rows["command"]
    assert rows["recipe"] == "fast-mlp"
    from fashionlab.recipes import get

    recipe = get("fast-mlp").config()
    changed = rows["changed from the fast-mlp recipe"]
    assert f"epochs {recipe.epochs} → 1" in changed and "train_samples all → 200" in changed
    assert "name" not in changed and "seed" not in changed
    assert rows["data"].startswith(f"fashion-mnist: {result.metrics['data']['train']:,} training")
    assert rows["machine"].startswith(result.metrics["machine"]["cpu"])
    assert "fashionlab 0.1.0" in rows["versions"] and "keras " in rows["versions"]
    tutorial = rows_of(Page((tiny_run.run.path / "report.html").read_text()).tables[0])
    assert tutorial["command"] == "not recorded" and tutorial["recipe"].startswith("none")
    assert "changed from the tutorial" in tutorial
