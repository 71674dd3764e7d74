"""The layers every request passes (serve/layers.py), asked over HTTP of a real server: the body
limit, the Host check, HEAD as GET; and Shield, in process."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving import multipart, raw_exchange, status_and_json

from fashionlab.serve.app import MAX_REQUEST_BYTES
from fashionlab.serve.layers import Shield


def test_an_oversized_request_is_refused_before_it_is_read(keras_server):
    declared = {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(MAX_REQUEST_BYTES + 1)}
    connection = http.client.HTTPConnection(keras_server.host, keras_server.port, timeout=30)
    connection.putrequest("POST", "/api/predict")
    for key, value in declared.items():
        connection.putheader(key, value)
    connection.endheaders()
    connection.send(b"--x\r\n")  # the rest is never sent: the answer comes from the header alone
    answer = connection.getresponse()
    assert answer.status == 413 and "over 32 MB" in json.loads(answer.read())["error"]
    connection.close()
    # Streamed without a length: refused once the bytes received pass the limit, the connection closed.
    body, kind = multipart([("big.png", b"\0" * (MAX_REQUEST_BYTES + 1024))])
    with socket.create_connection((keras_server.host, keras_server.port), timeout=60) as raw:
        raw.sendall(f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {kind}\r\n"
                    f"Transfer-Encoding: chunked\r\n\r\n".encode())
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server stops reading
            for start in range(0, len(body), 1 << 20):
                chunk = body[start:start + (1 << 20)]
                raw.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            raw.sendall(b"0\r\n\r\n")
        answer = b"".join(iter(lambda: raw.recv(65536), b""))
    assert answer.startswith(b"HTTP/1.1 413 ") and b"over 32 MB" in answer


@pytest.mark.parametrize("host, allowed", [
    ("127.0.0.1", True), ("localhost:8000", True), ("LOCALHOST.", True), ("[::1]:80", True), ("127.8.9.10", True),
    ("evil.example", False), ("evil.example:{port}", False), ("10.1.2.3", False), ("localhost.evil.example", False),
    ("", False), (None, True)])
def test_a_request_naming_another_host_is_refused_against_dns_rebinding(keras_server, host, allowed):
    header = "" if host is None else f"Host: {host.format(port=keras_server.port)}\r\n"
    version = "1.0" if host is None else "1.1"
    answer = raw_exchange(keras_server, f"GET /api/health HTTP/{version}\r\n{header}Connection: close\r\n\r\n".encode())
    status, body = status_and_json(answer)
    if allowed:
        assert status == 200 and body["status"] == "ok"
    else:
        assert status == 400 and "does not name this server" in body["error"]
        assert f"http://127.0.0.1:{keras_server.port}/" in body["error"] and "--allow-host" in body["error"]


def test_two_host_headers_are_refused(keras_server):
    answer = raw_exchange(keras_server, b"GET /api/model HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: evil.example\r\n"
                                        b"Connection: close\r\n\r\n")
    assert status_and_json(answer)[0] == 400


@pytest.mark.parametrize("path", ["/", "/api/health", "/api/model", "/api/gallery", "/openapi.json", "/nowhere"])
def test_head_answers_wherever_get_does_with_no_body(keras_server, path):
    get_status, get_answer, _ = keras_server.request("GET", path)
    connection = http.client.HTTPConnection(keras_server.host, keras_server.port, timeout=30)
    connection.request("HEAD", path)
    head = connection.getresponse()
    assert head.status == get_status and head.read() == b""
    assert head.getheader("content-type") == get_answer.getheader("content-type")
    assert head.getheader("content-length") == get_answer.getheader("content-length")
    connection.close()


def test_an_exception_below_the_shield_is_a_json_500_and_one_line_on_stderr(capfd):
    async def broken(scope, receive, send):
        raise RuntimeError("a bug\nover two lines")

    async def half_answered(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("after the start")

    def answer(app) -> list[dict]:
        sent = []

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/api/\x1b[31mred", "headers": []}
        with ThreadPoolExecutor(1) as thread:  # a loop of its own: this thread may run one already (Playwright's)
            thread.submit(asyncio.run, Shield(app)(scope, None, send)).result(timeout=30)
        return sent

    start, body = answer(broken)
    assert start["status"] == 500 and (b"content-type", b"application/json") in start["headers"]
    assert json.loads(body["body"]) == {"error": "the server failed on this request; it goes on serving others"}
    assert capfd.readouterr().err == ("fashionlab: warning: a request to /api/[31mred failed: RuntimeError: a bug "
                                      "over two lines\n")
    assert [m["status"] for m in answer(half_answered)] == [200]  # the answer had started: the connection ends it
    assert capfd.readouterr().err == ""
