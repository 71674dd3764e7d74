"""The tutorial series as an experiment: variants x seeds, trained by the runner, summarized
with their spread, and a conclusion that says only what the numbers show.

    result = compare("runs/compare", variants=["raw", "scaled", "bn-after", "bn-before"], seeds=3)
    result = compare("runs/ladder", variants=["tutorial", "fast-mlp", "fast-mlp:augment_shift=2"], seeds=3)
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fashionlab import runner, tracking
from fashionlab.arguments import checked
from fashionlab.config import TrainConfig, check_runnable, with_changes
from fashionlab.data import DataSource
from fashionlab.datasets import resolve
from fashionlab.errors import ConfigError, RunError, did_you_mean
from fashionlab.files import check_writable
from fashionlab.provenance import available_memory
from fashionlab.records import shown
from fashionlab.rundir import Run
from fashionlab.runner import Done, Task

if TYPE_CHECKING:
    import pandas as pd

# Each variant changes only what the tutorial series changes between its parts.
VARIANTS: dict[str, dict[str, Any]] = {
    "raw": {"scale_inputs": False, "batch_norm": "none"},  # part 1: raw 0..255 pixels
    "scaled": {"batch_norm": "none"},  # part 2: standardized input
    "bn-after": {"batch_norm": "after"},  # part 3: Dense(relu) then BN (the tutorial)
    "bn-before": {"batch_norm": "before"},  # part 3's second choice: Dense, BN, ReLU
    "selu": {"batch_norm": "none", "activation": "selu", "kernel_initializer": "lecun_normal"},
}
DEFAULT_VARIANTS = ("raw", "scaled", "bn-after", "bn-before")
MAX_SEEDS = 100


def variant_config(spec: str, base: TrainConfig, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The config a variant spec names: a series variant applied to `base` ("bn-before"), a
    recipe ("fast-cnn"), either with changes ("fast-cnn:epochs=5,dropout=0.3", its name then
    says them unless `name` is among them); then `overrides`, which apply to every variant."""
    from fashionlab import recipes

    head, colon, said = spec.partition(":")
    if head in VARIANTS:
        start = base.replace(name=head, **VARIANTS[head])
    elif head in recipes.names():
        start = recipes.get(head).config()
    else:
        close = did_you_mean(head, [*VARIANTS, *recipes.names()])
        raise ConfigError(f"unknown variant {head!r}{close}; give a series variant ({', '.join(VARIANTS)}) or a recipe "
                          f"({', '.join(recipes.names())}), optionally with changes: NAME:key=value,key=value",
                          terms=["variants"])
    changes = parse_changes(said) if colon else {}
    if "seed" in changes:
        raise ConfigError(f"variant {spec!r} sets seed; the seeds come from --seed and --seeds, the same for "
                          f"every variant", terms=["variants"])
    return with_changes(start, changes).replace(**{k: v for k, v in (overrides or {}).items() if k != "name"})


