"""A sweep's Optuna study: opened with the settings it was started with (the space, sampler, pruner)
and the data its trials train on, a changed one refused; and what it records read back, each trial
and attribute checked against what the sweep writes (anyone who can write to the storage can write
anything there).

    study = open_study(backend, "best-mlp", settings, make_sampler("tpe", 0), make_pruner("median", 20), where)
"""

from __future__ import annotations

import contextlib
import hashlib
import typing
import warnings
from typing import TYPE_CHECKING, Any, Literal

from fashionlab.config import from_dict
from fashionlab.errors import ConfigError, RunError, reason
from fashionlab.records import Evaluation, Fraction, StudyRecord, TrialRecord, first_problem, shown
from fashionlab.sweeps.space import Space, contains, describe
from fashionlab.sweeps.storage import journal_remedy
from fashionlab.urls import url_label

if TYPE_CHECKING:
    import optuna

    from fashionlab.data import DataSource

Sampler = Literal["tpe", "random"]
Pruner = Literal["median", "halving", "none"]
SAMPLERS, PRUNERS = typing.get_args(Sampler), typing.get_args(Pruner)
TEST_KEY = "test:"  # a study attribute per trial evaluated on the test set: test:12


# --- its settings ---------------------------------------------------------------------------------

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
        raise RunError(f"cannot open study {name} in {url_label(where)} ({reason(exc, 200)}); {remedy}",
                       terms=["study"]) from None
    recorded = study_attrs(study, where).get("fashionlab")
    if recorded is None:
        if "fashionlab_comparison" in study.user_attrs or "fashionlab_planner" in study.user_attrs:
            raise ConfigError(f"study {name} holds a comparison shared by `compare --storage`, not a sweep; give "
                              f"`study` another name", terms=["study"])
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


# --- what it records, checked --------------------------------------------------------------------

def study_damaged(study: optuna.Study, storage: str, problem: str) -> RunError:
    """The refusal of a study holding what the sweep never writes, with the way out: a journal moved away
    is rebuilt from the trial folders; a database's study is left alone."""
    if "://" not in storage:
        return RunError(f"the study journal {storage} is damaged ({problem}); {journal_remedy(storage)}",
                        terms=["out"])
    return RunError(f"study {study.study_name} in {url_label(storage)} holds what fashionlab never writes "
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
        if not contains(distribution, value):
            return f"its {key} {shown(value)} is not in the space ({describe(distribution)[0]})"
    missing = [key for key in space.search if key not in trial.params]
    if missing and trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return f"it ended without a value for {', '.join(missing)}"
    return None


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a study's trial is one of the sweep's, not a number it never trains: one asked for past
    the end (two workers asking for the last trial at once), or one skipped when the study was given
    back its lost trials (see `recovery.recover`)."""
    return not (trial.user_attrs.get("surplus") or trial.user_attrs.get("skipped"))
