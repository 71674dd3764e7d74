from helpers import assert_png, assert_self_contained


def test_run_report_is_self_contained_and_complete(tiny_run):
    page = assert_self_contained(tiny_run.run.path / "report.html")
    for heading in ("Test metrics", "Learning curves", "Per-class precision and recall", "Confusion matrix",
                    "Configuration"):
        assert heading in page.headings
    assert any(h.startswith("Misclassified test images") for h in page.headings)
    assert any(h.startswith("Sample predictions") for h in page.headings)
    tiles = [src for src in page.images[2:]]
    assert len(page.images) == 2 + len(tiles) and 16 <= len(tiles) <= 16 + 32  # samples + mistakes as tiles
    metrics = dict((row[0], row[1]) for row in page.tables[0] if len(row) == 2)
    assert float(metrics["test accuracy"]) == round(tiny_run.metrics["test_accuracy"], 4)


def test_run_pngs_are_valid(tiny_run):
    assert_png(tiny_run.run.path / "learning_curves.png", 600, 400)
    assert_png(tiny_run.run.path / "confusion_matrix.png", 600, 500)
