"""Ctrl-C and SIGTERM as a request to stop at the next safe point, not a crash mid-write.

    with stop_requests() as stop:
        while not stop.requested: work()
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from fashionlab import FashionlabError


class Interrupted(FashionlabError):
    """Work stopped on request (SIGINT or SIGTERM) at a safe point."""

    exit_code = 130  # the shell's code for a Ctrl-C


class StopRequest:
    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum, frame) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signum


_current: StopRequest | None = None


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Catch SIGINT/SIGTERM for the block. Nested blocks share the outer request."""
    global _current
    if _current is not None or threading.current_thread() is not threading.main_thread():
        yield _current or StopRequest()
        return
    _current = StopRequest()
    previous = {s: signal.signal(s, _current._handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield _current
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _current = None
