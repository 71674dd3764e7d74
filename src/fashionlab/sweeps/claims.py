"""Which trial each worker of a sweep trains: a stopped one taken over (its process gone: Ctrl-C, a
kill, a lost machine), else a new one asked of the study while the sweep has fewer than its trials;
the trials a worker holds said to be alive (heartbeats), and let go when it stops.

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


class Worker(Trials):
    """One worker process of a sweep (it may run `jobs` trainings): asks the study for trials while
    the sweep has fewer than `trials`, hands them to the runner, and tells the study each outcome."""

    def __init__(self, study: optuna.Study, backend: optuna.storages.BaseStorage, space: Space, out: Path, *,
                 trials: int, storage: str, sampler: str, sampler_seed: int, pruner: str, train_images: int,
                 free_memory: int | None, progress: Callable[[str], None], mlflow: Destination | None = None):
        self.owner = Owner()
        super().__init__(study, backend, space, out, trials=trials, storage=storage, pruner=pruner,
                         train_images=train_images, free_memory=free_memory, progress=progress,
                         host=self.owner.host, mlflow=mlflow)
        self.sampler, self.sampler_seed = sampler, sampler_seed
        self.held: dict[int, optuna.Trial] = {}  # trial number -> the trial this process runs
        self.lock = threading.Lock()  # the heartbeat thread reads `held`

    # claiming
    def stopped_trials(self) -> list[optuna.trial.FrozenTrial]:
        """Running trials whose process is gone (Ctrl-C, a kill, a lost machine)."""
        from optuna.trial import TrialState

        now = time.time()
        return [t for t in self.all_trials((TrialState.RUNNING,))
                if counted(t) and t.number not in self.held and self.owner.stopped(t, now)]

    def take_over(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Claim a stopped trial: every worker that wants it writes its claim, waits, and reads
        back whose claim was written last; that one trains it, the others leave it."""
        trial_id = self.trial_id(trial.number)
        self.backend.set_trial_user_attr(trial_id, "owner", self.owner.record())
        self.backend.set_trial_user_attr(trial_id, "heartbeat", time.time())
        time.sleep(CLAIM_SECONDS)
        claim = next(t for t in self.all_trials() if t.number == trial.number)
        claimed = (claim.user_attrs.get("owner") or {}).get("token")
        return claimed == self.owner.token

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
        for key, value in {"owner": self.owner.record(), "heartbeat": time.time()}.items():
            trial.set_user_attr(key, value)
        task = self.task(trial)
        if task is not None:
            with self.lock:
                self.held[trial.number] = trial
        return task

    # telling
    def done(self, done: Done) -> None:
        self.finished += 1
        self.tell(self._release(done.task), done.task.run_dir, done.task.config,
                  how="resumed" if done.resumed else "")

    def failed(self, task: Task, error: FashionlabError) -> None:
        self.fail(self._release(task), str(error))

    def _release(self, task: Task) -> optuna.Trial:
        with self.lock:
            return self.held.pop(task.tags["trial"])

    # the stopped
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
