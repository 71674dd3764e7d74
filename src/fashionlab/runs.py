"""Run directories: every artifact written atomically, read back safely.

    run = Run.create("runs/2026-01-01-120000-tutorial"); run.write_json("config.json", {...})
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fashionlab import FashionlabError

MODEL_FILE = "model.keras"
_UMASK = os.umask(0)
os.umask(_UMASK)
# A .keras archive of this network is ~3.5 MB; refuse archives that would inflate past this.
MAX_MODEL_UNCOMPRESSED_BYTES = 512 * 1024 * 1024


class RunError(FashionlabError):
    """A run directory is missing, incomplete, or holds something it should not."""


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    return Path(root) / f"{datetime.now():%Y%m%d-%H%M%S}-{name}"


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


@dataclass(frozen=True)
class Run:
    """A run directory on disk."""

    path: Path

    @classmethod
    def create(cls, path: str | Path) -> Run:
        """A new, empty run directory; an existing non-empty one is refused, never overwritten."""
        path = Path(path)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise RunError(f"run directory {path} already exists and is not empty; choose another --run-dir")
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = tempfile.NamedTemporaryFile(dir=path)
            probe.close()
        except OSError as exc:
            raise RunError(f"cannot write run directory {path}: {exc.strerror or exc}; choose another --run-dir")
        return cls(path)

    @classmethod
    def open(cls, path: str | Path) -> Run:
        """An existing run: its directory, its config.json and its model.keras must be there."""
        path = Path(path)
        if not path.is_dir():
            raise RunError(f"{path} is not a run directory; pass the folder `fashionlab train` printed")
        for needed in ("config.json", MODEL_FILE):
            if not (path / needed).is_file():
                raise RunError(f"{path} has no {needed}: the run did not finish; train it again")
        return cls(path)

    def file(self, name: str) -> Path:
        return self.path / name

    def write_with(self, name: str, write: Callable[[Path], Any]) -> Path:
        """Call write(tmp_path), then move the finished file into place as `name`."""
        target = self.file(name)
        with atomic_path(target) as tmp:
            write(tmp)
        return target

    def write_text(self, name: str, text: str) -> Path:
        return self.write_with(name, lambda tmp: tmp.write_text(text, encoding="utf-8"))

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, sort_keys=False) + "\n")

    def read_json(self, name: str) -> Any:
        try:
            return json.loads(self.file(name).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunError(f"cannot read {self.file(name)}: {exc}; the run directory is damaged") from None

    def save_model(self, model) -> Path:
        return self.write_with(MODEL_FILE, lambda tmp: model.save(tmp))

    def load_model(self):
        """The run's model, loaded from its .keras archive with Keras' safe mode on."""
        return load_model_file(self.file(MODEL_FILE))


def load_model_file(path: Path):
    """Load a `.keras` model safely: only the native zip format, size-capped, safe_mode=True."""
    import keras

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
        raise RunError(f"{path} would inflate to {inflated} bytes, more than any fashionlab model; refusing it")
    try:
        return keras.saving.load_model(path, compile=True, safe_mode=True)
    except Exception as exc:  # Keras raises many types here; the user only needs the reason.
        reason = " ".join(str(exc).split())[:300]
        raise RunError(f"{path} cannot be loaded safely: {reason}") from None
