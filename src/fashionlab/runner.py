"""Many trainings as one piece of work: what each run directory already holds, and the rest
trained (or resumed) in parallel processes, with progress and a clean stop.

    tasks = [Task("bn-after seed 42", config, Path("runs/cmp/bn-after/seed-42"), {"variant": "bn-after"})]
    todo = [t for t in tasks if inspect(t).state in ("new", "unfinished")]
    execute(todo, jobs=2, data=DataSource().located(), on_done=lambda done: print(done.task.label))
    table = results(tasks)

Each task is an ordinary run directory made by `training.train` (or finished by `resume`), so a
run from here can be evaluated, predicted with or resumed like any other. Workers are started
with "spawn": a script that calls `execute` (or `compare`) with jobs > 1 must do so under
`if __name__ == "__main__":`, as for any multiprocessing code.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import multiprocessing.resource_tracker
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fashionlab.config import TrainConfig, from_dict
from fashionlab.data import DataSource
from fashionlab.errors import ConfigError, FashionlabError, Interrupted, RunError
from fashionlab.interrupts import stop_requests, stop_when
from fashionlab.rundir import LOCK_FILE, Run

if TYPE_CHECKING:
    import keras
    import pandas as pd

    from fashionlab.tracking import Destination


@dataclass(frozen=True)
class Task:
    """One training to have done: its config, where its run lives, and the labels it is reported by."""

    label: str  # how progress lines and errors name it, e.g. "bn-after seed 43"
    config: TrainConfig
    run_dir: Path
    tags: Mapping[str, Any] = field(default_factory=dict)  # the leading columns of its results row
    test: bool = True  # False: trained and judged on validation alone (train's `test`)
    recipe: str | None = None  # the named recipe its config starts from (train's `recipe`)
    command: str | None = None  # what asked for it: the compare or sweep command line, or a Python call
    watcher: Watcher | None = None  # what watches the training's epochs in the process that trains it
    mlflow: Destination | None = None  # the MLflow server (and parent run) the training is logged to


class Watcher(Protocol):
    """Picklable: made where the task is planned, it gives the training a callback in the process
    that trains it (a sweep's pruning), and says afterwards what that callback saw."""

    def callback(self) -> keras.callbacks.Callback: ...

    def outcome(self, callback: keras.callbacks.Callback) -> dict[str, Any]: ...


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
    outcome: Mapping[str, Any] = field(default_factory=dict)  # what the task's watcher saw


def inspect(task: Task) -> Inspection:
    """new: nothing there yet; unfinished: a run of this config that did not finish (it will be
    resumed); complete: the finished run of this config; conflict: anything else, never touched."""
    path = task.run_dir
    if not path.exists():
        blocking = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            return Inspection("conflict", f"{blocking} is a file where a folder of runs should be")
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
    with contextlib.suppress(ConfigError, TypeError):  # a key added since the run was made reads as its default
        recorded = from_dict(recorded).to_dict()
    if recorded != expected:
        recorded = recorded if isinstance(recorded, dict) else {}
        changed = sorted(k for k in set(recorded) | set(expected) if recorded.get(k) != expected.get(k))
        return Inspection("conflict", f"{path} was trained with different settings ({', '.join(changed)}); "
                                      f"the same settings would reuse it")
    return Inspection("complete" if status == "complete" else "unfinished")


def run_task(task: Task, data: DataSource) -> Done:
    """Train the task in this process, or resume its unfinished run."""
    import keras

    from fashionlab.training import resume, train

    keras.backend.clear_session()  # a worker trains many models: each starts from a clean slate
    resumed = inspect(task).state == "unfinished"
    callbacks = [task.watcher.callback()] if task.watcher else []
    started = time.perf_counter()
    if resumed:
        result = resume(task.run_dir, data=data, verbose=0, callbacks=callbacks, mlflow=task.mlflow)
    else:
        result = train(task.config, task.run_dir, data=data, verbose=0, test=task.test, callbacks=callbacks,
                       recipe=task.recipe, command=task.command, mlflow=task.mlflow)
    outcome = task.watcher.outcome(callbacks[0]) if task.watcher else {}
    return Done(task, result.metrics, time.perf_counter() - started, resumed, outcome)


def execute(tasks: Iterable[Task], *, jobs: int, data: DataSource,
            on_done: Callable[[Done], None] = lambda done: None,
            on_failed: Callable[[Task, FashionlabError], None] | None = None) -> None:
    """Run `tasks`, `jobs` at a time, each in a worker process (in this process when jobs is 1).
    `tasks` may be a generator: the next task is taken when a worker is free for it.

    Ctrl-C, SIGTERM or a failing task stops the others at their next safe point: their runs are
    marked interrupted, and calling again with the same tasks resumes them exactly. Then the
    error is raised: Interrupted, or the task's own; with `on_failed`, a task's own error
    (a diverged loss, a config the data cannot hold) goes there instead and the others go on.
    """
    if jobs < 1:
        raise ConfigError(f"`jobs` must be at least 1, got {jobs}", terms=["jobs"])
    if isinstance(tasks, Sequence):
        jobs = min(jobs, max(len(tasks), 1))
    if jobs == 1:
        with stop_requests() as stop:
            for task in tasks:
                try:
                    done = run_task(task, data)
                except Interrupted:
                    raise
                except FashionlabError as exc:
                    if on_failed is None:
                        raise
                    on_failed(task, exc)
                else:
                    on_done(done)
                if stop.requested:
                    raise Interrupted("stopped between two runs")
        return
    # One stop request for the work and for the wait after it: a second Ctrl-C ends the wait.
    with stop_requests(), WorkerPool(jobs, data) as pool:
        pool.run(tasks, on_done, on_failed)


class WorkerPool:
    """Worker processes that each train one task at a time, talking to this process over a pipe.

    Written here rather than taken from concurrent.futures, whose pool can neither stop a task
    that is running nor say which task a killed worker held, and leaves its workers behind when
    its parent is killed. Here a stop reaches running trainings (checked at every safe point),
    this process knows which task each worker holds, and a worker whose parent is gone (its
    pipe closes) stops at a safe point and exits. Pipes, unlike queues, need no named
    semaphores, so nothing is left to clean up after a worker is killed.
    """

    def __init__(self, size: int, data: DataSource):
        self.size, self.data = size, data
        self.workers: list[_Worker] = []

    def run(self, tasks: Iterable[Task], on_done: Callable[[Done], None],
            on_failed: Callable[[Task, FashionlabError], None] | None = None) -> None:
        """Start the workers, hand out `tasks` (taking each when a worker is free for it), and
        report each finished one until all are."""
        todo = _Handout(tasks)
        context = multiprocessing.get_context("spawn")  # not fork: JAX's runtime is multithreaded
        with stop_requests() as request:
            with _ctrl_c_held():  # a Ctrl-C while the workers start is this process's to handle
                for i in range(self.size):
                    ours, theirs = context.Pipe()
                    process = context.Process(target=_work, args=(theirs, self.data), name=f"fashionlab-worker-{i}",
                                              daemon=True)
                    process.start()
                    theirs.close()  # the worker's end lives in the worker: its death closes the pipe
                    self.workers.append(_Worker(process, ours))
            for worker in self.workers:
                worker.hand_out(todo)
            while any(w.holding is not None for w in self.workers):
                if request.requested:
                    raise Interrupted("stopped; unfinished runs are marked interrupted")
                busy = [w for w in self.workers if w.holding is not None]
                multiprocessing.connection.wait([w.pipe for w in busy] + [w.process.sentinel for w in busy],
                                                timeout=0.2)
                for worker in busy:
                    report = worker.report(todo)
                    if report is None:
                        continue
                    kind, index, payload = report
                    task = todo.given[index]
                    if kind == "failed" and (on_failed is None or isinstance(payload, Interrupted)):
                        raise payload
                    if kind not in ("done", "failed"):  # "crashed": a bug, with the worker's traceback
                        raise RuntimeError(f"training {task.label} failed unexpectedly:\n{payload}")
                    worker.holding = None
                    if kind == "failed":
                        on_failed(task, payload)
                    else:
                        on_done(payload)
                    worker.hand_out(todo)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info) -> None:
        """Stop what still runs at its next safe point, and wait for every worker to end."""
        for worker in self.workers:
            worker.send("stop")
            worker.send(None)
        try:  # a second SIGTERM meanwhile changes nothing; a second Ctrl-C ends the wait
            deadline = time.monotonic() + WORKER_STOP_SECONDS
            for worker in self.workers:
                while worker.process.is_alive() and time.monotonic() < deadline:
                    with contextlib.suppress(EOFError, OSError):  # read what it still says, or it cannot exit
                        if worker.pipe.poll(0.2):
                            worker.pipe.recv()
        finally:
            with _ctrl_c_ignored():  # a third Ctrl-C must not leave a worker unkilled
                for worker in self.workers:
                    if worker.process.is_alive():
                        worker.process.kill()
                    worker.process.join()
                    worker.pipe.close()


