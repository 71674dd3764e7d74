"""Ctrl-C and SIGTERM as a request to stop at the next safe point, not a crash mid-write.

    with stop_requests() as stop:
        while not stop.requested: work()

A process working for another (the runner's training workers) can also be told to stop by
events: `stop_when(parent_says_stop, parent_is_gone)`.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Protocol


class Event(Protocol):
    def is_set(self) -> bool: ...


class StopRequest:
    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None or parent_stopped()

    def _handle(self, signum, frame) -> None:
        if self.signal == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signal = signum


_current: StopRequest | None = None
_events: tuple[Event, ...] = ()


def stop_when(*events: Event) -> None:
    """From now on, `requested` is also true once any of `events` is set (a multiprocessing or
    threading Event); with none, only signals count again."""
    global _events
    _events = events


def parent_stopped() -> bool:
    """Whether any event given to `stop_when` is set."""
    return any(event.is_set() for event in _events)


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Catch SIGINT/SIGTERM for the block. Nested blocks share the outer request."""
    global _current
    if _current is not None or threading.current_thread() is not threading.main_thread():
        yield _current or StopRequest()
        return
    _current = StopRequest()
    previous = {s: signal.signal(s, _current._handle) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    sys.unraisablehook = _second_ctrl_c_again(hook)
    try:
        yield _current
    finally:
        sys.unraisablehook = hook
        for s, handler in previous.items():
            signal.signal(s, handler)
        _current = None


def _interrupt_soon() -> None:
    time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGINT)


def _second_ctrl_c_again(hook):
    """A second Ctrl-C's KeyboardInterrupt can land in a finalizer (a weakref callback, a __del__),
    where Python prints it as "Exception ignored" and goes on: it is raised again instead, where
    the program runs, and nothing is printed."""
    def handle(unraisable) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            # Sent again from a thread, a moment later: the hook must return first (threading's
            # Thread.start would wait here, where the signal could land once more).
            _thread.start_new_thread(_interrupt_soon, ())
        else:
            hook(unraisable)

    return handle


@contextlib.contextmanager
def signals_held(*signums: int) -> Iterator[None]:
    """`signums` held back for the block and delivered as it ends (not lost), for work that must
    not be cut short, such as writing how a run ended. Python runs signal handlers in the main
    thread whichever thread the signal reaches, so the handlers are what is deferred here (a
    thread's signal mask would not do: JAX's threads would take the signal)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers belong to the main thread: nothing to defer here
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in signums}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in caught:
            signal.raise_signal(s)
