"""Training: one public entry point that turns a config into a finished run directory.

    result = train(TrainConfig(epochs=10), run_dir="runs/tutorial")
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from fashionlab import __version__, data
from fashionlab.config import ConfigError, TrainConfig
from fashionlab.interrupts import Interrupted, StopRequest, stop_requests
from fashionlab.evaluation import metrics_from_proba, predict_proba, write_confusion
from fashionlab.model import build_model, parameter_counts, summary_text
from fashionlab.plots import learning_curves_figure, save_png
from fashionlab.reports import write_run_report
from fashionlab.preprocessing import fit_scaler
from fashionlab.runs import Run, default_run_dir


@dataclass(frozen=True)
class TrainResult:
    run: Run
    history: pd.DataFrame
    metrics: dict[str, Any]
    model: keras.Model


class HistoryRecorder(keras.callbacks.Callback):
    """Writes history.csv as each epoch ends, with the epoch's wall time.

    Keras' CSVLogger appends in place; rewriting the small file atomically instead means a
    killed run never leaves a half-written row.
    """

    def __init__(self, run: Run):
        super().__init__()
        self.run = run
        self.rows: list[dict[str, float]] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.model.stop_training and (logs or {}).get("val_loss") is None:
            return  # fit stopped mid-epoch on request: not a finished epoch
        row = {"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()},
               "seconds": time.perf_counter() - self._started}
        self.rows.append(row)
        frame = self.frame()
        self.run.write_with("history.csv", lambda tmp: frame.to_csv(tmp, index=False))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


class StopOnRequest(keras.callbacks.Callback):
    """Ends fit after the current batch once a stop was requested (Ctrl-C, SIGTERM)."""

    def __init__(self, stop: StopRequest):
        super().__init__()
        self.stop = stop

    def on_train_batch_end(self, batch, logs=None):
        if self.stop.requested:
            self.model.stop_training = True


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version(), "fashionlab": __version__,
                "keras_backend": keras.backend.backend()}
    for package in ("keras", "jax", "jaxlib", "numpy", "tensorflow", "torch"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions


def resolve_engine(engine: str) -> str:
    """"auto" is the compiled engine on the JAX backend and Keras' own fit elsewhere."""
    if engine == "auto":
        return "compiled" if keras.backend.backend() == "jax" else "keras"
    if engine == "compiled" and keras.backend.backend() != "jax":
        raise ConfigError(f"engine 'compiled' needs the JAX backend, not {keras.backend.backend()}; "
                          f"use --engine keras or KERAS_BACKEND=jax")
    return engine


def progress_verbosity() -> int:
    """Keras' progress bar on a terminal, one line per epoch in logs and pipes."""
    return 1 if sys.stdout.isatty() else 2


def train(config: TrainConfig, run_dir: str | Path | None = None, data_dir: str | Path | None = None,
          verify: bool = True, verbose: int | None = None) -> TrainResult:
    """Train `config` on Fashion-MNIST and write a complete, self-describing run directory."""
    with stop_requests() as stop:
        return _train(config, run_dir, data_dir, verify, verbose, stop)


def _train(config: TrainConfig, run_dir: str | Path | None, data_dir: str | Path | None, verify: bool,
           verbose: int | None, stop: StopRequest) -> TrainResult:
    splits = data.load_splits(data.find_data_dir(data_dir), config.validation_size, config.train_samples, verify)
    run = Run.create(run_dir if run_dir is not None else default_run_dir(config.name))
    run.write_json("config.json", config.to_dict())

    keras.utils.set_random_seed(config.seed)
    scaler = fit_scaler(splits.x_train)
    model = build_model(config, scaler)
    run.write_text("summary.txt", summary_text(model) + "\n")

    recorder = HistoryRecorder(run)
    callbacks = [recorder, StopOnRequest(stop)]
    verbose = progress_verbosity() if verbose is None else verbose
    if resolve_engine(config.engine) == "compiled":
        from fashionlab.engine import fit_compiled

        fit_compiled(model, splits.x_train, splits.y_train, splits.x_valid, splits.y_valid,
                     batch_size=config.batch_size, epochs=config.epochs, seed=config.seed, shuffle=config.shuffle,
                     callbacks=callbacks, verbose=verbose)
    else:
        model.fit(splits.x_train.astype(np.float32), splits.y_train, batch_size=config.batch_size,
                  epochs=config.epochs, validation_data=(splits.x_valid.astype(np.float32), splits.y_valid),
                  shuffle=config.shuffle, verbose=verbose, callbacks=callbacks)
    if stop.requested:
        raise Interrupted(f"training stopped after {len(recorder.rows)} finished epoch(s); "
                          f"{run.path} is incomplete")
    history = recorder.frame()

    run.save_model(model)
    run.write_with("learning_curves.png", lambda tmp: save_png(learning_curves_figure(history, config.name), tmp))
    proba = predict_proba(model, splits.x_test)
    report = metrics_from_proba(splits.y_test, proba)
    write_confusion(run, np.asarray(report["confusion_matrix"]))
    write_run_report(run, config.to_dict(), history, report, splits.x_test, splits.y_test, proba)
    seconds = history["seconds"].tolist()
    metrics = {
        "test_loss": report["test_loss"],
        "test_accuracy": report["test_accuracy"],
        "per_class_accuracy": {name: s["recall"] for name, s in report["per_class"].items()},
        "final_val_accuracy": float(history["val_accuracy"].iloc[-1]),
        "best_val_accuracy": float(history["val_accuracy"].max()),
        "best_epoch": int(history["val_accuracy"].idxmax()) + 1,
        "seconds_per_epoch": seconds,
        "median_seconds_per_epoch": float(np.median(seconds)),
        "parameters": parameter_counts(model),
        "engine": resolve_engine(config.engine),
        "scaler": {"mean": scaler.mean, "std": scaler.std} if config.scale_inputs else None,
        "data": {"dir": str(splits.source), "verified": verify, "train": len(splits.x_train),
                 "valid": len(splits.x_valid), "test": len(splits.x_test)},
        "versions": library_versions(),
        "machine": machine_info(),
    }
    run.write_json("metrics.json", metrics)  # last: its presence marks a finished run
    return TrainResult(run, history, metrics, model)


def machine_info() -> dict[str, Any]:
    """What the run ran on: CPU model and cores, and the accelerator the backend used."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
    except OSError:
        pass
    device = "default"
    if keras.backend.backend() == "jax":
        import jax

        device = f"{jax.default_backend()}: {jax.devices()[0].device_kind}"
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "device": device}
