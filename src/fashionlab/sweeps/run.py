"""The sweep itself: every input checked before anything is written, the sweep folder and its study
opened (one study, one data set per folder), the study given back its lost trials, the workers run
while the study has fewer than its trials, and the results written.

    result = sweep("examples/sweep-best-mlp.toml", "runs/sweep", trials=30, jobs=2)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashionlab import runner, tracking
from fashionlab.arguments import checked
from fashionlab.config import SEED_MAX, check_runnable, name_problem
from fashionlab.data import DataSource
from fashionlab.datasets import resolve
from fashionlab.errors import ConfigError, RunError
from fashionlab.files import check_own_file, check_writable, read_text
from fashionlab.provenance import available_memory
from fashionlab.records import shown
from fashionlab.rundir import Run
from fashionlab.sweeps.claims import Worker
from fashionlab.sweeps.recovery import recover
from fashionlab.sweeps.results import MARKER, SweepResult, finish
from fashionlab.sweeps.space import MAX_SPACE_BYTES, Space, load_space, require_optuna
from fashionlab.sweeps.storage import (
    JOURNAL,
    check_storage_url,
    open_storage,
    repair_journal,
    secrets_kept,
    storage_record,
)
from fashionlab.sweeps.study import Pruner, Sampler, check_same_data, make_pruner, make_sampler, open_study
from fashionlab.urls import masked, url_label

if TYPE_CHECKING:
    import optuna

MAX_TRIALS = 10_000
MAX_JOBS = 256  # trainings at a time in one process (the CLI's --jobs too)


def check_sweep_folder(out: Path, *, force: bool) -> None:
    from fashionlab.comparison import check_output_folder

    check_output_folder(out, force=force, marker=MARKER, what="sweep")


def check_same_sweep(out: Path, study: str, storage: str | None) -> None:
    """A sweep folder holds one study: another one is refused before it writes anything there."""
    marker = out / MARKER
    if not marker.is_file() or marker.is_symlink():
        return
    try:
        recorded = json.loads(read_text(marker, what="sweep marker", error=RunError, limit=MAX_SPACE_BYTES))
        held = (recorded["study"], storage_record(recorded["storage"]))
    except (RunError, ValueError, KeyError, TypeError, AttributeError):
        raise RunError(f"{marker} is damaged; remove it, or give `out` a new folder", terms=["out"]) from None
    if held != (study, storage_record(storage)):
        raise ConfigError(f"{out} holds the sweep {shown(held[0])} ({held[1]}), not {shown(study)} "
                          f"({storage_record(storage)}); "
                          f"give `out` a new folder, or run that sweep with its own `study` and `storage`",
                          terms=["out", "study", "storage"])


@checked(trials=(1, MAX_TRIALS), jobs=(1, MAX_JOBS), sampler_seed=(0, SEED_MAX))
def sweep(space: str | Path, out: str | Path, *, trials: int = 20, jobs: int = 1, storage: str | None = None,
          study: str | None = None, sampler: Sampler = "tpe", sampler_seed: int = 0, pruner: Pruner = "median",
          data: DataSource = DataSource(), force: bool = False, overrides: Mapping[str, Any] | None = None,
          progress: Callable[[str], None] = lambda line: None, command: str | None = None,
          mlflow: str | bool | tracking.Destination | None = None) -> SweepResult:
    """Run the sweep `space` into `out` until its study has `trials` trials, `jobs` trainings at a
    time, then write trials.csv, summary.md, report.html and best.toml, evaluating the best trial
    once on the test set when every trial has ended. Calling again continues the same study.
    `overrides`: config keys set for every trial over the space's [train] (not a searched key);
    `command`: what asked for it (its page shows the last one); `mlflow`: a tracking server's URI (True:
    MLFLOW_TRACKING_URI) that gets the sweep as a parent run, its trials as children."""
    require_optuna()
    if storage is not None:
        check_storage_url(storage)
    where = tracking.destination(mlflow)
    with secrets_kept(storage):
        return _sweep(load_space(space, overrides), Path(out), trials=trials, jobs=jobs, storage=storage, study=study,
                      sampler=sampler, sampler_seed=sampler_seed, pruner=pruner, data=data, force=force,
                      progress=progress, command=command, where=where)


def _sweep(space: Space, out: Path, *, trials: int, jobs: int, storage: str | None, study: str | None,
           sampler: str, sampler_seed: int, pruner: str, data: DataSource, force: bool,
           progress: Callable[[str], None], command: str | None, where: tracking.Destination | None) -> SweepResult:
    study_name = _study_name(study, space)
    check_sweep_folder(out, force=force)
    stored = storage or str(out.absolute() / JOURNAL)  # where it is today: the folder may be moved or copied
    check_same_sweep(out, study_name, storage)
    if storage is None:  # appended to in place: never through a link
        check_own_file(out / JOURNAL, what="the study journal", term="out", error=RunError)
    data = data.of(resolve(space.base.dataset)).located()
    train_images, free_memory = data.train_count(), available_memory()
    if free_memory is not None:
        free_memory //= jobs
    check_runnable(space.base, train_images=train_images, free_memory=free_memory)
    check_writable(out, what="the sweep", term="out")
    settings = {"space": space.settings(), "sampler": sampler, "sampler_seed": sampler_seed, "pruner": pruner}
    backend, the_study = _opened(out, stored, study_name, settings, space, data, journal=storage is None)
    folder = Run(out)
    folder.write_json(MARKER, {"space": str(space.path), "study": study_name, "storage": storage_record(storage),
                               **settings, "command": masked(command, storage) if command else None})
    tracker, children = tracking.parent(where, out, kind="sweep", doing="the sweep",
                                        params={"study": study_name, "storage": storage_record(storage), **settings,
                                                "command": masked(command, storage) if command else ""})
    worker = Worker(the_study, backend, space, out, trials=trials, storage=stored, sampler=sampler,
                    sampler_seed=sampler_seed, pruner=pruner, train_images=train_images, free_memory=free_memory,
                    progress=progress, mlflow=children)
    recover(worker)
    with tracking.parent_stops(tracker, children):
        jobs, wall = _run(worker, jobs=jobs, data=data, progress=progress)
    result = finish(the_study, space, out, storage=stored, trials=trials, data=data, wall=wall, jobs=jobs,
                    ran=worker.finished, progress=progress)
    if result.ended:
        figures = {"best_val_accuracy": result.best["val_accuracy"]} if result.best is not None else {}
        if result.tests:
            figures["test_accuracy"] = result.tests[-1]["test_accuracy"]
        tracking.end_parent(tracker, children, out, ["trials.csv", "summary.md", "report.html", "best.toml"], figures)
    return result


def _study_name(study: str | None, space: Space) -> str:
    """The study's name: `study`, else the space file's; refused unless its trials' runs can be named after it."""
    study_name = study if study is not None else space.name
    problem = name_problem(f"{study_name}-{10 * MAX_TRIALS}")  # the name of its trials' runs: <study>-<number>
    if problem:
        said = "" if study is not None else " (from the space file's name; pass `study` NAME)"
        raise ConfigError(f"study name {shown(study_name)} cannot be used{said}: it must start with a letter or "
                          f"digit, hold only letters, digits, '_', '-' or '.', and be at most "
                          f"{64 - len(str(10 * MAX_TRIALS)) - 1} bytes long", terms=["study"])
    return study_name


