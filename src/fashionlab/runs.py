"""Run directories: every artifact written atomically, a status and a lock, models read back safely.

    with Run.create("runs/20260101-120000-tutorial") as run: run.write_json("config.json", {...})
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fashionlab.errors import RunError, resume_call

MODEL_FILE = "model.keras"
CHECKPOINT_PREFIX = "checkpoint-epoch"  # checkpoint-epoch3.keras: the model after epoch 3
STATUS_FILE = "run.json"
LOCK_FILE = ".lock"
STATUSES = ("running", "complete", "failed", "interrupted")
# A .keras archive of this network is ~3.5 MB; refuse archives that would inflate past this.
MAX_MODEL_UNCOMPRESSED_BYTES = 512 * 1024 * 1024
_UMASK = os.umask(0)
os.umask(_UMASK)


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
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; artifacts get the usual permissions
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
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunError(f"cannot create run directory {path}: {exc.strerror or exc}; choose another `run_dir`",
                           terms=["run_dir"])
        run = cls.acquire(path)
        if any(p.name != LOCK_FILE for p in path.iterdir()):
            run.release()
            raise RunError(f"run directory {path} already exists and is not empty; choose another `run_dir`",
                           terms=["run_dir"])
        return run

    @classmethod
    def acquire(cls, path: str | Path) -> Run:
        """Lock an existing run directory for writing; refused while another process holds it."""
        path = Path(path)
        try:
            fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as exc:
            raise RunError(f"cannot write to run directory {path}: {exc.strerror or exc}")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
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
        if not run.file("config.json").is_file():
            raise RunError(f"{path} has no config.json: it is not a fashionlab run directory")
        status = run.status()
        if status["status"] == "unknown":
            raise RunError(f"{path} has no run.json: it is not a fashionlab run, or its training never started; "
                           f"train it again")
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
            fd = os.open(self.file(LOCK_FILE), os.O_RDONLY)
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

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.file(name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunError(f"cannot read {self.file(name)}: {exc}; the run directory is damaged") from None

    # --- status ---------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """run.json; without one, a folder with metrics.json counts as complete (older runs)."""
        if self.file(STATUS_FILE).is_file():
            return self.read_json(STATUS_FILE)
        return {"status": "complete" if self.file("metrics.json").is_file() else "unknown"}

    def set_status(self, status: str, **fields: Any) -> None:
        assert status in STATUSES, status
        current = self.status() if self.file(STATUS_FILE).is_file() else {}
        self.write_json(STATUS_FILE, {**current, **fields, "status": status, "pid": os.getpid(), "updated": now()})

    # --- models ---------------------------------------------------------------------------

    def checkpoints(self) -> dict[int, Path]:
        """Checkpoints by the epoch they end; normally one, briefly two while the next is saved."""
        found = {}
        for path in self.path.glob(f"{CHECKPOINT_PREFIX}*.keras"):
            epoch = path.stem.removeprefix(CHECKPOINT_PREFIX)
            if epoch.isdigit():
                found[int(epoch)] = path
        return dict(sorted(found.items()))

    def save_checkpoint(self, model, epoch: int) -> None:
        """Save the model after `epoch`, then drop older checkpoints: one is always complete."""
        self.save_model(model, f"{CHECKPOINT_PREFIX}{epoch}.keras")
        for older, path in self.checkpoints().items():
            if older != epoch:
                path.unlink(missing_ok=True)

    def model_file(self) -> Path | None:
        """model.keras, or for an unfinished run its last epoch's checkpoint."""
        if self.file(MODEL_FILE).is_file():
            return self.file(MODEL_FILE)
        return next(reversed(self.checkpoints().values()), None)

    def save_model(self, model, name: str = MODEL_FILE) -> Path:
        return self.write_with(name, lambda tmp: model.save(tmp))

    def load_model(self):
        """The run's model, loaded from its .keras archive with Keras' safe mode on."""
        path = self.model_file()
        if path is None:
            raise RunError(f"{self.path} has no {MODEL_FILE}; train it again")
        return load_model_file(path)


def load_model_file(path: Path):
    """Load a `.keras` model safely: only the native zip format, size-capped, safe_mode=True."""
    import keras

    path = Path(path)
    if path.suffix != ".keras":
        raise RunError(f"{path}: only .keras model files are loaded (not .h5, pickle or SavedModel)")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            inflated = sum(info.file_size for info in archive.infolist())
    except (OSError, zipfile.BadZipFile) as exc:
        raise RunError(f"{path} is not a valid .keras archive ({exc}); train the run again") from None
    if "config.json" not in names:
        raise RunError(f"{path} is not a Keras model archive (no config.json inside)")
    if inflated > MAX_MODEL_UNCOMPRESSED_BYTES:
        raise RunError(f"{path} would inflate to {inflated:,} bytes, more than any fashionlab model; refusing it")
    try:
        return keras.saving.load_model(path, compile=True, safe_mode=True)
    except Exception as exc:  # Keras raises many types here; the user only needs the reason.
        reason = " ".join(str(exc).split())[:300]
        raise RunError(f"{path} cannot be loaded safely: {reason}") from None