# How long a stopped worker may take to reach a safe point and write its run's status.
WORKER_STOP_SECONDS = 120


@dataclass
class _Worker:
    process: multiprocessing.Process
    pipe: multiprocessing.connection.Connection
    holding: int | None = None  # the index of the task it trains

    def send(self, message: Any) -> None:
        with contextlib.suppress(OSError):  # a worker that is gone hears nothing
            self.pipe.send(message)

    def hand_out(self, todo: _Handout) -> None:
        """Its next task, or None: no more work."""
        item = todo.next()
        self.holding = item[0] if item else None
        self.send(item)

    def report(self, tasks: _Handout) -> tuple[str, int, Any] | None:
        """What the worker says about its task, if anything yet; raises if it died holding one."""
        try:
            if self.pipe.poll():
                return self.pipe.recv()
        except (EOFError, OSError):
            pass
        else:
            if self.process.is_alive():
                return None
        self.process.join(1.0)
        code = self.process.exitcode
        if code is not None and code < 0:
            how = f"was killed by {signal.Signals(-code).name}" + (" (out of memory?)" if code == -9 else "")
        else:
            how = f"ended with exit code {code} (its own error is printed above)"
        label = tasks.given[self.holding].label
        raise RunError(f"the process training {label} {how}; finished runs are kept, and running the same tasks "
                       f"again resumes the rest")


