"""Training: turn a config into a finished run directory, or finish an interrupted one.

    result = train(TrainConfig(epochs=10), "runs/tutorial", data=DataSource()); resume("runs/tutorial")
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd

from fashionlab.arguments import checked
from fashionlab.calibration import cross_entropy, expected_calibration_error, temperature_scale
from fashionlab.config import TrainConfig, check_runnable, compiled_only
from fashionlab.data import DataSource, Splits, split_arrays
from fashionlab.datasets import record, resolve
from fashionlab.errors import ConfigError, Diverged, FashionlabError, Interrupted, RunError, reason, resume_call
from fashionlab.evaluation import metrics_from_proba, predict_proba
from fashionlab.files import check_writable
from fashionlab.interrupts import StopRequest, signals_held, stop_requests
from fashionlab.layers import portable
from fashionlab.model import (
    build_model,
    max_norm_units,
    one_hot_targets,
    parameter_counts,
    set_whitening,
    summary_text,
)
from fashionlab.modelfiles import load_model_file
from fashionlab.preprocessing import fit_scaler, patch_whitening, scaler_of
from fashionlab.provenance import available_memory, library_versions, machine_info
from fashionlab.reports import write_learning_curves, write_test_outputs
from fashionlab.rundir import CHECKPOINT_PREFIX, Run, default_run_dir, now
from fashionlab.tensorboard import TensorBoardScalars, check_folder
from fashionlab.tracking import Destination, RunLog, destination, run_logged


@dataclass(frozen=True)
class TrainResult:
    run: Run
    history: pd.DataFrame
    metrics: dict[str, Any]
    model: keras.Model


class RunRecorder(keras.callbacks.Callback):
    """Records each finished epoch in the run directory, and stops fit when it must.

    At each epoch's end, in this order: history.csv (rewritten atomically, so a killed run
    never leaves a half-written row, which Keras' appending CSVLogger could), the epoch's
    checkpoint (weights, optimizer state and BN statistics) and run.json's epoch count. A
    kill between two of these writes leaves history ahead of the checkpoint, never behind:
    resuming trusts the checkpoint and redoes what history has beyond it. After every batch (or
    compiled chunk): stop on a Ctrl-C/SIGTERM request or a non-finite loss. An epoch cut
    short by either is not recorded.
    """

    def __init__(self, run: Run, stop: StopRequest, rows: list[dict[str, float]] | None = None, *,
                 patience: int = 0):
        super().__init__()
        self.run = run
        self.stop = stop
        self.rows: list[dict[str, float]] = list(rows or [])
        self.patience = patience
        self.diverged_at: int | None = None
        self._epoch = 0
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if not math.isfinite(float((logs or {}).get("loss", 0.0))):
            self.diverged_at = self._epoch + 1
        if self.stop.requested or self.diverged_at:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._started
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if not all(math.isfinite(v) for v in logs.values()):
            self.diverged_at = epoch + 1
            self.model.stop_training = True
        if self.stop.requested or self.diverged_at:
            return
        logs.setdefault("learning_rate", float(self.model.optimizer.learning_rate))
        self.rows.append({"epoch": epoch + 1, **logs, "seconds": seconds})
        frame = self.frame()
        self.run.write_with("history.csv", lambda tmp: frame.to_csv(tmp, index=False))
        best = best_epoch(self.rows) if self.patience else None
        self.run.save_checkpoint(self.model, epoch + 1, keep=best)
        self.run.set_status("running", epochs_done=epoch + 1)
        if self.patience and early_stop_due(self.rows, self.patience):
            self.model.stop_training = True

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def best_epoch(rows: list[dict[str, float]]) -> int:
    """The first epoch (from 1) with the highest validation accuracy."""
    return int(np.argmax([row["val_accuracy"] for row in rows])) + 1


def early_stop_due(rows: list[dict[str, float]], patience: int) -> bool:
    """Whether `patience` epochs have passed without a better validation accuracy."""
    return bool(patience and rows) and len(rows) - best_epoch(rows) >= patience


def resolve_engine(engine: str) -> str:
    """"auto" is the compiled engine on the JAX backend and Keras' own fit elsewhere."""
    if engine == "auto":
        return "compiled" if keras.backend.backend() == "jax" else "keras"
    if engine == "compiled" and keras.backend.backend() != "jax":
        raise ConfigError(f"engine 'compiled' needs the JAX backend, not {keras.backend.backend()}; "
                          f"use engine 'keras' or KERAS_BACKEND=jax")
    return engine


