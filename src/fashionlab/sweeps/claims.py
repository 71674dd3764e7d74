"""Which trial of a study each worker process trains, for a sweep and for a comparison shared
through a study alike: the trials a process holds (`Claims`), said to be alive (heartbeats) and let
go when it stops; a stopped one (its process gone: Ctrl-C, a kill, a lost machine) taken over by
exactly one other worker; and the sweep's own worker, which also asks the study for new trials
while the sweep has fewer than its trials.

    worker = Worker(study, backend, space, out, trials=30, storage=where, ...)
    runner.execute(worker.tasks(), jobs=2, data=data, on_done=worker.done, on_failed=worker.failed)
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashionlab.errors import FashionlabError
from fashionlab.runner import Done, Task
from fashionlab.sweeps.space import Space
from fashionlab.sweeps.study import counted, make_sampler, trial_seed
from fashionlab.sweeps.trials import Trials
from fashionlab.tracking import Destination

if TYPE_CHECKING:
    import optuna

HEARTBEAT_SECONDS = 30.0  # a worker says every so often that its trials still run...
STALE_SECONDS = 300.0  # ...and a trial not heard of for this long is taken as stopped
CLAIM_SECONDS = 2.0  # workers taking over the same stopped trial all write their claim; the last one wins


def _boot_id() -> str:
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


@dataclass(frozen=True)
class Owner:
    """Which process runs a trial: on this machine it can be asked whether it lives."""

    host: str = field(default_factory=socket.gethostname)
    boot: str = field(default_factory=_boot_id)
    pid: int = field(default_factory=os.getpid)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # this process, wherever it runs

    def record(self) -> dict[str, Any]:
        return {"host": self.host, "boot": self.boot, "pid": self.pid, "token": self.token}

    def stopped(self, trial: optuna.trial.FrozenTrial, now: float) -> bool:
        """Whether a running trial's process is gone: dead here, or silent for STALE_SECONDS."""
        owner = trial.user_attrs.get("owner") or {}
        if owner.get("token") == self.token:
            return False  # this process's own
        heard = trial.user_attrs.get("heartbeat")
        if heard is None and trial.datetime_start is not None:
            heard = trial.datetime_start.timestamp()
        if owner.get("host") == self.host and owner.get("boot") == self.boot and owner.get("pid") != self.pid:
            with contextlib.suppress(ProcessLookupError, PermissionError, TypeError, OverflowError):
                os.kill(owner.get("pid"), 0)
                return now - (heard or 0) > STALE_SECONDS
            return True
        return now - (heard or 0) > STALE_SECONDS


