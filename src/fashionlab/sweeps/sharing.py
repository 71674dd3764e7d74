"""A comparison shared through a study, so that many machines train its runs: the plan (every
variant x seed, each with its resolved config) recorded once in the study, one waiting trial per run;
each worker takes waiting runs (or a stopped worker's, resumed from its checkpoint) with the same
claims as a sweep's (`claims.Claims`), trains them into the shared `out` folder, and tells the study;
the first worker to see every run complete writes the comparison's files, once.

    result = compare_shared("runs/ladder", variants=["fast-cnn", "best-cnn"], seeds=5,
                            storage="postgresql://lab@db/fashionlab", jobs=1)

The same command is run on every machine; a changed plan is refused, naming what changed. The runs
live in `out`, which every machine must reach (NFS or the like), as a sweep's trials do.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashionlab import runner
from fashionlab.arguments import checked
from fashionlab.comparison import (
    MARKER,
    MAX_SEEDS,
    CompareResult,
    check_output_folder,
    checked_runs,
    plan,
    write_outputs,
)
from fashionlab.config import TrainConfig, name_problem
from fashionlab.data import DataSource
from fashionlab.errors import ConfigError, RunError, reason
from fashionlab.files import check_writable
from fashionlab.records import shown
from fashionlab.rundir import Run
from fashionlab.runner import Done, Task
from fashionlab.sweeps.claims import Claims
from fashionlab.sweeps.space import require_optuna
from fashionlab.sweeps.storage import check_storage_url, open_storage, secrets_kept
from fashionlab.sweeps.study import data_fingerprint
from fashionlab.urls import masked, url_label

if TYPE_CHECKING:
    import optuna

PLAN = "fashionlab_comparison"  # the study attribute that holds the plan
DATA = "fashionlab_data"  # ...the digest of the data its runs train on
PLANNER = "fashionlab_planner"  # ...the worker that enqueues the runs (the one whose claim was written last)
FINISHER = "fashionlab_finisher"  # ...the worker that writes the comparison's files
PLAN_WAIT = 60.0  # seconds a worker waits for another to finish enqueueing the plan's runs
RUN = "run"  # a trial's attribute: the label of its run in the plan ("fast-cnn seed 42")
FILES = "files"  # ...its run's figures, for a worker whose `out` is not shared to write the comparison from
GATHERED = ("config.json", "run.json", "metrics.json", "history.csv", "confusion_matrix.csv")
MAX_GATHERED_BYTES = 1024 * 1024  # a run's figures in the study, at most (a few kB: the model stays home)


def planned(tasks: Sequence[Task], out: Path) -> dict[str, Any]:
    """The plan as the study records it: each run's label, folder (relative to `out`), tags and config."""
    return {"runs": [{"label": t.label, "folder": t.run_dir.relative_to(out).as_posix(), "tags": dict(t.tags),
                      "config": t.config.to_dict()} for t in tasks]}


def plan_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """What changed between a study's plan and this command's: runs added or gone, settings changed."""
    def runs(plan_: dict[str, Any]) -> dict[str, dict[str, Any]]:
        found = plan_.get("runs") if isinstance(plan_, dict) else None
        return {str(r.get("label")): r for r in found if isinstance(r, dict)} if isinstance(found, list) else {}

    old, new = runs(recorded), runs(wanted)
    said = [f"{label} added" for label in new if label not in old]
    said += [f"{label} gone" for label in old if label not in new]
    for label in (label for label in new if label in old):
        before, after = old[label].get("config"), new[label]["config"]
        before = before if isinstance(before, dict) else {}  # a damaged plan: every key differs
        keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        if keys:
            said.append(f"{label}: {', '.join(keys)}")
        elif old[label].get("folder") != new[label]["folder"]:
            said.append(f"{label}: its folder")
    return said


