import os
import signal
import socket
import time

import pytest

from fashionlab.errors import ConfigError
from fashionlab.files import read_bytes, read_text


def read(path, **options):
    return read_text(path, what="config file", error=ConfigError, limit=1000, **options)


def test_a_regular_file_is_read(tmp_path):
    (tmp_path / "a.toml").write_text("epochs = 3\n")
    assert read(tmp_path / "a.toml") == "epochs = 3\n"


def give_up(signum, frame):
    raise TimeoutError("waited on the FIFO")


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(10)  # a blocking open would wait for a writer forever
    try:
        with pytest.raises(ConfigError, match=r"config file .*fifo is a FIFO \(named pipe\), not a regular file"):
            read(tmp_path / "fifo")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("make, kind", [
    (lambda p: p.mkdir(), "a directory"),
    (lambda p: p.symlink_to("/dev/zero"), "a character device"),
    (lambda p: socket.socket(socket.AF_UNIX).bind(str(p)), "a socket"),
])
def test_other_special_files_are_refused_by_kind(tmp_path, make, kind):
    make(tmp_path / "thing")
    with pytest.raises(ConfigError, match=f"is {kind}, not a regular file; pass a file"):
        read(tmp_path / "thing")


def test_a_file_over_the_limit_is_refused_without_reading_it(tmp_path):
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(1 << 40)  # a terabyte, sparse: nothing on disk
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"is 1,099,511,627,776 bytes, more than the 1,000"):
        read(tmp_path / "sparse")
    assert time.monotonic() - started < 1


def test_links_are_followed_only_when_allowed(tmp_path):
    (tmp_path / "real.toml").write_text("x")
    (tmp_path / "link.toml").symlink_to(tmp_path / "real.toml")
    assert read(tmp_path / "link.toml") == "x"
    with pytest.raises(ConfigError, match="is a symbolic link"):
        read(tmp_path / "link.toml", follow_links=False)


def test_missing_unreadable_and_binary_files_say_so(tmp_path):
    with pytest.raises(ConfigError, match="does not exist; check the path"):
        read(tmp_path / "missing")
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 0\)"):
        read(tmp_path / "binary")
    (tmp_path / "secret").write_text("x")
    os.chmod(tmp_path / "secret", 0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(ConfigError, match="cannot read config file .*Permission denied"):
            read(tmp_path / "secret")


def test_read_bytes_returns_exactly_the_content(tmp_path):
    (tmp_path / "b").write_bytes(bytes(range(256)) * 3)
    assert read_bytes(tmp_path / "b", what="file", error=ConfigError, limit=768) == bytes(range(256)) * 3
    with pytest.raises(ConfigError, match="768 bytes, more than the 767"):
        read_bytes(tmp_path / "b", what="file", error=ConfigError, limit=767)
