"""Test-set evaluation: loss, accuracy, per-class precision/recall, confusion matrix, calibration.

    report = evaluate("runs/20260101-120000-tutorial", data=DataSource())
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fashionlab.arguments import checked
from fashionlab.calibration import cross_entropy, reliability
from fashionlab.data import DataSource
from fashionlab.errors import Interrupted
from fashionlab.files import check_writable
from fashionlab.interrupts import stop_requests
from fashionlab.rundir import Run

PREDICT_BATCH = 1000


def predict_proba(model, x: np.ndarray) -> np.ndarray:
    return np.asarray(model.predict(np.asarray(x, dtype=np.float32), batch_size=PREDICT_BATCH, verbose=0))


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def metrics_from_proba(y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """What `evaluate` reports, from the class probabilities of a labelled set; `per_class` is keyed
    by `class_names`, in label order."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = proba.argmax(axis=1)
    loss = cross_entropy(y_true, proba)
    matrix = confusion_matrix(y_true, y_pred, len(class_names))
    support, predicted, correct = matrix.sum(axis=1), matrix.sum(axis=0), np.diag(matrix)
    per_class = {
        name: {
            "precision": float(correct[i] / predicted[i]) if predicted[i] else 0.0,
            "recall": float(correct[i] / support[i]) if support[i] else 0.0,
            "support": int(support[i]),
        }
        for i, name in enumerate(class_names)
    }
    return {
        "test_loss": loss,
        "test_accuracy": float(correct.sum() / max(len(y_true), 1)),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "calibration": reliability(y_true, proba),
    }


@checked
def evaluate(run_dir: str | Path, *, data: DataSource = DataSource(),
             allow_incomplete: bool = False) -> dict[str, Any]:
    """Evaluate a run's saved model on the test set; rewrite its confusion matrix files and report.

    The run's lock is held throughout, as training holds it: evaluating a run that is still
    training is refused rather than interleaved with its writes.
    """
    from fashionlab.reports import write_test_outputs

    Run.open(run_dir, allow_incomplete=allow_incomplete)  # refuses what is not a (finished) run
    check_writable(run_dir, what="the evaluation", term="run_dir")  # before the lock file, the first write
    with stop_requests() as stop, Run.acquire(run_dir) as run:
        if run.is_ensemble():
            return _evaluate_ensemble(run, data, stop)
        config = run.config()
        history = run.history()
        metrics = run.metrics() if os.path.lexists(run.file("metrics.json")) else None  # an unfinished run has none
        model, dataset = run.load_model(), run.dataset()
        splits = data.of(dataset).splits(config.validation_size)
        proba = predict_proba(model, splits.x_test)
        report = metrics_from_proba(splits.y_test, proba, dataset.class_names)
        _stop_if_asked(stop)
        write_test_outputs(run, config=config.to_dict(), history=history, report=report, x_test=splits.x_test,
                           y_test=splits.y_test, proba=proba, metrics=metrics)
    return {"run": str(run.path), **report}


def _evaluate_ensemble(run: Run, data: DataSource, stop) -> dict[str, Any]:
    """`evaluate` of an ensemble: its test figures and page (its members' figures are from the day it was made)."""
    from fashionlab.reports import write_ensemble_outputs

    described, metrics, dataset = run.ensemble(), run.metrics(), run.dataset()
    x_test, y_test = data.of(dataset).test_set()
    proba = predict_proba(run.load_model(), x_test)
    report = metrics_from_proba(y_test, proba, dataset.class_names)
    _stop_if_asked(stop)
    write_ensemble_outputs(run, ensemble=described, report=report, x_test=x_test, y_test=y_test, proba=proba,
                           metrics=metrics, dataset=dataset.name)
    return {"run": str(run.path), **report}


def _stop_if_asked(stop) -> None:
    """Ctrl-C while the model ran: stop before the writes, which then finish."""
    if stop.requested:
        raise Interrupted("evaluation interrupted; the run's files are unchanged")


def format_report(report: dict[str, Any]) -> str:
    lines = [f"test loss {report['test_loss']:.4f}   test accuracy {report['test_accuracy']:.4f}   "
             f"expected calibration error {100 * report['calibration']['ece']:.2f} %", "",
             f"{'class':14}{'precision':>10}{'recall':>8}{'support':>9}"]
    for name, scores in report["per_class"].items():
        lines.append(f"{name:14}{scores['precision']:>10.3f}{scores['recall']:>8.3f}{scores['support']:>9}")
    return "\n".join(lines)
