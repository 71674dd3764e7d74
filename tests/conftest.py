"""Shared fixtures: tiny synthetic IDX datasets, the real dataset, one tiny trained run."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from fashionlab import data
from fashionlab.config import TrainConfig

TINY = TrainConfig(name="tiny", depth=2, width=16, epochs=2, batch_size=32, validation_size=60, seed=7)


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file's bytes for uint8 images (N, 28, 28) or labels (N,)."""
    if magic is None:
        magic = data.IMAGE_MAGIC if array.ndim == 3 else data.LABEL_MAGIC
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def synthetic_arrays(n_train: int = 360, n_test: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Learnable fake garments: each class is a bright bar at its own rows, plus noise."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 220
        return images.astype(np.uint8), labels.astype(np.uint8)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return {"train-images-idx3-ubyte": x_train, "train-labels-idx1-ubyte": y_train,
            "t10k-images-idx3-ubyte": x_test, "t10k-labels-idx1-ubyte": y_test}


def write_dataset(directory: Path, arrays: dict[str, np.ndarray] | None = None, compress: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in (arrays or synthetic_arrays()).items():
        content = idx_bytes(array)
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (directory / name).write_bytes(content)
    return directory


@pytest.fixture
def synthetic_dir(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "synthetic")


@pytest.fixture(scope="session")
def session_synthetic_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The official files; `make test` installs them, so CI fails rather than skips without them."""
    try:
        return data.find_data_dir()
    except data.DataError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the real dataset is required in CI: {exc}")
        pytest.skip(f"real dataset not installed: {exc}")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, session_synthetic_dir):
    """One tiny training run on synthetic data, shared by the tests that only read it."""
    from fashionlab.training import train

    return train(TINY, tmp_path_factory.mktemp("runs") / "tiny", session_synthetic_dir, verify=False, verbose=0)


@pytest.fixture(scope="session")
def tutorial_run(tmp_path_factory, real_data_dir):
    """The tutorial's recipe, all 10 epochs, on the official data (about half a minute)."""
    from fashionlab.training import train

    return train(TrainConfig(), tmp_path_factory.mktemp("runs") / "tutorial", real_data_dir, verbose=0)
