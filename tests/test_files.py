import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from fashionlab.errors import ConfigError
from fashionlab.files import (
    _article,
    check_own_file,
    check_writable,
    open_regular,
    outermost_missing,
    read_bytes,
    read_text,
)


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


def test_a_file_that_opens_but_cannot_be_read_is_said_so_in_one_line():
    """/proc/self/mem is a regular file to stat, and fails at the first read (EIO)."""
    with pytest.raises(ConfigError, match="^cannot read model /proc/self/mem: Input/output error; pass a regular"):
        with open_regular("/proc/self/mem", what="model", error=ConfigError, limit=100) as handle:
            handle.read(10)


def test_read_bytes_returns_exactly_the_content(tmp_path):
    (tmp_path / "b").write_bytes(bytes(range(256)) * 3)
    assert read_bytes(tmp_path / "b", what="file", error=ConfigError, limit=768) == bytes(range(256)) * 3
    with pytest.raises(ConfigError, match="768 bytes, more than the 767"):
        read_bytes(tmp_path / "b", what="file", error=ConfigError, limit=767)


def writable(path):
    check_writable(path, what="the run", term="run_dir")


def contents(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_folder_to_be_made_under_a_writable_one_passes_and_nothing_is_left(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    for path in (tmp_path / "runs", tmp_path / "runs" / "a" / "b", tmp_path / "link" / "c", tmp_path / "new"):
        writable(path)
    assert contents(tmp_path) == ["link", "runs"]  # the trial folder was removed, nothing was made


@pytest.mark.parametrize("make, where, said", [
    (lambda t: (t / "f").write_text(""), "f", "f is a file, not a folder"),
    (lambda t: (t / "f").write_text(""), "f/a/b", "f is a file, not a folder"),  # under a file
    (lambda t: (t / "l").symlink_to(t / "missing"), "l/a", "l is a symbolic link to nothing"),
    (lambda t: os.mkfifo(t / "p"), "p", "p is a FIFO (named pipe), not a folder"),
    (lambda t: None, "/proc/fashionlab-out/a", "nothing can be made in /proc ("),  # root too: tried for real
])
def test_what_cannot_be_written_is_refused_in_one_line_and_nothing_is_made(tmp_path, make, where, said):
    make(tmp_path)
    before = contents(tmp_path)
    with pytest.raises(ConfigError) as caught:
        writable(tmp_path / where)
    message = str(caught.value)
    assert message.startswith(f"cannot write the run in {tmp_path / where}: ") and said in message
    assert message.endswith("; give `run_dir` another folder") and "\n" not in message
    assert caught.value.terms == ("run_dir",)
    assert contents(tmp_path) == before and not os.path.lexists("/proc/fashionlab-out")


def read_only(folder, *command):
    """`command` run where `folder` is a read-only mount, in a mount namespace of its own (nothing
    outside changes); a skip where this machine allows no such namespace."""
    mount = ["unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"', str(folder)]
    try:
        probe = subprocess.run([*mount, "true"], capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        pytest.skip("no unshare here")
    if probe.returncode != 0:
        pytest.skip(f"no read-only mount here: {probe.stderr.strip()}")
    return subprocess.run([*mount, *command], capture_output=True, text=True, timeout=300)


def test_an_existing_read_only_folder_is_refused(tmp_path):
    code = "from fashionlab.files import check_writable as c; c(__import__('sys').argv[1], what='x', term='out')"
    done = read_only(tmp_path, sys.executable, "-c", code, str(tmp_path / "a"))
    assert done.returncode == 1 and f"ConfigError: cannot write x in {tmp_path / 'a'}: nothing can be made in " \
        f"{tmp_path} (Read-only file system); give `out` another folder" in done.stderr


def test_evaluate_refuses_a_read_only_run_before_its_first_write(tiny_run, synthetic):
    path = tiny_run.run.path
    report = (path / "report.html").stat().st_mtime_ns
    done = read_only(path, sys.executable, "-m", "fashionlab", "evaluate", str(path), "--data-dir",
                     str(synthetic.data_dir), "--no-verify")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == (f"fashionlab: error: cannot write the evaluation in {path}: nothing can be made in {path} "
                           f"(Read-only file system); give `run_dir` another folder\n")
    assert (path / "report.html").stat().st_mtime_ns == report

def test_outermost_missing_is_none_for_a_folder_that_exists(tmp_path):
    assert outermost_missing(tmp_path) is None
    assert outermost_missing(tmp_path / "a" / "b") == tmp_path / "a"


def test_an_unwritable_place_is_named_with_the_systems_reason():
    with pytest.raises(ConfigError, match="^" + re.escape("cannot write the run in /proc/x: nothing can be made in "
                                                          "/proc (") + ".+" + re.escape("); give `run_dir` another "
                                                                                        "folder") + "$"):
        check_writable("/proc/x", what="the run", term="run_dir")


def test_a_file_written_in_place_must_be_a_regular_file_never_a_link(tmp_path):
    target = tmp_path / "target.txt"
    target.write_text("mine")
    check_own_file(tmp_path / "missing.journal", what="the journal", term="out")  # made when written: fine
    check_own_file(target, what="the journal", term="out")
    (tmp_path / "link.journal").symlink_to(target)
    (tmp_path / "dangling.journal").symlink_to(tmp_path / "nothing")
    os.mkfifo(tmp_path / "fifo.journal")
    for name, kind in [("link.journal", "a symbolic link"), ("dangling.journal", "a symbolic link"),
                       ("fifo.journal", "a FIFO (named pipe)")]:
        with pytest.raises(ConfigError) as refused:
            check_own_file(tmp_path / name, what="the journal", term="out")
        assert str(refused.value) == (f"the journal {tmp_path / name} is {kind}, not a regular file; fashionlab writes "
                                      f"only into its own files, never through a link: move it away, or give `out` "
                                      f"another folder") and refused.value.terms == ("out",)
    assert target.read_text() == "mine" and not (tmp_path / "nothing").exists()


def test_links_are_followed_by_default(tmp_path):
    (tmp_path / "target").write_bytes(b"abc")
    (tmp_path / "link").symlink_to(tmp_path / "target")
    assert read_bytes(tmp_path / "link", what="file", error=ConfigError, limit=10) == b"abc"


def test_a_path_that_cannot_be_looked_at_is_named_with_the_reason(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError) as refused:
        check_own_file(tmp_path / "f" / "x.journal", what="the journal", term="out")
    assert str(refused.value) == (f"cannot use the journal {tmp_path / 'f' / 'x.journal'} (Not a directory); "
                                  f"give `out` another folder") and refused.value.terms == ("out",)


def test_messages_say_a_or_an_as_spoken():
    assert [_article(w) for w in ("ONNX file", "IDX file", "HTML page", "image", "run file", "model")] == \
        ["an", "an", "an", "an", "a", "a"]
