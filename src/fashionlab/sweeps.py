"""Hyper-parameter sweeps: a search space over a recipe, searched by Optuna; each trial an
ordinary run directory trained by the runner and judged on validation accuracy alone; the test
set evaluated once, for the chosen configuration, when the sweep is done.

    result = sweep("examples/sweep-best-mlp.toml", "runs/sweep", trials=30, jobs=2)
    # workers on several machines share one study:
    result = sweep(space, "runs/sweep", trials=30, storage="postgresql://sweeper@db-host/fashionlab")

The study (Optuna's record of every trial) lives in a journal file in the sweep's folder, or in
the database `storage` names. Calling again with the same space continues it: finished trials
are kept; a trial whose process was stopped or killed is taken over, and its run directory
resumed from its last finished epoch (or, complete already, recorded from its files). A journal
that is damaged is refused; moved away, the study starts again from the runs in the trial folders.
The space file:

    description = "best-mlp's learning rate, width and dropout"
    recipe = "best-mlp"                                           # optional: the starting point
    [train]                                                       # optional: fixed changes to it
    epochs = 20
    [search]
    learning_rate = { min = 0.0005, max = 0.01, log = true }
    width = { min = 256, max = 1536, step = 256 }                 # integers: an int field
    dropout = [0.0, 0.5]                                          # [min, max]
    optimizer = { choices = ["adamw", "nadam"] }
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import shutil
import socket
import statistics
import threading
import time
import tomllib
import typing
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from fashionlab import recipes, runner
from fashionlab.arguments import checked
from fashionlab.config import (
    FIELDS,
    SEED_MAX,
    TYPES,
    TrainConfig,
    check_runnable,
    field_type,
    from_dict,
    name_problem,
    validate_field,
)
from fashionlab.data import DataSource
from fashionlab.datasets import resolve
from fashionlab.errors import ConfigError, FashionlabError, RunError, reason
from fashionlab.files import check_own_file, check_writable, read_text
from fashionlab.provenance import available_memory
from fashionlab.records import (
    Evaluation,
    Fraction,
    StudyRecord,
    TrialRecord,
    TrialRow,
    first_problem,
    shown,
)
from fashionlab.runner import Done, Task
from fashionlab.runs import Run

if TYPE_CHECKING:
    import keras
    import optuna
    import pandas as pd

MARKER = "sweep.json"  # written first into every sweep folder: how it was started
JOURNAL = "study.journal"  # the study, when no `storage` is given
Sampler = Literal["tpe", "random"]
Pruner = Literal["median", "halving", "none"]
SAMPLERS, PRUNERS = typing.get_args(Sampler), typing.get_args(Pruner)
MAX_TRIALS = 10_000
MAX_JOBS = 256  # trainings at a time in one process (the CLI's --jobs too)
MAX_SPACE_BYTES = 64 * 1024
SPACE_KEYS = ("description", "recipe", "train", "search")
# Keys a sweep must not search, and why.
UNSEARCHABLE = {
    "name": "the sweep names its trials",
    "seed": "trials share the base config's seed (compare the winner over seeds afterwards)",
    "validation_size": "every trial must be judged on the same validation images",
    "train_samples": "every trial must be judged on the same data",
    "engine": "it changes only the speed, not the result",
    "dataset": "every trial must be judged on the same data",
}
RANGE_KEYS = ("min", "max", "log", "step")
HEARTBEAT_SECONDS = 30.0  # a worker says every so often that its trials still run...
STALE_SECONDS = 300.0  # ...and a trial not heard of for this long is taken as stopped
STORAGE_ATTEMPTS = 3  # connecting to a database
CLAIM_SECONDS = 2.0  # workers taking over the same stopped trial all write their claim; the last one wins


# --- the search space ------------------------------------------------------------------------

@dataclass(frozen=True)
class Space:
    """A space file read and checked: the config trials start from, and what they search."""

    name: str
    description: str
    base: TrainConfig
    search: dict[str, optuna.distributions.BaseDistribution]
    path: Path

    def settings(self) -> dict[str, Any]:
        """What defines the trials, as JSON: a study refuses to go on with anything else."""
        from optuna.distributions import distribution_to_json

        return {"base": self.base.to_dict(), "search": {k: json.loads(distribution_to_json(d))
                                                        for k, d in self.search.items()}}

    def config(self, params: dict[str, Any], name: str) -> TrainConfig:
        """A trial's config: the base with the trial's values (a ConfigError if they do not go together)."""
        return self.base.replace(**params, name=name)


def load_space(path: str | Path) -> Space:
    """A space file, every part checked before any training."""
    path = Path(path)
    text = read_text(path, what="sweep space", error=ConfigError, limit=MAX_SPACE_BYTES).removeprefix("\ufeff")
    try:
        table = tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"sweep space {path} nests too deeply; it is not a sweep space") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"sweep space {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(table) - set(SPACE_KEYS))
    if unknown:
        raise ConfigError(f"sweep space {path}: unknown key(s) {', '.join(unknown)}; a space holds "
                          f"{', '.join(SPACE_KEYS[:-1])} and a [search] table")
    description, recipe = table.get("description", ""), table.get("recipe")
    fixed, search = table.get("train", {}), table.get("search")
    if not isinstance(description, str):
        raise ConfigError(f"sweep space {path}: description must be text")
    if recipe is not None and not isinstance(recipe, str):
        raise ConfigError(f"sweep space {path}: recipe must be a recipe's name (`fashionlab recipes` lists them)")
    if not isinstance(fixed, dict):
        raise ConfigError(f"sweep space {path}: [train] must be a table of config keys")
    if not isinstance(search, dict) or not search:
        raise ConfigError(f"sweep space {path} needs a [search] table with at least one key, e.g. "
                          f"dropout = [0.0, 0.5]")
    start = recipes.get(recipe).config() if recipe is not None else TrainConfig()
    try:
        base = start.replace(**fixed)
    except ConfigError as exc:
        raise ConfigError(f"sweep space {path} [train]: {exc}") from None
    distributions = {key: _distribution(key, spec, f"sweep space {path} [search]") for key, spec in search.items()}
    both = sorted(set(fixed) & set(search))
    if both:
        raise ConfigError(f"sweep space {path}: {both[0]} is both fixed in [train] and searched in [search]; "
                          f"keep one")
    return Space(path.stem, description.strip(), base, distributions, path)


def _distribution(key: str, spec: Any, where: str) -> optuna.distributions.BaseDistribution:
    """[min, max], {min, max, log, step} or {choices = [...]}, checked against the config key."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if key not in FIELDS:
        raise ConfigError(f"{where}: unknown config key {shown(key)}; `fashionlab train --help` lists them")
    if key in UNSEARCHABLE:
        raise ConfigError(f"{where}: {key} cannot be searched; {UNSEARCHABLE[key]}")
    kind = field_type(TYPES[key])
    if isinstance(spec, list) and len(spec) == 2:
        spec = {"min": spec[0], "max": spec[1]}
    if not isinstance(spec, dict) or not spec or not (set(spec) <= set(RANGE_KEYS) or set(spec) == {"choices"}):
        raise ConfigError(f"{where}: {key} must be [min, max], {{min = ..., max = ..., log = true, step = ...}} "
                          f"or {{choices = [...]}}")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list):
            raise ConfigError(f"{where}: {key}'s choices must be a list of values")
        try:
            choices = [validate_field(FIELDS[key], c) for c in choices]
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        if len(choices) < 2 or len(set(choices)) != len(choices):
            raise ConfigError(f"{where}: {key}'s choices must be at least two different values (a single value "
                              f"belongs in [train])")
        return CategoricalDistribution(choices)
    if kind.choices is not None or kind.base not in (int, float):
        raise ConfigError(f"{where}: {key} takes one of a set of values; write {key} = {{choices = [...]}}")
    if "min" not in spec or "max" not in spec:
        raise ConfigError(f"{where}: {key} needs both min and max")
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {key}'s log must be true or false")
    try:
        low, high = (validate_field(FIELDS[key], spec[end]) for end in ("min", "max"))
        if step is not None:
            step = validate_field(FIELDS[key], step)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if not low < high:
        raise ConfigError(f"{where}: {key}'s min ({low}) must be below its max ({high})")
    if log and low <= 0:
        raise ConfigError(f"{where}: {key} on a log scale needs a min above 0, got {low}")
    if log and step is not None:
        raise ConfigError(f"{where}: {key}: choose log or step, not both")
    if step is not None and not 0 < step <= high - low:
        raise ConfigError(f"{where}: {key}'s step must be above 0 and at most max - min")
    if step is not None and not math.isclose(round((high - low) / step) * step, high - low, abs_tol=1e-9 * high):
        raise ConfigError(f"{where}: {key}'s step ({step}) must divide max - min ({high} - {low}) into whole steps")
    if kind.base is int:
        return IntDistribution(low, high, log=log, step=step or 1)
    return FloatDistribution(low, high, log=log, step=step)