@checked(seeds=(1, MAX_SEEDS), jobs=(1, None))
def compare_shared(out: str | Path, *, storage: str, study: str | None = None, variants: Sequence[str],
                   seeds: int = 3, base: TrainConfig | None = None, overrides: dict[str, Any] | None = None,
                   jobs: int = 1, data: DataSource = DataSource(), force: bool = False,
                   progress: Callable[[str], None] = lambda line: None, recipe: str | None = None,
                   command: str | None = None) -> CompareResult | None:
    """`comparison.compare` on many machines: this process's share of the runs, `jobs` at a time, through
    the study `study` (default: compare-<out's name>) in the database at `storage`; the comparison's
    files when this worker is the first to see every run complete. None when runs are still being
    trained elsewhere (the worker that finishes the last one writes the files)."""
    require_optuna()
    check_storage_url(storage)
    command = masked(command, storage) if command else command  # runs and pages never show its password
    base = base or TrainConfig()
    out = Path(out)
    name = study if study is not None else f"compare-{out.absolute().name}"
    if name_problem(name):
        said = "" if study is not None else " (made from `out`'s folder name: give `study` NAME)"
        raise ConfigError(f"study name {shown(name)} cannot be used{said}: it must start with a letter or digit and "
                          f"hold only letters, digits, '_', '-' or '.', at most 64 bytes", terms=["study", "out"])
    check_output_folder(out, force=force, of_runs=False)
    check_writable(out, what="the comparison", term="out")
    tasks = plan(out, list(variants), seeds, base, overrides, recipe=recipe, command=command)
    data = checked_runs(tasks, jobs, data)
    conflict = next((f.reason for f in map(runner.inspect, tasks) if f.state == "conflict"), None)
    if conflict:
        raise RunError(f"{conflict}; use another `out`", terms=["out"])
    with secrets_kept(storage):
        shared = Shared(storage, name, tasks, out, data)
        out.mkdir(parents=True, exist_ok=True)
        Run(out).write_json(MARKER, {"variants": list(variants), "seeds": seeds, "jobs": jobs, "base": base.to_dict(),
                                     "overrides": overrides or {}, "recipe": recipe, "command": command,
                                     "study": name, "storage": url_label(storage)})
        return shared.work(jobs=jobs, data=data, progress=progress, command=command)


