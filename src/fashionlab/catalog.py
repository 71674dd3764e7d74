"""The runs under a folder: listed newest first, `latest`, a run named by the start of its name.

    entries = listing("runs")              # every run directory under runs/, newest first
    locate("latest")                       # runs/<the newest complete run>
    locate("20261207-1423")                # runs/20261207-142301-tutorial, if no other name starts so

A run is a folder holding config.json (an ensemble: ensemble.json) and run.json (or metrics.json, for
older runs); its name is
its path under the folder listed, so a comparison's runs read "compare-x/bn-after/seed-42".
Nothing here follows a symbolic link, and a damaged run is listed as damaged, never fatal.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from fashionlab.errors import ConfigError, FashionlabError, RunError
from fashionlab.rundir import ENSEMBLE_FILE, STATUS_FILE, Run

RUNS_ROOT = Path("runs")  # where `train` writes a run by default, relative to the current folder
LATEST = "latest"
MAX_DEPTH = 4  # runs/<comparison>/<variant>/seed-N is 3 below the folder listed
MAX_FOLDERS = 100_000  # folders looked at in one listing, at most
SHOWN_CANDIDATES = 8
UNFINISHED = ("interrupted", "failed", "unfinished")  # what `train --resume latest` may continue


@dataclass(frozen=True)
class Entry:
    """One run as `fashionlab runs` lists it; None where the run does not say (yet)."""

    name: str
    path: str
    status: str  # complete, running, interrupted, failed; unfinished (its process died); damaged
    recipe: str | None = None
    dataset: str | None = None
    epochs_done: int | None = None
    epochs: int | None = None
    test_accuracy: float | None = None
    best_val_accuracy: float | None = None
    seconds: float | None = None
    started: str | None = None
    problem: str | None = None  # what is damaged

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_folders(root: Path) -> list[Path]:
    """Every run directory at or under `root`, at most MAX_DEPTH below it, links never followed."""
    found: list[Path] = []
    looked = 0
    stack = [(root, 0)]
    while stack:
        if looked == MAX_FOLDERS:
            raise RunError(f"{root} holds more than {MAX_FOLDERS:,} folders; give the folder of the runs you mean")
        folder, depth = stack.pop()
        looked += 1
        if is_run(folder):
            found.append(folder)
            continue  # a run holds no runs
        if depth == MAX_DEPTH:
            continue
        try:
            with os.scandir(folder) as entries:
                children = [Path(e.path) for e in entries
                            if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]
        except OSError:
            continue
        stack.extend((child, depth + 1) for child in sorted(children, reverse=True))
    return found


def is_run(folder: Path) -> bool:
    """Whether `folder` is a run directory (or an ensemble's): its config and its status are there."""
    try:
        described = any(os.path.lexists(folder / name) for name in ("config.json", ENSEMBLE_FILE))
        return described and any(os.path.lexists(folder / name) for name in (STATUS_FILE, "metrics.json"))
    except OSError:  # a folder this user cannot look into
        return False


def entry(folder: Path, root: Path) -> Entry:
    """What a run directory's run.json says of it, read through its schema; a damaged or unreadable
    file makes it 'damaged', with the problem."""
    name = folder.relative_to(root).as_posix() if folder != root else folder.name
    run = Run(folder)
    try:
        status = run.status()
        state = status["status"]
        if state == "running" and not run.in_use():
            state = "unfinished"
        dataset = run.dataset().name
        recipe = f"ensemble of {len(run.ensemble()['members'])}" if run.is_ensemble() else status.get("recipe")
    except (FashionlabError, OSError) as exc:
        return Entry(name, str(folder), "damaged", problem=str(exc))
    return Entry(name, str(folder), state, recipe=recipe, dataset=dataset,
                 epochs_done=status.get("epochs_done"), epochs=status.get("epochs"),
                 started=status.get("started") or _modified(folder))


def with_figures(found: Entry) -> Entry:
    """`found` with its run's config checked and, for a complete run, its figures from metrics.json;
    'damaged' when either file is."""
    run = Run(found.path)
    try:
        run.name()  # the config (an ensemble's members) read through its schema
        metrics = run.metrics() if found.status == "complete" else {}
    except (FashionlabError, OSError) as exc:
        return replace(found, status="damaged", problem=str(exc))
    return replace(found, test_accuracy=metrics.get("test_accuracy"),
                   best_val_accuracy=metrics.get("best_val_accuracy"),
                   seconds=metrics.get("wall_seconds", metrics.get("train_seconds")))


def _modified(folder: Path) -> str | None:
    from datetime import datetime, timezone

    try:
        return datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    except OSError:
        return None


def listing(root: str | Path = RUNS_ROOT, *, status: str | tuple[str, ...] | None = None, recipe: str | None = None,
            dataset: str | None = None, figures: bool = True) -> list[Entry]:
    """The runs at or under `root`, newest first (by when each started), filtered by status (one or
    several), recipe and data set where given; `figures`: read each run's config and metrics too."""
    root = Path(root)
    if not root.is_dir():
        what = "does not exist" if not os.path.lexists(root) else "is not a folder"
        raise RunError(f"{root} {what}; give the folder that holds your runs (`train` writes them into "
                       f"{RUNS_ROOT}/ of the folder it is started in)")
    statuses = (status,) if isinstance(status, str) else status

    def wanted(e: Entry) -> bool:
        return ((statuses is None or e.status in statuses) and (recipe is None or e.recipe == recipe)
                and (dataset is None or e.dataset == dataset))

    entries = [e for e in (entry(folder, root) for folder in run_folders(root)) if wanted(e)]
    if figures:  # the other files of the runs kept: one may turn out damaged
        entries = [e for e in map(with_figures, entries) if wanted(e)]
    return sorted(entries, key=lambda e: (_moment(e.started), e.name), reverse=True)


def _moment(started: str | None) -> float:
    """A recorded time as seconds since the epoch, to order runs by; one that is not a time comes last."""
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(str(started))
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    except (ValueError, OverflowError, OSError):
        return float("-inf")


def locate(name: str | Path, root: str | Path = RUNS_ROOT, *, latest: tuple[str, ...] = ("complete",)) -> Path:
    """The run directory `name` means: an existing path as it is; `latest`, the newest run under
    `root` in one of the `latest` states (to resume: UNFINISHED); else the one run under `root`
    whose name starts with `name`."""
    text, root = str(name), Path(root)
    if not text:
        raise ConfigError("an empty run name; give a run directory, `latest`, or the start of a run's name")
    if os.path.lexists(text):
        return Path(text)
    if not root.is_dir():
        raise RunError(f"{text} is not a run directory, and there is no {root}/ folder to look for a run named so "
                       f"in; pass the folder that training printed")
    if text == LATEST:
        newest = listing(root, status=latest, figures=False)
        if not newest:
            which = " or ".join(latest)
            raise RunError(f"no {which} run under {root}/ for `{LATEST}`; `fashionlab runs` lists the runs there")
        return Path(newest[0].path)
    prefix = text.removeprefix(f"{root.as_posix()}/").rstrip("/")
    names = {folder.relative_to(root).as_posix(): folder for folder in run_folders(root) if folder != root}
    matches = sorted(n for n in names if n.startswith(prefix))
    if prefix in names:  # a whole name, though others start with it too ("run1" beside "run10")
        return names[prefix]
    if len(matches) == 1:
        return names[matches[0]]
    if not matches:
        raise RunError(f"{text} is not a run directory, and no run under {root}/ has a name starting so; "
                       f"`fashionlab runs` lists them")
    shown = ", ".join(matches[:SHOWN_CANDIDATES])
    more = f" and {len(matches) - SHOWN_CANDIDATES} more" if len(matches) > SHOWN_CANDIDATES else ""
    raise RunError(f"{text} names {len(matches)} runs under {root}/ ({shown}{more}); give more of the name")


COLUMNS = ("name", "recipe", "data set", "status", "epochs", "test acc.", "best val acc.", "time", "started")


def _row(e: Entry) -> tuple[str, ...]:
    epochs = "" if e.epochs is None else f"{e.epochs_done or 0}/{e.epochs}"
    seconds = "" if e.seconds is None else f"{e.seconds:.0f} s" if e.seconds < 120 else f"{e.seconds / 60:.1f} min"
    return (e.name, e.recipe or "", e.dataset or "", e.status, epochs,
            "" if e.test_accuracy is None else f"{e.test_accuracy:.4f}",
            "" if e.best_val_accuracy is None else f"{e.best_val_accuracy:.4f}", seconds, _local(e.started))


def _local(started: str | None) -> str:
    """A recorded UTC time as this machine's local time, to the minute."""
    from datetime import datetime

    if not started:
        return ""
    try:
        return datetime.fromisoformat(started).astimezone().strftime("%Y-%m-%d %H:%M")
    except (ValueError, OverflowError, OSError):
        return started


def table(entries: list[Entry], cell: Callable[[str], str] = str) -> str:
    """The entries as aligned columns, a header first, each cell as `cell` shows it (a terminal
    escapes control characters: a name may hold a newline)."""
    rows = [COLUMNS, *(tuple(cell(c) for c in _row(e)) for e in entries)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