# --- where the study lives ---------------------------------------------------------------------

def storage_label(storage: str) -> str:
    """The storage as shown and recorded: a journal's path as it is; a database URL as its scheme and
    what follows its last '@' up to any query (postgresql://***@db-host/fashionlab?...), never its user
    information or query. Cut by hand, not parsed: a URL parser is fooled by a password holding '@',
    '/', ':', '?' or '#', and then shows a piece of it as the host. Masked again, in case even that cut
    was fooled (a query holding an '@')."""
    if "://" not in storage:
        return storage
    scheme, rest = storage.split("://", 1)
    _, at, place = rest.rpartition("@")
    host = re.split(r"[?#]", place, maxsplit=1)[0]
    return masked(f"{scheme}://{'***@' if at else ''}{host}{'?...' if host != place else ''}", storage)


# Query parameters of PostgreSQL's and MySQL's drivers that hold no secret: their values are shown.
PLAIN_PARAMETERS = ("host", "hostaddr", "port", "dbname", "database", "user", "sslmode", "connect_timeout",
                    "application_name", "target_session_attrs", "client_encoding", "charset")


def storage_secrets(storage: str) -> list[str]:
    """What a storage URL may hold that is never shown, read every way the URL could be meant: its
    password (the user information, all before the last '@', after its first ':') and the values of
    its query (after the first '?' anywhere) but those of PLAIN_PARAMETERS, each as written and
    percent-decoded. A value may hold a raw '&' or ';': it ends only where a parameter follows."""
    from urllib.parse import unquote, unquote_plus

    if "://" not in storage:
        return []
    rest = storage.split("://", 1)[1]
    found = [rest.rpartition("@")[0].partition(":")[2]]
    starts = "|".join((*PLAIN_PARAMETERS, "password"))
    for query in re.split(r"[?#]", rest, maxsplit=1)[1:]:
        pairs = [pair.partition("=") for pair in re.split(rf"[&;](?=(?:{starts})=)", query)]
        found += [value for key, _, value in pairs if key not in PLAIN_PARAMETERS]
    found += [decode(s) for s in found for decode in (unquote, unquote_plus)]
    return sorted({s for s in found if len(s) >= 2}, key=len, reverse=True)


def masked(text: str, storage: str | None) -> str:
    """`text` with every piece of the storage's secrets (four characters or more, or a shorter secret
    whole) replaced by ***: a driver's message may quote the URL, or the host it misread from it."""
    secrets = storage_secrets(storage) if storage else []
    if not secrets:
        return text
    said, i = [], 0
    while i < len(text):
        end = i
        for secret in secrets:  # the longest piece of a secret that starts here
            j = i + min(4, len(secret))
            if j <= len(text) and text[i:j] in secret:
                while j < len(text) and text[i:j + 1] in secret:
                    j += 1
                end = max(end, j)
        said.append("***" if end > i else text[i])
        i = max(end, i + 1)
    return "".join(said)


