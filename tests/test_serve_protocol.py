"""The HTTP protocol of `fashionlab serve` (serve/protocol.py), asked over raw connections to a real
server: slow, bloated, malformed or too many connections; and the uvicorn internals it relies on."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from serving import multipart, png, raw_exchange, status_and_json

from fashionlab.serve.protocol import (
    BODY_SECONDS,
    HEADER_SECONDS,
    MAX_CONNECTIONS,
    MAX_HEADER_BYTES,
    MIN_BODY_RATE,
)


def test_slow_or_bloated_requests_are_cut_off(keras_server):
    """A connection that says nothing, or sends its headers a line at a time, is answered 408 after
    HEADER_SECONDS; headers over MAX_HEADER_BYTES get 431; a client gone mid-upload is no error."""
    def answer(first: bytes, then: bytes = b"") -> bytes:
        with socket.create_connection((keras_server.host, keras_server.port), timeout=30) as raw:
            raw.sendall(first)
            if then:
                time.sleep(1)
                raw.sendall(then)
            return b"".join(iter(lambda: raw.recv(65536), b""))

    began = time.monotonic()
    with ThreadPoolExecutor(3) as pool:
        silent = pool.submit(answer, b"")
        trickle = pool.submit(answer, b"POST /api/predict HTTP/1.1\r\n", b"Host: 127.0.0.1\r\n")
        bloated = pool.submit(answer, b"GET /api/health HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEADER_BYTES + 10)
                              + b"\r\n\r\n")
        assert bloated.result().startswith(b"HTTP/1.1 431 ") and b"over 64 KB" in bloated.result()
        for slow in (silent, trickle):
            assert slow.result().startswith(b"HTTP/1.1 408 ") and b"came too slowly" in slow.result()
    assert time.monotonic() - began < HEADER_SECONDS + 5
    body, kind = multipart([("a.png", b"\x89PNG" + b"\0" * 100_000)])
    with socket.create_connection((keras_server.host, keras_server.port), timeout=30) as raw:
        raw.sendall(f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:50_000])
    assert keras_server.request("HEAD", "/api/health")[0] == 200


def test_a_body_may_come_slowly_but_not_slower_than_the_least_rate(keras_server, test_pngs):
    """A photo sent at a few times MIN_BODY_RATE over a longer time than BODY_SECONDS is answered;
    a body that stalls is answered 408 once BODY_SECONDS and its bytes' allowance have passed."""
    noise = png(np.random.default_rng(2).integers(0, 256, (560, 560), dtype=np.uint8))  # ~310 KB
    steady, kind = multipart([("noise.png", noise)])

    def send(body: bytes, rate: float, upto: int) -> tuple[bytes, float]:
        began = time.monotonic()
        with socket.create_connection((keras_server.host, keras_server.port), timeout=60) as raw:
            raw.sendall(f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
                        f"Content-Length: {len(body)}\r\n\r\n".encode())
            for start in range(0, upto, 4096):
                raw.sendall(body[start:min(start + 4096, upto)])
                time.sleep(4096 / rate)
            return b"".join(iter(lambda: raw.recv(65536), b"")), time.monotonic() - began

    with ThreadPoolExecutor(2) as pool:
        slow_but_steady = pool.submit(send, steady, 1.5 * MIN_BODY_RATE, len(steady))  # ~13 s
        stalled = pool.submit(send, steady, 1e9, 1000)
        answer, seconds = slow_but_steady.result()
        assert answer.startswith(b"HTTP/1.1 200 ") and seconds > max(BODY_SECONDS, len(steady) / (2 * MIN_BODY_RATE))
        answer, seconds = stalled.result()
        assert answer.startswith(b"HTTP/1.1 408 ") and b"slower than 16 KB/s" in answer
        assert BODY_SECONDS <= seconds < BODY_SECONDS + 5


