"""Where a sweep's study lives: a journal file in the sweep folder, or a database every worker opens;
its URL checked and shown without its secrets; a journal a crash cut short repaired, a damaged one
refused with the way out.

    check_storage_url("postgresql://sweeper@db-host/fashionlab")
    backend = open_storage("runs/sweep/study.journal")
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from fashionlab.errors import ConfigError, FashionlabError, RunError, reason
from fashionlab.urls import masked, url_label

if TYPE_CHECKING:
    import optuna

JOURNAL = "study.journal"  # the study, when no `storage` is given
STORAGE_ATTEMPTS = 3  # connecting to a database
SHARED_SCHEMES = re.compile(r"(postgresql|postgres|mysql)(\+[a-z0-9_]+)?")


# --- the URL, never its secrets ---------------------------------------------------------------

def storage_record(storage: str | None) -> str:
    """The storage as sweep.json records it: the journal in the sweep folder, wherever the folder is now
    (it may be moved or copied), or the database's URL as shown. Also reads an older record (the
    journal's absolute path, or a label that showed the user's name)."""
    return JOURNAL if storage is None or "://" not in storage else url_label(storage)


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


def check_storage_url(storage: str) -> None:
    """--storage takes the URL of a database that every worker of the sweep can open: PostgreSQL or
    MySQL (with or without a +driver), or an SQLite file. Anything else is refused before anything is
    written, showing no more than its scheme: a mistyped URL, another kind of storage, and an
    in-memory database, which lives and dies with one process."""
    found = re.fullmatch(r"([A-Za-z][A-Za-z0-9+.-]*)://(\S*)", storage)
    if not found or not found[2] and found[1].lower() != "sqlite":
        raise ConfigError("`storage` must be a database URL such as postgresql://user@host/db (it is not shown "
                          "here, in case it holds a password)", terms=["storage"])
    scheme, rest = found[1].lower(), found[2]
    if scheme == "sqlite":
        path = rest.removeprefix("/") if rest.startswith("/") else ""
        if not path or path == ":memory:" or path.startswith("file:") or re.search(r"[?#]", path):
            raise ConfigError("`storage` sqlite:// must name a file every worker opens, sqlite:///FILE, without "
                              "options: an in-memory database lives and dies with one process", terms=["storage"])
    elif not SHARED_SCHEMES.fullmatch(scheme):
        raise ConfigError(f"`storage` {scheme}://... cannot hold a study; give a database every worker "
                          f"opens: postgresql://user@host/db, mysql+pymysql://user@host/db or sqlite:///FILE",
                          terms=["storage"])


# --- opening it ---------------------------------------------------------------------------------

def journal_remedy(path: str | Path) -> str:
    """What to do with a damaged journal: move it away, and the next start rebuilds the study."""
    import shlex

    return (f"move it away (mv {shlex.quote(str(path))} {shlex.quote(f'{path}.damaged')}) and run the same command "
            f"again: the trials whose runs are in the sweep folder are recorded again from their files")


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
    raise RunError(f"cannot use the study storage {url_label(storage)} ({first[:300]}); {hint}",
                   terms=["storage"]) from None


def worker_storage(storage: str) -> optuna.storages.BaseStorage:
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


def repair_journal(path: Path) -> None:
    """A journal whose last line a crash cut short: the line goes (no worker ever read it), so that
    the next write starts on a line of its own. Done under the journal's own lock. A whole last line
    that is not an operation is damage, refused here: Optuna skips it when reading, then fails on the
    next read once a line follows it."""
    from optuna.storages.journal import JournalFileSymlinkLock

    if not path.is_file() or path.is_symlink() or path.stat().st_size == 0:
        return
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with path.open("rb+") as journal:
            size = journal.seek(0, os.SEEK_END)
            start = max(0, size - 4 * 1024 * 1024)  # one operation is far shorter than this
            journal.seek(start)
            tail = journal.read()
            if not tail.endswith(b"\n"):
                cut = tail.rfind(b"\n")
                journal.truncate(start + cut + 1 if cut >= 0 else 0)
                tail = tail[:cut + 1]
    finally:
        lock.release()
    last = tail[:-1].rpartition(b"\n")[2]
    try:
        if last and not isinstance(json.loads(last), dict):
            raise ValueError("not an operation")
    except (ValueError, RecursionError) as exc:
        raise RunError(f"the study journal {path} is damaged (its last line: {reason(exc, 100)}); "
                       f"{journal_remedy(path)}", terms=["out"]) from None
