import hashlib
import json
import shutil

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, synthetic_arrays, write_dataset
from PIL import Image

from fashionlab import CLASS_NAMES
from fashionlab.data import read_bytes
from fashionlab.errors import DataError, RunError
from fashionlab.evaluation import confusion_matrix, evaluate, format_report, metrics_from_proba
from fashionlab.rundir import Run


def test_confusion_matrix_counts_true_rows_predicted_columns():
    matrix = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), n_classes=3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_metrics_from_known_probabilities():
    proba = np.full((4, 10), 0.01, dtype=np.float32)
    proba[[0, 1, 2, 3], [0, 1, 1, 9]] = 0.91
    report = metrics_from_proba(np.array([0, 1, 2, 9]), proba, CLASS_NAMES)
    assert report["test_accuracy"] == 0.75
    assert report["test_loss"] == pytest.approx((3 * -np.log(0.91) - np.log(0.01)) / 4, rel=1e-5)
    assert report["per_class"]["Trouser"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert report["per_class"]["Pullover"]["recall"] == 0.0
    assert "Ankle boot" in format_report(report)


def test_evaluate_round_trip_matches_training(tiny_run, synthetic):
    report = evaluate(tiny_run.run.path, data=synthetic)
    assert report["test_accuracy"] == tiny_run.metrics["test_accuracy"]
    assert report["test_loss"] == pytest.approx(tiny_run.metrics["test_loss"], rel=1e-6)
    assert report["calibration"]["ece"] == pytest.approx(tiny_run.metrics["test_ece"], abs=1e-9)
    assert report["calibration"] == tiny_run.metrics["calibration"]
    assert f"expected calibration error {100 * report['calibration']['ece']:.2f} %" in format_report(report)
    json.dumps(report)  # --json prints it as it is
    with Image.open(tiny_run.run.path / "reliability.png") as image:
        assert image.format == "PNG" and min(image.size) >= 400

    frame = pd.read_csv(tiny_run.run.path / "confusion_matrix.csv", index_col=0)
    assert list(frame.columns) == list(CLASS_NAMES) and list(frame.index) == list(CLASS_NAMES)
    assert frame.to_numpy().sum() == len(synthetic_arrays()["t10k-labels-idx1-ubyte"])
    assert np.trace(frame.to_numpy()) / frame.to_numpy().sum() == report["test_accuracy"]
    with Image.open(tiny_run.run.path / "confusion_matrix.png") as image:
        assert image.format == "PNG" and min(image.size) >= 400


def test_evaluate_refuses_a_folder_without_a_model(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(RunError, match="has no run.json"):
        evaluate(tmp_path)
    (tmp_path / "run.json").write_text('{"status": "complete"}')
    with pytest.raises(RunError, match="has no model.keras"):
        evaluate(tmp_path)
    with pytest.raises(RunError, match="is not a run directory"):
        evaluate(tmp_path / "nope")


def test_evaluate_refuses_a_run_another_process_is_writing(tiny_run, synthetic, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run.run.path, run_dir)
    before = (run_dir / "report.html").read_bytes()
    with Run.acquire(run_dir):  # as a training still writing there holds it
        with pytest.raises(RunError, match="in use by another fashionlab process"):
            evaluate(run_dir, data=synthetic)
    assert (run_dir / "report.html").read_bytes() == before
    assert evaluate(run_dir, data=synthetic)["test_accuracy"] == tiny_run.metrics["test_accuracy"]


def test_seven_classes_are_scored_under_their_own_names():
    names = ("a", "b", "c", "d", "e", "f", "g")
    y = np.array([0, 1, 2, 3, 4, 5, 6, 6])
    proba = np.eye(7)[[0, 1, 2, 3, 4, 5, 6, 5]]
    report = metrics_from_proba(y, proba, names)
    assert list(report["per_class"]) == list(names) and np.asarray(report["confusion_matrix"]).shape == (7, 7)
    assert report["per_class"]["g"] == {"precision": 1.0, "recall": 0.5, "support": 2}
    assert report["test_accuracy"] == 7 / 8


def test_a_run_of_a_data_set_of_its_own_is_evaluated_on_its_files_in_its_names(tmp_path, tiny_run):
    """A run whose run.json records a 7-class folder: evaluate reads that folder (the digests it
    was trained on), scores the seven classes by name, and the run's confusion matrix is 7 x 7."""
    from fashionlab import datasets, notebook
    from fashionlab.model import build_model
    from fashionlab.preprocessing import Scaler
    from fashionlab.rundir import load_model_file

    names = ["zero", "one", "two", "three", "four", "five", "six"]
    seven = {k: v % 7 if "labels" in k else v for k, v in synthetic_arrays().items()}
    folder = write_dataset(tmp_path / "seven", seven)
    (folder / "classes.txt").write_text("\n".join(names))
    digests = {name: hashlib.sha256(read_bytes(folder / f"{name}.gz")).hexdigest() for name in datasets.FILE_NAMES}
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run.path, run)
    build_model(TINY, Scaler(0.0, 1.0), classes=7).save(run / "model.keras")
    status = json.loads((run / "run.json").read_text())
    status["dataset"] = datasets.record(datasets.resolve(str(folder)), digests)
    (run / "run.json").write_text(json.dumps(status))
    report = evaluate(run)
    assert list(report["per_class"]) == names and sum(s["support"] for s in report["per_class"].values()) == 100
    assert Run(run).confusion().shape == (7, 7) and Run(run).dataset().class_names == tuple(names)
    assert list(notebook.Run(run).confusion().index) == names
    with pytest.raises(RunError, match="gives outputs of shape \\(None, 7\\), not 10 class probabilities"):
        load_model_file(run / "model.keras", classes=10)
    write_dataset(folder, {k: (v + 1) % 7 if "labels" in k else v  # the folder's files changed since
                           for k, v in synthetic_arrays().items()})
    with pytest.raises(DataError, match="has changed since the run was trained on it \\(SHA-256 mismatch\\)"):
        evaluate(run)