def parse_changes(text: str) -> dict[str, Any]:
    """"key=value,key=value" as config values: TOML values, or a bare word as text."""
    changes: dict[str, Any] = {}
    for item in text.split(","):
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals or not key or not value or key in changes:
            raise ConfigError(f"cannot read {item.strip()!r} in variant changes: write key=value pairs separated "
                              f"by commas, each key once", terms=["variants"])
        try:
            changes[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            changes[key] = value
    return changes


@checked(seeds=(1, MAX_SEEDS))
def plan(out: Path, variants: Sequence[str], seeds: int, base: TrainConfig,
         overrides: dict[str, Any] | None = None, *, recipe: str | None = None,
         command: str | None = None) -> list[Task]:
    """One task per variant x seed, in out/<variant name>/seed-<seed>; seeds count up from the
    overrides' seed, else the base config's. Each task records its recipe (a recipe variant's own,
    else `recipe`, the one `base` came from) and the `command` that asked for it."""
    from fashionlab import recipes

    if not variants or len(set(variants)) != len(variants):
        raise ConfigError("give each of the `variants` once, and at least one", terms=["variants"])
    configs = [variant_config(spec, base, overrides) for spec in variants]
    names = [c.name for c in configs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"two variants are both named {twice[0]}; give one a name=... change", terms=["variants"])
    taken = sorted(set(names) & {MARKER, *COMPARISON_FILES})
    if taken:
        raise ConfigError(f"a variant cannot be named {taken[0]}: the comparison writes a file of that name; "
                          f"give it another name=...", terms=["variants"])
    first = (overrides or {}).get("seed", base.seed)
    heads = [spec.partition(":")[0] for spec in variants]
    started_from = [head if head in recipes.names() and head not in VARIANTS else recipe for head in heads]
    return [Task(f"{c.name} seed {seed}", c.replace(seed=seed), out / c.name / f"seed-{seed}",
                 {"variant": c.name, "seed": seed}, recipe=r, command=command)
            for c, r in zip(configs, started_from) for seed in range(first, first + seeds)]


# --- statistics and the conclusion -----------------------------------------------------------

def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """One row per variant, in the order given: mean, spread (sample std over seeds) and worst seed."""
    for column in ("wall_seconds", "test_ece"):  # results read before fashionlab recorded them
        if column not in results:
            results = results.assign(**{column: float("nan")})
    grouped = results.groupby("variant", sort=False)
    import pandas as pd

    return pd.DataFrame({
        "seeds": grouped.size(),
        "test_accuracy_mean": grouped["test_accuracy"].mean(),
        "test_accuracy_std": grouped["test_accuracy"].std(ddof=1).fillna(0.0),
        "test_accuracy_worst": grouped["test_accuracy"].min(),
        "test_accuracy_best": grouped["test_accuracy"].max(),
        "test_ece_mean": grouped["test_ece"].mean(),
        "first_epoch_val_accuracy": grouped["first_epoch_val_accuracy"].mean(),
        "best_val_accuracy": grouped["best_val_accuracy"].mean(),
        "best_epoch": grouped["best_epoch"].mean(),
        "seconds_per_epoch": grouped["seconds_per_epoch"].mean(),
        "wall_seconds": grouped["wall_seconds"].mean(),
        "parameters": grouped["parameters"].first(),
    })


def load_comparison(out: str | Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """A finished comparison read back from its folder: results.csv, its summary and conclusion."""
    folder = Run(out)
    if not folder.file("results.csv").is_file():
        raise RunError(f"{out} holds no finished comparison (no results.csv); run compare into it")
    results = folder.read_table("results.csv", dtype={"variant": str})
    summary = summarize(results)
    try:  # the runs, where they still are, say whether they were short
        runs = [Run(path) for path in results["run_dir"]]
        tasks = [Task(str(variant), run.config(), run.path, recipe=run.status().get("recipe"))
                 for variant, run in zip(results["variant"], runs)]
        return results, summary, with_length(conclusion(summary), tasks)
    except (RunError, KeyError, TypeError):
        return results, summary, conclusion(summary)


def conclusion(summary: pd.DataFrame) -> list[str]:
    """Plain statements that follow from the numbers, and no more."""
    ranked = summary.sort_values("test_accuracy_mean", ascending=False)
    best, top = ranked.index[0], ranked.iloc[0]
    seeds = int(ranked["seeds"].min())
    lines = [f"{best} has the highest mean test accuracy: {top.test_accuracy_mean:.4f} "
             f"± {top.test_accuracy_std:.4f} over {int(top.seeds)} seed(s)."]
    if len(ranked) == 1:
        return lines
    if seeds < 2:
        single = [str(v) for v in ranked.index[ranked["seeds"] < 2]]
        which = "per variant" if len(single) == len(ranked) else f"for {', '.join(single)}"
        lines.append(f"With one seed {which} there is no spread to judge the differences against; "
                     f"run more seeds before drawing conclusions.")
    for variant, other in ranked.iloc[1:].iterrows():
        gap = (top.test_accuracy_mean - other.test_accuracy_mean) * 100
        if seeds < 2:
            lines.append(f"{variant}: {other.test_accuracy_mean:.4f} ({gap:.2f} points lower).")
        elif top.test_accuracy_worst > other.test_accuracy_best:
            lines.append(f"{best} beats {variant} on every seed: its worst seed ({top.test_accuracy_worst:.4f}) "
                         f"is above {variant}'s best ({other.test_accuracy_best:.4f}); mean gap {gap:.2f} points.")
        elif gap / 100 > top.test_accuracy_std + other.test_accuracy_std:
            lines.append(f"{best} leads {variant} by {gap:.2f} points, more than the two seed spreads together "
                         f"(std {100 * top.test_accuracy_std:.2f} + {100 * other.test_accuracy_std:.2f} points), "
                         f"though their seed ranges overlap.")
        else:
            lines.append(f"{best} and {variant} differ by {gap:.2f} points, within the seed spread "
                         f"(std {100 * top.test_accuracy_std:.2f} and {100 * other.test_accuracy_std:.2f} points): "
                         f"these runs do not establish a difference.")
    early, late = summary["first_epoch_val_accuracy"].idxmax(), summary["first_epoch_val_accuracy"].idxmin()
    lines.append(f"After the first epoch, mean validation accuracy ranged from "
                 f"{summary.loc[late, 'first_epoch_val_accuracy']:.4f} ({late}) to "
                 f"{summary.loc[early, 'first_epoch_val_accuracy']:.4f} ({early}).")
    fastest, slowest = summary["seconds_per_epoch"].idxmin(), summary["seconds_per_epoch"].idxmax()
    lines.append(f"Training speed ranged from {summary.loc[fastest, 'seconds_per_epoch']:.2f} s/epoch ({fastest}) "
                 f"to {summary.loc[slowest, 'seconds_per_epoch']:.2f} s/epoch ({slowest}).")
    return lines


# --- the whole comparison ----------------------------------------------------------------------

MARKER = "compare.json"  # written first into every comparison folder: its settings
COMPARISON_FILES = ("results.csv", "summary.md", "curves.png", "report.html")  # written last, by reports.py


def check_output_folder(out: Path, *, force: bool, marker: str = MARKER, what: str = "comparison",
                        of_runs: bool | None = None) -> None:
    """Refuse to write into a folder that is not a comparison's (one with `marker`), unless it is
    empty or `force`; never into or inside a training run's directory (its report.html would be
    overwritten, or its folder fill with others' files). `of_runs`: whether this comparison is of runs
    already trained; a folder holding the other kind is refused unless `force` (its record would go)."""
    inside = next((p for p in out.absolute().parents if _is_run_folder(p)), None)
    if inside is not None:
        raise RunError(f"{out} is inside the training run {inside}; give the {what} a folder of its own",
                       terms=["out"])
    if not os.path.lexists(out):
        return
    if out.is_symlink():
        raise RunError(f"{out} is a symbolic link; give `out` the folder itself, or a new one", terms=["out"])
    if not out.is_dir():
        raise RunError(f"{out} exists and is not a folder; give `out` a new folder", terms=["out"])
    if _is_run_folder(out):
        raise RunError(f"{out} is a training run's directory; give the {what} its own `out` folder",
                       terms=["out"])
    if os.path.lexists(out / marker) and of_runs is not None and not force:
        _refuse_other_kind(out, marker, of_runs)
    if force or os.path.lexists(out / marker):
        return
    try:
        found = sorted(entry.name for entry in os.scandir(out))
    except OSError as exc:
        raise RunError(f"cannot read {out} ({exc.strerror or exc}); give `out` another folder", terms=["out"]) \
            from None
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise RunError(f"{out} already holds files that fashionlab's {what} did not write ({shown}); give `out` a "
                       f"new or empty folder, or pass `force=True` to write into it anyway",
                       terms=["out", "force=True"])


def _check_not_shared(out: Path) -> None:
    """A folder whose runs machines share through a study (`compare --storage`) is trained only that way:
    a comparison of its own there would take runs the other workers train."""
    if not (out / MARKER).is_file():
        return
    with contextlib.suppress(RunError):
        record = Run(out).read_json(MARKER)
        if isinstance(record, dict) and isinstance(record.get("study"), str):
            raise ConfigError(f"{out} holds a comparison shared through the study {shown(record['study'])} "
                              f"({record.get('storage')}): run it with `storage` and `study`, or give `out` "
                              f"another folder", terms=["out", "storage", "study"])


def _is_run_folder(path: Path) -> bool:
    return any(os.path.lexists(path / name) for name in ("run.json", "config.json"))


def _refuse_other_kind(out: Path, marker: str, of_runs: bool) -> None:
    """A comparison of trained runs is not written over a training comparison, nor the other way round."""
    record = Run(out).read_json(marker)
    held_runs = isinstance(record, dict) and "runs" in record
    if held_runs != of_runs:
        held = "runs already trained" if held_runs else "variants it trained"
        raise RunError(f"{out} holds a comparison of {held}; give `out` another folder, or pass `force=True` to "
                       f"replace its pages", terms=["out", "force=True"])


@dataclass(frozen=True)
class CompareResult:
    out: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    conclusion: list[str]
    trained: int
    reused: int


@checked(seeds=(1, MAX_SEEDS), jobs=(1, None))
def compare(out: str | Path, *, variants: Sequence[str] = DEFAULT_VARIANTS, seeds: int = 3,
            base: TrainConfig | None = None, overrides: dict[str, Any] | None = None, jobs: int = 1,
            data: DataSource = DataSource(), force: bool = False,
            progress: Callable[[str], None] = lambda line: None, recipe: str | None = None,
            command: str | None = None, mlflow: str | bool | tracking.Destination | None = None) -> CompareResult:
    """Train every variant x seed not yet finished under `out`, then write the comparison files:
    results.csv, summary.md, curves.png and report.html. Calling again with the same arguments
    reuses finished runs and resumes unfinished ones; runs made with other settings are refused.
    A folder that compare did not make is used only if empty, or with `force`. `recipe`: the named
    recipe `base` is (the pages measure changes against it); `command`: what asked for the comparison,
    recorded with it and each run; `mlflow`: a tracking server's URI (True: MLFLOW_TRACKING_URI) that gets
    the comparison as a parent run, its runs as children."""
    base = base or TrainConfig()
    where = tracking.destination(mlflow)
    out = Path(out)
    check_output_folder(out, force=force, of_runs=False)
    check_writable(out, what="the comparison", term="out")
    _check_not_shared(out)
    tasks = plan(out, list(variants), seeds, base, overrides, recipe=recipe, command=command)
    data = checked_runs(tasks, jobs, data)
    found = [runner.inspect(task) for task in tasks]
    conflict = next((f.reason for f in found if f.state == "conflict"), None)
    if conflict:
        raise RunError(f"{conflict}; use another `out`", terms=["out"])
    todo = [task for task, f in zip(tasks, found) if f.state != "complete"]
    progress(f"{len(tasks)} runs: {len(tasks) - len(todo)} finished already, {len(todo)} to train "
             f"with {min(jobs, max(len(todo), 1))} job(s)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot use {out} as the comparison folder ({exc.strerror or exc}); "
                       f"give `out` a folder", terms=["out"]) from None
    folder = Run(out)  # the comparison's own files get the same atomic writes as a run's
    folder.write_json(MARKER, {"variants": list(variants), "seeds": seeds, "jobs": jobs, "base": base.to_dict(),
                               "overrides": overrides or {}, "recipe": recipe, "command": command})
    finished = len(tasks) - len(todo)
    tracker, children = tracking.parent(where, out, kind="comparison", doing="the comparison",
                                        params=_described(variants, seeds, recipe, base, overrides, command))
    _log_runs(tracker, children, [task for task, f in zip(tasks, found) if f.state == "complete"])
    todo = [dataclasses.replace(task, mlflow=_child(children, task)) for task in todo]

    def report(done: Done) -> None:
        nonlocal finished
        finished += 1
        progress(f"[{finished}/{len(tasks)}] {done.task.label}: test accuracy {done.metrics['test_accuracy']:.4f} "
                 f"({done.seconds:.0f} s{', resumed' if done.resumed else ''})")

    started = time.perf_counter()
    with tracking.parent_stops(tracker, children):
        runner.execute(todo, jobs=jobs, data=data, on_done=report)
    wall = time.perf_counter() - started

    results, summary, statements = write_outputs(folder, tasks, command)
    _log_comparison(tracker, children, out, summary)
    if todo:
        progress(f"trained {len(todo)} run(s) in {wall:.0f} s wall time")
    return CompareResult(out, results, summary, statements, len(todo), len(tasks) - len(todo))


# --- runs already trained -----------------------------------------------------------------------

GROUPED_BY_ALL_BUT = ("seed", "name")  # a run's settings, less the seed and the label, say which group it is in


def _described(variants: Sequence[str], seeds: int, recipe: str | None, base: TrainConfig,
               overrides: dict[str, Any] | None, command: str | None) -> dict[str, Any]:
    """The comparison as its MLflow run's parameters; the base config only where a series variant uses it."""
    described = {"variants": list(variants), "seeds": seeds, "recipe": recipe or "", "overrides": overrides or {},
                 "command": command or ""}
    if any(spec.partition(":")[0] in VARIANTS for spec in variants):
        described["base"] = base.to_dict()
    return described


def _child(children: tracking.Destination | None, task: Task) -> tracking.Destination | None:
    """Where a task's run is logged: as a child of the comparison's run, tagged with its variant and seed."""
    if children is None:
        return None
    return dataclasses.replace(children, tags=(("fashionlab.variant", str(task.tags["variant"])),
                                               ("fashionlab.seed", str(task.tags["seed"]))))


def _log_runs(tracker: tracking.Tracker | None, children: tracking.Destination | None, tasks: list[Task]) -> None:
    """Runs the comparison did not train here (finished before, or given), logged as its children; the
    MLflow runs of them all (those logged before under another parent too) listed in its tags."""
    if tracker is None or children is None:
        return
    ids = [tracking.sync(tracker, Run(task.run_dir), where=_child(children, task)) for task in tasks]
    if children.parent is not None:
        tracker.tags(children.parent, {"fashionlab.runs": " ".join(i for i in ids if i)[:tracking.MAX_PARAM]})


def _log_comparison(tracker: tracking.Tracker | None, children: tracking.Destination | None, out: Path,
                    summary: pd.DataFrame) -> None:
    """The comparison's MLflow run: its files, each variant's test accuracy (mean, std over seeds, worst
    seed), and finished."""
    tracking.end_parent(tracker, children, out, list(COMPARISON_FILES),
                        {f"{variant}.{key}": row[key] for variant, row in summary.iterrows()
                         for key in ("test_accuracy_mean", "test_accuracy_std", "test_accuracy_worst")})


@checked
def compare_runs(out: str | Path, runs: Sequence[str | Path], *, force: bool = False,
                 command: str | None = None, mlflow: str | bool | tracking.Destination | None = None) -> CompareResult:
    """Compare runs already trained, without training: complete runs with test figures, on one data
    set, grouped by their settings (all but the seed and the name); each group is a variant, named
    after its runs (and, where two groups share a name, after the settings that tell them apart).
    Writes the same files as `compare`, and compare.json with the runs it compared; `mlflow` as `compare`'s."""
    where = tracking.destination(mlflow)
    out = Path(out)
    check_output_folder(out, force=force, of_runs=True)
    check_writable(out, what="the comparison", term="out")
    tasks = group_runs(runs)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot use {out} as the comparison folder ({exc.strerror or exc}); "
                       f"give `out` a folder", terms=["out"]) from None
    folder = Run(out)
    folder.write_json(MARKER, {"runs": [str(t.run_dir) for t in tasks], "command": command,
                               "variants": list(dict.fromkeys(t.tags["variant"] for t in tasks))})
    results, summary, statements = write_outputs(folder, tasks, command)
    tracker, children = tracking.parent(where, out, kind="comparison", doing="the comparison",
                                        params={"runs": [str(t.run_dir) for t in tasks], "command": command or ""})
    _log_runs(tracker, children, tasks)
    _log_comparison(tracker, children, out, summary)
    return CompareResult(out, results, summary, statements, 0, len(tasks))


def group_runs(runs: Sequence[str | Path]) -> list[Task]:
    """Each run as a task already done, tagged with its group (variant) and seed, groups in the order
    their first run was given; refused: no runs, a run given twice, an unfinished or untested run,
    runs of different data sets, two runs of one group with the same seed."""
    if not runs:
        raise ConfigError("give the `runs` to compare, at least one", terms=["runs"])
    opened = [_tested_run(path) for path in runs]
    real = [os.path.realpath(r.path) for r in opened]
    twice = next(((i, j) for j in range(len(real)) for i in range(j) if real[i] == real[j]), None)
    if twice is not None:
        first, again = (runs[k] for k in twice)
        said = f"{first} is given twice" if str(first) == str(again) else f"{first} and {again} are the same run"
        raise ConfigError(f"{said}; give each run once", terms=["runs"])
    datasets = sorted({r.dataset().name for r in opened})
    if len(datasets) > 1:
        raise ConfigError(f"the runs are on different data sets ({', '.join(datasets)}); compare runs of one data "
                          f"set", terms=["runs"])
    configs = [r.config() for r in opened]
    keys = [_group_key(c) for c in configs]
    groups = list(dict.fromkeys(keys))
    labels = _group_labels(groups, [[c.name for c, k in zip(configs, keys) if k == g] for g in groups])
    seen: dict[tuple[Any, int], Path] = {}
    for run, config, key in zip(opened, configs, keys):
        if (key, config.seed) in seen:
            raise ConfigError(f"{seen[key, config.seed]} and {run.path} have the same settings and seed "
                              f"({config.seed}); give one of them", terms=["runs"])
        seen[key, config.seed] = run.path
    return [Task(f"{labels[key]} seed {c.seed}", c, r.path, {"variant": labels[key], "seed": c.seed},
                 recipe=r.status().get("recipe"))
            for r, c, key in zip(opened, configs, keys)]


def _tested_run(path: str | Path) -> Run:
    """A complete run with test figures, every file the comparison reads checked before anything is written."""
    run = Run.open(path)
    if "test_accuracy" not in run.metrics():
        raise RunError(f"{path} has no test figures (a sweep's trial is judged on validation only); give runs "
                       f"trained with a test evaluation", terms=["runs"])
    run.history(), run.confusion()
    return run


def _group_key(config: TrainConfig) -> tuple[tuple[str, str], ...]:
    return tuple((k, repr(v)) for k, v in sorted(config.to_dict().items()) if k not in GROUPED_BY_ALL_BUT)


def _group_labels(groups: list[tuple[tuple[str, str], ...]], names: list[list[str]]) -> dict[Any, str]:
    """Each group's label: its runs' first name; where groups share one, that name with the settings
    that differ among them ("tutorial (epochs=2)")."""
    first = [n[0] for n in names]
    labels = {}
    for group, name in zip(groups, first):
        rivals = [g for g, n in zip(groups, first) if n == name]
        if len(rivals) == 1:
            labels[group] = name
            continue
        differing = [k for k, v in group if any(dict(r)[k] != v for r in rivals)]
        labels[group] = f"{name} ({', '.join(f'{k}={_plain(dict(group)[k])}' for k in differing)})"
    return labels


def _plain(text: str) -> str:
    return text.strip("'")


def checked_runs(tasks: list[Task], jobs: int, data: DataSource) -> DataSource:
    """Refuse, before any work, a comparison that cannot run: a run folder reached through a link,
    variants on different data sets, a config the data or the memory cannot take. Returns the
    data source pinned to the folder found."""
    linked = next((p for t in tasks for p in (t.run_dir, t.run_dir.parent) if p.is_symlink()), None)
    if linked is not None:  # runs are written only into compare's own folders, never through a link
        raise RunError(f"{linked} is a symbolic link; remove it, or give `out` a new folder", terms=["out"])
    datasets = sorted({task.config.dataset for task in tasks})
    if len(datasets) > 1:  # a comparison judges its variants on the same test images
        raise ConfigError(f"the variants are trained on different data sets ({', '.join(datasets)}); compare "
                          f"variants on one data set", terms=["dataset"])
    data = data.of(resolve(datasets[0])).located()  # fail before any work if the data is missing
    train_images, free_memory = data.train_count(), available_memory()
    if free_memory is not None:  # `jobs` runs train at once: each gets its share
        free_memory //= min(jobs, len(tasks))
    for task in tasks:
        check_runnable(task.config, train_images=train_images, free_memory=free_memory)
    return data


def write_outputs(folder: Run, tasks: list[Task], command: str | None) -> tuple[pd.DataFrame, pd.DataFrame,
                                                                                list[str]]:
    """The comparison's files from its finished runs: results, summary, conclusion, curves, report."""
    from fashionlab.reports import write_comparison_outputs

    results = runner.results(tasks)
    summary = summarize(results)
    statements = with_length(conclusion(summary), tasks)
    labels = list(dict.fromkeys(t.tags["variant"] for t in tasks))
    histories = {v: [Run(t.run_dir).history() for t in tasks if t.tags["variant"] == v] for v in labels}
    confusions = {v: sum(Run(t.run_dir).confusion() for t in tasks if t.tags["variant"] == v) for v in labels}
    setup, changes = described(tasks, command)
    write_comparison_outputs(folder, results=results, summary=summary, statements=statements, histories=histories,
                             confusions=confusions, class_names=Run(tasks[0].run_dir).dataset().class_names,
                             setup=setup, variant_changes=changes)
    return results, summary, statements


# --- what was run ------------------------------------------------------------------------------

def described(tasks: Sequence[Task], command: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """What a comparison ran, for the top of its page: the command, the runs, the settings every run
    changed from its recipe, the data, the machine and versions; and what each variant changes."""
    from fashionlab import recipes
    from fashionlab.recipes import changes_text
    from fashionlab.reports import environment_line

    changes = [recipes.changes_from(t.config, t.recipe) for t in tasks]
    common = {k: v for k, v in changes[0].items() if all(other.get(k) == v for other in changes[1:])}
    variants: dict[str, str] = {}
    for task, changed in zip(tasks, changes):
        own = {k: v for k, v in changed.items() if k not in common}
        variants.setdefault(task.tags["variant"], f"{recipes.known(task.recipe) or 'tutorial'} recipe"
                            + (f": {changes_text(own)}" if own else ", as it is"))
    seeds = sorted({t.config.seed for t in tasks})
    metrics = Run(tasks[0].run_dir).metrics()
    data, name = metrics.get("data"), Run(tasks[0].run_dir).dataset().name
    from fashionlab.reports import data_line, shortened

    setup = {"command": shortened(command or "not recorded"),
             "runs": f"{len(tasks)}: {len(variants)} variant(s) × {len(seeds)} seed(s) "
                     f"({', '.join(map(str, seeds))})",
             "every run changes": changes_text(common) or "nothing common to all runs",
             "data": data_line(name, data) if data else name}
    return setup | environment_line(metrics), variants


def short_runs(tasks: Sequence[Task]) -> str | None:
    """A statement when runs train for fewer epochs or on fewer images than their recipe does."""
    from fashionlab import recipes

    short = [t for t in tasks if _is_short(t.config, recipes.reference(t.recipe))]
    if not short:
        return None
    task, reference = short[0], recipes.reference(short[0].recipe)
    images = (Run(task.run_dir).metrics().get("data") or {}).get("train")  # absent in older runs
    used = f"{images:,}" if images is not None else f"{task.config.train_samples:,}" if task.config.train_samples \
        else "all"
    which = "These runs are" if len(short) == len(tasks) else f"{len(short)} of the {len(tasks)} runs are"
    full = "all" if not reference.train_samples else f"{reference.train_samples:,}"
    return (f"{which} short: {task.config.epochs} epoch(s) on {used} training images, where the "
            f"{recipes.known(task.recipe) or 'tutorial'} recipe trains {reference.epochs} epochs on {full}. Their "
            f"accuracies are below what full training reaches, and the order of the variants may change with it.")


def _is_short(config: TrainConfig, reference: TrainConfig) -> bool:
    fewer_images = config.train_samples and (not reference.train_samples or config.train_samples <
                                             reference.train_samples)
    return config.epochs < reference.epochs or bool(fewer_images)


def with_length(statements: list[str], tasks: Sequence[Task]) -> list[str]:
    """The conclusion, with the statement on short runs after its first line where there is one."""
    short = short_runs(tasks)
    return statements[:1] + [short] + statements[1:] if short else statements
