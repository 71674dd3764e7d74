"""arguments.checked: each kind of annotation the public signatures use, refused and accepted
values, bounds, and the error's shape (one line, the argument in backticks and in `terms`)."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

import fashionlab as fl
from fashionlab import arguments
from fashionlab.arguments import checked
from fashionlab.cli import in_cli_terms
from fashionlab.config import TrainConfig
from fashionlab.data import DataSource
from fashionlab.errors import CallError, ConfigError, FashionlabError


class Place(os.PathLike):
    def __init__(self, path: str | bytes):
        self.path = path

    def __fspath__(self):
        return self.path


class Special(DataSource):
    pass


@checked
def plain(flag: bool, count: int, rate: float, text: str) -> tuple:
    return flag, count, rate, text


@checked
def paths(folder: Path, out: str | Path | None = None) -> Any:
    return folder, out


@checked
def containers(items: Sequence[int], names: list[str] = [], pairs: tuple[float, ...] = (),  # noqa: B006
               table: Mapping[str, int] | None = None, keys: dict[str, Any] | None = None) -> Any:
    return items


@checked
def others(mode: Literal["a", "b"], data: DataSource, call: Callable[[str], None], whatever: Any = None,
           inputs: Sequence[int | str | Path] = ()) -> Any:
    return mode


@checked(n=(1, 100), seed=(0, None), low=(None, 0.5))
def bounded(n: int = 12, *, seed: int | None = None, low: float = 0.0) -> int:
    return n


@checked
def keyword_only(*, jobs: int = 1, **changes: int) -> dict:
    return {"jobs": jobs, **changes}


def refused(call: Callable[[], Any], name: str, *said: str) -> str:
    """The ConfigError that `call` raises: one line, naming `name` in backticks and in its terms."""
    with pytest.raises(ConfigError) as caught:
        call()
    message = str(caught.value)
    assert message.startswith(f"`{name}` ") and "\n" not in message and caught.value.terms == (name,)
    for text in said:
        assert text in message
    return message


def test_plain_types_bool_is_not_an_int_and_an_int_is_a_float():
    assert plain(True, 3, 2, "x") == (True, 3, 2, "x")  # an int for a float
    assert plain(False, np.int64(3), np.float32(0.5), "")[1] == 3  # NumPy numbers are numbers
    refused(lambda: plain(1, 3, 2.0, "x"), "flag", "must be bool, got int 1")
    refused(lambda: plain(True, True, 2.0, "x"), "count", "must be int, got bool True")
    refused(lambda: plain(True, np.bool_(True), 2.0, "x"), "count", "must be int")
    refused(lambda: plain(True, 3.0, 2.0, "x"), "count", "must be int, got float 3.0")
    refused(lambda: plain(True, "3", 2.0, "x"), "count", "must be int, got str '3'")
    refused(lambda: plain(True, 3, False, "x"), "rate", "must be float, got bool False")
    refused(lambda: plain(True, 3, float("nan"), "x"), "rate", "finite")
    refused(lambda: plain(True, 3, -float("inf"), "x"), "rate", "finite")
    refused(lambda: plain(True, 3, 1.0, Path("x")), "text", "must be str")


def test_none_only_where_the_annotation_says_optional():
    refused(lambda: plain(True, None, 1.0, "x"), "count", "must be int, got None")
    assert paths("a", None) == ("a", None)
    refused(lambda: paths(None), "folder", "got None")


def test_paths_take_text_or_path_like_never_empty_or_another_type():
    assert paths("a", "b") == ("a", "b") and paths(Path("a"), Place("b"))[0] == Path("a")
    refused(lambda: paths(""), "folder", "empty string")
    refused(lambda: paths("a", ""), "out", "empty string")  # `str | Path` is a path, not any str
    refused(lambda: paths(Place("")), "folder", "empty string")
    refused(lambda: paths(42), "folder", "must be a path (str or Path), got int 42")
    refused(lambda: paths("a", 42), "out", "got int 42")
    refused(lambda: paths(b"a"), "folder", "got bytes")
    refused(lambda: paths(Place(b"a")), "folder", "bytes")
    refused(lambda: paths("a\0b"), "folder", "NUL")
    refused(lambda: paths(Place(12)), "folder", "must be a path, but its __fspath__ failed (TypeError: ")


def test_a_path_like_whose_fspath_raises_is_refused_by_name():
    class Broken(os.PathLike):
        def __fspath__(self):
            raise ValueError("no path here")

    refused(lambda: paths("a", Broken()), "out", "its __fspath__ failed (ValueError: no path here)")


def test_a_string_is_not_a_sequence_and_every_item_is_checked():
    assert containers([1, 2]) == [1, 2] and containers((1, np.int32(2)), ["x"], (1, 2.5)) == (1, 2)
    refused(lambda: containers("12"), "items", "got str '12'")
    refused(lambda: containers(b"12"), "items", "got bytes")
    refused(lambda: containers({1, 2}), "items", "got set")  # not ordered: not a sequence
    refused(lambda: containers(np.arange(3)), "items", "got ndarray")
    refused(lambda: containers([1, "2"]), "items", "item 1 must be int, got str '2'")
    refused(lambda: containers([1, True]), "items", "item 1 must be int, got bool True")
    refused(lambda: containers([1], ("x",)), "names", "must be a list of str, got tuple")
    refused(lambda: containers([1], ["x", 2]), "names", "item 1 must be str")
    refused(lambda: containers([1], [], [1, 2]), "pairs", "must be a tuple")
    refused(lambda: containers([1], [], ("x",)), "pairs", "item 0 must be float")


def test_mappings_check_their_keys_and_values():
    assert containers([1], table={"a": 1}, keys={"b": object()}) == [1]
    refused(lambda: containers([1], table=[("a", 1)]), "table", "must be a mapping of str to int or None, got list")
    refused(lambda: containers([1], table={"a": "1"}), "table", "value of 'a' must be int, got str '1'")
    refused(lambda: containers([1], table={1: 1}), "table", "key must be str, got int 1")
    refused(lambda: containers([1], keys={2: 0}), "keys", "key must be str")


def test_literal_classes_callables_and_any():
    call = print
    assert others("a", DataSource(), call, whatever=object()) == "a"
    assert others("b", Special(), lambda line: None, inputs=[0, np.int64(1), "x.png", Path("y.png")]) == "b"
    refused(lambda: others("c", DataSource(), call), "mode", "must be one of 'a', 'b', got str 'c'")
    refused(lambda: others(["a"], DataSource(), call), "mode", "one of")
    refused(lambda: others("a", "data", call), "data", "must be DataSource, got str 'data'")
    refused(lambda: others("a", DataSource(), "print"), "call", "must be callable")
    refused(lambda: others("a", DataSource(), call, inputs=3), "inputs", "got int 3")
    refused(lambda: others("a", DataSource(), call, inputs="x.png"), "inputs", "got str 'x.png'")
    refused(lambda: others("a", DataSource(), call, inputs=[0, 1.5]), "inputs", "item 1 must be int, or a path")
    refused(lambda: others("a", DataSource(), call, inputs=[""]), "inputs", "item 0 must be a path, got an empty")


def test_literal_choices_keep_their_type():
    @checked
    def choose(level: Literal[1, 2]) -> int:
        return level

    assert choose(1) == 1
    refused(lambda: choose(True), "level", "got bool True")  # True == 1, but is no choice of these


def test_bounds_are_inclusive_and_a_default_is_checked_too():
    assert bounded(1) == bounded(100) - 99 == 1 and bounded(seed=0) == 12 and bounded(low=0.5) == 12
    assert bounded(seed=None) == 12  # an open seed: no bound to check
    refused(lambda: bounded(0), "n", "must be between 1 and 100, got 0")
    refused(lambda: bounded(101), "n", "between 1 and 100, got 101")
    refused(lambda: bounded(seed=-1), "seed", "must be at least 0, got -1")
    refused(lambda: bounded(low=0.51), "low", "must be at most 0.5, got 0.51")
    refused(lambda: bounded(n=True), "n", "must be int")  # the type first, then the bounds

    @checked(n=(1, 10))
    def wrong_default(n: int = 0) -> int:
        return n

    refused(wrong_default, "n", "between 1 and 10, got 0")

    @checked
    def wrong_default_type(name: str = None) -> str:  # type: ignore[assignment]
        return name

    refused(wrong_default_type, "name", "must be str, got None")


def test_keyword_only_arguments_and_each_value_of_kwargs_are_checked():
    assert keyword_only(jobs=2, epochs=3) == {"jobs": 2, "epochs": 3}
    refused(lambda: keyword_only(jobs="2"), "jobs", "must be int, got str '2'")
    refused(lambda: keyword_only(epochs="3"), "epochs", "must be int, got str '3'")

    @checked
    def anything(**changes: Any) -> dict:
        return changes

    assert anything(epochs="3") == {"epochs": "3"}  # config keys: TrainConfig checks them


def test_star_args_are_checked_item_by_item():
    @checked
    def total(*numbers: int) -> int:
        return sum(numbers)

    assert total(1, 2) == 3
    refused(lambda: total(1, "2"), "numbers[1]", "must be int")


def test_methods_and_classmethods_skip_self_and_cls():
    class Thing:
        @checked
        def __init__(self, size: int):
            self.size = size

        @classmethod
        @checked
        def made(cls, size: int) -> Thing:
            return cls(size)

    assert Thing.made(3).size == 3
    refused(lambda: Thing("3"), "size", "got str '3'")
    refused(lambda: Thing.made(3.0), "size", "got float 3.0")


def test_a_wrong_call_shape_stays_a_type_error_said_in_one_line_and_the_function_is_unchanged():
    with pytest.raises(TypeError):
        plain(True)
    with pytest.raises(TypeError):
        keyword_only(2)
    with pytest.raises(CallError, match="^sweep: got an unexpected keyword argument 'samplr'; did you mean "
                                        "`sampler`\\?$") as wrong:
        fl.sweep("space.toml", samplr="tpe")
    assert isinstance(wrong.value, FashionlabError) and isinstance(wrong.value, TypeError)
    assert plain.__name__ == "plain" and inspect.signature(plain) == inspect.signature(plain.__wrapped__)


def test_keywords_that_are_config_keys_are_refused_by_name_when_misspelled_before_any_work(tmp_path):
    with pytest.raises(CallError, match="^compare: got an unexpected keyword argument 'seds'; did you mean `seeds`"):
        fl.compare(["raw"], seds=2, out=tmp_path / "c")
    with pytest.raises(CallError, match="^train: got an unexpected keyword argument 'epohcs'; did you mean `epochs`"):
        fl.train(epohcs=2, run_dir=tmp_path / "r")
    with pytest.raises(CallError, match="^sweep: got an unexpected keyword argument 'zzz'; it takes space, "):
        fl.sweep("space.toml", zzz=1)
    assert not (tmp_path / "c").exists() and not (tmp_path / "r").exists()


def test_a_missing_annotation_or_a_bound_on_no_argument_is_a_bug_found_at_decoration():
    with pytest.raises(TypeError, match="without annotations"):
        @checked
        def bare(self, n, m: int = 1):
            pass
    with pytest.raises(TypeError, match="unknown parameters"):
        @checked(count=(1, 2))
        def misnamed(n: int = 1):
            pass


def test_an_annotation_it_cannot_check_is_said_at_the_first_call():
    @checked
    def fixed(pair: tuple[int, str]) -> None:
        pass

    with pytest.raises(TypeError, match="fixed-length"):
        fixed((1, "a"))


def test_annotations_are_resolved_once_at_the_first_call(monkeypatch):
    calls = []
    resolve = arguments._rules
    monkeypatch.setattr(arguments, "_rules", lambda *a: calls.append(1) or resolve(*a))

    @checked
    def later(config: TrainConfig, n: int = 1) -> int:
        return n

    assert calls == []  # not at decoration: names used in annotations may not exist yet
    assert [later(TrainConfig(), n) for n in range(3)] == [0, 1, 2] and calls == [1]


def test_the_cli_says_the_argument_as_its_flag():
    @checked
    def top(top_k: int = 3) -> int:
        return top_k

    with pytest.raises(ConfigError) as caught:
        top("3")
    assert in_cli_terms(caught.value, {"top_k": "--top-k"}) == "--top-k must be int, got str '3'"
