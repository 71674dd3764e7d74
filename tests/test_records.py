"""records.first_problem, the checker every run file is read through, on its own: what passes,
and the message of each kind of problem (the field named, the bound or type said, the value shown)."""

from typing import Annotated

import pytest

from fashionlab.records import (
    Evaluation,
    Fraction,
    HistoryRow,
    Metrics,
    Range,
    Seconds,
    Status,
    StudyRecord,
    TrialRecord,
    first_problem,
    shown,
)

METRICS = {"final_val_accuracy": 0.8, "best_val_accuracy": 0.9, "best_epoch": 3, "seconds_per_epoch": [1.0, 2.5],
           "median_seconds_per_epoch": 1.75, "parameters": {"total": 10, "trainable": 8, "non_trainable": 2},
           "per_class_accuracy": {"Bag": 0.5}, "seconds_to_val_accuracy": {"0.8": 3.5, "0.9": None}}
STATUS = {"status": "complete", "recipe": None, "message": None, "test": False}


def test_valid_records_pass_bounds_and_nulls_included():
    assert first_problem(METRICS, Metrics) is None
    assert first_problem({**METRICS, "best_val_accuracy": 1.0, "final_val_accuracy": 0.0}, Metrics) is None
    assert first_problem(STATUS, Status) is None
    assert first_problem({**STATUS, "recipe": "tutorial", "message": "stopped"}, Status) is None
    assert first_problem(None, type(None)) is None


@pytest.mark.parametrize("value, schema, problem", [
    (1.5, Fraction, "the file must be at least 0.0 and at most 1.0, not 1.5"),
    (-0.5, Seconds, "the file must be at least 0.0, not -0.5"),
    (float("nan"), Seconds, "the file must be a finite number, not nan"),
    (True, int, "the file must be a whole number, not True"),
    ("1", float, "the file must be a finite number, not '1'"),
    (None, str, "the file must be text, not None"),
    ("yes", bool, "the file must be true or false, not 'yes'"),
    (0, type(None), "the file must be null, not 0"),
    ([], Metrics, "the file must be a table of keys and values, not []"),
    ({}, HistoryRow, "the file lacks `accuracy`, `epoch`, `loss`, `seconds`, `val_accuracy`, `val_loss`"),
    ({"a": -1.0}, dict[str, Seconds], "`a` must be at least 0.0, not -1.0"),
    (3, str | None, "the file must be text or null, not 3"),
    ("x", int | None, "the file must be a whole number or null, not 'x'"),
    ("x", float | None, "the file must be a number or null, not 'x'"),
    (2.0, Annotated[float, Range(None, 1.0)], "the file must be at most 1.0, not 2.0"),  # a side left open
    ({**STATUS, "status": "done"}, Status,
     "`status` must be one of 'running', 'complete', 'failed', 'interrupted', not 'done'"),
    ({**STATUS, "recipe": 5}, Status, "`recipe` must be text or null, not 5"),
    ({**STATUS, "test": "yes"}, Status, "`test` must be true or false, not 'yes'"),
    ({**METRICS, "seconds_per_epoch": 2.0}, Metrics, "`seconds_per_epoch` must be a list, not 2.0"),
    ({**METRICS, "seconds_per_epoch": [1.0, -2.0]}, Metrics, "`seconds_per_epoch[1]` must be at least 0.0, not -2.0"),
    ({**METRICS, "per_class_accuracy": [0.5]}, Metrics,
     "`per_class_accuracy` must be a table of keys and values, not [0.5]"),
    ({**METRICS, "per_class_accuracy": {"Bag": 1.2}}, Metrics,
     "`per_class_accuracy.Bag` must be at least 0.0 and at most 1.0, not 1.2"),
    ({**METRICS, "parameters": 3}, Metrics, "`parameters` must be a table of keys and values, not 3"),
    ({**METRICS, "parameters": {"total": 1}}, Metrics, "`parameters` lacks `non_trainable`, `trainable`"),
    ({**METRICS, "seconds_to_val_accuracy": {"0.8": "soon"}}, Metrics,
     "`seconds_to_val_accuracy.0.8` must be a number or null, not 'soon'"),
])
def test_each_problem_names_its_field_its_rule_and_the_value(value, schema, problem):
    assert first_problem(value, schema) == problem


def test_an_annotation_without_bounds_checks_the_type_alone_and_unknown_schemas_are_a_programming_error():
    assert first_problem(5, Annotated[int, "a note"]) is None
    with pytest.raises(TypeError, match="unsupported schema <class 'complex'>"):
        first_problem(1j, complex)


def test_values_are_shown_whole_up_to_40_characters():
    assert shown("x" * 38) == "'" + "x" * 38 + "'"  # 40 characters with the quotes
    assert shown("x" * 39) == "'" + "x" * 36 + "..."
    assert len(shown(list(range(100)))) == 40


def test_a_value_nested_too_deeply_to_print_is_said_so():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    assert shown(deep) == "a value nested too deeply to print"
    assert first_problem({"reason": deep}, TrialRecord) == \
        "`reason` must be text, not a value nested too deeply to print"


def test_a_sweeps_study_records_are_checked():
    owner = {"host": "h", "boot": "", "pid": 12, "token": "t"}
    assert first_problem({"owner": owner, "heartbeat": 0, "run": "trial-0001", "epochs": 3, "skipped": True},
                         TrialRecord) is None
    assert first_problem({"heartbeat": "now"}, TrialRecord) == "`heartbeat` must be a finite number, not 'now'"
    assert first_problem({"owner": {**owner, "pid": -1}}, TrialRecord) == \
        "`owner.pid` must be at least 0 and at most 1000000000, not -1"
    assert first_problem({"fashionlab": {"space": {}, "sampler": "tpe", "sampler_seed": 0, "pruner": "none"}},
                         StudyRecord) is None
    assert first_problem({"fashionlab": "x"}, StudyRecord) == \
        "`fashionlab` must be a table of keys and values, not 'x'"
    assert first_problem({"trial": 1, "run": "r", "test_accuracy": 2.0, "test_loss": 0.1, "val_accuracy": 0.5,
                          "trials": 3, "when": 1.0}, Evaluation, "test:1") == \
        "`test:1.test_accuracy` must be at least 0.0 and at most 1.0, not 2.0"
