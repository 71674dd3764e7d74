"""A data set's four IDX files, validated before use, offline: Fashion-MNIST's by default.

    splits = DataSource().splits(validation_size=5000)   # or DataSource("my/dir", verify=False)
    DataSource(dataset=resolve("./letters")).splits()    # a folder of your own (datasets.py)
    download(dataset=MNIST)                              # a built-in's files, verified, into the Keras cache
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fashionlab.datasets import CLASSES_FILE, FASHION_MNIST, FILE_NAMES, Dataset
from fashionlab.errors import DataError, Interrupted, reason
from fashionlab.files import kind_of, open_regular, outermost_missing
from fashionlab.interrupts import stop_requests

IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049
ROWS = COLS = 28

# Largest legitimate file (60,000 images) is 47,040,016 bytes; anything that inflates past
# this cap is refused before it can fill memory (a decompression bomb).
MAX_DECOMPRESSED_BYTES = 64 * 1024 * 1024
MAX_DOWNLOAD_BYTES = 32 * 1024 * 1024  # the largest official .gz (Fashion-MNIST's) is 26,421,880 bytes
MIN_DOWNLOAD_RATE = 1024  # bytes a second, averaged over the timeout: slower is a stalled server


def how_to_get(dataset: Dataset = FASHION_MNIST) -> str:
    """How to get a data set's files, as the end of a message."""
    if dataset.folder is not None:
        return f"put the four *-ubyte(.gz) files beside {dataset.folder / CLASSES_FILE}"
    ways = [f"`fashionlab data download{'' if dataset is FASHION_MNIST else ' --dataset ' + dataset.name}` "
            f"(needs network)",
            "copy the four *-ubyte(.gz) files into a folder and point `data_dir`"
            + (" or FASHIONLAB_DATA at it" if dataset is FASHION_MNIST else " at it")]
    if dataset.debian_package and dataset.debian_dir is not None:
        ways.insert(0, f"`sudo apt-get install {dataset.debian_package}` (offline, Debian/Ubuntu)")
    return f"get the {dataset.title} files one of {len(ways)} ways: {', '.join(ways[:-1])}, or {ways[-1]}"