class Claims:
    """The trials of one study that this process holds: each marked with its owner and a heartbeat,
    said to be alive every HEARTBEAT_SECONDS while `heartbeat()` runs, let go when the process stops;
    a stopped trial of another process taken over by exactly one worker (`take_over`)."""

    def __init__(self, backend: optuna.storages.BaseStorage, study_id: int):
        self.backend, self.study_id = backend, study_id
        self.owner = Owner()
        self.held: dict[int, Any] = {}  # trial number -> what the worker keeps of it while its task runs
        self.lock = threading.Lock()  # the heartbeat thread reads `held`

    def trial_id(self, number: int) -> int:
        return self.backend.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def stopped(self, running: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
        """Of these running trials, those whose process is gone, and not this one's."""
        now = time.time()
        return [t for t in running if t.number not in self.held and self.owner.stopped(t, now)]

    def mark(self, number: int) -> None:
        """Trial `number` is this process's from now: its record names the process, heard of now."""
        trial_id = self.trial_id(number)
        self.backend.set_trial_user_attr(trial_id, "owner", self.owner.record())
        self.backend.set_trial_user_attr(trial_id, "heartbeat", time.time())

    def take_over(self, number: int, read: Callable[[], optuna.trial.FrozenTrial]) -> bool:
        """Claim a stopped trial: every worker that wants it writes its claim, waits CLAIM_SECONDS, and
        reads back (`read`: the trial as the storage has it now) whose claim was written last; that one
        trains it, the others leave it."""
        self.mark(number)
        self.wait()
        claimed = (read().user_attrs.get("owner") or {}).get("token")
        return claimed == self.owner.token

    def pop_waiting(self, waiting: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
        """The first of these waiting trials this process gets to run, marked as its own; None when other
        workers took them all. The storage moves a trial from waiting to running for one caller only."""
        import optuna

        for trial in waiting:
            try:
                taken = self.backend.set_trial_state_values(self.trial_id(trial.number),
                                                            optuna.trial.TrialState.RUNNING)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            if taken:
                self.mark(trial.number)
                return trial
        return None

    def wait(self) -> None:
        """The pause between writing a claim and reading back whose claim was written last."""
        time.sleep(CLAIM_SECONDS)

    def hold(self, number: int, kept: Any) -> None:
        with self.lock:
            self.held[number] = kept

    def release(self, number: int) -> Any:
        with self.lock:
            return self.held.pop(number)

    def let_go(self) -> None:
        """This process stops: its trials are marked as not heard of, for any worker to take over."""
        with self.lock:
            held, self.held = list(self.held), {}
        for number in held:
            with contextlib.suppress(Exception):  # the storage itself may be what failed
                self.backend.set_trial_user_attr(self.trial_id(number), "heartbeat", 0)

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[None]:
        """While the block runs, each held trial is said to be alive every HEARTBEAT_SECONDS."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_SECONDS):
                with self.lock:
                    held = list(self.held)
                for number in held:
                    with contextlib.suppress(Exception):  # finished meanwhile, or the database hiccups
                        self.backend.set_trial_user_attr(self.trial_id(number), "heartbeat", time.time())

        thread = threading.Thread(target=beat, name="fashionlab-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


class Worker(Trials):
    """One worker process of a sweep (it may run `jobs` trainings): asks the study for trials while
    the sweep has fewer than `trials`, hands them to the runner, and tells the study each outcome."""

    def __init__(self, study: optuna.Study, backend: optuna.storages.BaseStorage, space: Space, out: Path, *,
                 trials: int, storage: str, sampler: str, sampler_seed: int, pruner: str, train_images: int,
                 free_memory: int | None, progress: Callable[[str], None], mlflow: Destination | None = None):
        super().__init__(study, backend, space, out, trials=trials, storage=storage, pruner=pruner,
                         train_images=train_images, free_memory=free_memory, progress=progress,
                         host=socket.gethostname(), mlflow=mlflow)
        self.claims = Claims(backend, self.study_id)
        self.owner = self.claims.owner
        self.sampler, self.sampler_seed = sampler, sampler_seed

    # claiming
    def stopped_trials(self) -> list[optuna.trial.FrozenTrial]:
        """Running trials whose process is gone (Ctrl-C, a kill, a lost machine)."""
        from optuna.trial import TrialState

        return self.claims.stopped([t for t in self.all_trials((TrialState.RUNNING,)) if counted(t)])

    def take_over(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Claim a stopped trial (`Claims.take_over`): one of the workers that want it trains it."""
        return self.claims.take_over(trial.number,
                                     lambda: next(t for t in self.all_trials() if t.number == trial.number))

    # asking
    def tasks(self) -> Iterator[Task]:
        """The next trial to train, taken when a worker is free for it: a stopped one to resume,
        else a new one while the sweep has fewer than `trials`."""
        import optuna

        while True:
            stopped = next((t for t in self.stopped_trials() if self.take_over(t)), None)
            if stopped is not None:  # its Optuna Trial, made from its id as `Study.optimize` makes one
                task = self._take(optuna.Trial(self.study, self.trial_id(stopped.number)))
                if task is not None:
                    yield task
                continue
            mine = self.sweep_trials()
            if len(mine) >= self.trials:
                return
            # The sampler is seeded per trial: a sweep with one job is the same sweep every time.
            self.study.sampler = make_sampler(self.sampler, trial_seed(self.sampler_seed, len(mine)))
            trial = self.study.ask(self.space.search)
            if self._surplus(trial.number):
                continue
            task = self._take(trial)
            if task is not None:
                yield task

    def _surplus(self, number: int) -> bool:
        """Another worker asked for the sweep's last trial at the same moment: this one is not run."""
        earlier = [t for t in self.sweep_trials() if t.number < number]
        if len(earlier) < self.trials:
            return False
        from optuna.trial import TrialState

        trial_id = self.trial_id(number)
        self.backend.set_trial_user_attr(trial_id, "surplus", True)
        self.backend.set_trial_state_values(trial_id, TrialState.FAIL)
        return True

    def _take(self, trial: optuna.Trial) -> Task | None:
        """This worker takes `trial`: its record names this process, and the trial is held while its task runs."""
        self.claims.mark(trial.number)
        task = self.task(trial)
        if task is not None:
            self.claims.hold(trial.number, trial)
        return task

    # telling
    def done(self, done: Done) -> None:
        self.finished += 1
        self.tell(self.claims.release(done.task.tags["trial"]), done.task.run_dir, done.task.config,
                  how="resumed" if done.resumed else "")

    def failed(self, task: Task, error: FashionlabError) -> None:
        self.fail(self.claims.release(task.tags["trial"]), str(error))

    # the stopped
    def let_go(self) -> None:
        """This process stops: its trials are let go, for any worker to take over."""
        self.claims.let_go()

    def heartbeat(self) -> contextlib.AbstractContextManager[None]:
        return self.claims.heartbeat()
