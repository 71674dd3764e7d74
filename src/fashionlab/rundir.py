"""Run directories: every artifact written atomically, a status and a lock, each file read back through its schema.

    with Run.create("runs/20260101-120000-tutorial") as run: run.write_json("config.json", {...})
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fashionlab.config import TrainConfig, from_dict, name_problem
from fashionlab.datasets import FASHION_MNIST, Dataset, from_record
from fashionlab.errors import ConfigError, RunError, reason, resume_call
from fashionlab.files import kind_of, outermost_missing, read_text
from fashionlab.modelfiles import load_model_file
from fashionlab.records import MAX_MEMBERS, EnsembleMetrics, EnsembleRecord, HistoryRow, Metrics, Status, first_problem

if TYPE_CHECKING:
    import pandas as pd

MODEL_FILE = "model.keras"
CHECKPOINT_PREFIX = "checkpoint-epoch"  # checkpoint-epoch3.keras: the model after epoch 3
CHECKPOINT_NAME = re.compile(re.escape(CHECKPOINT_PREFIX) + r"([1-9][0-9]{0,8})\.keras")
STATUS_FILE = "run.json"
ENSEMBLE_FILE = "ensemble.json"  # an ensemble's members, in place of config.json
LOCK_FILE = ".lock"
STATUSES = ("running", "complete", "failed", "interrupted")
MAX_TEXT_BYTES = 16 * 1024 * 1024  # run.json, config.json, metrics.json, history.csv, ...
UMASK = os.umask(0)  # this process' umask, read once: new files and folders get 0666 / 0777 less it
os.umask(UMASK)


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    return Path(root) / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"


def now() -> str:
    """An ISO timestamp in UTC, as run.json records times."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write to; renamed over `path` only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
    try:
        yield Path(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class Run:
    """A run directory on disk; while held (create/acquire), an exclusive lock keeps others out."""

    def __init__(self, path: str | Path, lock: int | None = None):
        self.path = Path(path)
        self._lock = lock

    # --- opening --------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path) -> Run:
        """A new run directory, locked; an existing non-empty one is refused, never overwritten."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise RunError(f"{path} exists and is not a directory; choose another `run_dir`", terms=["run_dir"])

        def refuse_if_not_empty() -> None:
            if any(p.name != LOCK_FILE for p in path.iterdir()):
                raise RunError(f"run directory {path} already exists and is not empty; choose another `run_dir`",
                               terms=["run_dir"])

        if path.is_dir():
            refuse_if_not_empty()  # before the lock file: a refused folder is left as it was
        # The outermost folder made here: removed again if the run cannot start.
        made = outermost_missing(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            run = cls.acquire(path)
        except OSError as exc:
            _remove_made(made)
            raise RunError(f"cannot create run directory {path}: {exc.strerror or exc}; choose another `run_dir`",
                           terms=["run_dir"]) from None
        except RunError:
            _remove_made(made)
            raise
        try:
            refuse_if_not_empty()  # again, holding the lock: another process may have written meanwhile
        except RunError:
            run.release()
            raise
        return run

    @classmethod
    def acquire(cls, path: str | Path) -> Run:
        """Lock an existing run directory for writing; refused while another process holds it."""
        path = Path(path)
        try:  # never through a link: the lock file is created only inside the run directory
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         0o666 & ~UMASK)
        except OSError as exc:
            why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or exc
            raise RunError(f"cannot lock run directory {path} ({LOCK_FILE}: {why}); "
                           f"remove {path / LOCK_FILE} if it is not a plain file") from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise RunError(f"cannot lock run directory {path}: {LOCK_FILE} is {kind_of(mode)}; remove it")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = "?"
            with contextlib.suppress(RunError):
                pid = Run(path).status().get("pid", "?")
            raise RunError(f"{path} is in use by another fashionlab process (pid {pid}); "
                           f"wait for it to finish") from None
        return cls(path, fd)

    @classmethod
    def open(cls, path: str | Path, *, allow_incomplete: bool = False) -> Run:
        """An existing run to read. Unless allowed, it must be complete."""
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path} is not a run directory; pass the folder that training printed")
        run = cls(path)
        if not run.file("config.json").is_file() and not run.is_ensemble():
            raise RunError(f"{path} has no config.json: it is not a fashionlab run directory")
        status = run.status()
        if status["status"] == "unknown":
            raise RunError(f"{path} has no run.json: it is not a fashionlab run, or its training never started; "
                           f"train it again")
        if status["status"] != "complete" and run.is_ensemble():  # written whole: never resumed
            raise RunError(f"{path} is an ensemble that was not finished ({status['status']}); make it again with "
                           f"`fashionlab ensemble`")
        if status["status"] != "complete" and not allow_incomplete:
            done = f" after {status['epochs_done']} of {status['epochs']} epochs" if "epochs" in status else ""
            state = status["status"]
            if state == "running" and not run.in_use():
                state = "unfinished (its process died)"
            raise RunError(f"{path} is {state}{done}; finish it with `{resume_call(path)}`, "
                           f"or pass `allow_incomplete=True` to use its last checkpoint",
                           terms=[resume_call(path), "allow_incomplete=True"])
        if run.model_file() is None:
            raise RunError(f"{path} has no {MODEL_FILE}: the run did not finish; train it again")
        return run

    def in_use(self) -> bool:
        """Whether a process holds this run's lock now (is training or evaluating it)."""
        try:
            fd = os.open(self.file(LOCK_FILE), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor drops the flock
            self._lock = None

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    # --- files ----------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        return self.path / name

    def write_with(self, name: str, write: Callable[[Path], Any]) -> Path:
        """Call write(tmp_path), then move the finished file into place as `name`."""
        target = self.file(name)
        try:
            with atomic_path(target) as tmp:
                write(tmp)
        except OSError as exc:
            reason = "the disk is full" if exc.errno == errno.ENOSPC else (exc.strerror or str(exc))
            raise RunError(f"cannot write {target}: {reason}; earlier artifacts are intact") from None
        return target

    def write_text(self, name: str, text: str) -> Path:
        return self.write_with(name, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2) + "\n")

    def read_text(self, name: str) -> str:
        """One of the run's own files: a regular file inside the directory (never a link), size-capped."""
        return read_text(self.file(name), what="run file", error=RunError, limit=MAX_TEXT_BYTES, follow_links=False)

    def damaged(self, name: str, problem: str) -> RunError:
        again = "make the ensemble again" if self.is_ensemble() else "train the run again"
        return RunError(f"{self.file(name)}: {problem}; the run directory is damaged, restore the file or {again}")

    def read_json(self, name: str, schema: Any = None) -> Any:
        """A JSON file of the run, checked against `schema` (see records.py) when one is given."""
        try:
            value = json.loads(self.read_text(name))
        except (ValueError, RecursionError) as exc:
            raise self.damaged(name, f"not valid JSON ({reason(exc)})") from None
        problem = first_problem(value, schema) if schema is not None else None
        if problem:
            raise self.damaged(name, problem)
        return value

    def is_ensemble(self) -> bool:
        """Whether this folder is an ensemble (`fashionlab ensemble`): runs averaged, not a training."""
        return os.path.lexists(self.file(ENSEMBLE_FILE))

    def ensemble(self) -> dict[str, Any]:
        """ensemble.json: the ensemble's name and its members (2 to MAX_MEMBERS runs)."""
        record = self.read_json(ENSEMBLE_FILE, EnsembleRecord)
        count = len(record["members"])
        problem = name_problem(record["name"]) or (None if 2 <= count <= MAX_MEMBERS else
                                                   f"it must list 2 to {MAX_MEMBERS} members, not {count}")
        if problem:
            raise self.damaged(ENSEMBLE_FILE, problem)
        return record

    def not_trained(self) -> RunError:
        """What a caller hears who asks an ensemble for what only a training has."""
        return RunError(f"{self.path} is an ensemble of runs: it was not trained, so it has no config, history or "
                        f"checkpoints; use the runs it averages ({ENSEMBLE_FILE} lists them)")

    def name(self) -> str:
        """The run's label: its config's name, or the ensemble's."""
        return self.ensemble()["name"] if self.is_ensemble() else self.config().name

    def config(self) -> TrainConfig:
        """config.json as the config it records."""
        if self.is_ensemble():
            raise self.not_trained()
        values = self.read_json("config.json")
        if not isinstance(values, dict):
            raise self.damaged("config.json", "it must hold a table of keys and values")
        try:
            return from_dict(values)
        except ConfigError as exc:
            raise self.damaged("config.json", str(exc)) from None

    def metrics(self) -> dict[str, Any]:
        """metrics.json, through its schema (an ensemble's: one figure for each of its members)."""
        if not os.path.lexists(self.file("metrics.json")):
            raise self.damaged("metrics.json", "it is missing")
        if not self.is_ensemble():
            return self.read_json("metrics.json", Metrics)
        metrics, members = self.read_json("metrics.json", EnsembleMetrics), len(self.ensemble()["members"])
        if len(metrics["member_test_accuracy"]) != members:
            raise self.damaged("metrics.json", f"`member_test_accuracy` must hold one figure for each of the "
                                               f"{members} members, not {len(metrics['member_test_accuracy'])}")
        return metrics

    def read_table(self, name: str, **options: Any) -> pd.DataFrame:
        """A CSV file of the run (pandas' read_csv `options`), as a table or a damage report."""
        import pandas as pd

        try:  # pandas' parser errors are ValueErrors
            return pd.read_csv(io.StringIO(self.read_text(name)), **options)
        except ValueError as exc:
            raise self.damaged(name, f"not a readable CSV table ({reason(exc)})") from None

    def history(self) -> pd.DataFrame:
        """history.csv: one row per finished epoch, numbered from 1."""
        if self.is_ensemble():
            raise self.not_trained()
        frame = self.read_table("history.csv")
        rows = frame.to_dict("records")
        problem = next(filter(None, (first_problem(_plain(row), HistoryRow, f"row {i + 1}")
                                     for i, row in enumerate(rows))), None)
        if problem is None and not rows:
            problem = "it holds no epochs"
        if problem is None and [row["epoch"] for row in rows] != list(range(1, len(rows) + 1)):
            problem = "its epochs must be numbered 1, 2, 3, ... one row each"
        if problem:
            raise self.damaged("history.csv", problem)
        return frame

    def confusion(self) -> np.ndarray:
        """confusion_matrix.csv as a classes x classes array of counts (rows: true class)."""
        matrix, classes = self.read_table("confusion_matrix.csv", index_col=0).to_numpy(), self.dataset().classes
        if matrix.shape != (classes, classes) or matrix.dtype.kind not in "iu" or (matrix < 0).any():
            raise self.damaged("confusion_matrix.csv", f"it must hold a {classes} x {classes} table of counts")
        return matrix

    # --- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """run.json; without one, a folder with metrics.json counts as complete (older runs)."""
        if os.path.lexists(self.file(STATUS_FILE)):
            return self.read_json(STATUS_FILE, Status)
        if self.is_ensemble():  # ensembles always had one
            raise self.damaged(STATUS_FILE, "it is missing")
        return {"status": "complete" if self.file("metrics.json").is_file() else "unknown"}

    def dataset(self) -> Dataset:
        """The data set the run was trained on: as run.json records it, or Fashion-MNIST for runs
        made before data sets were recorded."""
        kept = self.status().get("dataset")
        return FASHION_MNIST if kept is None else from_record(kept, str(self.file(STATUS_FILE)))

    def shared_config(self) -> dict[str, Any]:
        """The config as an exported file or a served API shows it to others: a data set of your own
        named, not located (its folder's path on this machine stays here); an ensemble's: its members'."""
        if self.is_ensemble():
            return {"ensemble": [member["config"] for member in self.ensemble()["members"]],
                    "dataset": self.dataset().name}
        return self.config().to_dict() | {"dataset": self.dataset().name}

    def set_status(self, status: str, **fields: Any) -> None:
        assert status in STATUSES, status
        try:
            current = self.status() if os.path.lexists(self.file(STATUS_FILE)) else {}
        except RunError:
            current = {}  # a damaged run.json is replaced by a correct one
        self.write_json(STATUS_FILE, {**current, **fields, "status": status, "pid": os.getpid(), "updated": now()})

    # --- models ---------------------------------------------------------------------------

    def checkpoints(self) -> dict[int, Path]:
        """Checkpoints by the epoch they end; normally one, briefly two while the next is saved."""
        found = {}
        for path in self.path.glob(f"{CHECKPOINT_PREFIX}*.keras"):
            match = CHECKPOINT_NAME.fullmatch(path.name)
            if match:
                found[int(match[1])] = path
        return dict(sorted(found.items()))

    def save_checkpoint(self, model, epoch: int, keep: int | None = None) -> None:
        """Save the model after `epoch`, then drop older checkpoints but `keep`'s (the best epoch's,
        when the run restores it at the end): one is always complete."""
        self.save_model(model, f"{CHECKPOINT_PREFIX}{epoch}.keras")
        for older, path in self.checkpoints().items():
            if older not in (epoch, keep):
                path.unlink(missing_ok=True)

    def model_file(self) -> Path | None:
        """model.keras, or for an unfinished run its last epoch's checkpoint."""
        if self.file(MODEL_FILE).is_file():
            return self.file(MODEL_FILE)
        return next(reversed(self.checkpoints().values()), None)

    def save_model(self, model, name: str = MODEL_FILE) -> Path:
        return self.write_with(name, lambda tmp: model.save(tmp))

    def load_model(self):
        """The run's model for inference (not compiled), loaded from its .keras archive with Keras' safe mode on."""
        path = self.model_file()
        if path is None:
            raise RunError(f"{self.path} has no {MODEL_FILE}; train it again")
        return load_model_file(path, classes=self.dataset().classes)


def _remove_made(folder: Path | None) -> None:
    """Remove a folder tree this process made, if it holds nothing but empty folders and a lock."""
    if folder is None:
        return
    for root, dirs, files in os.walk(folder, topdown=False):
        if any(name != LOCK_FILE for name in files):
            return
        with contextlib.suppress(OSError):
            for name in files:
                os.unlink(os.path.join(root, name))
            os.rmdir(root)


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """NumPy scalars as the Python numbers they hold."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in row.items()}
