"""A sweep's results: the trials table, the chosen trial (the best by validation accuracy), its one
evaluation on the test set once every trial has ended, and the files people read (trials.csv,
summary.md, report.html, best.toml); a sweep folder read back.

    result = load_sweep("runs/sweep")
"""

from __future__ import annotations

import json
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashionlab.errors import RunError
from fashionlab.records import TrialRow, first_problem
from fashionlab.rundir import Run
from fashionlab.sweeps.space import Space, describe
from fashionlab.sweeps.study import TEST_KEY, counted, study_attrs, study_trials
from fashionlab.sweeps.trials import inspect_trial, trial_dir_name

if TYPE_CHECKING:
    import optuna
    import pandas as pd

    from fashionlab.data import DataSource

MARKER = "sweep.json"  # written first into every sweep folder: how it was started
STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}


@dataclass(frozen=True)
class SweepResult:
    out: Path
    trials: pd.DataFrame  # one row per trial of the sweep
    best: dict[str, Any] | None  # the chosen trial's row
    tests: list[dict[str, Any]]  # each test-set evaluation this study made (one per chosen trial)
    summary: str  # summary.md
    ended: bool  # every trial of the sweep has ended (none running or waiting)


def trials_table(trials: list[optuna.trial.FrozenTrial], space: Space) -> pd.DataFrame:
    """One row per trial of the sweep (of the study's `trials`, checked), by trial number: its values, how
    it ended, what it cost. `val_accuracy` (a complete trial's score) is that of the weights its run keeps."""
    from optuna.trial import TrialState

    rows = []
    for t in trials:
        if not counted(t):
            continue
        a = t.user_attrs
        rows.append({
            "trial": t.number, "state": STATE_NAMES[t.state.name],
            **{key: t.params.get(key) for key in space.search},
            "val_accuracy": t.value if t.state == TrialState.COMPLETE else None,
            "best_val_accuracy": a.get("best_val_accuracy"),
            "epochs": a.get("epochs"), "epochs_planned": a.get("epochs_planned"),
            "seconds": a.get("train_seconds"), "seconds_saved": a.get("seconds_saved"),
            "host": a.get("host", ""), "run": trial_dir_name(t.number) if a.get("run") else "",
            "reason": a.get("reason", ""),
        })
    columns = ["trial", "state", *space.search, "val_accuracy", "best_val_accuracy", "epochs", "epochs_planned",
               "seconds", "seconds_saved", "host", "run", "reason"]
    import pandas as pd

    return pd.DataFrame(rows, columns=columns).sort_values("trial", kind="stable").reset_index(drop=True)


def best_row(table: pd.DataFrame) -> dict[str, Any] | None:
    """The complete trial with the highest validation accuracy (the first such, on a tie)."""
    complete = table[table["state"] == "complete"]
    if complete.empty:
        return None
    return complete.loc[complete["val_accuracy"].astype(float).idxmax()].to_dict()


def best_toml(space: Space, best: dict[str, Any], study_name: str, trials: int) -> str:
    """The chosen trial's full config as a recipe-style file: `fashionlab train --config best.toml`."""
    config = space.config({key: _plain(best[key]) for key in space.search}, f"{study_name}-{best['trial']}")
    lines = [f"# The best of {trials} trials of the sweep {study_name} ({space.path.name}), by validation accuracy",
             f"# ({best['val_accuracy']:.4f}, a maximum over the trials: expect a little less on new data).",
             "# Train it again: fashionlab train --config best.toml",
             "description = " + json.dumps(f"trial {best['trial']} of sweep {study_name}"), "", "[train]"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in config.to_dict().items()]
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> Any:
    """A pandas cell as the Python value a config takes (NumPy integers and floats)."""
    return value.item() if hasattr(value, "item") else value


def finish(study: optuna.Study, space: Space, out: Path, *, storage: str, trials: int, data: DataSource, wall: float,
           jobs: int, ran: int, progress: Callable[[str], None]) -> SweepResult:
    """The sweep's files; when every trial has ended, the chosen trial's test result (evaluated once)."""
    from fashionlab.reports import sweep_statements, write_sweep_outputs

    found = study_trials(study, space, storage)
    table = trials_table(found, space)
    best = best_row(table)
    ended = len(table) >= trials and table["state"].isin(["complete", "pruned", "failed"]).all()
    note = ""
    if best is not None and not ended:
        note = "trials are still running or waiting (another worker's, or to resume): the test set waits for them"
    elif best is not None and f"{TEST_KEY}{best['trial']}" not in study_attrs(study, storage):
        chosen = next(t for t in found if t.number == best["trial"])
        note = _evaluate_chosen(study, chosen, space, best, out, data, len(table), progress)
    attrs = study_attrs(study, storage)
    tests = sorted((v for k, v in attrs.items() if k.startswith(TEST_KEY)), key=lambda t: t["when"])
    name = study.study_name
    settings = attrs["fashionlab"]
    searched = {key: describe(d)[0] for key, d in space.search.items()}
    statements = sweep_statements(
        table=table, searched=searched, trials=trials, best=best, tests=tests, note_text=note, wall=wall,
        description=space.description,
        jobs=jobs, ran=ran, best_path=str(out / "best.toml"),
        settings=f"Sampler {settings['sampler']} (seed {settings['sampler_seed']}), pruner {settings['pruner']}, "
                 f"from {space.base.name}")
    best_text = best_toml(space, best, name, len(table)) if best is not None else None
    summary = write_sweep_outputs(Run(out), title=f"fashionlab sweep: {name}", table=table, searched=searched,
                                  scales={key: describe(d)[1] for key, d in space.search.items()},
                                  statements=statements, best_text=best_text,
                                  importances=importances(study, found, space), setup=described(out, space, table))
    return SweepResult(out, table, best, tests, summary, bool(ended))