def check_engine(config: TrainConfig) -> str:
    """The engine that trains `config` here, refusing options that engine cannot honour."""
    engine = resolve_engine(config.engine)
    if engine == "keras" and compiled_only(config):  # engine 'auto' on another backend
        raise ConfigError(compiled_only(config))
    return engine


def progress_verbosity() -> int:
    """Keras' progress bar on a terminal, a line per epoch updated in place in a notebook
    (`progress.NotebookProgress`), one line per epoch in logs and pipes (and within an epoch, one
    every `progress.LINE_EVERY` seconds: `progress.LineProgress`)."""
    return 1 if sys.stdout.isatty() or in_notebook() else 2


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's ZMQ shell)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


@checked(verbose=(0, 2))
def train(config: TrainConfig, run_dir: str | Path | None = None, *, data: DataSource = DataSource(),
          verbose: int | None = None, tensorboard: str | Path | None = None,
          recipe: str | None = None, test: bool = True,
          callbacks: Sequence[keras.callbacks.Callback] = (), command: str | None = None,
          mlflow: str | bool | Destination | None = None) -> TrainResult:
    """Train `config` on Fashion-MNIST and write a complete, self-describing run directory.

    `run_dir` defaults to runs/<time>-<name>; `verbose` to Keras' progress bar on a terminal and
    one line per epoch elsewhere (0: silent); `tensorboard` a folder that gets the run's scalars
    (in a subfolder named as the run directory); `recipe` the named recipe `config` came from,
    recorded in run.json and metrics.json, as is `command`, the command line or call that asked for the
    run (its pages show both); `test=False` keeps the test set out of the run (a
    sweep's trial is judged on validation alone: metrics.json then has no test figures, and
    `evaluate` can add them later); `callbacks` see each recorded epoch after the run has
    written it; `mlflow` an MLflow tracking server's URI (True: MLFLOW_TRACKING_URI) that gets the run
    as it trains (`fashionlab.tracking`). Everything the config asks is checked against the data and the
    machine, and every folder the run writes in, before the run directory is made.
    """
    called = time.perf_counter()
    check_engine(config)
    dataset = resolve(config.dataset)
    data = data.of(dataset)
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir(config.name)
    check_writable(run_dir, what="the run", term="run_dir")
    if tensorboard is not None:
        tensorboard = check_folder(tensorboard, run_dir.name)
    tracked = destination(mlflow)
    splits = checked_splits(config, data)
    if dataset.folder is not None:  # the folder the files were read from (`data_dir` may name another), in full
        dataset = dataclasses.replace(dataset, folder=data.locate().resolve())
    kept = record(dataset, data.digests() if dataset.folder is not None else None)
    _use_compilation_cache()
    with stop_requests() as stop:
        if stop.requested:  # a signal while this process started: nothing is written yet
            raise Interrupted("interrupted before training started; nothing was written")
        run = Run.create(run_dir)
        with run, _status_on_exit(run):
            run.write_json("config.json", config.to_dict())
            run.set_status("running", epochs=config.epochs, epochs_done=0, started=now(), recipe=recipe,
                           command=command, dataset=kept, **({} if test else {"test": False}))
            model = new_model(config, splits, dataset.classes)
            run.write_text("summary.txt", summary_text(model) + "\n")
            with run_logged(tracked, run, engine=resolve_engine(config.engine)) as log:
                return _fit_and_finish(run, config, splits, model, rows=[], data=data, stop=stop, verbose=verbose,
                                       tensorboard=tensorboard, called=called, callbacks=callbacks, log=log)