class _Handout:
    """The tasks, numbered as they are taken; each taken only when a worker is free for it."""

    def __init__(self, tasks: Iterable[Task]):
        self.tasks = iter(tasks)
        self.given: list[Task] = []

    def next(self) -> tuple[int, Task] | None:
        task = next(self.tasks, None)
        if task is None:
            return None
        self.given.append(task)
        return len(self.given) - 1, task


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Ctrl-C held back from this thread for the block. Processes started meanwhile inherit the
    hold, so a Ctrl-C cannot interrupt them while they import (a worker drops it and lets go once
    it ignores Ctrl-C between tasks); this process's own handler still sees it, through another
    thread or when the block ends."""
    # Starting it resets this thread's signal mask, so it must run before the block, not in it.
    multiprocessing.resource_tracker.ensure_running()
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # a mask: the workers inherit it
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


@contextlib.contextmanager
def _ctrl_c_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def _work(pipe: multiprocessing.connection.Connection, data: DataSource) -> None:
    """A worker process: train the tasks the parent hands out, one at a time, and report each."""
    # Ctrl-C reaches the whole process group: between tasks the parent alone handles it (a
    # training's own handler stops it at a safe point). Held back since start: ignoring it drops
    # one that came while this process imported.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    stop, inbox = threading.Event(), queue.SimpleQueue()
    threading.Thread(target=_listen, args=(pipe, inbox, stop), daemon=True).start()
    stop_when(stop)  # training checks it at every safe point
    while (item := inbox.get()) is not None:
        index, task = item
        if stop.is_set():  # handed out before the stop came: never started
            report = ("skipped", index, None)
        else:
            try:
                report = ("done", index, run_task(task, data))
            except FashionlabError as exc:
                report = ("failed", index, exc)
            except KeyboardInterrupt:  # a second Ctrl-C
                report = ("failed", index, Interrupted(f"{task.label} stopped at once"))
            except BaseException:  # a bug: its traceback goes to the parent
                report = ("crashed", index, traceback.format_exc())
        try:
            pipe.send(report)
        except OSError:  # the parent is gone
            pass
        except Exception:  # a report that cannot be pickled
            with contextlib.suppress(OSError):
                pipe.send(("crashed", index, traceback.format_exc()))


def _listen(pipe: multiprocessing.connection.Connection, inbox: queue.SimpleQueue, stop: threading.Event) -> None:
    """The parent's messages: a task, None (no more), "stop". The pipe closing means the parent is gone."""
    try:
        while True:
            message = pipe.recv()
            if message == "stop":
                stop.set()
            else:
                inbox.put(message)
    except (EOFError, OSError):
        stop.set()
        inbox.put(None)


def results(tasks: Sequence[Task]) -> pd.DataFrame:
    """One row per finished task, read back from its run directory: its tags, then its figures.
    `seconds_per_epoch` is the median of the epochs after the first, whose time includes compiling
    (of the only epoch in a one-epoch run): short runs are not charged for compilation."""
    rows = []
    for task in tasks:
        run = Run(task.run_dir)
        metrics = run.metrics()
        history = run.history()
        first_epoch, seconds = history.iloc[0], history["seconds"]
        rows.append({
            **task.tags,
            "test_accuracy": metrics["test_accuracy"], "test_loss": metrics["test_loss"],
            "test_ece": metrics.get("test_ece", float("nan")),  # runs made before calibration was measured
            "first_epoch_val_accuracy": float(first_epoch["val_accuracy"]),
            "best_val_accuracy": metrics["best_val_accuracy"], "best_epoch": metrics["best_epoch"],
            "final_val_accuracy": metrics["final_val_accuracy"],
            "seconds_per_epoch": float((seconds.iloc[1:] if len(seconds) > 1 else seconds).median()),
            "wall_seconds": metrics.get("wall_seconds", float("nan")),  # older runs lack it
            "parameters": metrics["parameters"]["total"], "run_dir": str(task.run_dir),
        })
    import pandas as pd

    return pd.DataFrame(rows)
