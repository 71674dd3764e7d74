"""The arguments of a public function, checked at entry against its annotations, as a config's
keys are checked against TrainConfig's: one mechanism for every call of the Python API.

    @checked(seeds=(1, MAX_SEEDS), jobs=(1, None))
    def compare(out: str | Path, *, variants: Sequence[str] = ..., seeds: int = 3, jobs: int = 1): ...

A wrong argument is a ConfigError naming it as the caller wrote it ("`seeds` must be int, got
str '3'"), raised before the function runs, so nothing has been written. What each annotation
allows:

- bool; int (not a bool, a NumPy integer is one); float (an int too; finite); str;
- Path, or a union holding Path (`str | Path`): a str or os.PathLike, not empty (that would mean
  the current folder), without a NUL character;
- `X | None`, and unions of the above; Literal[...] (the value and its type);
- Sequence[X], list[X], tuple[X, ...]: every item an X, and never a str or bytes (which would be
  iterated character by character); Mapping[K, V], dict[K, V];
- Callable (anything callable); Any (no check); any other class (isinstance).

Bounds that an annotation cannot say are given to the decorator: `name=(low, high)`, inclusive,
None for an open side, checked when the value is a number. The annotations are resolved once, at
the first call (a module's names, and the class a method returns, exist only by then).
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import math
import numbers
import os
import types
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal

from fashionlab.errors import CallError, ConfigError, reason
from fashionlab.records import shown

Bounds = tuple[float | None, float | None]


@dataclass(frozen=True)
class Rule:
    """What one annotation allows: `says` it in words, `fits` tells whether a value is of its kind,
    `inner` (for containers, paths and choices) says what else is wrong with a value that fits."""

    says: str
    fits: Callable[[Any], bool]
    inner: Callable[[Any], str | None] | None = None

    def problem(self, value: Any) -> str | None:
        if not self.fits(value):
            got = "None" if value is None else f"{type(value).__name__} {shown(value)}"
            return f"must be {self.says}, got {got}"
        return self.inner(value) if self.inner else None


def _is_int(value: Any) -> bool:
    # bool is an int to Python: True must not pass as a count
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value: Any) -> str | None:
    if isinstance(value, numbers.Integral) or math.isfinite(value):
        return None
    return f"must be a finite number, got {shown(value)}"


def _path_problem(value: Any) -> str | None:
    try:  # a path-like object is the caller's code: its __fspath__ may return anything, or raise
        text = os.fspath(value)
    except Exception as exc:
        return f"must be a path, but its __fspath__ failed ({type(exc).__name__}: {reason(exc, 100)})"
    if isinstance(text, bytes):
        return f"must be a path as text, got bytes {shown(text)}"
    if not text:
        return "must be a path, got an empty string (which would mean the current folder)"
    if "\0" in text:
        return f"must be a path without a NUL character, got {shown(text)}"
    return None


PLAIN = {bool: Rule("bool", lambda v: isinstance(v, bool)), int: Rule("int", _is_int),
         float: Rule("float", _is_real, _finite), str: Rule("str", lambda v: isinstance(v, str))}
PATH = Rule("a path (str or Path)", lambda v: isinstance(v, (str, os.PathLike)), _path_problem)
NONE = Rule("None", lambda v: v is None)
ANY = Rule("anything", lambda v: True)
TEXT = (str, bytes, bytearray)  # sequences to Python, but never a list of things here
# The container an annotation names, and the class a value must be an instance of.
SEQUENCES = {list: list, tuple: tuple, collections.abc.Sequence: collections.abc.Sequence}
MAPPINGS = {dict: dict, collections.abc.Mapping: collections.abc.Mapping}


def rule(hint: Any) -> Rule:
    """The rule of a resolved annotation; TypeError for one this module cannot check."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return ANY
    if hint is None or hint is type(None):
        return NONE
    if origin is typing.Annotated:
        return rule(args[0])
    if origin in (typing.Union, types.UnionType):
        return _union(args)
    if origin is Literal:
        return Rule("one of " + ", ".join(map(repr, args)),
                    lambda v: any(type(v) is type(c) and v == c for c in args))  # True is not 1 here
    if hint in PLAIN:
        return PLAIN[hint]
    if isinstance(hint, type) and issubclass(hint, (PurePath, os.PathLike)):
        return PATH
    if (origin or hint) in SEQUENCES:
        return _sequence(SEQUENCES[origin or hint], args)
    if (origin or hint) in MAPPINGS:
        return _mapping(MAPPINGS[origin or hint], args)
    if (origin or hint) is collections.abc.Callable:
        return Rule("callable", callable)
    if isinstance(hint, type) and origin is None:
        return Rule(hint.__name__, lambda v: isinstance(v, hint))
    raise TypeError(f"cannot check arguments annotated {hint!r}")


def _union(members: tuple[Any, ...]) -> Rule:
    if any(isinstance(m, type) and issubclass(m, (PurePath, os.PathLike)) for m in members):
        members = tuple(m for m in members if m is not str)  # `str | Path` is a path: "" is refused
    rules = [rule(m) for m in members]

    def inner(value: Any) -> str | None:  # the first member the value is of says what else is wrong
        return next(r for r in rules if r.fits(value)).problem(value)

    said = [r.says for r in rules]
    return Rule((", or " if any(" or " in x for x in said) else " or ").join(said),
                lambda v: any(r.fits(v) for r in rules), inner)