@checked(verbose=(0, 2))
def resume(run_dir: str | Path, *, data: DataSource = DataSource(), verbose: int | None = None,
           tensorboard: str | Path | None = None, callbacks: Sequence[keras.callbacks.Callback] = (),
           mlflow: str | bool | Destination | None = None) -> TrainResult:
    """Continue an interrupted, failed or killed run from its last finished epoch.

    With the compiled engine the result is the run that was never interrupted: weights,
    optimizer state and BN statistics come from the checkpoint, and each epoch's shuffle
    is derived from the seed and the epoch number.
    """
    called = time.perf_counter()
    run_dir = _existing_dir(run_dir)
    check_writable(run_dir, what="the run", term="run_dir")  # before its lock file, the first write
    if tensorboard is not None:
        tensorboard = check_folder(tensorboard, run_dir.name)
    tracked = destination(mlflow)
    _use_compilation_cache()
    with stop_requests() as stop, Run.acquire(run_dir) as run:
        if run.status()["status"] == "complete":
            raise RunError(f"{run.path} is already complete; nothing to resume")
        config = run.config()
        rows = run.history().to_dict("records") if os.path.lexists(run.file("history.csv")) else []
        epoch, checkpoint = next(reversed(run.checkpoints().items()), (0, None))
        if len(rows) < epoch or epoch > config.epochs:
            raise run.damaged(checkpoint.name, f"a checkpoint of epoch {epoch}, but history.csv has {len(rows)} "
                                               f"epoch(s) of the {config.epochs} configured")
        check_engine(config)
        dataset = run.dataset()
        splits = checked_splits(config, data.of(dataset))
        rows = rows[:epoch]  # epochs recorded after the last checkpoint are trained again
        model = (load_model_file(checkpoint, compile=True, classes=dataset.classes) if checkpoint is not None
                 else new_model(config, splits, dataset.classes))
        with _status_on_exit(run):
            run.set_status("running", epochs_done=len(rows), resumed=now())
            with run_logged(tracked, run, engine=resolve_engine(config.engine)) as log:
                return _fit_and_finish(run, config, splits, model, rows=rows, data=data, stop=stop, verbose=verbose,
                                       tensorboard=tensorboard, called=called, callbacks=callbacks, log=log)


def checked_splits(config: TrainConfig, data: DataSource) -> Splits:
    """The data, read once: the config is checked against it (and the free memory), then split."""
    data = data.located()
    arrays = data.arrays()
    check_runnable(config, train_images=len(arrays["train-images-idx3-ubyte"]), free_memory=available_memory())
    return split_arrays(arrays, config.validation_size, config.train_samples, source=data.data_dir)


def new_model(config: TrainConfig, splits: Splits, classes: int) -> keras.Model:
    """The untrained network, its initial weights drawn from the config's seed."""
    keras.utils.set_random_seed(config.seed)
    scaler = fit_scaler(splits.x_train) if config.scale_inputs else None
    model = build_model(config, scaler, steps_per_epoch=math.ceil(len(splits.x_train) / config.batch_size),
                        classes=classes)
    if config.whiten:
        set_whitening(model, patch_whitening(splits.x_train, scaler))
    return model


def _use_compilation_cache() -> None:
    if keras.backend.backend() == "jax":
        from fashionlab.engine import enable_compilation_cache

        enable_compilation_cache()


def _existing_dir(run_dir: str | Path) -> Path:
    path = Path(run_dir)
    if Run(path).is_ensemble():
        raise Run(path).not_trained()
    if not (path / "config.json").is_file():
        raise RunError(f"{path} is not a fashionlab run directory (no config.json); pass the folder to resume")
    return path