@contextlib.contextmanager
def secrets_kept(storage: str | None) -> Iterator[None]:
    """Whatever error leaves the block says nothing of the storage's secrets: a database's error, and
    any error carrying one (a worker's traceback), may quote its URL."""
    try:
        yield
    except FashionlabError as exc:
        said = masked(str(exc), storage)
        if said == str(exc):
            raise
        raise type(exc)(said, terms=exc.terms) from None
    except Exception as exc:
        said = masked(f"{type(exc).__name__}: {exc}", storage)
        if said == f"{type(exc).__name__}: {exc}":
            raise
        raise RuntimeError(said) from None  # still a bug, said as one (the CLI's internal error)


SHARED_SCHEMES = re.compile(r"(postgresql|postgres|mysql)(\+[a-z0-9_]+)?")


def check_storage_url(storage: str) -> None:
    """--storage takes the URL of a database that every worker of the sweep can open: PostgreSQL or
    MySQL (with or without a +driver), or an SQLite file. Anything else is refused before anything is
    written, showing no more than its scheme: a mistyped URL, another kind of storage, and an
    in-memory database, which lives and dies with one process."""
    found = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://(\S*)", storage)
    if not found or not found[2] and found[1].lower() != "sqlite":
        raise ConfigError("`storage` must be a database URL such as postgresql://user@host/db (it is not shown "
                          "here, in case it holds a password); without it the study lives in the sweep folder's "
                          "study.journal", terms=["storage"])
    scheme, rest = found[1].lower(), found[2]
    if scheme == "sqlite":
        path = rest.removeprefix("/") if rest.startswith("/") else ""
        if not path or path == ":memory:" or path.startswith("file:") or re.search(r"[?#]", path):
            raise ConfigError("`storage` sqlite:// must name a file every worker opens, sqlite:///FILE, without "
                              "options: an in-memory database lives and dies with one process", terms=["storage"])
    elif not SHARED_SCHEMES.fullmatch(scheme):
        raise ConfigError(f"`storage` {scheme}://... cannot hold a sweep's study; give a database every worker "
                          f"opens: postgresql://user@host/db, mysql+pymysql://user@host/db or sqlite:///FILE",
                          terms=["storage"])


def journal_remedy(path: str | Path) -> str:
    """What to do with a damaged journal: move it away, and the next start rebuilds the study."""
    import shlex

    return (f"move it away (mv {shlex.quote(str(path))} {shlex.quote(f'{path}.damaged')}) and run the same command "
            f"again: the trials whose runs are in the sweep folder are recorded again from their files")


def study_damaged(study: optuna.Study, storage: str, problem: str) -> RunError:
    """The refusal of a study holding what the sweep never writes, with the way out: a journal moved away
    is rebuilt from the trial folders; a database's study is left alone."""
    if "://" not in storage:
        return RunError(f"the study journal {storage} is damaged ({problem}); {journal_remedy(storage)}",
                        terms=["out"])
    return RunError(f"study {study.study_name} in {storage_label(storage)} holds what fashionlab never writes "
                    f"({problem}); give `study` another name", terms=["study"])


def study_attrs(study: optuna.Study, storage: str) -> dict[str, Any]:
    """The study's attributes, each checked against what the sweep writes (`records.StudyRecord`,
    `records.Evaluation`): anyone who can write to the storage can write anything there."""
    try:
        attrs = study.user_attrs
    except RecursionError:  # copied, an attribute nested thousands deep
        raise study_damaged(study, storage, "an attribute nests too deeply") from None
    problem = first_problem(attrs, StudyRecord)
    for key, value in attrs.items():
        if problem is None and key.startswith(TEST_KEY):
            problem = first_problem(value, Evaluation, key) or (
                None if key == f"{TEST_KEY}{value['trial']}" else f"`{key}` records trial {value['trial']}")
    if problem:
        raise study_damaged(study, storage, problem)
    return attrs


