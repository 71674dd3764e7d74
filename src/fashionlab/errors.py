"""The kinds of problem fashionlab reports: one class each, every message one line saying what
is wrong and what to do.

    try: train(config)
    except FashionlabError as exc: print(exc)

Messages name arguments the way a Python caller writes them, in backticks (`top_k`,
`verify=False`), so that a front end can say them its own way: the CLI turns `top_k` into
--top-k (see cli.py). Configuration keys are named plainly: they are the same in a TOML file.
"""


class FashionlabError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""

    exit_code = 1


class ConfigError(FashionlabError):
    """A configuration key, or an argument of a library call, has a value that cannot be used."""


class DataError(FashionlabError):
    """The dataset is missing, unreadable or not what it claims to be."""


class RunError(FashionlabError):
    """A run directory is missing, unfinished, busy, damaged, or holds something it should not."""


class ImageError(FashionlabError):
    """An input image cannot be read or used."""


class Diverged(FashionlabError):
    """Training stopped because the loss became NaN or infinite."""


class Interrupted(FashionlabError):
    """Work stopped on request (Ctrl-C or SIGTERM) at a safe point; what finished is kept."""

    exit_code = 130  # the shell's code for a Ctrl-C