def _sequence(kind: type, args: tuple[Any, ...]) -> Rule:
    if kind is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
        raise TypeError(f"cannot check a fixed-length tuple[{args}]; use tuple[X, ...]")
    item = rule(args[0]) if args else ANY
    name = {list: "a list", tuple: "a tuple"}.get(kind, "a list or tuple")
    items = f"whose items are each {item.says}" if " or " in item.says else f"of {item.says}"

    def inner(value: Any) -> str | None:
        return next((f"item {i} {p}" for i, v in enumerate(value) if (p := item.problem(v))), None)

    return Rule(f"{name} {items}" if args else name,
                lambda v: isinstance(v, kind) and not isinstance(v, TEXT), inner)


def _mapping(kind: type, args: tuple[Any, ...]) -> Rule:
    key, value = (rule(args[0]), rule(args[1])) if args else (ANY, ANY)

    def inner(mapping: Any) -> str | None:
        for k, v in mapping.items():
            problem = key.problem(k)
            if problem:
                return f"key {problem}"
            problem = value.problem(v)
            if problem:
                return f"value of {shown(k)} {problem}"
        return None

    return Rule(f"a mapping of {key.says} to {value.says}" if args else "a mapping", lambda v: isinstance(v, kind),
                inner)


def _bounds_problem(value: Any, bounds: Bounds) -> str | None:
    low, high = bounds
    if (low is None or value >= low) and (high is None or value <= high):
        return None
    if low is not None and high is not None:
        return f"must be between {low} and {high}, got {shown(value)}"
    return f"must be at least {low}, got {shown(value)}" if low is not None else \
        f"must be at most {high}, got {shown(value)}"


def _rules(function: Callable, signature: inspect.Signature) -> dict[str, Rule]:
    """Each annotated parameter's rule; the return annotation is not read (it may name a class
    imported only for type checkers)."""
    resolved = {}
    for name, parameter in signature.parameters.items():
        if parameter.annotation is parameter.empty:
            continue
        hint = parameter.annotation
        if isinstance(hint, str):  # `from __future__ import annotations`: evaluated where it was written
            hint = eval(hint, function.__globals__)  # noqa: S307 - the module's own source text
        resolved[name] = rule(hint)
    return resolved


def checked(function: Callable | None = None, /, *, keywords: Collection[str] | None = None,
            **bounds: Bounds) -> Any:
    """Check every argument of `function` against its annotation (and `bounds`) at each call:
    `@checked` or `@checked(n=(1, 100))`. Every parameter but `self` and `cls` must be annotated;
    *args and **kwargs have each of their values checked against theirs. `keywords`: the names
    **kwargs may take (config keys); another is refused as Python refuses an unknown argument,
    with the closest of the parameters and `keywords`."""

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)
        parameters = signature.parameters
        unknown = sorted(set(bounds) - set(parameters))
        bare = [name for name, p in parameters.items() if p.annotation is p.empty and name not in ("self", "cls")]
        if unknown or bare:
            raise TypeError(f"@checked {function.__qualname__}: bounds for unknown parameters {unknown}, "
                            f"parameters without annotations {bare}")
        kinds = {name: p.kind for name, p in parameters.items()}
        rules: dict[str, Rule] | None = None

        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            nonlocal rules
            if rules is None:
                rules = _rules(function, signature)
            try:
                given = signature.bind(*args, **kwargs)
            except TypeError as exc:  # a wrong call shape: still a TypeError, and one line saying what it takes
                raise CallError(_call_problem(function, parameters, str(exc), kwargs)) from None
            given.apply_defaults()  # defaults too: a wrong default is a bug to catch, not to pass on
            for name, value in given.arguments.items():
                kind = kinds[name]
                stray = [key for key in value if key not in keywords] if kind is inspect.Parameter.VAR_KEYWORD \
                    and keywords is not None else []
                if stray:
                    raise CallError(_call_problem(function, parameters, f"got an unexpected keyword argument "
                                                  f"{stray[0]!r}", {stray[0]: None}, keywords))
                if kind is inspect.Parameter.VAR_KEYWORD:
                    for key, item in value.items():
                        _check(key, item, rules[name], None)
                elif kind is inspect.Parameter.VAR_POSITIONAL:
                    for i, item in enumerate(value):
                        _check(f"{name}[{i}]", item, rules[name], None)
                elif name in rules:
                    _check(name, value, rules[name], bounds.get(name))
            return function(*args, **kwargs)

        return wrapper

    return decorate(function) if function is not None else decorate


def _call_problem(function: Callable, parameters, said: str, kwargs: dict[str, Any],
                  keywords: Collection[str] = ()) -> str:
    """Python's complaint about a call, with the closest name it takes for a misspelled one."""
    import difflib

    named = [n for n, p in parameters.items() if n not in ("self", "cls") and p.kind not in (p.VAR_POSITIONAL,
                                                                                           p.VAR_KEYWORD)]
    unknown = [k for k in kwargs if k not in parameters]
    close = difflib.get_close_matches(unknown[0], [*named, *keywords], n=1) if unknown else []
    hint = f"; did you mean `{close[0]}`?" if close else f"; it takes {', '.join(named)}"
    return f"{function.__qualname__}: {said.split(': ', 1)[-1] if ': ' in said else said}{hint}"


def _check(name: str, value: Any, allowed: Rule, bounds: Bounds | None) -> None:
    problem = allowed.problem(value)
    if problem is None and bounds is not None and _is_real(value):
        problem = _bounds_problem(value, bounds)
    if problem:
        raise ConfigError(f"`{name}` {problem}", terms=[name])
