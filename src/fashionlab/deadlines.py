"""Model calls bounded in time: a model from a file is an untrusted program, and a server must
answer even when its model hangs.

    calls = BoundedCalls(30.0, "the ONNX model model.onnx")
    probabilities = calls.run(lambda: session.run(..., options), stop=stop_session, images=64)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from fashionlab.errors import ConfigError, ModelBusy, ModelTimeout

MODEL_TIMEOUT = 30.0  # seconds one call of a model (a batch) may take; fashionlab's models take milliseconds
TIMEOUT_RANGE = (0.01, 3600.0)  # what a model_timeout may be, wherever it is given
STOP_GRACE_SECONDS = 1.0  # how long a call asked to stop has to end before the model counts as stuck


class BoundedCalls:
    """Calls that may not run longer than `seconds`: each runs in a thread of its own; one that
    overruns is asked to stop (`stop`) and its caller gets a ModelTimeout. Until an overrunning
    call has ended, every new call is refused at once with a ModelBusy (`busy_since` says since when)."""

    def __init__(self, seconds: float, what: str):
        self.seconds, self.what = seconds, what
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="fashionlab-bounded")
        self.overrun: Future | None = None
        self.busy_since: float | None = None
        self.timeouts = 0

    def run(self, call: Callable[[], Any], stop: Callable[[], None] = lambda: None, images: int = 0,
            seconds: float | None = None) -> Any:
        """`call()`, given `seconds` (what is left of `self.seconds` for a task of several calls) or
        `self.seconds`; `images` is what the task is about, for the message."""
        if self.overrun is not None and not self.overrun.done():
            raise ModelBusy(f"{self.what} is still busy with a call that ran over {self.seconds:g} s "
                            f"(for {time.monotonic() - self.busy_since:.0f} s now); try again later")
        self.overrun = self.busy_since = None
        if seconds is not None and seconds <= 0:
            self.timeouts += 1
            raise self._late(images, ended=True)
        future = self.executor.submit(call)
        try:
            return future.result(timeout=self.seconds if seconds is None else seconds)
        except FutureTimeout:
            stop()
            self.timeouts += 1
            with contextlib.suppress(Exception):
                future.result(timeout=STOP_GRACE_SECONDS)  # stopped between two operators, as asked
            ended = future.done()
            if not ended:  # it cannot be stopped (a JAX call, one long operator): nothing more goes to it
                self.overrun, self.busy_since = future, time.monotonic()
            raise self._late(images, ended) from None

    def _late(self, images: int, ended: bool) -> ModelTimeout:
        return ModelTimeout(f"{self.what} took over {self.seconds:g} s on {images or 'a batch of'} images "
                            f"({'stopped' if ended else 'still running: the model answers again once it ends'}); "
                            f"fashionlab's models take milliseconds: this one is too large or broken, or the "
                            f"machine is overloaded")

    def stuck_for(self) -> float | None:
        """For how many seconds a call that overran has still been running, or None when none is."""
        if self.overrun is None or self.overrun.done():
            return None
        return time.monotonic() - self.busy_since


def timeout_problem(seconds: float) -> str | None:
    """What is wrong with a model timeout, or None: seconds within TIMEOUT_RANGE."""
    low, high = TIMEOUT_RANGE
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not low <= seconds <= high:
        return f"must be seconds from {low:g} to {high:g}, got {seconds!r}"
    return None


def check_timeout(seconds: float) -> None:
    """A model_timeout argument (see `timeout_problem`)."""
    problem = timeout_problem(seconds)
    if problem:
        raise ConfigError(f"`model_timeout` {problem}", terms=["model_timeout"])