def described(out: Path, space: Space, table: pd.DataFrame) -> dict[str, str]:
    """What the sweep runs, for the top of its page: the last command that ran it, the space file, the
    settings every trial changes from its recipe, the keys searched, the machine and versions (as a
    trained trial recorded them)."""
    from fashionlab.recipes import changes_from, changes_text
    from fashionlab.reports import environment_line, shortened

    command = Run(out).read_json(MARKER).get("command") if (out / MARKER).is_file() else None
    fixed = changes_from(space.base, space.recipe)  # its [train] table: a searched key is never in it
    rows = {"command": shortened(str(command or "not recorded")), "space": str(space.path),
            "every trial changes": f"{space.recipe or 'tutorial'} recipe" + (f": {changes_text(fixed)}" if fixed
                                                                              else ", as it is"),
            "searched": ", ".join(space.search)}
    trained = [run for run in table["run"] if run and (out / run / "metrics.json").is_file()]
    if trained:
        rows |= environment_line(Run(out / trained[0]).metrics())
    return rows


def load_sweep(out: str | Path) -> SweepResult:
    """A sweep read back from its folder, as `finish` last wrote it: trials.csv (each row checked) and
    summary.md; the test results stay in its study."""
    folder = Run(out)
    if not folder.file(MARKER).is_file() or not folder.file("trials.csv").is_file():
        raise RunError(f"{out} holds no sweep's results (no {MARKER} and trials.csv); pass a folder that "
                       f"sweep wrote, or run sweep into it")
    table = folder.read_table("trials.csv", dtype={"host": str, "run": str, "reason": str})
    rows = table.astype(object).where(table.notna(), None).to_dict("records")  # an empty cell: None
    problem = next(filter(None, (first_problem(row, TrialRow, f"row {i + 1}") for i, row in enumerate(rows))), None)
    if problem:
        raise RunError(f"{folder.file('trials.csv')}: {problem}; run the sweep's command again to write it anew")
    table = table.astype({"val_accuracy": float}).fillna({"host": "", "run": "", "reason": ""})
    ended = bool(len(table)) and bool(table["state"].isin(["complete", "pruned", "failed"]).all())
    return SweepResult(Path(out), table, best_row(table), [], folder.read_text("summary.md"), ended)


def _evaluate_chosen(study: optuna.Study, trial: optuna.trial.FrozenTrial, space: Space, best: dict[str, Any],
                     out: Path, data: DataSource, trials: int, progress: Callable[[str], None]) -> str:
    """Evaluate the chosen trial on the test set and record it in the study (once: the record is
    keyed by the trial); what stopped it, if anything. Only the run the sweep made for the trial is
    opened: its folder named by the trial's number, not a link, holding the trial's config."""
    from fashionlab.evaluation import evaluate
    from fashionlab.rundir import MODEL_FILE

    number = int(best["trial"])
    run_dir = out / trial_dir_name(number)
    if not os.path.lexists(run_dir):
        return (f"trial {number} ran on {best['host'] or 'another machine'}: its run {run_dir.name} is not in "
                f"{out}; run this command where it is to evaluate it on the test set")
    found = inspect_trial(run_dir, space.config(trial.params, f"{study.study_name}-{number}"))
    why = (found.reason.split(";")[0] if found.state == "conflict" else f"{run_dir} is not complete"
           if found.state != "complete" else f"{run_dir / MODEL_FILE} is a symbolic link"
           if (run_dir / MODEL_FILE).is_symlink() else "")
    if why:
        return f"trial {number} was not evaluated on the test set: {why}"
    progress(f"evaluating trial {number}, the best by validation, on the test set")
    try:
        report = evaluate(run_dir, data=data)
    except RunError as exc:  # another worker evaluating it right now holds the run's lock
        return f"trial {number} could not be evaluated here ({exc})"
    study.set_user_attr(f"{TEST_KEY}{number}", {
        "trial": number, "run": run_dir.name, "test_accuracy": report["test_accuracy"],
        "test_loss": report["test_loss"], "val_accuracy": float(best["val_accuracy"]), "trials": trials,
        "when": time.time()})
    return ""


def importances(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], space: Space) -> dict[str, float] | None:
    """Optuna's parameter importances over the complete trials (of the study's `trials`, checked), or None
    when there are too few."""
    import optuna
    from optuna.trial import TrialState

    complete = [t for t in trials if t.state == TrialState.COMPLETE and counted(t)]
    if len(space.search) < 2 or len(complete) < 4:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None