class Shared:
    """One worker of a shared comparison: the study opened and its plan checked (or recorded and its
    runs enqueued, by one worker); runs taken, trained and told; the files written by one worker."""

    def __init__(self, storage: str, name: str, tasks: list[Task], out: Path, data: DataSource):
        self.storage, self.runs, self.out = storage, tasks, out
        self.backend = open_storage(storage)
        self.study = _opened_study(self.backend, name, storage)
        self.claims = Claims(self.backend, self.study._study_id)
        self.by_label = {task.label: task for task in tasks}
        self._planned(planned(tasks, out), data_fingerprint(data))

    # --- the plan ----------------------------------------------------------------------------------

    def _planned(self, wanted: dict[str, Any], digest: str) -> None:
        """The study holds this plan: recorded and enqueued now if new (by exactly one worker), else checked."""
        attrs = self.study.user_attrs
        if PLAN not in attrs:
            if self.study.get_trials(deepcopy=False) and PLANNER not in attrs:
                raise ConfigError(f"study {self.study.study_name} already has trials that a shared comparison did "
                                  f"not make; give `study` another name", terms=["study"])
            if self._claim(PLANNER):
                self.study.set_user_attr(DATA, digest)
                have = {t.user_attrs.get(RUN) for t in self.study.get_trials(deepcopy=False)}  # a planner that died
                for task in self.runs:
                    if task.label not in have:
                        self.study.enqueue_trial({}, user_attrs={RUN: task.label})
                self.study.set_user_attr(PLAN, wanted)  # last: the runs are all there once the plan is
            attrs = self._wait_for_plan()
        changed = plan_differences(attrs[PLAN], wanted)
        if changed:
            raise ConfigError(f"study {self.study.study_name} holds another comparison's plan; changed since: "
                              f"{'; '.join(changed[:6])}{' and more' if len(changed) > 6 else ''}. Run the command it "
                              f"was started with, or give `study` another name", terms=["study"])
        if attrs.get(DATA) != digest:
            raise ConfigError(f"this comparison's runs train on other data (digest {attrs.get(DATA)}, here {digest}); "
                              f"give `data_dir` the files it was started with", terms=["data_dir"])

    def _claim(self, key: str) -> bool:
        """Whether this worker's claim on the study's `key` is the one written last (every worker that wants
        it writes, waits CLAIM_SECONDS, and reads back)."""
        self.study.set_user_attr(key, self.claims.owner.token)
        self.claims.wait()
        return self._attrs().get(key) == self.claims.owner.token

    def _attrs(self) -> dict[str, Any]:
        return self.backend.get_study_user_attrs(self.study._study_id)

    def _wait_for_plan(self) -> dict[str, Any]:
        """The study's attributes once its plan is recorded (by whichever worker won the claim)."""
        deadline = time.monotonic() + PLAN_WAIT
        while PLAN not in (attrs := self._attrs()):
            if time.monotonic() > deadline:
                raise RunError(f"study {self.study.study_name} was being planned by another worker that did not "
                               f"finish within {PLAN_WAIT:.0f} s; run the same command again (it finishes the "
                               f"plan), or give `study` another name", terms=["study"])
            time.sleep(0.2)
        return attrs

    # --- the runs ----------------------------------------------------------------------------------

    def _trials(self, *states: optuna.trial.TrialState) -> list[optuna.trial.FrozenTrial]:
        """The study's trials in `states`, each checked: its run is one of the plan's."""
        found = self.study.get_trials(deepcopy=False, states=states or None)
        for trial in found:
            if not isinstance(trial.user_attrs.get(RUN), str) or trial.user_attrs[RUN] not in self.by_label:
                raise RunError(f"study {self.study.study_name} holds trial {trial.number}, which is none of the "
                               f"comparison's runs; give `study` another name", terms=["study"])
        return found

    def tasks(self) -> Iterator[Task]:
        """The next run this worker trains, when a job is free: a stopped worker's, else a waiting one."""
        from optuna.trial import TrialState

        while True:
            running = self._trials(TrialState.RUNNING)
            stopped = next((t for t in self.claims.stopped(running) if self.claims.take_over(
                t.number, lambda t=t: self._trial(t.number))), None)
            trial = stopped or self.claims.pop_waiting(self._trials(TrialState.WAITING))
            if trial is None:
                return
            task = self.by_label[trial.user_attrs[RUN]]
            if runner.inspect(task).state == "complete":  # trained before its trial was told: told now
                self._tell(trial.number, Run(task.run_dir).metrics()["test_accuracy"])
                continue
            self.claims.hold(trial.number, task.run_dir)
            yield dataclasses.replace(task, tags={**task.tags, "trial": trial.number})

    def _complete(self) -> set[str]:
        """The runs complete: their labels (a run planned twice by a planner that died is counted once)."""
        from optuna.trial import TrialState

        return {t.user_attrs[RUN] for t in self._trials(TrialState.COMPLETE)}

    def _trial(self, number: int) -> optuna.trial.FrozenTrial:
        return self.backend.get_trial(self.claims.trial_id(number))

    def _tell(self, number: int, accuracy: float) -> None:
        from optuna.trial import TrialState

        self.backend.set_trial_state_values(self.claims.trial_id(number), TrialState.COMPLETE, [accuracy])

    def done(self, done: Done) -> None:
        number = done.task.tags["trial"]
        run = Run(done.task.run_dir)
        figures = {name: run.read_text(name) for name in GATHERED}
        if sum(len(text.encode()) for text in figures.values()) <= MAX_GATHERED_BYTES:
            self.backend.set_trial_user_attr(self.claims.trial_id(number), FILES, figures)
        self._tell(number, done.metrics["test_accuracy"])
        self.claims.release(number)

    def _gather(self, progress: Callable[[str], None]) -> None:
        """The runs trained on other machines whose `out` this one does not share: their figures from the
        study, written into run folders here (no model), for the comparison's files."""
        from optuna.trial import TrialState

        gathered = 0
        for trial in self._trials(TrialState.COMPLETE):
            task = self.by_label[trial.user_attrs[RUN]]
            if runner.inspect(task).state == "complete":
                continue
            figures = trial.user_attrs.get(FILES)
            if not isinstance(figures, dict) or set(figures) != set(GATHERED) or not all(
                    isinstance(text, str) for text in figures.values()):
                raise RunError(f"{task.run_dir} is not here, and the study holds no figures of it; run the "
                               f"comparison's last command where {task.label} was trained, or share `out`",
                               terms=["out"])
            with Run.create(task.run_dir) as run:
                for name in GATHERED:
                    run.write_text(name, figures[name])
            runner_state = runner.inspect(task)
            if runner_state.state != "complete":  # what the study held is not this run's
                raise RunError(f"the figures the study holds of {task.label} are not its run's "
                               f"({runner_state.reason or runner_state.state}); give `study` another name",
                               terms=["study"])
            gathered += 1
        if gathered:
            progress(f"gathered {gathered} run(s) trained elsewhere from the study (their figures; their models "
                     f"stay where they were trained)")

    # --- the whole -----------------------------------------------------------------------------------

    def work(self, *, jobs: int, data: DataSource, progress: Callable[[str], None],
             command: str | None) -> CompareResult | None:

        ended = len(self._complete())
        progress(f"study {self.study.study_name} ({url_label(self.storage)}): {len(self.runs)} runs, {ended} "
                 f"finished already; {jobs} job(s) here")
        trained = 0

        def report(done: Done) -> None:
            nonlocal trained
            self.done(done)
            trained += 1
            progress(f"[{done.task.label}] test accuracy {done.metrics['test_accuracy']:.4f} ({done.seconds:.0f} s"
                     f"{', resumed' if done.resumed else ''})")

        try:
            with self.claims.heartbeat():
                runner.execute(self.tasks(), jobs=jobs, data=data, on_done=report)
        except BaseException:  # Ctrl-C, a failed run, a lost database: another worker takes over what ran here
            self.claims.let_go()
            raise
        return self._finish(trained, progress, command)

    def _finish(self, trained: int, progress: Callable[[str], None], command: str | None) -> CompareResult | None:
        """The comparison's files, written by the first worker to see every run complete."""

        complete = len(self._complete())
        if complete < len(self.runs):
            progress(f"trained {trained} run(s) here; {len(self.runs) - complete} still with other workers: the "
                     f"one that finishes the last writes the comparison's files")
            return None
        if FINISHER in self._attrs():  # written already: again by a command run after the end, as compare does
            writer = trained == 0
        else:
            writer = self._claim(FINISHER)
        if not writer:
            progress(f"trained {trained} run(s) here; every run is complete, and another worker writes the "
                     f"comparison's files in {self.out}")
            return None
        self._gather(progress)
        results, summary, statements = write_outputs(Run(self.out), self.runs, command)
        return CompareResult(self.out, results, summary, statements, trained, len(self.runs) - trained)


def _opened_study(backend: optuna.storages.BaseStorage, name: str, storage: str) -> optuna.Study:
    """The study `name`, made if new (every worker may try at once: the storage makes it once)."""
    import optuna

    try:
        study = optuna.create_study(storage=backend, study_name=name, direction="maximize", load_if_exists=True)
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise ValueError("it minimizes")
        return study
    except Exception as exc:  # a database gone, a study that minimizes
        raise RunError(f"cannot open study {name} in {url_label(storage)} ({reason(exc, 200)}); give `study` "
                       f"another name", terms=["study"]) from None
