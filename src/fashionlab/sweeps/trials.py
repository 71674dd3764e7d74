"""A sweep's trials in the study, as one worker process sees them: each trial's task made from the
values drawn for it (an ordinary run, trained with `test=False`, in a folder named by its number), its
epochs reported to the study as it trains (`TrialWatch`, in the process that trains it), and how it
ended told to the study from its run's files alone.

    task = trials.task(trial)  # None when the trial is failed, or recorded from a complete run, instead
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashionlab import runner
from fashionlab.config import TrainConfig, check_runnable
from fashionlab.errors import ConfigError, RunError
from fashionlab.rundir import Run
from fashionlab.runner import Task
from fashionlab.sweeps.space import Space
from fashionlab.sweeps.storage import secrets_kept, worker_storage
from fashionlab.sweeps.study import counted, make_pruner, study_trials
from fashionlab.tracking import Destination

if TYPE_CHECKING:
    import keras
    import optuna

TRIAL_DIR = re.compile(r"trial-(\d{4,9})")


def trial_dir_name(number: int) -> str:
    """The folder of trial `number` in the sweep folder: always derived from the number, never read
    from the study (which anyone who can write to the database can change)."""
    return f"trial-{number:04d}"


def inspect_trial(run_dir: Path, config: TrainConfig) -> runner.Inspection:
    """What a trial's folder holds for the trial of `config`, as `runner.inspect` says, but trusting
    only a run the sweep made: not through a symbolic link, and never one that saw the test set."""
    if run_dir.is_symlink():
        return runner.Inspection("conflict", f"{run_dir} is a symbolic link")
    found = runner.inspect(Task(run_dir.name, config, run_dir))
    if found.state == "complete":
        try:
            test = Run(run_dir).status().get("test")
        except RunError as exc:
            return runner.Inspection("conflict", str(exc))
        if test is not False:
            return runner.Inspection("conflict", f"{run_dir} was trained with the test set: it is not a trial's run")
    return found


def was_pruned(config: TrainConfig, metrics: dict[str, Any]) -> bool:
    """Whether a complete run stopped before its planned epochs because the pruner said so. Told from
    its files alone: only early stopping and the pruner end a run early and complete (a diverged,
    stopped or killed run is not complete), and early stopping stops it exactly when its patience ran
    out (the pruner is not asked then)."""
    epochs, patience = len(metrics["seconds_per_epoch"]), config.early_stopping
    return epochs < config.epochs and not (patience and epochs - metrics["best_epoch"] >= patience)


def _kept_accuracy(run_dir: Path, metrics: dict[str, Any]) -> float:
    """The validation accuracy of the weights the run keeps (its last epoch, or its best one with
    early stopping): the model the sweep would hand on is the one it scores."""
    history = Run(run_dir).history()
    kept = int(metrics.get("weights_from_epoch", len(history)))
    return float(history["val_accuracy"].iloc[kept - 1])


# --- in the process that trains it ------------------------------------------------------------

@dataclass(frozen=True)
class TrialWatch:
    """Picklable, for the worker training a trial: reports each epoch's validation accuracy to the
    study and stops the training when the pruner says so."""

    storage: str
    study: str
    trial_id: int  # the storage's id of the trial
    pruner: str
    pruner_epochs: int
    epochs: int

    def callback(self) -> keras.callbacks.Callback:
        return _reporter_class()(self)

    def outcome(self, callback: keras.callbacks.Callback) -> dict[str, Any]:
        return {"pruned_at": callback.pruned_at}


@functools.cache
def _reporter_class() -> type:
    """The Keras callback class, made when first needed: importing this module must not import Keras."""
    import keras
    import optuna

    class Reporter(keras.callbacks.Callback):
        def __init__(self, watch: TrialWatch):
            super().__init__()
            self.watch = watch
            with secrets_kept(watch.storage):  # this process's errors end in the run's files and the parent's
                study = optuna.load_study(study_name=watch.study, storage=worker_storage(watch.storage),
                                          pruner=make_pruner(watch.pruner, watch.pruner_epochs))
                self.trial = optuna.Trial(study, watch.trial_id)
            self.pruned_at: int | None = None

        def on_epoch_end(self, epoch, logs=None):
            value = float((logs or {}).get("val_accuracy", math.nan))
            if not math.isfinite(value) or self.model.stop_training:  # not recorded: stopped or diverged
                return
            with secrets_kept(self.watch.storage):
                self.trial.report(value, epoch + 1)
                prune = epoch + 1 < self.watch.epochs and self.trial.should_prune()
            if prune:
                self.pruned_at = epoch + 1
                self.model.stop_training = True

    return Reporter


# --- in the worker that asks for it ------------------------------------------------------------

class Trials:
    """The sweep's trials in its study, for one worker process: the task of each trial it is given,
    and each one's outcome told to the study. `host` names this machine in the trials' records."""

    def __init__(self, study: optuna.Study, backend: optuna.storages.BaseStorage, space: Space, out: Path, *,
                 trials: int, storage: str, pruner: str, train_images: int, free_memory: int | None,
                 progress: Callable[[str], None], host: str, mlflow: Destination | None = None):
        self.study, self.backend, self.space, self.out, self.trials = study, backend, space, out, trials
        self.mlflow = mlflow  # the MLflow server and the sweep's run there, each trial a child of it
        self.storage, self.pruner, self.host, self.progress = storage, pruner, host, progress
        self.train_images, self.free_memory = train_images, free_memory  # what each trial's config must fit
        # the storage this process opened the study from (`backend`) names a trial by its id there
        self.study_id = backend.get_study_id_from_name(study.study_name)
        self.finished = 0

    def all_trials(self, states: tuple[optuna.trial.TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
        return study_trials(self.study, self.space, self.storage, states)

    def sweep_trials(self) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.all_trials() if counted(t)]

    def trial_id(self, number: int) -> int:
        return self.backend.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def task(self, trial: optuna.Trial) -> Task | None:
        """The task that trains `trial`, or None when it is not trained: failed (its values not all drawn,
        not going together, not fitting; its folder not its own), or recorded from its complete run."""
        if set(trial.params) != set(self.space.search):  # its worker stopped while it was asked for
            self.fail(trial, "its values were never all drawn; a trial is trained only with the values drawn for it")
            return None
        try:
            config = self.space.config(dict(trial.params), f"{self.study.study_name}-{trial.number}")
            check_runnable(config, train_images=self.train_images, free_memory=self.free_memory)
        except ConfigError as exc:  # values that do not go together, or do not fit the data: never trained
            self.fail(trial, str(exc))
            return None
        run = trial_dir_name(trial.number)
        task = Task(f"trial {trial.number}", config, self.out / run, {"trial": trial.number}, test=False)
        found = inspect_trial(task.run_dir, config)
        if found.state == "conflict":
            self.fail(trial, found.reason.split(";")[0] + "; a trial is trained only into a folder of its own")
            return None
        trial.set_user_attr("run", run)
        trial.set_user_attr("epochs_planned", config.epochs)
        if found.state == "complete":  # its worker was stopped after the run completed, before it told the study
            self.tell(trial, task.run_dir, config, how="recorded from its complete run")
            return None
        watch = TrialWatch(self.storage, self.study.study_name, self.trial_id(trial.number), self.pruner,
                           self.space.base.epochs, config.epochs)
        logged = self.mlflow and dataclasses.replace(self.mlflow, tags=(("fashionlab.trial", str(trial.number)),))
        return dataclasses.replace(task, watcher=watch, mlflow=logged or None)

    def tell(self, trial: optuna.Trial, run_dir: Path, config: TrainConfig, how: str) -> None:
        """Tell the study how a trial whose run is complete ended, from the run's files alone: the same
        value, state and record whether this process trained it or found it complete."""
        from optuna.trial import TrialState

        metrics = Run(run_dir).metrics()
        seconds = metrics["seconds_per_epoch"]
        epochs, pruned = len(seconds), was_pruned(config, metrics)
        value = _kept_accuracy(run_dir, metrics)
        saved = (config.epochs - epochs) * statistics.median(seconds) if pruned else 0.0
        for key, v in {"epochs": epochs, "train_seconds": metrics["train_seconds"], "seconds_saved": saved,
                       "best_val_accuracy": metrics["best_val_accuracy"], "host": self.host}.items():
            trial.set_user_attr(key, v)
        if pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
            said = f"pruned after epoch {epochs} of {config.epochs}"
        else:
            self.study.tell(trial, value)
            said = f"{epochs} epochs"
        self.progress(f"[{self._count()}] trial {trial.number}: val accuracy {value:.4f} ({said}, "
                      f"{metrics['train_seconds']:.0f} s{', ' + how if how else ''})")

    def fail(self, trial: optuna.Trial, reason: str, ran: bool = True) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("reason", reason)
        trial.set_user_attr("host", self.host)
        self.study.tell(trial, state=TrialState.FAIL)
        self.finished += ran
        self.progress(f"[{self._count()}] trial {trial.number}: failed: {reason}")

    def _count(self) -> str:
        return f"{sum(t.state.is_finished() for t in self.sweep_trials())}/{self.trials}"