def _opened(out: Path, where: str, name: str, settings: dict[str, Any], space: Space, data: DataSource, *,
            journal: bool) -> tuple[optuna.storages.BaseStorage, optuna.Study]:
    """The sweep folder, made if new, and its study in the storage at `where` (the storage as opened here,
    kept: what the sweep writes of a trial by its id goes there); a folder made for a study that is refused
    is not left behind."""
    made = not os.path.lexists(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot use {out} as the sweep folder ({exc.strerror or exc}); give `out` a folder",
                       terms=["out"]) from None
    try:
        if journal:
            repair_journal(Path(where))
        backend = open_storage(where)
        the_study = open_study(backend, name, settings, make_sampler(settings["sampler"], settings["sampler_seed"]),
                               make_pruner(settings["pruner"], space.base.epochs), where)
        check_same_data(the_study, data, where)
    except BaseException:  # refused: a folder made for it is not left behind
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    return backend, the_study


def _run(worker: Worker, *, jobs: int, data: DataSource, progress: Callable[[str], None]) -> tuple[int, float]:
    """The worker's trials trained, `jobs` at a time (no more than the trials left, stopped ones included):
    the jobs it ran and the seconds it took."""
    stopped, have = len(worker.stopped_trials()), worker.sweep_trials()
    ended = sum(t.state.is_finished() for t in have)
    jobs = min(jobs, max(worker.trials - ended, 0))  # no more workers than trials left (stopped ones included)
    progress(f"study {worker.study.study_name} ({url_label(worker.storage)}): {ended} of {worker.trials} "
             f"trials ended already" + (f", {stopped} stopped one(s) to resume" if stopped else "")
             + f"; {jobs} job(s) here")
    started = time.perf_counter()
    try:
        with worker.heartbeat():
            if jobs:
                runner.execute(worker.tasks(), jobs=jobs, data=data, on_done=worker.done, on_failed=worker.failed)
    except BaseException:  # Ctrl-C, a killed worker, a lost database: what ran here is resumed next time
        worker.let_go()
        raise
    return jobs, time.perf_counter() - started
