"""Ensembles: runs already trained, their class probabilities averaged, as one model that
evaluate, predict, serve and export take like any run.

    result = ensemble(["runs/compare/speed-90"], "runs/speed-90-x5")  # a folder of runs: its runs
    result.metrics["test_accuracy"], result.metrics["member_test_accuracy"]

An ensemble's folder holds ensemble.json (its members: run, name, recipe, config, test accuracy)
in place of config.json, model.keras (a Keras model whose members are the runs' own models, their
outputs averaged by an `Average` layer), metrics.json, the confusion matrix, report.html and
run.json. It was not trained: it has no history or checkpoints, and `resume` and `compare` refuse it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashionlab.arguments import checked
from fashionlab.catalog import is_run, run_folders
from fashionlab.config import name_problem
from fashionlab.data import DataSource
from fashionlab.datasets import FASHION_MNIST, record
from fashionlab.errors import ConfigError, Interrupted, RunError, resume_call
from fashionlab.evaluation import metrics_from_proba, predict_proba
from fashionlab.files import check_writable, outermost_missing
from fashionlab.interrupts import stop_requests
from fashionlab.model import parameter_counts
from fashionlab.provenance import library_versions, machine_info
from fashionlab.records import MAX_MEMBERS
from fashionlab.reports import gains, write_ensemble_outputs
from fashionlab.rundir import ENSEMBLE_FILE, UMASK, Run, default_run_dir, now


@dataclass(frozen=True)
class EnsembleResult:
    run: Run
    metrics: dict[str, Any]


@checked
def ensemble(runs: Sequence[str | Path], out: str | Path | None = None, *, data: DataSource = DataSource(),
             command: str | None = None) -> EnsembleResult:
    """Average the class probabilities of `runs` (run directories, or folders of runs such as a
    comparison's variant: the runs in it) into one model, written to `out` (default
    runs/<time>-<name>) with its test figures and its members'. The members must be complete runs
    of one data set, each given once; `command` is recorded, as `train` records its own. All or
    nothing: the folder is written beside `out` under a hidden name and renamed into place."""
    called, started = time.perf_counter(), now()
    members = members_of(runs)
    dataset = members[0].dataset()
    name = ensemble_name([member.name() for member in members])
    out = Path(out) if out is not None else default_run_dir(name)
    check_out(out)
    with stop_requests() as stop:
        x_test, y_test = data.of(dataset).test_set()
        models = [member.load_model() for member in members]
        accuracies = [metrics_from_proba(y_test, predict_proba(model, x_test), dataset.class_names)["test_accuracy"]
                      for model in models]
        model = averaged(models)
        proba = predict_proba(model, x_test)
        report = metrics_from_proba(y_test, proba, dataset.class_names)
        _stop_if_asked(stop)
        described = {"name": name, "members": [
            {"run": os.path.abspath(member.path), "name": member.name(), "recipe": member.status().get("recipe"),
             "test_accuracy": accuracy, "config": member.shared_config()}
            for member, accuracy in zip(members, accuracies)]}
        metrics = {"test_loss": report["test_loss"], "test_accuracy": report["test_accuracy"],
                   "member_test_accuracy": accuracies,
                   "per_class_accuracy": {name: s["recall"] for name, s in report["per_class"].items()},
                   "parameters": parameter_counts(model),
                   "versions": library_versions(), "machine": machine_info(), "command": command,
                   "started": started, "finished": now(), "wall_seconds": time.perf_counter() - called}
        status = {"started": started, "finished": now(), "command": command,
                  "dataset": members[0].status().get("dataset") or record(FASHION_MNIST)}

        def write(run: Run) -> None:
            run.write_json(ENSEMBLE_FILE, described)
            run.save_model(model)
            run.write_json("metrics.json", metrics)
            write_ensemble_outputs(run, ensemble=described, report=report, x_test=x_test, y_test=y_test,
                                   proba=proba, metrics=metrics, dataset=dataset.name)
            run.set_status("complete", **status)
            _stop_if_asked(stop)

        _written(out, write)
    return EnsembleResult(Run(out), metrics)


def check_out(out: Path) -> None:
    """Refuse, before any work, an `out` that is not an empty or new folder one can write in, or that
    lies inside a run (a run holds no runs: it would be listed by no one)."""
    check_writable(out, what="the ensemble", term="out")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"`out` {out} already exists and is not empty; give a new folder", terms=["out"])
    inside = next((folder for folder in Path(os.path.abspath(out)).parents if is_run(folder)), None)
    if inside is not None:
        raise ConfigError(f"`out` {out} is inside the run {inside}; give a folder outside any run", terms=["out"])


def _stop_if_asked(stop) -> None:
    if stop.requested:
        raise Interrupted("interrupted; nothing was written")


def _written(out: Path, write: Callable[[Run], None]) -> None:
    """`write` into a hidden folder beside `out`, then that folder renamed to `out` (which is new or
    empty); whatever fails or is interrupted first, nothing is left, not even the folders made for it."""
    made = outermost_missing(out.parent)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
        scratch.chmod(0o777 & ~UMASK)  # mkdtemp makes 0700; a run's folder has the usual permissions
    except OSError as exc:
        _remove(made)
        raise RunError(f"cannot make the ensemble's folder in {out.parent}: {exc.strerror or exc}; give `out` "
                       f"another folder", terms=["out"]) from None
    try:
        with Run.create(scratch) as run:
            write(run)
        os.rename(scratch, out)  # replaces an empty folder; refused if one appeared meanwhile with files
    except OSError as exc:
        raise RunError(f"cannot write the ensemble in {out}: {exc.strerror or exc}; nothing was written") from None
    except RunError as exc:
        raise RunError(str(exc).removesuffix("; earlier artifacts are intact") + "; nothing was written") from None
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
            _remove(made)


def _remove(made: Path | None) -> None:
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)


def members_of(given: Sequence[str | Path]) -> list[Run]:
    """The complete runs `given` names, in order: a run directory, or a folder holding runs of one
    group (a comparison's variant: its seeds; ensembles in it left out). Refused: fewer than 2 or
    more than MAX_MEMBERS, a run twice, an ensemble, a run not complete, runs of different data sets."""
    runs: list[Run] = []
    for path in map(Path, given):
        runs += [_complete(folder) for folder in _runs_in(path)]
    ensemble = next((run for run in runs if run.is_ensemble()), None)
    if ensemble is not None:
        raise ConfigError(f"{ensemble.path} is an ensemble; give the runs it averages instead", terms=["runs"])
    if not 2 <= len(runs) <= MAX_MEMBERS:
        raise ConfigError(f"an ensemble averages 2 to {MAX_MEMBERS} runs, {len(runs)} given; give more runs, or a "
                          f"folder of runs (a comparison's variant)", terms=["runs"])
    seen: dict[str, Path] = {}
    for run in runs:
        where = os.path.realpath(run.path)
        if where in seen:
            raise ConfigError(f"{seen[where]} and {run.path} are the same run ({where}); give each run once",
                              terms=["runs"])
        seen[where] = run.path
    first = _data_set_of(runs[0])
    for run in runs[1:]:
        if _data_set_of(run) != first:
            raise ConfigError(f"{run.path} was trained on {run.dataset().label}, {runs[0].path} on "
                              f"{runs[0].dataset().label}; an ensemble's runs share one data set", terms=["runs"])
    return runs


def _complete(folder: Path) -> Run:
    """The run at `folder`, which must be complete."""
    run = Run.open(folder, allow_incomplete=True)
    state = run.status()["status"]
    if state != "complete":
        state = "unfinished (its process died)" if state == "running" and not run.in_use() else state
        raise ConfigError(f"{folder} is {state}; an ensemble averages complete runs: finish it with "
                          f"`{resume_call(folder)}`, or leave it out", terms=[resume_call(folder)])
    return run


def _runs_in(path: Path) -> list[Path]:
    """`path` if it is a run; else the runs under it but ensembles, which must be one group (one parent folder)."""
    if not path.is_dir() or is_run(path):
        return [path]  # Run.open says what is wrong with it
    found = sorted(folder for folder in run_folders(path) if not Run(folder).is_ensemble())
    groups = sorted({folder.parent.relative_to(path).as_posix() for folder in found})
    if not found:
        raise RunError(f"{path} is not a run directory and holds no runs; give run directories or a folder of runs")
    if len(groups) > 1:
        shown = ", ".join(str(path / group) for group in groups[:8]) + (" ..." if len(groups) > 8 else "")
        raise ConfigError(f"{path} holds runs of {len(groups)} groups ({shown}); give one of those folders, or "
                          f"the runs themselves", terms=["runs"])
    return found


def _data_set_of(run: Run) -> tuple[Any, ...]:
    """What makes two runs' data sets the same: the name, the classes, and a folder's files' digests."""
    kept = run.status().get("dataset") or record(FASHION_MNIST)
    return kept["name"], tuple(kept["class_names"]), tuple(sorted((kept.get("sha256") or {}).items()))


def ensemble_name(names: Sequence[str]) -> str:
    """ensemble-5-speed-90 for five runs named speed-90; ensemble-3 for runs of different names."""
    shared = f"ensemble-{len(names)}-{names[0]}" if len(set(names)) == 1 else None
    return shared if shared is not None and name_problem(shared) is None else f"ensemble-{len(names)}"


def averaged(models: Sequence[Any]):
    """One Keras model whose output is the mean of `models`' class probabilities, each model a
    layer of it (named member_1, member_2, ...)."""
    import keras

    pixels = keras.Input((28, 28), name="pixels")
    for i, model in enumerate(models, 1):
        model.name = f"member_{i}"
    mean = keras.layers.Average(name="average")([model(pixels) for model in models])
    return keras.Model(pixels, mean, name="fashionlab_ensemble")


def format_ensemble(result: EnsembleResult) -> str:
    m, described = result.metrics, result.run.ensemble()
    members = np.array(m["member_test_accuracy"])
    lines = [f"averaged {len(members)} runs:"]
    lines += [f"  {member['run']}  test accuracy {member['test_accuracy']:.4f}" for member in described["members"]]
    lines += [f"their test accuracy: mean {members.mean():.4f} ± {members.std(ddof=1):.4f} (std), "
              f"worst {members.min():.4f}, best {members.max():.4f}",
              f"the ensemble: test accuracy {m['test_accuracy']:.4f}   test loss {m['test_loss']:.4f}   "
              f"{gains(m['test_accuracy'], members)}",
              f"ensemble: {result.run.path}   (open {result.run.path / 'report.html'} for the full report)"]
    return "\n".join(lines)
