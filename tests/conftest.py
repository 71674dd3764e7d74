"""Fixtures: tiny synthetic datasets, the real dataset, trained runs (and a sweep) shared by read-only
tests, and a server of one of them."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import TINY, copy_run, write_dataset
from serving import Server, data_options, png, start, stop

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


@pytest.fixture(scope="session")
def dropout_run(tmp_path_factory, synthetic):
    """A tiny run trained with dropout (and batch norm, so MC dropout must keep BN at inference)."""
    from fashionlab.training import train

    return train(TINY.replace(name="tiny-dropout", dropout=0.3), tmp_path_factory.mktemp("runs") / "dropout",
                 data=synthetic, verbose=0)


@pytest.fixture
def runs_folder(tiny_run, tmp_path, monkeypatch) -> Path:
    """runs/ in a fresh current folder: three top-level runs (the newest failed) and a comparison's two,
    each a copy of tiny_run."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "runs"
    copy_run(tiny_run, root / "20261201-100000-tutorial", "2026-12-01T10:00:00+00:00")
    copy_run(tiny_run, root / "20261203-100000-fast-mlp", "2026-12-03T10:00:00+00:00", recipe="fast-mlp")
    copy_run(tiny_run, root / "20261205-100000-broken", "2026-12-05T10:00:00+00:00", status="failed")
    copy_run(tiny_run, root / "compare" / "bn-after" / "seed-42", "2026-12-02T10:00:00+00:00")
    copy_run(tiny_run, root / "compare" / "bn-after" / "seed-43", "2026-12-02T11:00:00+00:00")
    return root


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory, synthetic):
    """One tiny sweep of eight trials (some pruned), shared by the sweep tests that read it: its folder, its
    result, its progress lines."""
    from sweeps_helpers import SEARCH, space_file

    from fashionlab.sweeps import sweep

    folder = tmp_path_factory.mktemp("sweep")
    lines = []
    result = sweep(space_file(folder, SEARCH, epochs=4), folder / "out", trials=8, sampler="random", pruner="median",
                   data=synthetic, progress=lines.append)
    return folder / "out", result, lines


@pytest.fixture(scope="session")
def keras_server(tiny_run, synthetic):
    """`fashionlab serve` of the tiny run, shared by the serve tests (tests/test_serve_*.py)."""
    process, url = start(str(tiny_run.run.path), *data_options(synthetic))
    yield Server(process, url)
    assert stop(process) in (0, 130)
    assert "Traceback" not in process.stderr.read()  # whatever the tests sent, the log has no traceback


@pytest.fixture(scope="session")
def dropout_server(dropout_run, synthetic):
    """`fashionlab serve` of the dropout run: MC dropout offered."""
    process, url = start(str(dropout_run.run.path), *data_options(synthetic))
    yield Server(process, url)
    assert stop(process) in (0, 130)
    assert "Traceback" not in process.stderr.read()


@pytest.fixture(scope="session")
def onnx_server(tiny_run, synthetic, tmp_path_factory):
    """`fashionlab serve --onnx` of the tiny run's export, shared by the serve tests."""
    from fashionlab.export import export

    out = tmp_path_factory.mktemp("served") / "tiny.onnx"
    export(tiny_run.run.path, out=out, data=synthetic)
    process, url = start("--onnx", str(out), *data_options(synthetic))
    yield Server(process, url)
    assert stop(process) in (0, 130)
    assert "Traceback" not in process.stderr.read()


@pytest.fixture(scope="session")
def test_pngs(synthetic) -> list[bytes]:
    """The first 20 synthetic test images as PNG files."""
    return [png(image) for image in synthetic.test_images()[:20]]


def chromium() -> str | None:
    """Debian's Chromium binary; the /usr/bin/chromium wrapper script also works, with more noise."""
    return next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium")) if p and os.access(p, os.X_OK)),
                None)


@pytest.fixture(scope="module")
def browser():
    executable = chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        executable = None
    if executable is None:
        if os.environ.get("CI"):
            pytest.fail("the browser test needs playwright and Debian's chromium in CI (make test installs them)")
        pytest.skip("no chromium or playwright: run `make test`, or apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable)
        yield browser
        browser.close()


def _postgres_bin() -> Path | None:
    """The folder of PostgreSQL's server programs (Debian keeps them out of PATH)."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A real PostgreSQL server of the session's own: initdb and pg_ctl in a temporary folder,
    on 127.0.0.1 and a free port, run as an unprivileged user (the server refuses root);
    `make test` installs Debian's postgresql package. Yields its URL."""
    bindir = _postgres_bin()
    if bindir is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is required in CI (make test installs Debian's postgresql package)")
        pytest.skip("PostgreSQL is not installed (make test installs it)")
    as_user = {}
    root = Path(tempfile.mkdtemp(prefix="fashionlab-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: Debian's postgres user runs it
        account = pwd.getpwnam("postgres")
        os.chown(root, account.pw_uid, account.pw_gid)
        as_user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"

    def run(*command: str) -> None:
        subprocess.run(command, check=True, capture_output=True, cwd=root, timeout=120, **as_user)

    run(str(bindir / "initdb"), "-D", str(data), "-U", "fashionlab", "--auth=trust", "-E", "UTF8", "--no-sync")
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50", "start")
    try:
        yield f"postgresql://fashionlab@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True,
                       cwd=root, timeout=60, **as_user)
        shutil.rmtree(root, ignore_errors=True)
