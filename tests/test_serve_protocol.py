"""The HTTP protocol of `fashionlab serve` (serve/protocol.py), asked over raw connections to a real
server: slow, bloated, malformed or too many connections."""

from __future__ import annotations

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

