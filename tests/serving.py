"""Helpers of the serve tests: `fashionlab serve` started as a user starts it, on 127.0.0.1 and a
free port, and asked over HTTP (the `keras_server` fixture in conftest.py is one)."""

from __future__ import annotations

import http.client
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlparse

import numpy as np
from PIL import Image


class Server:
    def __init__(self, process: subprocess.Popen, url: str):
        self.process, self.url = process, url
        parsed = urlparse(url)
        self.host, self.port = parsed.hostname, parsed.port

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None):
        """(status, headers, parsed JSON or text) of one request on a new connection."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            answer = connection.getresponse()
            content = answer.read()
        finally:
            connection.close()
        kind = answer.getheader("content-type", "")
        if "json" in kind and content:
            return answer.status, answer, json.loads(content)
        return answer.status, answer, content.decode("utf-8", "replace")

    def post_files(self, files: list[tuple[str, bytes]], query: str = ""):
        body, kind = multipart(files)
        return self.request("POST", f"/api/predict{query}", body, {"Content-Type": kind})


def multipart(files: list[tuple[str, bytes]], boundary: str = "fashionlab-test-boundary") -> tuple[bytes, str]:
    head = "--{}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{}\"\r\nContent-Type: {}\r\n\r\n"
    parts = [head.format(boundary, name, "application/octet-stream").encode() + content + b"\r\n"
             for name, content in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def start(*args: str, timeout: float = 120, program: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """`fashionlab serve ARGS --port 0` (`program`: what runs in place of `-m fashionlab`), and the URL it
    says it serves at once it answers."""
    process = subprocess.Popen([sys.executable, *(program or ["-m", "fashionlab"]), "serve", *args, "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.5)
        if ready:
            line = process.stdout.readline()
            if "http://" in line:
                return process, line.split(" at ")[1].split()[0]
        if process.poll() is not None:
            break
    process.kill()
    raise AssertionError(f"the server did not start: {process.stderr.read()}")


def said_so_far(process: subprocess.Popen, wait: float = 0.5) -> str:
    """What a running server wrote on stderr until now (read from the pipe without waiting for its end)."""
    said = b""
    while select.select([process.stderr], [], [], wait)[0]:
        chunk = os.read(process.stderr.fileno(), 65536)
        if not chunk:
            break
        said += chunk
    return said.decode()


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the server did not stop on Ctrl-C") from None


def data_options(source) -> list[str]:
    return ["--data-dir", str(source.data_dir), "--no-verify"]


def raw_exchange(server: Server, request: bytes, timeout: float = 30) -> bytes:
    """The bytes a request (sent as it is, on its own connection) gets back until the server closes."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as raw:
        raw.sendall(request)
        return b"".join(iter(lambda: raw.recv(65536), b""))


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split()[1]), json.loads(body)