@dataclass(frozen=True)
class Splits:
    """The tutorial's split, as raw uint8 pixels (N, 28, 28) and int labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: Path


@dataclass(frozen=True)
class DataSource:
    """Which data set, where its files come from, and whether they must be the official ones.

    `data_dir` None looks in $FASHIONLAB_DATA (Fashion-MNIST only), the Keras cache, then Debian's
    folder, or in a data set's own folder; `verify` False skips only the SHA-256 check, for your
    own IDX files (a folder data set has no official digests to check).
    """

    data_dir: Path | None = None
    verify: bool = True
    dataset: Dataset = FASHION_MNIST

    def __post_init__(self) -> None:
        if self.data_dir is not None:
            object.__setattr__(self, "data_dir", Path(self.data_dir))

    def of(self, dataset: Dataset) -> DataSource:
        """This source, for `dataset` (its folder, verify and data_dir kept)."""
        return replace(self, dataset=dataset)

    def locate(self) -> Path:
        """The folder the files are read from; raises DataError when there is none."""
        return find_data_dir(self.data_dir, self.dataset)

    def located(self) -> DataSource:
        """This source pinned to the folder found now, so that every later read uses the same files."""
        return replace(self, data_dir=self.locate())

    def splits(self, validation_size: int = 5000, train_samples: int = 0) -> Splits:
        return split_arrays(self.arrays(), validation_size, train_samples, source=self.locate())

    def arrays(self) -> dict[str, np.ndarray]:
        """The four files as arrays, keyed by file name (for `split_arrays`): read once, used twice."""
        return load_arrays(self.locate(), self.verify, dataset=self.dataset)

    def test_images(self) -> np.ndarray:
        return load_file(self.locate(), "t10k-images-idx3-ubyte", self.verify, self.dataset)

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        """The test images and their labels, without reading the training files."""
        arrays = load_arrays(self.locate(), self.verify, ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
                             dataset=self.dataset)
        return arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]

    def digests(self) -> dict[str, str]:
        """The SHA-256 of each of the four files, decompressed: what a run of a data set of your own
        records, so that the files it reads later are the ones it was trained on."""
        directory = self.locate()
        return {name: hashlib.sha256(read_bytes(_file_in(directory, name) or directory / name)).hexdigest()
                for name in FILE_NAMES}

    def train_count(self) -> int:
        """How many training images (validation included) there are, from the training files,
        read and validated: a config is checked against this before any work."""
        return len(load_arrays(self.locate(), self.verify, ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                               dataset=self.dataset)["train-images-idx3-ubyte"])


def keras_cache_dir(dataset: Dataset = FASHION_MNIST) -> Path:
    home = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(home) / "datasets" / dataset.name


def _file_in(directory: Path, name: str) -> Path | None:
    for candidate in (directory / f"{name}.gz", directory / name):
        if candidate.is_file():
            return candidate
    return None


def has_dataset(directory: Path) -> bool:
    return all(_file_in(directory, name) for name in FILE_NAMES)


def candidate_dirs(data_dir: str | Path | None = None, dataset: Dataset = FASHION_MNIST) -> list[tuple[str, Path]]:
    """Where the files are looked for, in order, each with how it was chosen."""
    found = []
    if data_dir is not None:
        found.append(("`data_dir`", Path(data_dir)))
    if dataset.folder is not None:
        return found or [("the data set's folder", dataset.folder)]
    if os.environ.get("FASHIONLAB_DATA") and dataset is FASHION_MNIST:
        found.append(("$FASHIONLAB_DATA", Path(os.environ["FASHIONLAB_DATA"])))
    found.append(("Keras cache", keras_cache_dir(dataset)))
    if dataset.debian_dir is not None:
        found.append(("Debian package", dataset.debian_dir))
    return found


def find_data_dir(data_dir: str | Path | None = None, dataset: Dataset = FASHION_MNIST) -> Path:
    """The first folder that holds all four files. An explicit choice is never passed over."""
    candidates = candidate_dirs(data_dir, dataset)
    explicit = [c for c in candidates if c[0] in ("`data_dir`", "$FASHIONLAB_DATA", "the data set's folder")]
    for origin, directory in explicit[:1] or candidates:
        if has_dataset(directory):
            return directory
        if explicit:
            missing = [n for n in FILE_NAMES if not _file_in(directory, n)]
            raise DataError(f"{origin} {directory} lacks {', '.join(missing)}(.gz); {how_to_get(dataset)}",
                            terms=["data_dir"])
    raise DataError(f"{dataset.title} not found in {', '.join(str(d) for _, d in candidates)}; "
                    f"{how_to_get(dataset)}", terms=["data_dir"])


def read_bytes(path: Path, dataset: Dataset = FASHION_MNIST) -> bytes:
    """The decompressed content of an IDX file of `dataset`, gzip-compressed or not, size-capped."""
    damaged = None
    try:
        with open_regular(path, what="dataset file", error=DataError, limit=MAX_DECOMPRESSED_BYTES) as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw) if compressed else raw
            try:
                content = stream.read(MAX_DECOMPRESSED_BYTES + 1)
            except (EOFError, gzip.BadGzipFile, zlib.error) as exc:  # inside: not a file that cannot be read
                damaged = exc
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if damaged is not None:
        raise DataError(f"{path} is a damaged gzip file ({reason(damaged)}); replace it: {how_to_get(dataset)}",
                        terms=["data_dir"])
    if len(content) > MAX_DECOMPRESSED_BYTES:
        raise DataError(f"{path} decompresses to more than {MAX_DECOMPRESSED_BYTES} bytes, far more than any "
                        f"28 x 28 data set's file; it is not a dataset file, replace it")
    return content


def parse_idx(content: bytes, kind: str, origin: str = "data", classes: int = FASHION_MNIST.classes) -> np.ndarray:
    """Images (kind "images", shape (N, 28, 28)) or labels ("labels", shape (N,)) from IDX bytes."""
    magic, ndim, header = (IMAGE_MAGIC, 3, 16) if kind == "images" else (LABEL_MAGIC, 1, 8)
    if len(content) < header:
        raise DataError(f"{origin} is {len(content)} bytes, too short for an IDX {kind} header; replace it")
    dims = np.frombuffer(content, dtype=">u4", count=1 + ndim)
    if dims[0] != magic:
        raise DataError(f"{origin} has IDX magic {dims[0]}, expected {magic} for {kind}; is it the right file?")
    count = int(dims[1])
    if kind == "images" and (dims[2], dims[3]) != (ROWS, COLS):
        raise DataError(f"{origin} holds {dims[2]}x{dims[3]} images; fashionlab reads 28 x 28 data sets only")
    item = ROWS * COLS if kind == "images" else 1
    if len(content) != header + count * item:
        raise DataError(f"{origin} is {len(content)} bytes but its header promises {header + count * item} "
                        f"({count} {kind}); the file is truncated or padded, replace it")
    array = np.frombuffer(content, dtype=np.uint8, offset=header)
    if kind == "labels" and count and array.max() >= classes:
        raise DataError(f"{origin} has label {array.max()}, outside 0..{classes - 1} (the data set's {classes} "
                        f"classes); name every label in classes.txt, or replace the file")
    return array.reshape((count, ROWS, COLS) if kind == "images" else (count,))


def load_file(directory: Path, name: str, verify: bool = True, dataset: Dataset = FASHION_MNIST) -> np.ndarray:
    path = _file_in(directory, name)
    if path is None:
        raise DataError(f"{directory} lacks {name}(.gz); {how_to_get(dataset)}", terms=["data_dir"])
    content = read_bytes(path, dataset)
    if verify and dataset.verifiable:
        check_digest(path, content, name, dataset)
    return parse_idx(content, "images" if "images" in name else "labels", str(path), dataset.classes)


def check_digest(path: Path, content: bytes, name: str, dataset: Dataset) -> None:
    """Raise DataError unless the file at `path` (its decompressed `content`) is `dataset`'s file
    `name`: its content has the official digest, or the .gz file has the published one."""
    if (official := dataset.digest(name)) is not None and hashlib.sha256(content).hexdigest() == official:
        return
    packed = dataset.gz_digest(name)
    if packed is not None and path.suffix == ".gz":
        with open_regular(path, what="dataset file", error=DataError, limit=MAX_DECOMPRESSED_BYTES) as raw:
            if hashlib.file_digest(raw, "sha256").hexdigest() == packed:
                return
    if dataset.folder is not None:  # the digests a run recorded of its own data set
        raise DataError(f"{path} has changed since the run was trained on it (SHA-256 mismatch); put back "
                        f"the files it was trained on, or pass `verify=False`", terms=["verify=False"])
    if official is None and path.suffix != ".gz":
        raise DataError(f"{path} cannot be checked: {dataset.title}'s published digests are of its .gz files; keep "
                        f"{name}.gz as downloaded, or pass `verify=False`", terms=["verify=False"])
    raise DataError(f"{path} is not the official {dataset.title} file (SHA-256 mismatch); "
                    f"replace it, or pass `verify=False` for your own IDX data", terms=["verify=False"])


def load_arrays(directory: Path, verify: bool = True, names: tuple[str, ...] = FILE_NAMES, *,
                dataset: Dataset = FASHION_MNIST) -> dict[str, np.ndarray]:
    """The files (all four by default) as arrays, keyed by file name, with the pairs' counts checked."""
    arrays = {name: load_file(directory, name, verify, dataset) for name in names}
    empty = next((name for name, array in arrays.items() if not len(array)), None)
    if empty is not None:
        raise DataError(f"{directory}: {empty} holds no items; it is not a usable dataset file, replace it")
    for prefix in ("train", "t10k"):
        if f"{prefix}-images-idx3-ubyte" not in arrays:
            continue
        n_images = len(arrays[f"{prefix}-images-idx3-ubyte"])
        n_labels = len(arrays[f"{prefix}-labels-idx1-ubyte"])
        if n_images != n_labels:
            raise DataError(f"{directory}: {prefix} has {n_images} images but {n_labels} labels; replace the files")
    return arrays


