"""A study given back the trials whose runs are in the sweep folder but which it does not record (its
journal was damaged and moved away, say): each recorded again from its run's files, under its folder's
number.

    recover(worker)  # before the worker asks for any trial
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashionlab.config import TrainConfig
from fashionlab.errors import FashionlabError, RunError
from fashionlab.rundir import Run
from fashionlab.sweeps.space import contains
from fashionlab.sweeps.trials import TRIAL_DIR, Trials, inspect_trial, trial_dir_name

if TYPE_CHECKING:
    import optuna


def recover(trials: Trials) -> None:
    """Give the study back the trials whose runs are in the sweep folder but which it does not
    record. A trial is in the study before its folder is made, and trial numbers run 0, 1, 2, ...
    without gaps: a folder numbered past the study's last trial is one it lost. The lost numbers are
    taken again in order, so that each trial keeps its folder's number and no new trial is ever given
    a folder that holds a run: a complete run is recorded as `done` records it, a failed one as failed,
    an unfinished one is left stopped (the next free worker resumes it), and a number whose folder holds
    no run of this sweep is skipped (never trained)."""
    import optuna

    if not lost_runs(trials):
        return
    backend, study = trials.backend, trials.study
    with _folder_lock(trials.out):
        lost = lost_runs(trials)  # again, holding the lock: another worker may have recorded them
        for number in range(len(trials.all_trials()), max(lost, default=-1) + 1):
            trial_id = backend.create_new_trial(trials.study_id)
            mine = backend.get_trial_number_from_id(trial_id) == number  # not if a trial was asked meanwhile
            params, config, status = lost.get(number) if mine and number in lost else ({}, None, "")
            for key, value in params.items():
                distribution = trials.space.search[key]
                backend.set_trial_param(trial_id, key, distribution.to_internal_repr(value), distribution)
            trial = optuna.Trial(study, trial_id)
            if config is None:
                trial.set_user_attr("skipped", True)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                if not mine:
                    return
                continue
            _record_again(trials, trial, config, status)


def _record_again(trials: Trials, trial: optuna.Trial, config: TrainConfig, status: dict[str, Any]) -> None:
    """A lost trial recorded from its run: complete, failed, or unfinished (left for a worker to resume)."""
    run_dir = trials.out / trial_dir_name(trial.number)
    trial.set_user_attr("run", run_dir.name)
    trial.set_user_attr("epochs_planned", config.epochs)
    if status["status"] == "complete":
        trials.tell(trial, run_dir, config, how=f"recorded again from {run_dir.name}")
    elif status["status"] == "failed":
        trials.fail(trial, status.get("message") or "failed", ran=False)
    else:  # unfinished: a stopped trial for any worker to take over
        kept = max(Run(run_dir).checkpoints(), default=0)  # resuming trains and reports the rest
        for step, value in enumerate(Run(run_dir).history()["val_accuracy"][:kept] if kept else []):
            trial.report(float(value), step + 1)
        trial.set_user_attr("heartbeat", 0)


def lost_runs(trials: Trials) -> dict[int, tuple[dict[str, Any], TrainConfig, dict[str, Any]]]:
    """The trial folders numbered past the study's last trial that hold a run this sweep made for
    that number, by number: the run's searched values, config and run.json."""
    numbers = []  # listed before the study is read: a trial is in the study before its folder exists
    with contextlib.suppress(OSError):
        for entry in os.scandir(trials.out):
            found = TRIAL_DIR.fullmatch(entry.name)
            if found and entry.name == trial_dir_name(int(found[1])):
                numbers.append(int(found[1]))
    have = len(trials.all_trials())
    lost = {}
    for number in sorted(n for n in numbers if n >= have):
        run_dir = trials.out / trial_dir_name(number)
        try:
            recorded = Run(run_dir).config()
            params = {key: getattr(recorded, key) for key in trials.space.search}
            if not all(contains(d, params[k]) for k, d in trials.space.search.items()):
                continue
            config = trials.space.config(params, f"{trials.study.study_name}-{number}")
            if inspect_trial(run_dir, config).state not in ("complete", "unfinished"):
                continue
            status = Run(run_dir).status()
        except (FashionlabError, ValueError, TypeError):  # not a run of this sweep
            continue
        if status.get("test") is False:
            lost[number] = (params, config, status)
    return lost


@contextlib.contextmanager
def _folder_lock(out: Path) -> Iterator[None]:
    """The sweep folder's lock file (never through a link), held while one worker at a time gives the
    study back its lost trials."""
    import fcntl

    from fashionlab.rundir import LOCK_FILE

    try:
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise RunError(f"cannot lock the sweep folder {out} ({LOCK_FILE}: {exc.strerror or exc}); remove "
                       f"{out / LOCK_FILE} if it is not a plain file", terms=["out"]) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
