import multiprocessing
import os
import signal
import threading

import pytest

from fashionlab.interrupts import StopRequest, parent_stopped, stop_requests, stop_when


def test_sigterm_and_ctrl_c_become_a_request_and_the_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with stop_requests() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_second_ctrl_c_stops_at_once():
    with pytest.raises(KeyboardInterrupt):
        with stop_requests() as stop:
            os.kill(os.getpid(), signal.SIGINT)
            assert stop.requested
            os.kill(os.getpid(), signal.SIGINT)


def test_nested_blocks_share_the_outer_request():
    with stop_requests() as outer, stop_requests() as inner:
        assert inner is outer


def test_a_parents_events_are_stop_requests_too():
    told, gone = multiprocessing.get_context("spawn").Event(), threading.Event()
    stop_when(told, gone)
    try:
        assert not parent_stopped() and not StopRequest().requested
        gone.set()
        assert parent_stopped() and StopRequest().requested
    finally:
        stop_when()
    assert not StopRequest().requested
