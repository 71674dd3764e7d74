"""The kinds of problem fashionlab reports: one class each, every message one line saying what
is wrong and what to do.

    try: train(config)
    except FashionlabError as exc: print(exc)

Messages name arguments the way a Python caller writes them, in backticks (`top_k`,
`verify=False`), and list them in `terms`, so that a front end can say them its own way: the
CLI turns `top_k` into --top-k (see cli.py). Configuration keys are named plainly: they are the
same in a TOML file.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path


class FashionlabError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do.

    `terms`: the backticked argument names in the message, e.g. ("top_k",) for
    "`top_k` must be between 1 and 10".
    """

    exit_code = 1

    def __init__(self, message: str, *, terms: Iterable[str] = ()):
        super().__init__(message)
        self.terms = tuple(terms)

    def __reduce__(self):  # errors cross process boundaries (the runner's workers): keep the terms
        return _rebuild, (type(self), str(self), self.terms)


def _rebuild(cls: type[FashionlabError], message: str, terms: tuple[str, ...]) -> FashionlabError:
    return cls(message, terms=terms)


def did_you_mean(word: str, choices: Iterable[str], quote: bool = True) -> str:
    """" (did you mean 'epochs'?)" for the one of `choices` closest to a misspelled `word`, or ""."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1)
    if not close:
        return ""
    return f" (did you mean {close[0]!r}?)" if quote else f" (did you mean {close[0]}?)"


ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # Keras emboldens parts of its messages for terminals


def reason(exc: BaseException, limit: int = 120) -> str:
    """An exception's text on one line, without terminal escapes, cut to `limit` characters: for
    quoting another library's error."""
    return " ".join(ANSI_ESCAPE.sub("", str(exc)).split())[:limit]


def resume_call(run_dir: str | Path) -> str:
    """The term for "finish this run": `resume('runs/x')` in Python, `fashionlab train --resume runs/x` in a shell."""
    return f"resume({str(run_dir)!r})"


class ConfigError(FashionlabError):
    """A configuration key, or an argument of a library call, has a value that cannot be used."""


class CallError(ConfigError, TypeError):
    """A public function called with arguments it does not take (a misspelled name, too many): a
    TypeError as Python would raise, said in one line with what it does take."""


class DataError(FashionlabError):
    """The dataset is missing, unreadable or not what it claims to be."""


class RunError(FashionlabError):
    """A run directory is missing, unfinished, busy, damaged, or holds something it should not."""


class ImageError(FashionlabError):
    """An input image cannot be read or used."""


class ExportError(FashionlabError):
    """A model cannot be exported, or its export does not give the model's results."""


class Diverged(FashionlabError):
    """Training stopped because the loss became NaN or infinite."""


class Interrupted(FashionlabError):
    """Work stopped on request (Ctrl-C or SIGTERM) at a safe point; what finished is kept."""

    exit_code = 130  # the shell's code for a Ctrl-C


class ModelTimeout(RunError):
    """A model's call ran over its time limit and was stopped."""


class ModelBusy(RunError):
    """A model is still busy with a call that ran over its time limit: nothing more is sent to it until it ends."""
