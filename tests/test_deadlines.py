"""Model calls bounded in time: answered, stopped, or refused while a stopped call still runs."""

from __future__ import annotations

import threading
import time

import pytest

from fashionlab.deadlines import BoundedCalls, check_timeout
from fashionlab.errors import ConfigError, ModelBusy, ModelTimeout


def test_a_call_within_its_time_gives_its_result():
    calls = BoundedCalls(5.0, "the model")
    assert calls.run(lambda: 42) == 42 and calls.timeouts == 0 and calls.stuck_for() is None


def test_a_call_that_stops_when_asked_frees_the_model_at_once():
    calls, stop = BoundedCalls(0.2, "the model"), threading.Event()
    started = time.monotonic()
    with pytest.raises(ModelTimeout, match="^the model took over 0.2 s on 3 images \\(stopped\\); "):
        calls.run(lambda: stop.wait(30), stop.set, images=3)
    assert time.monotonic() - started < 1.0 and calls.stuck_for() is None and calls.timeouts == 1
    assert calls.run(lambda: "next") == "next"


def test_a_call_that_ignores_the_stop_makes_the_model_busy_until_it_ends():
    calls, release = BoundedCalls(0.2, "the model"), threading.Event()
    with pytest.raises(ModelTimeout, match="\\(still running: the model answers again once it ends\\)"):
        calls.run(lambda: release.wait(30))  # its stop does nothing
    first = calls.stuck_for()
    assert first is not None and first >= 0
    started = time.monotonic()
    with pytest.raises(ModelBusy, match="the model is still busy with a call that ran over 0.2 s"):
        calls.run(lambda: "refused")
    assert time.monotonic() - started < 0.1  # refused at once, not queued behind the stuck call
    time.sleep(0.05)
    assert calls.stuck_for() > first
    release.set()
    deadline = time.monotonic() + 10
    while calls.stuck_for() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert calls.stuck_for() is None and calls.run(lambda: "free again") == "free again" and calls.timeouts == 1


@pytest.mark.parametrize("bad", [0, 0.009, -1, 3601, float("nan"), float("inf"), True, "5", None])
def test_a_timeout_must_be_seconds_from_a_hundredth_to_an_hour(bad):
    with pytest.raises(ConfigError, match="^`model_timeout` must be seconds from 0.01 to 3600, got "):
        check_timeout(bad)
    check_timeout(0.01)
    check_timeout(3600)
