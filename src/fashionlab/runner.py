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

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from fashionlab.config import TrainConfig
from fashionlab.data import DataSource
from fashionlab.errors import ConfigError, FashionlabError, Interrupted, RunError
from fashionlab.interrupts import stop_requests, stop_when
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
        raise ConfigError(f"`jobs` must be at least 1, got {jobs}", terms=["jobs"])
    if jobs == 1 or len(tasks) <= 1:
        with stop_requests() as stop:
            for task in tasks:
                on_done(run_task(task, data))
                if stop.requested:
                    raise Interrupted("stopped between two runs")
        return
    with WorkerPool(min(jobs, len(tasks)), data) as pool:
        pool.run(tasks, on_done)


class WorkerPool:
    """Worker processes that train tasks from a queue and report on another.

    Written here rather than taken from concurrent.futures, whose pool can neither stop a task
    that is running nor say which task a killed worker held, and leaves its workers behind when
    its parent is killed. Here a stop reaches running trainings (an event they check at every
    safe point), every message names its task, and a worker whose parent dies stops and exits.
    """

    def __init__(self, workers: int, data: DataSource):
        # spawn, not fork: JAX's runtime is multithreaded and must not be forked.
        context = multiprocessing.get_context("spawn")
        self.stop, self.tasks, self.reports = context.Event(), context.Queue(), context.Queue()
        self.tasks.cancel_join_thread()  # tasks never taken must not keep this process from exiting
        self.workers = [context.Process(target=_worker, args=(self.tasks, self.reports, self.stop, data),
                                        name=f"fashionlab-worker-{i}", daemon=True) for i in range(workers)]
        with _ctrl_c_ignored():  # inherited: a Ctrl-C while a worker starts is the parent's to handle
            for worker in self.workers:
                worker.start()

    def run(self, tasks: Sequence[Task], on_done: Callable[[Done], None]) -> None:
        for item in enumerate(tasks):
            self.tasks.put(item)
        for _ in self.workers:
            self.tasks.put(None)  # one "no more work" per worker
        remaining, running = set(range(len(tasks))), {}  # running: task index -> worker pid
        with stop_requests() as request:
            while remaining:
                if request.requested:
                    raise Interrupted("stopped; unfinished runs are marked interrupted")
                try:
                    kind, index, payload = self.reports.get(timeout=0.2)
                except queue.Empty:
                    self._check_workers(tasks, running)
                    continue
                if kind == "started":
                    running[index] = payload
                    continue
                remaining.discard(index)
                running.pop(index, None)
                if kind == "done":
                    on_done(payload)
                elif kind == "failed":
                    raise payload
                elif kind == "crashed":
                    raise RuntimeError(f"training {tasks[index].label} failed unexpectedly:\n{payload}")

    def _check_workers(self, tasks: Sequence[Task], running: dict[int, int]) -> None:
        for worker in self.workers:
            if worker.exitcode not in (None, 0):
                held = [tasks[i].label for i, pid in running.items() if pid == worker.pid]
                what = f"the process training {held[0]}" if held else "a worker process"
                raise RunError(f"{what} ended abruptly (exit code {worker.exitcode}: killed, or out of memory?); "
                               f"finished runs are kept, and running the same tasks again resumes the rest")

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        """Stop what still runs at its next safe point, and wait for every worker to end."""
        self.stop.set()
        with stop_requests():  # a second SIGTERM meanwhile changes nothing; a second Ctrl-C ends the wait
            deadline = time.monotonic() + WORKER_STOP_SECONDS
            while any(w.is_alive() for w in self.workers) and time.monotonic() < deadline:
                try:  # drain the reports: a worker cannot exit while its last ones are unread
                    self.reports.get(timeout=0.2)
                except queue.Empty:
                    pass
            for worker in self.workers:
                if worker.is_alive():
                    worker.kill()
                worker.join()
        for channel in (self.tasks, self.reports):
            channel.close()
            channel.join_thread()


# How long a stopped worker may take to reach a safe point and write its run's status.
WORKER_STOP_SECONDS = 120


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker(tasks, reports, stop, data: DataSource) -> None:
    """A worker process: take tasks until told there are no more, report each, stop when asked."""
    orphaned = threading.Event()
    threading.Thread(target=_watch_parent, args=(orphaned,), daemon=True).start()
    stop_when(stop, orphaned)  # training checks both at every safe point
    while not orphaned.is_set():
        try:
            item = tasks.get(timeout=1.0)
        except queue.Empty:
            continue
        if item is None:
            return
        index, task = item
        if stop.is_set():  # queued before the stop came: never started
            reports.put(("skipped", index, None))
            continue
        reports.put(("started", index, os.getpid()))
        try:
            reports.put(("done", index, run_task(task, data)))
        except FashionlabError as exc:
            reports.put(("failed", index, exc))
        except KeyboardInterrupt:  # a second Ctrl-C
            reports.put(("failed", index, Interrupted(f"{task.label} stopped at once")))
        except BaseException:  # a bug: its traceback goes to the parent
            reports.put(("crashed", index, traceback.format_exc()))


def _watch_parent(orphaned: threading.Event) -> None:
    multiprocessing.connection.wait([multiprocessing.parent_process().sentinel])
    orphaned.set()


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