def _fit_and_finish(run: Run, config: TrainConfig, splits: Splits, model: keras.Model, *,
                    rows: list[dict[str, float]], data: DataSource, stop: StopRequest,
                    verbose: int | None, tensorboard: str | Path | None, called: float,
                    callbacks: Sequence[keras.callbacks.Callback] = (), log: RunLog | None = None) -> TrainResult:
    """Fit from epoch len(rows), then write the final artifacts; `called`: when the train or
    resume call began (time.perf_counter); `log`: the MLflow run that follows it."""
    recorder = RunRecorder(run, stop, rows, patience=config.early_stopping)
    everyone: list[keras.callbacks.Callback] = [recorder]  # the recorder first: the others see written epochs
    if tensorboard is not None:
        everyone.append(TensorBoardScalars(Path(tensorboard) / run.path.name, recorder.rows))
    if log is not None:
        log.epochs(rows)  # a resumed run's epochs the server missed
        everyone.append(log.callback(recorder.rows))
    everyone += callbacks
    verbose = progress_verbosity() if verbose is None else verbose
    steps = -(-len(splits.x_train) // config.batch_size)
    if verbose == 1 and in_notebook():  # a line per epoch updated in place: a saved notebook keeps it readable
        from fashionlab.progress import NotebookProgress

        everyone.append(NotebookProgress(config.epochs, steps))
        verbose = 0
    elif verbose == 2:  # logs and pipes: Keras says nothing until the epoch ends, minutes away for a CNN
        from fashionlab import progress

        everyone.append(progress.LineProgress(config.epochs, steps, every=progress.LINE_EVERY))
    if not early_stop_due(rows, config.early_stopping):  # a run stopped early, killed before it finished
        _fit(model, config, splits, callbacks=everyone, initial_epoch=len(rows), verbose=verbose)
    if recorder.diverged_at:
        done = len(recorder.rows)
        raise Diverged(f"the loss became NaN or infinite in epoch {recorder.diverged_at}; training stopped. "
                       f"{run.path} keeps the last good epoch ({done}); try a lower learning_rate")
    result = _finish(run, config, splits, model, history=recorder.frame(), data=data, stop=stop, called=called)
    if log is not None:
        log.finish()
    return result


def _kept_weights(run: Run, model: keras.Model, kept: int, epochs_done: int, *, averaged: bool) -> list:
    """The weights of epoch `kept` (early stopping keeps the best epoch's; its checkpoint has them),
    their moving average if `averaged`."""
    if kept == epochs_done:
        return final_weights(model)
    checkpoint = run.checkpoints().get(kept)
    if checkpoint is None:
        raise run.damaged(f"{CHECKPOINT_PREFIX}{kept}.keras", "the best epoch's checkpoint is missing")
    return final_weights(load_model_file(checkpoint, compile=averaged))


def final_weights(model: keras.Model) -> list:
    """The weights a run keeps: the optimizer's moving average of them where it keeps one (`ema`),
    with the BN statistics as trained; else the weights as trained."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and getattr(optimizer, "use_ema", False):
        optimizer.finalize_variable_values(model.trainable_variables)
    return model.get_weights()


def _stop_point(run: Run, stop: StopRequest, epochs_done: int) -> None:
    """A safe point: stop here if asked to, the run resumable from what is written."""
    if stop.requested:
        raise Interrupted(f"interrupted after {epochs_done} finished epoch(s); resume with "
                          f"`{resume_call(run.path)}`", terms=[resume_call(run.path)])


@contextlib.contextmanager
def _status_on_exit(run: Run) -> Iterator[None]:
    """Whatever ends the block early, run.json says so: interrupted (resumable) or failed, with the reason."""
    try:
        yield
    except Interrupted as exc:
        _mark(run, "interrupted", str(exc))
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, still resumable
        _mark(run, "interrupted", "stopped at once by a second Ctrl-C")
        raise
    except FashionlabError as exc:
        _mark(run, "failed", str(exc))
        raise
    except OSError as exc:  # the environment: a full disk or standard output, a vanished folder
        _mark(run, "failed", f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""))
        raise
    except BaseException as exc:
        _mark(run, "failed", f"internal error: {type(exc).__name__}: {reason(exc, 300)}")
        raise


def _mark(run: Run, status: str, message: str) -> None:
    """Write how the run ended; a further Ctrl-C waits until it is written (then takes effect)."""
    with signals_held(signal.SIGINT, signal.SIGTERM), contextlib.suppress(Exception):
        run.set_status(status, message=message)  # the disk may be full: the error itself must still surface


def _fit(model: keras.Model, config: TrainConfig, splits: Splits, *, callbacks: list[keras.callbacks.Callback],
         initial_epoch: int, verbose: int) -> None:
    if resolve_engine(config.engine) == "compiled":
        from fashionlab.engine import Augmentation, fit_compiled

        fit_compiled(model, splits.x_train, splits.y_train, splits.x_valid, splits.y_valid,
                     batch_size=config.batch_size, epochs=config.epochs, seed=config.seed, shuffle=config.shuffle,
                     initial_epoch=initial_epoch, bn_lr_scale=config.bn_lr_scale,
                     augmentation=Augmentation(config.augment_shift, config.augment_flip,
                                               config.augment_flip_alternate),
                     callbacks=callbacks, verbose=verbose)
    else:
        def targets(y: np.ndarray) -> np.ndarray:
            return np.eye(model.output_shape[-1], dtype=np.float32)[y] if one_hot_targets(model) else y

        model.fit(splits.x_train.astype(np.float32), targets(splits.y_train), batch_size=config.batch_size,
                  epochs=config.epochs, validation_data=(splits.x_valid.astype(np.float32), targets(splits.y_valid)),
                  shuffle=config.shuffle, verbose=verbose, callbacks=callbacks, initial_epoch=initial_epoch)


ACCURACY_MARKS = (0.85, 0.90, 0.93)


def seconds_to_accuracy(history: pd.DataFrame, marks: tuple[float, ...] = ACCURACY_MARKS) -> dict[str, float | None]:
    """Training seconds (summed epoch times) until validation accuracy first reached each mark,
    keyed "0.85"; None where it never did."""
    elapsed = history["seconds"].cumsum()
    reached = {}
    for mark in marks:
        hits = np.flatnonzero(history["val_accuracy"].to_numpy() >= mark)
        reached[f"{mark:.2f}"] = float(elapsed.iloc[hits[0]]) if len(hits) else None
    return reached


def test_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """What metrics.json keeps of a test report: loss, accuracy, each class' accuracy, calibration."""
    return {"test_loss": report["test_loss"], "test_accuracy": report["test_accuracy"],
            "per_class_accuracy": {name: s["recall"] for name, s in report["per_class"].items()},
            "test_ece": report["calibration"]["ece"], "calibration": report["calibration"]}


def _temperature_scaled(model: keras.Model, splits: Splits, test: bool) -> dict[str, float]:
    """Fit a temperature on the validation split and fold it into `model`; what metrics.json records
    of it, with the test figures from before (`test`: the run may read the test set)."""
    unscaled = predict_proba(model, splits.x_test) if test else None
    record = temperature_scale(model, splits.x_valid, splits.y_valid).record()
    if unscaled is None:
        return record
    return record | {"test_loss_before": cross_entropy(splits.y_test, unscaled),
                     "test_ece_before": expected_calibration_error(splits.y_test, unscaled),
                     "test_accuracy_before": float((unscaled.argmax(axis=1) == splits.y_test).mean())}


def _finish(run: Run, config: TrainConfig, splits: Splits, model: keras.Model, *, history: pd.DataFrame,
            data: DataSource, stop: StopRequest, called: float) -> TrainResult:
    """The final artifacts of a run whose epochs all finished; metrics.json and status last.
    A stop request before run.json says complete leaves it interrupted: resuming redoes these writes."""
    epochs_done = len(history)
    _stop_point(run, stop, epochs_done)  # before anything reads the history: it is empty if stopped in epoch 1
    best = best_epoch(history.to_dict("records"))
    kept = best if config.early_stopping else epochs_done
    model.set_weights(_kept_weights(run, model, kept, epochs_done, averaged=bool(config.ema)))
    status = run.status()
    test = status.get("test", True)
    scaled = _temperature_scaled(model, splits, test) if config.temperature_scale else None
    run.save_model(portable(model))
    _stop_point(run, stop, epochs_done)
    seconds = history["seconds"].tolist()
    scaler = scaler_of(model)
    metrics: dict[str, Any] = {}
    if test:
        proba = predict_proba(model, splits.x_test)
        report = metrics_from_proba(splits.y_test, proba, run.dataset().class_names)
        metrics = test_metrics(report)
    if scaled is not None:
        metrics["temperature"] = scaled
    metrics |= {
        "final_val_accuracy": float(history["val_accuracy"].iloc[-1]),
        "best_val_accuracy": float(history["val_accuracy"].max()),
        "best_epoch": best,
        "weights_from_epoch": kept,
        "stopped_early": epochs_done < config.epochs,
        "seconds_per_epoch": seconds,
        "median_seconds_per_epoch": float(np.median(seconds)),
        "train_seconds": float(sum(seconds)),
        "seconds_to_val_accuracy": seconds_to_accuracy(history),
        "parameters": parameter_counts(model),
        **({"max_norm": bounded} if (bounded := max_norm_units(model)) else {}),
        "engine": resolve_engine(config.engine),
        "scaler": dataclasses.asdict(scaler) if scaler else None,
        "data": {"dir": str(splits.source), "verified": data.verify and data.dataset.verifiable,
                 "train": len(splits.x_train), "valid": len(splits.x_valid), "test": len(splits.x_test) if test else 0},
        "versions": library_versions(),
        "machine": machine_info(),
        "recipe": status.get("recipe"), "command": status.get("command"),
        # this train (or resume) call until now: data, compilation, training, test predictions
        "wall_seconds": time.perf_counter() - called,
        "started": status.get("started"),
        "finished": now(),
    }
    if test:
        write_test_outputs(run, config=config.to_dict(), history=history, report=report, x_test=splits.x_test,
                           y_test=splits.y_test, proba=proba, metrics=metrics)
    else:  # the test set stays unseen: only the learning curves
        write_learning_curves(run, history, config.name)
    _stop_point(run, stop, epochs_done)
    run.write_json("metrics.json", metrics)
    _stop_point(run, stop, epochs_done)
    run.set_status("complete", epochs_done=epochs_done, finished=now(), message=None)
    for checkpoint in run.checkpoints().values():
        checkpoint.unlink(missing_ok=True)  # model.keras supersedes them
    return TrainResult(run, history, metrics, model)