def split_arrays(arrays: dict[str, np.ndarray], validation_size: int, train_samples: int, *,
                 source: Path) -> Splits:
    """The tutorial's split of arrays already read (`load_arrays`)."""
    x_all, y_all = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    if validation_size >= len(x_all):
        raise DataError(f"`validation_size` {validation_size} leaves no training images out of {len(x_all)}; "
                        f"lower it", terms=["validation_size"])
    x_train, y_train = x_all[validation_size:], y_all[validation_size:]
    if train_samples > len(x_train):
        raise DataError(f"`train_samples` {train_samples} is more than the {len(x_train)} training images left "
                        f"after `validation_size` {validation_size}; lower it",
                        terms=["train_samples", "validation_size"])
    if train_samples:
        x_train, y_train = x_train[:train_samples], y_train[:train_samples]
    return Splits(x_train, y_train, x_all[:validation_size], y_all[:validation_size],
                  arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"], source)


def describe(splits: Splits, class_names: Sequence[str] = FASHION_MNIST.class_names) -> str:
    """Shapes, pixel range and class counts, as `fashionlab data info` prints them."""
    lines = [f"source: {splits.source}"]
    for split in ("train", "valid", "test"):
        x, y = getattr(splits, f"x_{split}"), getattr(splits, f"y_{split}")
        lines.append(f"{split:5} images {str(x.shape):16} labels {str(y.shape):9} "
                     f"pixels {x.min() if x.size else '-'}..{x.max() if x.size else '-'}")
    lines.append(f"{'class':14}" + "".join(f"{s:>8}" for s in ("train", "valid", "test")))
    counts = [np.bincount(getattr(splits, f"y_{s}"), minlength=len(class_names)) for s in ("train", "valid", "test")]
    for i, name in enumerate(class_names):
        lines.append(f"{i} {name:12}" + "".join(f"{c[i]:>8}" for c in counts))
    return "\n".join(lines)


def download(dest: Path | None = None, url: str | None = None, timeout: float = 30.0,
             dataset: Dataset = FASHION_MNIST) -> Path:
    """Fetch a built-in data set's four .gz files from the folder at `url` (default: its official
    address), verify each against its digests, then move them into `dest` (default: its folder in the
    Keras cache). All or nothing: a failure or a Ctrl-C leaves no file and no folder behind."""
    if not dataset.verifiable or dataset.url is None:
        raise DataError(f"{dataset.title} has no official files to download; its files are the ones in its folder",
                        terms=["dataset"])
    if url is not None and not url.strip():
        raise DataError("`url` is empty; give the address of a folder holding the four .gz files, or leave it out "
                        f"for {dataset.title}'s official one", terms=["url"])
    with stop_requests() as stop:
        return _download(dest, url if url is not None else dataset.url, timeout, stop, dataset)


def _fetch_watched(address: str, target: Path, *, timeout: float, stop) -> None:
    """`_fetch` in a thread, watched from here: a stop request ends the wait at once, whatever
    the network does (a read can block for as long as the server likes)."""
    outcome: list[BaseException | None] = []
    cancel = threading.Event()

    def fetch() -> None:
        try:
            outcome.append(_fetch(address, target, timeout, cancel))
        except Exception as exc:  # whatever a server's answer makes a library raise: one line, no thread traceback
            outcome.append(DataError(f"cannot download {address} ({reason(exc)}); check `url`", terms=["url"]))

    worker = threading.Thread(target=fetch, daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.2)
        if stop.requested:
            cancel.set()  # the thread stops at its next chunk; its file is removed with the staging folder
            raise Interrupted("download interrupted; nothing was kept")
    if not outcome:
        raise DataError(f"cannot download {address}; check the network and `url`", terms=["url"])
    if outcome[0] is not None:
        raise outcome[0]


def _fetch(address: str, target: Path, timeout: float, cancel: threading.Event) -> DataError | None:
    """Download `address` into `target`: capped in size, and given up when fewer than
    MIN_DOWNLOAD_RATE bytes a second arrive over `timeout` seconds. Returns the error, if any."""
    try:
        with urllib.request.urlopen(address, timeout=timeout) as response, open(target, "wb") as out:
            window_start, window_bytes = time.monotonic(), 0
            while not cancel.is_set() and (chunk := response.read1(1 << 16)):
                if out.tell() + len(chunk) > MAX_DOWNLOAD_BYTES:
                    return DataError(f"{address} is larger than {MAX_DOWNLOAD_BYTES:,} bytes, far more than the "
                                     f"official file; check `url`", terms=["url"])
                out.write(chunk)
                window_bytes += len(chunk)
                if time.monotonic() - window_start > timeout:
                    if window_bytes < MIN_DOWNLOAD_RATE * timeout:
                        raise TimeoutError(f"less than {MIN_DOWNLOAD_RATE:,} bytes a second")
                    window_start, window_bytes = time.monotonic(), 0
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        why = getattr(exc, "reason", None) or exc
        return DataError(f"cannot download {address} ({reason(why)}); check the network and `url`", terms=["url"])
    return None


def _download(dest: Path | None, url: str, timeout: float, stop, dataset: Dataset) -> Path:
    dest = Path(dest) if dest is not None else keras_cache_dir(dataset)
    # The outermost folder this call creates: removed again if the download fails.
    created = outermost_missing(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
    except OSError as exc:
        raise DataError(f"cannot write to {dest}: {exc.strerror or exc}; choose another `dest`",
                        terms=["dest"]) from None
    try:
        for name in FILE_NAMES:
            address = f"{url.rstrip('/')}/{name}.gz"
            _fetch_watched(address, staging / f"{name}.gz", timeout=timeout, stop=stop)
            try:
                check_digest(staging / f"{name}.gz", read_bytes(staging / f"{name}.gz"), name, dataset)
            except DataError:  # damaged on the way or at the source, or another file: not the official one
                raise DataError(f"{address} is not the official {dataset.title} {name}.gz (SHA-256 mismatch); "
                                f"download from the official address or a faithful mirror (`url`)",
                                terms=["url"]) from None
        for name in FILE_NAMES:  # every target checked before the first is replaced: all or nothing
            target = dest / f"{name}.gz"
            if target.is_symlink() or target.exists() and not target.is_file():
                raise DataError(f"{target} is {kind_of(target.lstat().st_mode)}, not a file a download may replace; "
                                f"move it away, or choose another `dest`", terms=["dest"])
        for name in FILE_NAMES:
            os.replace(staging / f"{name}.gz", dest / f"{name}.gz")
    except BaseException:
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)  # leave no trace of a failed download
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest
