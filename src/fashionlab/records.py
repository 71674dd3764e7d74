"""What each file of a run directory holds, as typed records checked whenever a file is read.

    problem = first_problem(json.loads(text), Status)   # None, or "`epochs_done` must be ..."

A run directory may be edited or damaged by hand: its files are input like any other. Each
schema is a TypedDict (keys a reader needs are Required; other keys are allowed, so newer runs
stay readable) whose annotations say the types and, with `Annotated[..., Range(...)]`, the bounds.
"""

import functools
import math
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired, TypedDict


@dataclass(frozen=True)
class Range:
    """Inclusive bounds for a number; None leaves a side open."""

    low: float | None = None
    high: float | None = None


Count = Annotated[int, Range(0, 10**9)]
Fraction = Annotated[float, Range(0.0, 1.0)]
Seconds = Annotated[float, Range(0.0, None)]
Loss = Annotated[float, Range(0.0, None)]


class DatasetRecord(TypedDict):
    """The data set a run was trained on (datasets.record): its classes, and for one of your own,
    its folder and its files' digests as they were then."""

    name: str
    class_names: list[str]
    folder: NotRequired[str | None]
    sha256: NotRequired[dict[str, str]]


class Status(TypedDict):
    """run.json: how the run stands."""

    status: Literal["running", "complete", "failed", "interrupted"]
    pid: NotRequired[Count]
    updated: NotRequired[str]
    epochs: NotRequired[Annotated[int, Range(1, 10**9)]]
    epochs_done: NotRequired[Count]
    started: NotRequired[str]
    resumed: NotRequired[str]
    finished: NotRequired[str]
    recipe: NotRequired[str | None]
    command: NotRequired[str | None]  # the command line or Python call that made the run
    test: NotRequired[bool]  # False: the run is kept away from the test set (a sweep's trial)
    message: NotRequired[str | None]
    dataset: NotRequired[DatasetRecord]  # absent in runs of Fashion-MNIST made before data sets were recorded


class Parameters(TypedDict):
    total: Count
    trainable: Count
    non_trainable: Count


class DataUsed(TypedDict):
    """What a run trained and was tested on (metrics.json's `data`)."""

    dir: NotRequired[str]
    verified: NotRequired[bool]
    train: Count
    valid: Count
    test: Count


class ReliabilityBin(TypedDict):
    """One confidence bin of a reliability diagram: its range, images, mean confidence and accuracy."""

    low: Fraction
    high: Fraction
    count: Annotated[int, Range(1, 10**9)]
    confidence: Fraction
    accuracy: Fraction


class Calibration(TypedDict):
    """How well the test probabilities match the accuracy (`calibration.reliability`)."""

    ece: Fraction
    bins: list[ReliabilityBin]


class TemperatureRecord(TypedDict):
    """The temperature a run fitted on its validation split, and what it changed (`temperature_scale`)."""

    temperature: Annotated[float, Range(1e-3, 1e3)]
    val_loss_before: Loss
    val_loss_after: Loss
    val_ece_before: Fraction
    val_ece_after: Fraction
    test_loss_before: NotRequired[Loss]
    test_ece_before: NotRequired[Fraction]
    test_accuracy_before: NotRequired[Fraction]  # the same as after, but with test-time views


class MaxNormRecord(TypedDict):
    """What max-norm did by the end of a run (`model.max_norm_units`)."""

    max_norm: Annotated[float, Range(0.0, 1000.0)]
    units: Count
    at_bound: Count
    largest: Annotated[float, Range(0.0, None)]