def test_a_malformed_request_is_answered_in_json(keras_server):
    status, body = status_and_json(raw_exchange(keras_server, b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n"))
    assert status == 400 and body["error"] == "the request is not valid HTTP/1.1"


def test_clients_that_reconnect_cannot_hold_every_connection(keras_server):
    """Over MAX_CONNECTIONS, each new connection closes the one that has waited longest on its
    client: the oldest half-sent requests get a JSON 503, the newest are still open, and a real
    request is answered at once rather than after the HEADER_SECONDS a slow client may take."""
    extra = 40
    holders = []
    try:
        for _ in range(MAX_CONNECTIONS + extra):
            holder = socket.create_connection((keras_server.host, keras_server.port), timeout=30)
            holder.sendall(b"POST /api/predict HTTP/1.1\r\n")  # and never the rest
            holders.append(holder)
            time.sleep(0.002)  # in order: the server sees them arrive one after another
        began = time.monotonic()
        status, _, health = keras_server.request("GET", "/api/health")
        assert status == 200 and health["status"] == "ok" and time.monotonic() - began < HEADER_SECONDS - 1
        for holder in holders[:extra]:
            holder.settimeout(HEADER_SECONDS - 1)
            code, body = status_and_json(b"".join(iter(lambda: holder.recv(65536), b"")))
            assert code == 503 and "waited longest on its client" in body["error"]
        newest = holders[-1]
        newest.settimeout(0.2)
        with pytest.raises(TimeoutError):  # still open, still waiting for the rest of its request
            newest.recv(1)
    finally:
        for holder in holders:
            holder.close()


# --- the uvicorn internals GuardedHttp relies on (pinned: uvicorn<0.56 in the serve extra) -----------

UVICORN_METHODS = {  # what GuardedHttp overrides or is built by, each as uvicorn 0.55 calls it
    "__init__": ["self", "config", "server_state", "app_state", "_loop"],
    "connection_made": ["self", "transport"],
    "connection_lost": ["self", "exc"],
    "on_message_begin": ["self"],
    "on_url": ["self", "url"],
    "on_header": ["self", "name", "value"],
    "on_headers_complete": ["self"],
    "on_body": ["self", "body"],
    "on_message_complete": ["self"],
    "on_response_complete": ["self"],
    "send_400_response": ["self", "msg"],
}
UVICORN_CALLS = {  # where uvicorn calls an override that no parser callback reaches
    "data_received": "self.send_400_response(",  # a malformed request
    "on_headers_complete": "on_response=self.on_response_complete",  # an answer sent whole
}
OWN_STATE = ("header_bytes", "in_headers", "working", "waiting_since", "deadline", "body_started", "body_bytes")


def test_the_uvicorn_methods_the_protocol_overrides_are_there_as_it_expects():
    import uvicorn
    from uvicorn.protocols.http import httptools_impl

    from fashionlab.serve.protocol import GuardedHttp

    base = getattr(httptools_impl, "HttpToolsProtocol", None)
    assert base is not None, f"uvicorn {uvicorn.__version__} has no HttpToolsProtocol, the class GuardedHttp extends"
    changed = []
    for name, expected in UVICORN_METHODS.items():
        method = getattr(base, name, None)
        if method is None:
            changed.append(f"HttpToolsProtocol.{name} is gone")
        elif list(inspect.signature(method).parameters) != expected:
            changed.append(f"HttpToolsProtocol.{name}{inspect.signature(method)} takes other arguments than "
                           f"({', '.join(expected)})")
    for caller, call in UVICORN_CALLS.items():
        if hasattr(base, caller) and call not in inspect.getsource(getattr(base, caller)):
            changed.append(f"HttpToolsProtocol.{caller} no longer calls {call.split('=')[-1].rstrip('(')}")
    shadowed = {name for name in vars(GuardedHttp) if hasattr(base, name)} - set(UVICORN_METHODS) - {"__doc__",
                                                                                                    "__module__"}
    changed += [f"HttpToolsProtocol now has {name}, which GuardedHttp defines for its own use" for name in shadowed]
    assert not changed, f"uvicorn {uvicorn.__version__} changed what GuardedHttp relies on: " + "; ".join(changed)


class FakeTransport(asyncio.Transport):
    """What uvicorn asks of a connection's transport, kept in memory."""

    def __init__(self):
        super().__init__()
        self.written, self.closed = b"", False

    def get_extra_info(self, name, default=None):
        return default

    def write(self, data):
        self.written += data

    def close(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def test_a_uvicorn_connection_has_the_state_the_protocol_reads():
    """GuardedHttp, made as uvicorn makes one for each connection, reads `loop`, `connections`,
    `transport`, `cycle` and `cycle.response_started` of it, and keeps state of its own beside them."""
    import uvicorn
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from fashionlab.serve.protocol import GuardedHttp

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})

    version = f"uvicorn {uvicorn.__version__}"
    loop = asyncio.new_event_loop()
    try:
        config = uvicorn.Config(app, http=GuardedHttp, ws="none", lifespan="off", log_config=None)
        plain = HttpToolsProtocol(config, ServerState(), {}, _loop=loop)  # uvicorn's own, through a request
        plain.connection_made(FakeTransport())
        plain.data_received(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        loop.run_until_complete(asyncio.gather(*plain.tasks))
        clashes = [name for name in OWN_STATE if name in vars(plain)]
        assert not clashes, f"{version} sets {clashes} on a connection, names GuardedHttp keeps its own state in"
        protocol, transport = GuardedHttp(config, ServerState(), {}, _loop=loop), FakeTransport()
        protocol.connection_made(transport)
        assert protocol.loop is loop, f"{version}: a connection's `loop` is not its event loop"
        assert protocol in protocol.connections, f"{version}: `connections` does not hold the server's connections"
        assert protocol.transport is transport and protocol.cycle is None, \
            f"{version}: a connection's `transport` or `cycle` (None before a request) changed"
        protocol.data_received(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert getattr(protocol.cycle, "response_started", None) is False, \
            f"{version}: a request's cycle has no `response_started` (False until its answer starts)"
        assert protocol.working, f"{version} no longer calls on_message_complete for a whole request"
        loop.run_until_complete(asyncio.gather(*protocol.tasks))
        assert transport.written.startswith(b"HTTP/1.1 200 ") and transport.written.endswith(b"\r\n\r\nok")
        assert not protocol.working, f"{version} no longer calls on_response_complete once an answer is sent"
        protocol.connection_lost(None)
        assert protocol not in protocol.connections
        malformed, transport = GuardedHttp(config, ServerState(), {}, _loop=loop), FakeTransport()
        malformed.connection_made(transport)
        malformed.data_received(b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n")
        assert transport.written.endswith(b'{"error": "the request is not valid HTTP/1.1"}') and transport.closed, \
            f"{version} no longer answers a malformed request through send_400_response"
    finally:
        loop.close()
