"""Fixtures: tiny synthetic datasets, the real dataset, and trained runs shared by read-only tests."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import TINY, write_dataset

from fashionlab.data import DataSource
from fashionlab.errors import DataError


@pytest.fixture
def synthetic_dir(tmp_path: Path) -> Path:
    """A synthetic dataset of this test's own, free to damage."""
    return write_dataset(tmp_path / "synthetic")


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> DataSource:
    """A synthetic dataset shared by the whole session: read it, never change it."""
    return DataSource(write_dataset(tmp_path_factory.mktemp("synthetic")), verify=False)


@pytest.fixture(scope="session")
def real_data() -> DataSource:
    """The official files; `make test` installs them, so CI fails rather than skips without them."""
    try:
        return DataSource().located()
    except DataError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the real dataset is required in CI: {exc}")
        pytest.skip(f"real dataset not installed: {exc}")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, synthetic):
    """One tiny training run on synthetic data, shared by the tests that only read it."""
    from fashionlab.training import train

    return train(TINY, tmp_path_factory.mktemp("runs") / "tiny", data=synthetic, verbose=0)