class Metrics(TypedDict):
    """metrics.json: the figures of a complete run (the fields fashionlab reads back); a run
    trained with test=False (a sweep's trial) has no test figures."""

    test_loss: NotRequired[Loss]
    test_accuracy: NotRequired[Fraction]
    final_val_accuracy: Fraction
    best_val_accuracy: Fraction
    best_epoch: Annotated[int, Range(1, 10**9)]
    seconds_per_epoch: list[Seconds]
    median_seconds_per_epoch: Seconds
    parameters: Parameters
    per_class_accuracy: NotRequired[dict[str, Fraction]]
    test_ece: NotRequired[Fraction]  # absent in runs made before calibration was measured
    calibration: NotRequired[Calibration]
    temperature: NotRequired[TemperatureRecord]
    max_norm: NotRequired[MaxNormRecord]
    train_seconds: NotRequired[Seconds]
    wall_seconds: NotRequired[Seconds]
    seconds_to_val_accuracy: NotRequired[dict[str, Seconds | None]]
    data: NotRequired[DataUsed]  # the pages say these; absent in runs made before they were recorded
    machine: NotRequired[dict[str, str | int | None]]
    versions: NotRequired[dict[str, str]]
    recipe: NotRequired[str | None]
    command: NotRequired[str | None]
    started: NotRequired[str | None]
    finished: NotRequired[str | None]


MAX_MEMBERS = 32  # runs an ensemble averages, at most


class EnsembleMember(TypedDict):
    """One run an ensemble averages, as ensemble.json records it when the ensemble is made."""

    run: str  # its folder, as it was when the ensemble was made
    name: str
    recipe: NotRequired[str | None]
    test_accuracy: Fraction  # on the test set, computed when the ensemble was made
    config: dict[str, Any]  # its config as an exported file shows it (`Run.shared_config`)


class EnsembleRecord(TypedDict):
    """ensemble.json: the runs an ensemble averages (it was not trained: no config, history or checkpoints)."""

    name: str
    members: list[EnsembleMember]


class EnsembleMetrics(TypedDict):
    """metrics.json of an ensemble: its test figures and its members', from the day it was made."""

    test_loss: Seconds
    test_accuracy: Fraction
    member_test_accuracy: list[Fraction]
    parameters: Parameters
    per_class_accuracy: NotRequired[dict[str, Fraction]]
    wall_seconds: NotRequired[Seconds]
    data: NotRequired[DataUsed]
    machine: NotRequired[dict[str, str | int | None]]
    versions: NotRequired[dict[str, str]]
    command: NotRequired[str | None]
    started: NotRequired[str | None]
    finished: NotRequired[str | None]


class HistoryRow(TypedDict):
    """One row of history.csv: an epoch's figures."""

    epoch: Annotated[int, Range(1, 10**9)]
    loss: float
    accuracy: Fraction
    val_loss: float
    val_accuracy: Fraction
    seconds: Seconds


class TrialOwner(TypedDict):
    """Which process runs a sweep's trial (sweeps.claims.Owner)."""

    host: str
    boot: str
    pid: Count
    token: str


class TrialRecord(TypedDict):
    """A sweep's trial in its study: the user attributes the sweep gives it."""

    owner: NotRequired[TrialOwner]
    heartbeat: NotRequired[Seconds]  # when its process was last heard of; 0: let go
    run: NotRequired[str]
    epochs_planned: NotRequired[Annotated[int, Range(1, 10**9)]]
    epochs: NotRequired[Count]
    train_seconds: NotRequired[Seconds]
    seconds_saved: NotRequired[Seconds]
    best_val_accuracy: NotRequired[Fraction]
    host: NotRequired[str]
    reason: NotRequired[str]
    surplus: NotRequired[bool]
    skipped: NotRequired[bool]


class SweepSettings(TypedDict):
    """What a sweep's study was started with (compared whole with what a worker would start it with)."""

    space: dict[str, Any]
    sampler: str
    sampler_seed: int
    pruner: str


class StudyRecord(TypedDict):
    """A sweep's study: its user attributes, besides one test record per evaluated trial."""

    fashionlab: NotRequired[SweepSettings]
    fashionlab_data: NotRequired[str]


class Evaluation(TypedDict):
    """A study's `test:N`: trial N, the chosen one, evaluated on the test set."""

    trial: Count
    run: str
    test_accuracy: Fraction
    test_loss: Seconds
    val_accuracy: Fraction
    trials: Count
    when: Seconds


class TrialRow(TypedDict):
    """One row of a sweep's trials.csv (besides its searched values and figures)."""

    trial: Count
    state: Literal["complete", "pruned", "failed", "running", "waiting"]
    val_accuracy: Fraction | None


