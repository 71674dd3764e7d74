import numpy as np
import pandas as pd
from helpers import Page, assert_png, assert_self_contained

from fashionlab.reports import (
    MISCLASSIFIED_SHOWN,
    SAMPLES_SHOWN,
    csv_safe,
    image_tiles,
    page,
    summary_markdown,
    table_tag,
)


def test_run_report_is_self_contained_and_complete(tiny_run):
    page = assert_self_contained(tiny_run.run.path / "report.html")
    for heading in ("Test metrics", "Learning curves", "Per-class precision and recall", "Confusion matrix",
                    "Configuration"):
        assert heading in page.headings
    mistakes = round((1 - tiny_run.metrics["test_accuracy"]) * 100)  # 100 synthetic test images
    assert f"Misclassified test images (the {min(mistakes, MISCLASSIFIED_SHOWN)} most confident mistakes of " \
           f"{mistakes:,})" in page.headings
    assert "Sample predictions (test images 0..15)" in page.headings
    tiles = page.images[2:]  # after the learning curves and the confusion matrix
    assert len(tiles) == min(mistakes, MISCLASSIFIED_SHOWN) + SAMPLES_SHOWN
    metrics = dict((row[0], row[1]) for row in page.tables[0] if len(row) == 2)
    assert float(metrics["test accuracy"]) == round(tiny_run.metrics["test_accuracy"], 4)
    assert metrics["misclassified"] == str(mistakes)


def test_run_pngs_are_valid(tiny_run):
    assert_png(tiny_run.run.path / "learning_curves.png", 600, 400)
    assert_png(tiny_run.run.path / "confusion_matrix.png", 600, 500)


def test_pages_show_markup_in_names_and_values_as_text():
    hostile = "<script>alert(1)</script>"
    frame = pd.DataFrame({"value": [hostile]}, index=["<b>key</b>"])
    tiles = image_tiles(np.zeros((1, 28, 28), np.uint8), [hostile], np.array([True]))
    text = page("<i>run</i>", [("<u>section</u>", table_tag(frame) + tiles)])
    assert "<script>" not in text and "<i>" not in text and "<b>" not in text and "<u>" not in text
    parsed = Page(text)
    assert parsed.headings == ["<i>run</i>", "<u>section</u>"]
    assert parsed.tables[0][-1] == ["<b>key</b>", hostile]


def test_summary_markdown_has_one_row_per_variant():
    summary = pd.DataFrame({"seeds": [2, 2], "test_accuracy_mean": [0.85, 0.8], "test_accuracy_std": [0.01, 0.02],
                            "test_accuracy_worst": [0.84, 0.78], "first_epoch_val_accuracy": [0.7, 0.6],
                            "best_val_accuracy": [0.86, 0.81], "best_epoch": [9.0, 8.5],
                            "seconds_per_epoch": [1.5, 1.25], "parameters": [279410, 271410]},
                           index=pd.Index(["bn-after", "raw"], name="variant"))
    lines = summary_markdown(summary).splitlines()
    assert lines[0].startswith("| variant | seeds | test accuracy (mean ± std) |")
    assert lines[2] == "| bn-after | 2 | 0.8500 ± 0.0100 | 0.8400 | 0.7000 | 0.8600 | 9.0 | 1.50 | 279,410 |"
    assert lines[3].startswith("| raw | 2 | 0.8000 ± 0.0200 |") and len(lines) == 4


def test_text_cells_a_spreadsheet_would_run_are_defused():
    frame = pd.DataFrame({"run_dir": ["=1+1", "+x", "-y", "@z", "\tq", "runs/a"], "value": [-1.5, 2, 3, 4, 5, 6]})
    safe = csv_safe(frame)
    assert safe["run_dir"].tolist() == ["'=1+1", "'+x", "'-y", "'@z", "'\tq", "runs/a"]
    assert safe["value"].tolist() == frame["value"].tolist()  # numbers, negative ones too, stay numbers