def study_trials(study: optuna.Study, space: Space, storage: str,
                 states: tuple[optuna.trial.TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
    """The study's trials, each checked (`trial_problem`): what the sweep reads of a trial is what it wrote."""
    trials = study.get_trials(deepcopy=False, states=states)
    for trial in trials:
        problem = trial_problem(trial, space)
        if problem:
            raise study_damaged(study, storage, f"trial {trial.number}: {problem}")
    return trials


def trial_problem(trial: optuna.trial.FrozenTrial, space: Space) -> str | None:
    """What is wrong with a study's trial as one of the sweep's, or None: its attributes (`records.TrialRecord`),
    its values, each a validation accuracy, and its parameters, each the space's and inside it (a complete or
    pruned trial has them all; one still asked for may not yet)."""
    from optuna.trial import TrialState

    problem = first_problem(trial.user_attrs, TrialRecord) or first_problem(trial.values or [], list[Fraction], "value")
    problem = problem or first_problem(list(trial.intermediate_values.values()), list[Fraction], "reported")
    if problem:
        return problem
    if trial.state == TrialState.COMPLETE and trial.values is None:
        return "complete without a value"
    for key, value in trial.params.items():
        distribution = space.search.get(key)
        if distribution is None:
            return f"{shown(key)} is not searched by this sweep"
        try:
            inside = distribution._contains(distribution.to_internal_repr(value))
        except (ValueError, TypeError):
            inside = False
        if not inside:
            return f"its {key} {shown(value)} is not in the space ({describe(distribution)[0]})"
    missing = [key for key in space.search if key not in trial.params]
    if missing and trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return f"it ended without a value for {', '.join(missing)}"
    return None


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """A journal file (a path) or a database (an SQLAlchemy URL: postgresql://user@host/db)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if "://" not in storage:
        from optuna.storages.journal import JournalFileBackend

        try:
            return optuna.storages.JournalStorage(JournalFileBackend(storage))
        except OSError as exc:
            raise RunError(f"cannot open the study journal {storage} ({exc.strerror or exc}); give `out` a "
                           f"folder you can write", terms=["out"]) from None
        except Exception as exc:  # replaying it failed
            said = reason(exc, 200) or f"an operation Optuna cannot replay: {type(exc).__name__}"
            raise RunError(f"the study journal {storage} is damaged ({said}); {journal_remedy(storage)}",
                           terms=["out"]) from None
    scheme, rest = storage.split("://", 1)
    dialect, _, driver = scheme.lower().partition("+")
    # SQLAlchemy knows the dialect as postgresql alone, and its default driver is psycopg2 (ours: psycopg 3)
    if dialect in ("postgresql", "postgres"):
        scheme = f"postgresql+{driver or 'psycopg'}"
    url = f"{scheme}://{rest}"
    problem: Exception | None = None
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        except ImportError as exc:  # no driver: trying again will not help
            problem = exc
            break
        except Exception as exc:  # workers starting together race to create the tables: the loser tries again
            problem = exc
            time.sleep(0.5 * (attempt + 1))
    # a driver missing, a server unreachable, a wrong password: all one line
    first = str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
    first = masked(first, storage)
    hint = ("install the database's driver (PostgreSQL's: pip install 'fashionlab[postgres]')"
            if isinstance(problem, ImportError) or "No module named" in first or "Can't load plugin" in first
            else "check the URL, and that the server runs and lets you in")
    raise RunError(f"cannot use the study storage {storage_label(storage)} ({first[:300]}); {hint}",
                   terms=["storage"]) from None


def trial_seed(seed: int, index: int) -> int:
    """The sampler's seed for the sweep's `index`-th trial: hashed, since consecutive seeds give
    NumPy generators whose first draws are alike."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:4], "little")


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():  # constant_liar is "experimental"
        warnings.simplefilter("ignore")
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def make_pruner(kind: str, epochs: int) -> optuna.pruners.BasePruner:
    """median: stop a trial whose validation accuracy is below the median of earlier trials at the
    same epoch, after 5 trials and a quarter of the epochs; halving: successive halving (keep the
    top third at each rung); none."""
    import optuna

    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=max(1, epochs // 4))
    if kind == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, epochs // 8), reduction_factor=3)
    return optuna.pruners.NopPruner()


# --- trials in the study ------------------------------------------------------------------------

def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a study's trial is one of the sweep's, not a number it never trains: one asked for past
    the end (two workers asking for the last trial at once), or one skipped when the study was given
    back its lost trials (see `_Sweep.recover`)."""
    return not (trial.user_attrs.get("surplus") or trial.user_attrs.get("skipped"))


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


@dataclass(frozen=True)
class TrialWatch:
    """Picklable, for the worker training a trial: reports each epoch's validation accuracy to the
    study and stops the training when the pruner says so."""

    storage: str
    study: str
    trial_id: int
    pruner: str
    pruner_epochs: int
    epochs: int

    def callback(self) -> keras.callbacks.Callback:
        return _reporter_class()(self)

    def outcome(self, callback: keras.callbacks.Callback) -> dict[str, Any]:
        return {"pruned_at": callback.pruned_at}


def _worker_storage(storage: str) -> optuna.storages.BaseStorage:
    """One connection to the study per worker process, whatever number of trials it trains; a new
    one for a journal file that is not the one opened before under its name (the damaged one moved
    away and the study started again: the old one's reader would read the new file where it stopped)."""
    identity = None
    if "://" not in storage:
        with contextlib.suppress(OSError):
            found = os.stat(storage)
            identity = (found.st_dev, found.st_ino)
    return _opened_storage(storage, identity)


@functools.cache
def _opened_storage(storage: str, identity: tuple[int, int] | None) -> optuna.storages.BaseStorage:
    return open_storage(storage)


@functools.cache
def _reporter_class() -> type:
    """The Keras callback class, made when first needed: importing this module must not import Keras."""
    import keras
    import optuna

    class Reporter(keras.callbacks.Callback):
        def __init__(self, watch: TrialWatch):
            super().__init__()
            self.watch = watch
            with secrets_kept(watch.storage):  # this process's errors end in the run's files and the parent's
                study = optuna.load_study(study_name=watch.study, storage=_worker_storage(watch.storage),
                                          pruner=make_pruner(watch.pruner, watch.pruner_epochs))
                self.trial = optuna.Trial(study, watch.trial_id)
            self.pruned_at: int | None = None

        def on_epoch_end(self, epoch, logs=None):
            value = float((logs or {}).get("val_accuracy", math.nan))
            if not math.isfinite(value) or self.model.stop_training:  # not recorded: stopped or diverged
                return
            with secrets_kept(self.watch.storage):
                self.trial.report(value, epoch + 1)
                prune = epoch + 1 < self.watch.epochs and self.trial.should_prune()
            if prune:
                self.pruned_at = epoch + 1
                self.model.stop_training = True

    return Reporter


# --- the sweep ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepResult:
    out: Path
    trials: pd.DataFrame  # one row per trial of the sweep
    best: dict[str, Any] | None  # the chosen trial's row
    tests: list[dict[str, Any]]  # each test-set evaluation this study made (one per chosen trial)
    summary: str  # summary.md
    ended: bool  # every trial of the sweep has ended (none running or waiting)


def _with_defaults(recorded: dict[str, Any]) -> dict[str, Any]:
    """A study's recorded settings with the base config's keys added since read as their defaults."""
    with contextlib.suppress(ConfigError, TypeError, AttributeError, KeyError):
        return {**recorded, "space": {**recorded["space"], "base": from_dict(recorded["space"]["base"]).to_dict()}}
    return recorded


def settings_differences(recorded: dict[str, Any], wanted: dict[str, Any], prefix: str = "",
                         depth: int = 3) -> list[str]:
    """The keys (dotted, at most `depth` deep: space.search.width) whose values differ between two
    settings tables."""
    keys = sorted(set(recorded) | set(wanted))
    found = []
    for key in keys:
        a, b = recorded.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and depth > 1:
            found += settings_differences(a, b, f"{prefix}{key}.", depth - 1)
        elif a != b:
            found.append(f"{prefix}{key}")
    return found


def open_study(storage: optuna.storages.BaseStorage, name: str, settings: dict[str, Any],
               sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner, where: str) -> optuna.Study:
    """The study `name` in the storage at `where`, made if new; refused if it was started with other
    settings, or cannot be read."""
    import optuna

    remedy = journal_remedy(where) if "://" not in where else "give `study` another name"
    try:
        try:  # reading first: creating writes to the storage even when the study is there
            study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
        except KeyError:
            study = optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                        load_if_exists=True, sampler=sampler, pruner=pruner)
        if study.direction != optuna.study.StudyDirection.MAXIMIZE:
            raise ValueError("it minimizes")
    except Exception as exc:  # a damaged journal, a study that minimizes, a database gone meanwhile
        raise RunError(f"cannot open study {name} in {storage_label(where)} ({reason(exc, 200)}); {remedy}",
                       terms=["study"]) from None
    recorded = study_attrs(study, where).get("fashionlab")
    if recorded is None:
        if study.get_trials(deepcopy=False):
            raise ConfigError(f"study {name} in this storage already has trials that fashionlab did not make; give "
                              f"`study` another name", terms=["study"])
        study.set_user_attr("fashionlab", settings)
    elif _with_defaults(recorded) != settings:
        changed = settings_differences(_with_defaults(recorded), settings)
        raise ConfigError(f"this sweep was started with other settings; changed since: {', '.join(changed)}. Run "
                          f"it with the space and options it was started with, or give `out` a new folder for a "
                          f"new sweep", terms=["out"])
    return study


def trial_dir_name(number: int) -> str:
    """The folder of trial `number` in the sweep folder: always derived from the number, never read
    from the study (which anyone who can write to the database can change)."""
    return f"trial-{number:04d}"


TRIAL_DIR = re.compile(r"trial-(\d{4,9})")


def inspect_trial(run_dir: Path, config: TrainConfig) -> runner.Inspection:
    """What a trial's folder holds for the trial of `config`, as `runner.inspect` says, but trusting
    only a run the sweep made: not through a symbolic link, and never one that saw the test set."""
    if run_dir.is_symlink():
        return runner.Inspection("conflict", f"{run_dir} is a symbolic link")
    found = runner.inspect(Task(run_dir.name, config, run_dir))
    if found.state == "complete":
        try:
            test = Run(run_dir).status().get("test")
        except RunError as exc:
            return runner.Inspection("conflict", str(exc))
        if test is not False:
            return runner.Inspection("conflict", f"{run_dir} was trained with the test set: it is not a trial's run")
    return found


def was_pruned(config: TrainConfig, metrics: dict[str, Any]) -> bool:
    """Whether a complete run stopped before its planned epochs because the pruner said so. Told from
    its files alone: only early stopping and the pruner end a run early and complete (a diverged,
    stopped or killed run is not complete), and early stopping stops it exactly when its patience ran
    out (the pruner is not asked then)."""
    epochs, patience = len(metrics["seconds_per_epoch"]), config.early_stopping
    return epochs < config.epochs and not (patience and epochs - metrics["best_epoch"] >= patience)


@contextlib.contextmanager
def _folder_lock(out: Path) -> Iterator[None]:
    """The sweep folder's lock file (never through a link), held while one worker at a time gives the
    study back its lost trials."""
    import fcntl

    from fashionlab.runs import LOCK_FILE

    try:
        fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise RunError(f"cannot lock the sweep folder {out} ({LOCK_FILE}: {exc.strerror or exc}); remove "
                       f"{out / LOCK_FILE} if it is not a plain file", terms=["out"]) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class _Sweep:
    """One worker process of a sweep (it may run `jobs` trainings): asks the study for trials while
    the sweep has fewer than `trials`, hands them to the runner, and tells the study each outcome."""

    def __init__(self, study: optuna.Study, space: Space, out: Path, *, trials: int, storage: str, sampler: str,
                 sampler_seed: int, pruner: str, train_images: int, free_memory: int | None,
                 progress: Callable[[str], None]):
        self.study, self.space, self.out, self.trials = study, space, out, trials
        self.storage, self.sampler, self.sampler_seed, self.pruner = storage, sampler, sampler_seed, pruner
        self.train_images, self.free_memory = train_images, free_memory  # what each trial's config must fit
        self.progress = progress
        self.owner = Owner()
        self.held: dict[int, optuna.Trial] = {}  # trial number -> the trial this process runs
        self.lock = threading.Lock()  # the heartbeat thread reads `held`
        self.finished = 0

    # the study's state
    def all_trials(self, states: tuple[optuna.trial.TrialState, ...] | None = None) -> list[optuna.trial.FrozenTrial]:
        return study_trials(self.study, self.space, self.storage, states)

    def sweep_trials(self) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.all_trials() if counted(t)]

    def stopped_trials(self) -> list[optuna.trial.FrozenTrial]:
        """Running trials whose process is gone (Ctrl-C, a kill, a lost machine)."""
        from optuna.trial import TrialState

        now = time.time()
        return [t for t in self.all_trials((TrialState.RUNNING,))
                if counted(t) and t.number not in self.held and self.owner.stopped(t, now)]

    def take_over(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Claim a stopped trial: every worker that wants it writes its claim, waits, and reads
        back whose claim was written last; that one trains it, the others leave it."""
        storage = self.study._storage
        storage.set_trial_user_attr(trial._trial_id, "owner", self.owner.record())
        storage.set_trial_user_attr(trial._trial_id, "heartbeat", time.time())
        time.sleep(CLAIM_SECONDS)
        claim = next(t for t in self.all_trials() if t._trial_id == trial._trial_id)
        claimed = (claim.user_attrs.get("owner") or {}).get("token")
        return claimed == self.owner.token

    # asking
    def tasks(self) -> Iterator[Task]:
        """The next trial to train, taken when a worker is free for it: a stopped one to resume,
        else a new one while the sweep has fewer than `trials`."""
        import optuna

        while True:
            stopped = next((t for t in self.stopped_trials() if self.take_over(t)), None)
            if stopped is not None:
                task = self._task(optuna.Trial(self.study, stopped._trial_id))
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
            task = self._task(trial)
            if task is not None:
                yield task

    def _surplus(self, number: int) -> bool:
        """Another worker asked for the sweep's last trial at the same moment: this one is not run."""
        earlier = [t for t in self.sweep_trials() if t.number < number]
        if len(earlier) < self.trials:
            return False
        from optuna.trial import TrialState

        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        storage.set_trial_user_attr(trial_id, "surplus", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        return True

    def _task(self, trial: optuna.Trial) -> Task | None:
        for key, value in {"owner": self.owner.record(), "heartbeat": time.time()}.items():
            trial.set_user_attr(key, value)
        if set(trial.params) != set(self.space.search):  # its worker stopped while it was asked for
            self._fail(trial, "its values were never all drawn; a trial is trained only with the values drawn for it")
            return None
        try:
            config = self.space.config(dict(trial.params), f"{self.study.study_name}-{trial.number}")
            check_runnable(config, train_images=self.train_images, free_memory=self.free_memory)
        except ConfigError as exc:  # values that do not go together, or do not fit the data: never trained
            self._fail(trial, str(exc))
            return None
        run = trial_dir_name(trial.number)
        task = Task(f"trial {trial.number}", config, self.out / run, {"trial": trial.number}, test=False)
        found = inspect_trial(task.run_dir, config)
        if found.state == "conflict":
            self._fail(trial, found.reason.split(";")[0] + "; a trial is trained only into a folder of its own")
            return None
        trial.set_user_attr("run", run)
        trial.set_user_attr("epochs_planned", config.epochs)
        if found.state == "complete":  # its worker was stopped after the run completed, before it told the study
            self._tell(trial, task.run_dir, config, how="recorded from its complete run")
            return None
        with self.lock:
            self.held[trial.number] = trial
        watch = TrialWatch(self.storage, self.study.study_name, trial._trial_id, self.pruner,
                           self.space.base.epochs, config.epochs)
        return dataclasses.replace(task, watcher=watch)

    # telling
    def done(self, done: Done) -> None:
        self.finished += 1
        self._tell(self._release(done.task), done.task.run_dir, done.task.config,
                   how="resumed" if done.resumed else "")

    def _tell(self, trial: optuna.Trial, run_dir: Path, config: TrainConfig, how: str) -> None:
        """Tell the study how a trial whose run is complete ended, from the run's files alone: the same
        value, state and record whether this process trained it or found it complete."""
        from optuna.trial import TrialState

        metrics = Run(run_dir).metrics()
        seconds = metrics["seconds_per_epoch"]
        epochs, pruned = len(seconds), was_pruned(config, metrics)
        value = _kept_accuracy(run_dir, metrics)
        saved = (config.epochs - epochs) * statistics.median(seconds) if pruned else 0.0
        for key, v in {"epochs": epochs, "train_seconds": metrics["train_seconds"], "seconds_saved": saved,
                       "best_val_accuracy": metrics["best_val_accuracy"], "host": self.owner.host}.items():
            trial.set_user_attr(key, v)
        if pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
            said = f"pruned after epoch {epochs} of {config.epochs}"
        else:
            self.study.tell(trial, value)
            said = f"{epochs} epochs"
        self.progress(f"[{self._count()}] trial {trial.number}: val accuracy {value:.4f} ({said}, "
                      f"{metrics['train_seconds']:.0f} s{', ' + how if how else ''})")

    def failed(self, task: Task, error: FashionlabError) -> None:
        self._fail(self._release(task), str(error))

    def _fail(self, trial: optuna.Trial, reason: str, ran: bool = True) -> None:
        from optuna.trial import TrialState

        trial.set_user_attr("reason", reason)
        trial.set_user_attr("host", self.owner.host)
        self.study.tell(trial, state=TrialState.FAIL)
        self.finished += ran
        self.progress(f"[{self._count()}] trial {trial.number}: failed: {reason}")

    # what the study lost
    def recover(self) -> None:
        """Give the study back the trials whose runs are in the sweep folder but which it does not
        record (its journal was damaged and moved away, say). A trial is in the study before its
        folder is made, and trial numbers run 0, 1, 2, ... without gaps: a folder numbered past the
        study's last trial is one it lost. The lost numbers are taken again in order, so that each
        trial keeps its folder's number and no new trial is ever given a folder that holds a run: a
        complete run is recorded as `done` records it, a failed one as failed, an unfinished one is
        left stopped (the next free worker resumes it), and a number whose folder holds no run of
        this sweep is skipped (never trained)."""
        import optuna

        if not self._lost_runs():
            return
        storage, study_id = self.study._storage, self.study._study_id
        with _folder_lock(self.out):
            lost = self._lost_runs()  # again, holding the lock: another worker may have recorded them
            for number in range(len(self.all_trials()), max(lost, default=-1) + 1):
                trial_id = storage.create_new_trial(study_id)
                mine = storage.get_trial_number_from_id(trial_id) == number  # not if a trial was asked meanwhile
                params, config, status = lost.get(number) if mine and number in lost else ({}, None, "")
                for key, value in params.items():
                    distribution = self.space.search[key]
                    storage.set_trial_param(trial_id, key, distribution.to_internal_repr(value), distribution)
                trial = optuna.Trial(self.study, trial_id)
                if config is None:
                    trial.set_user_attr("skipped", True)
                    self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    if not mine:
                        return
                    continue
                run_dir = self.out / trial_dir_name(number)
                trial.set_user_attr("run", run_dir.name)
                trial.set_user_attr("epochs_planned", config.epochs)
                if status["status"] == "complete":
                    self._tell(trial, run_dir, config, how=f"recorded again from {run_dir.name}")
                elif status["status"] == "failed":
                    self._fail(trial, status.get("message") or "failed", ran=False)
                else:  # unfinished: a stopped trial for any worker to take over
                    kept = max(Run(run_dir).checkpoints(), default=0)  # resuming trains and reports the rest
                    for step, value in enumerate(Run(run_dir).history()["val_accuracy"][:kept] if kept else []):
                        trial.report(float(value), step + 1)
                    trial.set_user_attr("heartbeat", 0)

    def _lost_runs(self) -> dict[int, tuple[dict[str, Any], TrainConfig, dict[str, Any]]]:
        """The trial folders numbered past the study's last trial that hold a run this sweep made for
        that number, by number: the run's searched values, config and run.json."""
        numbers = []  # listed before the study is read: a trial is in the study before its folder exists
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.out):
                found = TRIAL_DIR.fullmatch(entry.name)
                if found and entry.name == trial_dir_name(int(found[1])):
                    numbers.append(int(found[1]))
        have = len(self.all_trials())
        lost = {}
        for number in sorted(n for n in numbers if n >= have):
            run_dir = self.out / trial_dir_name(number)
            try:
                recorded = Run(run_dir).config()
                params = {key: getattr(recorded, key) for key in self.space.search}
                if not all(d._contains(d.to_internal_repr(params[k])) for k, d in self.space.search.items()):
                    continue
                config = self.space.config(params, f"{self.study.study_name}-{number}")
                if inspect_trial(run_dir, config).state not in ("complete", "unfinished"):
                    continue
                status = Run(run_dir).status()
            except (FashionlabError, ValueError, TypeError):  # not a run of this sweep
                continue
            if status.get("test") is False:
                lost[number] = (params, config, status)
        return lost

    def _release(self, task: Task) -> optuna.Trial:
        with self.lock:
            return self.held.pop(task.tags["trial"])

    def _count(self) -> str:
        return f"{sum(t.state.is_finished() for t in self.sweep_trials())}/{self.trials}"

    # the stopped
    def let_go(self) -> None:
        """This process stops: its trials are marked as not heard of, for any worker to take over."""
        with self.lock:
            held, self.held = list(self.held.values()), {}
        for trial in held:
            with contextlib.suppress(Exception):  # the storage itself may be what failed
                self.study._storage.set_trial_user_attr(trial._trial_id, "heartbeat", 0)

    @contextlib.contextmanager
    def heartbeat(self) -> Iterator[None]:
        """While the block runs, each held trial is said to be alive every HEARTBEAT_SECONDS."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(HEARTBEAT_SECONDS):
                with self.lock:
                    ids = [t._trial_id for t in self.held.values()]
                for trial_id in ids:
                    with contextlib.suppress(Exception):  # finished meanwhile, or the database hiccups
                        self.study._storage.set_trial_user_attr(trial_id, "heartbeat", time.time())

        thread = threading.Thread(target=beat, name="fashionlab-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


def _kept_accuracy(run_dir: Path, metrics: dict[str, Any]) -> float:
    """The validation accuracy of the weights the run keeps (its last epoch, or its best one with
    early stopping): the model the sweep would hand on is the one it scores."""
    history = Run(run_dir).history()
    kept = int(metrics.get("weights_from_epoch", len(history)))
    return float(history["val_accuracy"].iloc[kept - 1])


def check_sweep_folder(out: Path, *, force: bool) -> None:
    from fashionlab.comparison import check_output_folder

    check_output_folder(out, force=force, marker=MARKER, what="sweep")


def storage_record(storage: str | None) -> str:
    """The storage as sweep.json records it: the journal in the sweep folder, wherever the folder is now
    (it may be moved or copied), or the database's URL as shown. Also reads an older record (the
    journal's absolute path, or a label that showed the user's name)."""
    return JOURNAL if storage is None or "://" not in storage else storage_label(storage)


def check_same_sweep(out: Path, study: str, storage: str | None) -> None:
    """A sweep folder holds one study: another one is refused before it writes anything there."""
    marker = out / MARKER
    if not marker.is_file() or marker.is_symlink():
        return
    try:
        recorded = json.loads(read_text(marker, what="sweep marker", error=RunError, limit=MAX_SPACE_BYTES))
        held = (recorded["study"], storage_record(recorded["storage"]))
    except (RunError, ValueError, KeyError, TypeError, AttributeError):
        raise RunError(f"{marker} is damaged; remove it, or give `out` a new folder", terms=["out"]) from None
    if held != (study, storage_record(storage)):
        raise ConfigError(f"{out} holds the sweep {shown(held[0])} ({held[1]}), not {shown(study)} "
                          f"({storage_record(storage)}); "
                          f"give `out` a new folder, or run that sweep with its own `study` and `storage`",
                          terms=["out", "study", "storage"])


def repair_journal(path: Path) -> None:
    """A journal whose last line a crash cut short: the line goes (no worker ever read it), so that
    the next write starts on a line of its own. Done under the journal's own lock. A whole last line
    that is not an operation is damage, refused here: Optuna skips it when reading, then fails on the
    next read once a line follows it."""
    from optuna.storages.journal import JournalFileSymlinkLock
    from optuna.storages.journal._file import get_lock_file

    if not path.is_file() or path.is_symlink() or path.stat().st_size == 0:
        return
    with get_lock_file(JournalFileSymlinkLock(str(path))), path.open("rb+") as journal:
        size = journal.seek(0, os.SEEK_END)
        start = max(0, size - 4 * 1024 * 1024)  # one operation is far shorter than this
        journal.seek(start)
        tail = journal.read()
        if not tail.endswith(b"\n"):
            cut = tail.rfind(b"\n")
            journal.truncate(start + cut + 1 if cut >= 0 else 0)
            tail = tail[:cut + 1]
        last = tail[:-1].rpartition(b"\n")[2]
        try:
            if last and not isinstance(json.loads(last), dict):
                raise ValueError("not an operation")
        except (ValueError, RecursionError) as exc:
            raise RunError(f"the study journal {path} is damaged (its last line: {reason(exc, 100)}); "
                           f"{journal_remedy(path)}", terms=["out"]) from None


def data_fingerprint(data: DataSource) -> str:
    """A digest of the images and labels the trials train and are judged on, wherever they live."""
    from fashionlab.data import FILE_NAMES

    arrays = data.arrays()
    digest = hashlib.sha256()
    for name in FILE_NAMES:
        digest.update(name.encode() + arrays[name].tobytes())
    return digest.hexdigest()[:16]


def check_same_data(study: optuna.Study, data: DataSource, where: str) -> None:
    """Every trial of a study trains on the same data: another dataset is refused."""
    fingerprint = data_fingerprint(data)
    recorded = study_attrs(study, where).get("fashionlab_data")
    if recorded is None:
        study.set_user_attr("fashionlab_data", fingerprint)
    elif recorded != fingerprint:
        raise ConfigError(f"this sweep's trials were trained on other data (digest {recorded}, here {fingerprint}); "
                          f"give `data_dir` the files it was started with, or `out` a new folder for a new sweep",
                          terms=["data_dir", "out"])

@checked(trials=(1, MAX_TRIALS), jobs=(1, MAX_JOBS), sampler_seed=(0, SEED_MAX))
def sweep(space: str | Path, out: str | Path, *, trials: int = 20, jobs: int = 1, storage: str | None = None,
          study: str | None = None, sampler: Sampler = "tpe", sampler_seed: int = 0, pruner: Pruner = "median",
          data: DataSource = DataSource(), force: bool = False,
          progress: Callable[[str], None] = lambda line: None) -> SweepResult:
    """Run the sweep `space` into `out` until its study has `trials` trials, `jobs` trainings at a
    time, then write trials.csv, summary.md, report.html and best.toml, evaluating the best trial
    once on the test set when every trial has ended. Calling again continues the same study."""
    if storage is not None:
        check_storage_url(storage)
    with secrets_kept(storage):
        return _sweep(space, Path(out), trials=trials, jobs=jobs, storage=storage, study=study, sampler=sampler,
                      sampler_seed=sampler_seed, pruner=pruner, data=data, force=force, progress=progress)


def _sweep(space: str | Path, out: Path, *, trials: int, jobs: int, storage: str | None, study: str | None,
           sampler: str, sampler_seed: int, pruner: str, data: DataSource, force: bool,
           progress: Callable[[str], None]) -> SweepResult:
    space = load_space(space)
    study_name = study if study is not None else space.name
    problem = name_problem(f"{study_name}-{10 * MAX_TRIALS}")  # the name of its trials' runs: <study>-<number>
    if problem:
        said = "" if study is not None else " (from the space file's name; pass `study` NAME)"
        raise ConfigError(f"study name {shown(study_name)} cannot be used{said}: it must start with a letter or "
                          f"digit, hold only letters, digits, '_', '-' or '.', and be at most "
                          f"{64 - len(str(10 * MAX_TRIALS)) - 1} bytes long", terms=["study"])
    check_sweep_folder(out, force=force)
    where = storage or str(out.absolute() / JOURNAL)  # where it is today: the folder may be moved or copied
    check_same_sweep(out, study_name, storage)
    if storage is None:  # appended to in place: never through a link
        check_own_file(out / JOURNAL, what="the study journal", term="out", error=RunError)
    data = data.of(resolve(space.base.dataset)).located()
    train_images, free_memory = data.train_count(), available_memory()
    if free_memory is not None:
        free_memory //= jobs
    check_runnable(space.base, train_images=train_images, free_memory=free_memory)
    check_writable(out, what="the sweep", term="out")
    made = not os.path.lexists(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot use {out} as the sweep folder ({exc.strerror or exc}); give `out` a folder",
                       terms=["out"]) from None
    settings = {"space": space.settings(), "sampler": sampler, "sampler_seed": sampler_seed, "pruner": pruner}
    try:
        if storage is None:
            repair_journal(Path(where))
        the_study = open_study(open_storage(where), study_name, settings, make_sampler(sampler, sampler_seed),
                               make_pruner(pruner, space.base.epochs), where)
        check_same_data(the_study, data, where)
    except BaseException:  # refused: a folder made for it is not left behind
        if made:
            shutil.rmtree(out, ignore_errors=True)
        raise
    folder = Run(out)
    folder.write_json(MARKER, {"space": str(space.path), "study": study_name, "storage": storage_record(storage),
                               **settings})
    worker = _Sweep(the_study, space, out, trials=trials, storage=where, sampler=sampler, sampler_seed=sampler_seed,
                    pruner=pruner, train_images=train_images, free_memory=free_memory, progress=progress)
    worker.recover()
    stopped, have = len(worker.stopped_trials()), worker.sweep_trials()
    ended = sum(t.state.is_finished() for t in have)
    jobs = min(jobs, max(trials - ended, 0))  # no more workers than trials left (stopped ones included)
    progress(f"study {study_name} ({storage_label(where)}): {ended} of {trials} trials ended already"
             + (f", {stopped} stopped one(s) to resume" if stopped else "") + f"; {jobs} job(s) here")
    started = time.perf_counter()
    try:
        with worker.heartbeat():
            if jobs:
                runner.execute(worker.tasks(), jobs=jobs, data=data, on_done=worker.done, on_failed=worker.failed)
    except BaseException:  # Ctrl-C, a killed worker, a lost database: what ran here is resumed next time
        worker.let_go()
        raise
    wall = time.perf_counter() - started
    return finish(the_study, space, out, storage=where, trials=trials, data=data, wall=wall, jobs=jobs,
                  ran=worker.finished, progress=progress)


# --- the results ---------------------------------------------------------------------------------

STATE_NAMES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
               "WAITING": "waiting"}


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
                                  importances=importances(study, found, space))
    return SweepResult(out, table, best, tests, summary, bool(ended))


TEST_KEY = "test:"  # a study attribute per trial evaluated on the test set: test:12


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
    from fashionlab.runs import MODEL_FILE

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


def describe(distribution: optuna.distributions.BaseDistribution) -> tuple[str, str]:
    """A searched range in words ("0.0005 to 0.01, log scale"), and its scale: log, linear or choice."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return "one of " + ", ".join(map(str, distribution.choices)), "choice"
    d: Any = distribution
    text = f"{d.low:g} to {d.high:g}"
    if d.log:
        return text + ", log scale", "log"
    if d.step is not None and d.step != 1:
        text += f", step {d.step:g}"
    return text, "linear"


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
