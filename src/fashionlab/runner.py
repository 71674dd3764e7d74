"""Many trainings as one piece of work: what each run directory already holds, and the rest
trained (or resumed) in parallel processes, with progress and a clean stop.

    tasks = [Task("bn-after seed 42", config, Path("runs/cmp/bn-after/seed-42"), {"variant": "bn-after"})]
    todo = [t for t in tasks if inspect(t).state in ("new", "unfinished")]
    execute(todo, jobs=2, data=DataSource().located(), on_done=lambda done: print(done.task.label))
    table = results(tasks)

Each task is an ordinary run directory made by `training.train` (or finished by `resume`), so a
run from here can be evaluated, predicted with or resumed like any other.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from fashionlab.config import TrainConfig
from fashionlab.data import DataSource
from fashionlab.errors import ConfigError, Interrupted, RunError
from fashionlab.interrupts import Event, parent_stopped, stop_requests, stop_when
from fashionlab.runs import LOCK_FILE, Run


@dataclass(frozen=True)
class Task:
    """One training to have done: its config, where its run lives, and the labels it is reported by."""

    label: str  # how progress lines and errors name it, e.g. "bn-after seed 43"
    config: TrainConfig
    run_dir: Path
    tags: Mapping[str, Any] = field(default_factory=dict)  # the leading columns of its results row


@dataclass(frozen=True)
class Inspection:
    """What a task's run directory holds. `reason` says why a conflict cannot be used."""

    state: Literal["new", "unfinished", "complete", "conflict"]
    reason: str = ""


@dataclass(frozen=True)
class Done:
    """A task trained to the end: its metrics.json, and how long this call spent on it."""

    task: Task
    metrics: dict[str, Any]
    seconds: float
    resumed: bool


def inspect(task: Task) -> Inspection:
    """new: nothing there yet; unfinished: a run of this config that did not finish (it will be
    resumed); complete: the finished run of this config; conflict: anything else, never touched."""
    path = task.run_dir
    if not path.exists():
        return Inspection("new")
    if not path.is_dir():
        return Inspection("conflict", f"{path} exists and is not a directory")
    run = Run(path)
    if not run.file("config.json").is_file():
        if any(p.name != LOCK_FILE for p in path.iterdir()):
            return Inspection("conflict", f"{path} holds files but no config.json: it is not a fashionlab run")
        return Inspection("new")
    try:
        recorded, status = run.read_json("config.json"), run.status()["status"]
    except RunError as exc:
        return Inspection("conflict", str(exc))
    expected = task.config.to_dict()
    if recorded != expected:
        recorded = recorded if isinstance(recorded, dict) else {}
        changed = sorted(k for k in set(recorded) | set(expected) if recorded.get(k) != expected.get(k))
        return Inspection("conflict", f"{path} was trained with different settings ({', '.join(changed)})")
    return Inspection("complete" if status == "complete" else "unfinished")


def run_task(task: Task, data: DataSource) -> Done:
    """Train the task in this process, or resume its unfinished run."""
    import keras

    from fashionlab.training import resume, train

    keras.backend.clear_session()  # a worker trains many models: each starts from a clean slate
    resumed = inspect(task).state == "unfinished"
    started = time.perf_counter()
    if resumed:
        result = resume(task.run_dir, data=data, verbose=0)
    else:
        result = train(task.config, task.run_dir, data=data, verbose=0)
    return Done(task, result.metrics, time.perf_counter() - started, resumed)


def execute(tasks: Sequence[Task], *, jobs: int, data: DataSource,
            on_done: Callable[[Done], None] = lambda done: None) -> None:
    """Run `tasks`, `jobs` at a time, each in a worker process (in this process when jobs is 1).

    Ctrl-C, SIGTERM or a failing task stops the others at their next safe point: their runs are
    marked interrupted, and calling again with the same tasks resumes them exactly. Then the
    error is raised: Interrupted, or the task's own.
    """
    if jobs < 1:
        raise ConfigError(f"`jobs` must be at least 1, got {jobs}")
    if jobs == 1 or len(tasks) <= 1:
        with stop_requests() as stop:
            for task in tasks:
                on_done(run_task(task, data))
                if stop.requested:
                    raise Interrupted("stopped between two runs")
        return
    # spawn, not fork: JAX's runtime is multithreaded and must not be forked.
    context = multiprocessing.get_context("spawn")
    stop_workers = context.Event()
    pool = ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=context, initializer=_start_worker,
                               initargs=(stop_workers,))
    futures = {pool.submit(_work, task, data): task for task in tasks}
    try:
        with stop_requests() as stop:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                for future in finished:
                    on_done(_result(future, futures[future]))
                if stop.requested:
                    raise Interrupted("stopped; unfinished runs are marked interrupted")
    except BaseException:
        stop_workers.set()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _result(future, task: Task) -> Done:
    try:
        return future.result()
    except BrokenProcessPool:
        raise RunError(f"the process training {task.label} ended abruptly (killed, or out of memory?); "
                       f"finished runs are kept, and running the same tasks again resumes the rest") from None


def _start_worker(stop: Event) -> None:
    # Ctrl-C reaches the whole process group: between runs a worker leaves it to the parent, and
    # during one the training's own handler stops it at a safe point.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stop_when(stop)


def _work(task: Task, data: DataSource) -> Done:
    if parent_stopped():  # a task already queued when the stop came
        raise Interrupted(f"{task.label} not started: the work was stopped")
    return run_task(task, data)


def results(tasks: Sequence[Task]) -> pd.DataFrame:
    """One row per finished task, read back from its run directory: its tags, then its figures."""
    rows = []
    for task in tasks:
        run = Run(task.run_dir)
        metrics = run.read_json("metrics.json")
        first_epoch = pd.read_csv(run.file("history.csv")).iloc[0]
        rows.append({
            **task.tags,
            "test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"],
            "first_epoch_val_accuracy": float(first_epoch["val_accuracy"]),
            "best_val_accuracy": metrics["best_val_accuracy"], "best_epoch": metrics["best_epoch"],
            "final_val_accuracy": metrics["final_val_accuracy"],
            "seconds_per_epoch": metrics["median_seconds_per_epoch"],
            "parameters": metrics["parameters"]["total"], "run_dir": str(task.run_dir),
        })
    return pd.DataFrame(rows)