def first_problem(value: Any, schema: Any, where: str = "") -> str | None:
    """What is wrong with `value` as a `schema` (a type, a TypedDict, list[...], dict[str, ...],
    Literal, a union, Annotated with a Range, Any), naming the field; None when nothing is."""
    origin, args = typing.get_origin(schema), typing.get_args(schema)
    name = f"`{where}`" if where else "the file"
    if schema is Any:
        return None
    if origin is Annotated:
        problem = first_problem(value, args[0], where)
        bounds = next((a for a in args[1:] if isinstance(a, Range)), None)
        if problem or bounds is None:
            return problem
        if bounds.low is not None and value < bounds.low or bounds.high is not None and value > bounds.high:
            low = "" if bounds.low is None else f"at least {bounds.low}"
            high = "" if bounds.high is None else f"at most {bounds.high}"
            return f"{name} must be {' and '.join(filter(None, (low, high)))}, not {value!r}"
        return None
    if origin in (typing.Union, types.UnionType):
        if any(first_problem(value, option, where) is None for option in args):
            return None
        return f"{name} must be {' or '.join(_said(a) for a in args)}, not {shown(value)}"
    if origin is Literal:
        return None if value in args and type(value) in {type(a) for a in args} else \
            f"{name} must be one of {', '.join(map(repr, args))}, not {shown(value)}"
    if origin is list:
        if not isinstance(value, list):
            return f"{name} must be a list, not {shown(value)}"
        return next(filter(None, (first_problem(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))), None)
    if origin is dict:
        if not isinstance(value, dict):
            return f"{name} must be a table of keys and values, not {shown(value)}"
        return next(filter(None, (first_problem(v, args[1], f"{where}.{k}" if where else str(k))
                                  for k, v in value.items())), None)
    if typing.is_typeddict(schema):
        if not isinstance(value, dict):
            return f"{name} must be a table of keys and values, not {shown(value)}"
        missing = sorted(schema.__required_keys__ - set(value))
        if missing:
            return f"{name} lacks {', '.join(f'`{k}`' for k in missing)}"
        hints = _hints(schema)
        return next(filter(None, (first_problem(value[k], hints[k], f"{where}.{k}" if where else k)
                                  for k in hints if k in value)), None)
    return _scalar_problem(value, schema, name)


def _scalar_problem(value: Any, schema: Any, name: str) -> str | None:
    if schema is type(None):
        return None if value is None else f"{name} must be null, not {shown(value)}"
    if schema is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return None if ok else f"{name} must be a finite number, not {shown(value)}"
    if schema is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return None if ok else f"{name} must be a whole number, not {shown(value)}"
    if schema in (str, bool):
        return None if isinstance(value, schema) else f"{name} must be {_said(schema)}, not {shown(value)}"
    raise TypeError(f"unsupported schema {schema!r}")


@functools.cache
def _hints(schema: Any) -> dict[str, Any]:
    """A TypedDict's fields and their schemas (worked out once: records are read by the thousand)."""
    return {k: _unwrap(hint) for k, hint in typing.get_type_hints(schema, include_extras=True).items()}


def _unwrap(hint: Any) -> Any:
    """NotRequired[X] / Required[X] -> X (get_type_hints keeps them with include_extras)."""
    while typing.get_origin(hint) in (typing.NotRequired, typing.Required):
        hint = typing.get_args(hint)[0]
    return hint


def _said(schema: Any) -> str:
    if typing.get_origin(schema) is Annotated:  # a bounded number: its kind is what the type says
        return _said(typing.get_args(schema)[0])
    return {str: "text", bool: "true or false", int: "a whole number", float: "a number",
            type(None): "null"}.get(schema, str(schema))


def shown(value: Any) -> str:
    """A value as a message quotes it: its repr, cut to 40 characters."""
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than Python will print
        return "a number too large to print"
    except RecursionError:
        return "a value nested too deeply to print"
    return text if len(text) <= 40 else text[:37] + "..."
