"""Reading files given by people or found in run directories: regular files only, size-capped,
never a hang.

    text = read_text(path, what="config file", error=ConfigError, limit=1 << 20)

Every file fashionlab reads goes through `open_regular`: it opens without blocking (a FIFO
would otherwise wait for a writer forever), refuses anything but a regular file (a directory, a
FIFO, a device, a socket) and anything larger than the caller's limit (a sparse or runaway file),
and, inside a run directory, refuses to follow a symbolic link.

Every folder a command writes into is first checked by `check_writable`, before the command's
first write: a refused output leaves nothing behind (no run directory, no comparison folder).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fashionlab.errors import ConfigError, FashionlabError

KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


def kind_of(mode: int) -> str:
    return next((name for test, name in KINDS if test(mode)), "not a regular file")


@contextlib.contextmanager
def open_regular(path: str | Path, *, what: str, error: type[FashionlabError], limit: int,
                 follow_links: bool = True) -> Iterator[io.BufferedReader]:
    """`path` opened for binary reading, if it is a regular file of at most `limit` bytes;
    otherwise `error` says what it is instead, as it does when reading it fails. `follow_links`
    False refuses a symbolic link."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; check the path") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow_links:  # the last component is a link
            raise error(f"{what} {path} is a symbolic link; fashionlab reads only its own files inside a run "
                        f"directory, replace the link with the file") from None
        with contextlib.suppress(OSError):  # a socket cannot be opened at all: say what it is
            mode = os.stat(path).st_mode
            if not stat.S_ISREG(mode):
                raise error(f"{what} {path} is {kind_of(mode)}, not a regular file; pass a file") from None
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {path} is {kind_of(info.st_mode)}, not a regular file; pass a file")
        if info.st_size > limit:
            raise error(f"{what} {path} is {info.st_size:,} bytes, more than the {limit:,} {_article(what)} {what} "
                        f"can be; it is not the right file")
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        try:
            yield handle
        except OSError as exc:  # a file that opens but cannot be read (/proc/self/mem, a failing disk)
            raise error(f"cannot read {what} {path}: {exc.strerror or exc}; pass a regular, readable file") from None


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" or noun.startswith(("ONNX", "HTML", "IDX")) else "a"


def read_bytes(path: str | Path, *, what: str, error: type[FashionlabError], limit: int,
               follow_links: bool = True) -> bytes:
    """The whole of a regular file of at most `limit` bytes (see `open_regular`)."""
    with open_regular(path, what=what, error=error, limit=limit, follow_links=follow_links) as handle:
        try:
            content = handle.read(limit + 1)
        except OSError as exc:
            raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(content) > limit:  # grew while read
        raise error(f"{what} {path} is more than {limit:,} bytes; it is not the right file")
    return content


def read_text(path: str | Path, *, what: str, error: type[FashionlabError], limit: int,
              follow_links: bool = True) -> str:
    """A UTF-8 text file (see `read_bytes`); other encodings and binary content are refused."""
    content = read_bytes(path, what=what, error=error, limit=limit, follow_links=follow_links)
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text (byte {exc.start}); pass a text file") from None


def outermost_missing(path: str | Path) -> Path | None:
    """The outermost folder that making `path` (with its parents) would create, or None if it
    exists: what to remove again when the work that needed it fails."""
    path = Path(path)
    return next((p for p in reversed([path, *path.parents]) if not os.path.lexists(p)), None)


def check_writable(path: str | Path, *, what: str, term: str, error: type[FashionlabError] = ConfigError) -> None:
    """Refuse, before anything is written, a folder that cannot be written: `path`, or the nearest
    folder above it that exists (where the missing ones would be made), must be a folder in which
    a file can be made. Tried for real, then removed: to root, os.access says yes everywhere, yet
    /proc or a read-only mount still refuse. `what` is what would be written ("the run"),
    `term` the argument that gave `path`. Symbolic links are followed, as the write would."""
    path = Path(path)
    existing = next(p for p in [path, *path.parents] if os.path.lexists(p))  # "." or "/" at worst
    problem = None
    if not os.path.isdir(existing):
        kind = "a file" if os.path.isfile(existing) else \
            "a symbolic link to nothing" if os.path.islink(existing) else kind_of(os.stat(existing).st_mode)
        problem = f"{existing} is {kind}, not a folder"
    else:
        try:  # a file without a name where the kernel allows it (O_TMPFILE): no one else ever sees it
            tempfile.TemporaryFile(prefix=".fashionlab-check-", dir=existing).close()
        except OSError as exc:
            problem = f"nothing can be made in {existing} ({exc.strerror or exc})"
    if problem:
        raise error(f"cannot write {what} in {path}: {problem}; give `{term}` another folder", terms=[term])


def check_own_file(path: str | Path, *, what: str, term: str, error: type[FashionlabError] = ConfigError) -> None:
    """Refuse, before anything is written, a file that a command writes to in place (not replaced
    whole, as a run's files are) and that is there but is not a regular file: a symbolic link (the
    write would go to its target), a FIFO, a device, a folder. `term` is the argument that gave its folder."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise error(f"cannot use {what} {path} ({exc.strerror or exc}); give `{term}` another folder",
                    terms=[term]) from None
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is {kind_of(mode)}, not a regular file; fashionlab writes only into its own "
                    f"files, never through a link: move it away, or give `{term}` another folder", terms=[term])
