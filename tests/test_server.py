"""fashionlab serve: a real uvicorn server started by the command, on 127.0.0.1 on a free port,
asked over HTTP; its page in headless Chromium."""

from __future__ import annotations

import contextlib
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import onnx
import pytest
from helpers import BROKEN_IMAGES, OUTSIDE, assert_png, slow_onnx
from PIL import Image

from fashionlab import CLASS_NAMES
from fashionlab.export import export
from fashionlab.prediction import predict
from fashionlab.server import (
    BODY_SECONDS,
    HEADER_SECONDS,
    MAX_BATCH,
    MAX_CONNECTIONS,
    MAX_FILES,
    MAX_HEADER_BYTES,
    MAX_HELD_BYTES,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_PIXELS,
    MIN_BODY_RATE,
)


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


def start(*args: str, timeout: float = 120) -> tuple[subprocess.Popen, str]:
    """`fashionlab serve ARGS --port 0`, and the URL it says it serves at once it answers."""
    process = subprocess.Popen([sys.executable, "-m", "fashionlab", "serve", *args, "--port", "0"],
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


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("the server did not stop on Ctrl-C") from None


def data_options(source) -> list[str]:
    return ["--data-dir", str(source.data_dir), "--no-verify"]


@pytest.fixture(scope="module")
def keras_server(tiny_run, synthetic):
    process, url = start(str(tiny_run.run.path), *data_options(synthetic))
    yield Server(process, url)
    assert stop(process) in (0, 130)
    assert "Traceback" not in process.stderr.read()  # whatever the tests sent, the log has no traceback


@pytest.fixture(scope="module")
def onnx_server(tiny_run, synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("served") / "tiny.onnx"
    export(tiny_run.run.path, out=out, data=synthetic)
    process, url = start("--onnx", str(out), *data_options(synthetic))
    yield Server(process, url)
    assert stop(process) in (0, 130)
    assert "Traceback" not in process.stderr.read()


@pytest.fixture(scope="module")
def test_pngs(synthetic) -> list[bytes]:
    return [png(image) for image in synthetic.test_images()[:20]]


# --- the API ---------------------------------------------------------------------------------


def test_health_and_model_describe_the_served_run(keras_server, tiny_run):
    assert keras_server.url.startswith("http://127.0.0.1:")  # this machine only, unless --host says otherwise
    status, _, health = keras_server.request("GET", "/api/health")
    assert status == 200 and health["status"] == "ok" and health["engine"] == "keras" and health["model"] == "tiny"
    status, _, model = keras_server.request("GET", "/api/model")
    assert status == 200 and model["class_names"] == list(CLASS_NAMES) and model["config"]["width"] == 16
    assert model["test_accuracy"] == pytest.approx(tiny_run.metrics["test_accuracy"])
    assert model["limits"]["request_bytes"] == MAX_REQUEST_BYTES


def test_several_images_in_one_request_get_the_results_of_fashionlab_predict(keras_server, tiny_run, synthetic,
                                                                             test_pngs, tmp_path):
    photo = Image.fromarray(255 - synthetic.test_images()[3]).resize((90, 90)).convert("RGB")
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    (tmp_path / "photo.jpg").write_bytes(buffer.getvalue())
    files = [("a.png", test_pngs[0]), ("b.png", test_pngs[1]), ("photo.jpg", buffer.getvalue())]
    status, _, results = keras_server.post_files(files, "?top_k=4")
    assert status == 200 and [r["input"] for r in results] == ["a.png", "b.png", "photo.jpg"]
    expected = predict(tiny_run.run.path, indices=[0, 1], images=[tmp_path / "photo.jpg"], top_k=4, data=synthetic)
    for got, want in zip(results, expected):
        assert got["class_id"] == want["class_id"] and len(got["top_k"]) == 4
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)
        assert [t["class_id"] for t in got["top_k"]] == [t["class_id"] for t in want["top_k"]]
        assert got.get("mirrored") == want.get("mirrored") and got.get("hint") == want.get("hint")


def test_the_prepared_image_is_the_one_the_model_saw(keras_server, synthetic, test_pngs):
    status, _, results = keras_server.post_files([("a.png", test_pngs[5])], "?prepared=true")
    assert status == 200
    prepared = results[0]["prepared"]
    assert prepared.startswith("data:image/png;base64,")
    import base64

    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(prepared.split(",", 1)[1]))))
    np.testing.assert_array_equal(seen, synthetic.test_images()[5])  # data-set format: passed unchanged


def test_concurrent_requests_are_all_answered_as_if_alone(keras_server, test_pngs):
    alone = [keras_server.post_files([(f"{i}.png", content)])[2][0] for i, content in enumerate(test_pngs)]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda i: keras_server.post_files([(f"{i}.png", test_pngs[i])]),
                                 [i for _ in range(4) for i in range(len(test_pngs))]))
    for k, (status, _, results) in enumerate(together):
        assert status == 200
        want = alone[k % len(test_pngs)]
        assert results[0]["class_id"] == want["class_id"]
        assert results[0]["probability"] == pytest.approx(want["probability"], abs=1e-6)
    _, _, health = keras_server.request("GET", "/api/health")
    assert health["images"] >= 4 * len(test_pngs) and health["batches"] <= health["images"]


def _truncated(content: bytes) -> bytes:
    return content[: len(content) // 2]


def _bomb() -> bytes:
    """A 20,000 x 20,000 PNG of a few kilobytes: 400 MP once decoded."""
    out = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(out, format="PNG")
    return out.getvalue()


BAD_UPLOADS = {  # kind: (the files, made from test PNGs; the status; what the message says)
    "text": (lambda pngs: [("notes.txt", b"not an image at all\n")], 400, "is not an image fashionlab reads"),
    "truncated": (lambda pngs: [("cut.png", _truncated(pngs[0]))], 400, "cannot be decoded"),
    "bomb": (lambda pngs: [("bomb.png", _bomb())], 400, "over the 40,000,000 pixel limit"),
    "empty": (lambda pngs: [("empty.png", b"")], 400, "is not an image fashionlab reads"),
    "too many": (lambda pngs: [(f"{i}.png", pngs[0]) for i in range(MAX_FILES + 1)], 400,
                 f"the upload holds more than {MAX_FILES} files"),
}


@pytest.mark.parametrize("kind", BAD_UPLOADS)
def test_every_bad_upload_gets_a_4xx_json_answer_of_one_line(keras_server, test_pngs, kind):
    files, status, message = BAD_UPLOADS[kind]
    got, answer, body = keras_server.post_files(files(test_pngs))
    assert got == status and answer.getheader("content-type") == "application/json"
    assert message in body["error"] and "\n" not in body["error"]


def test_requests_that_are_not_image_uploads_are_refused(keras_server, test_pngs):
    status, _, body = keras_server.request("POST", "/api/predict", b"x=1",
                                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "multipart/form-data" in body["error"]
    body_bytes, kind = multipart([])
    status, _, body = keras_server.request("POST", "/api/predict", body_bytes, {"Content-Type": kind})
    assert status == 400 and body["error"].startswith("no image files in the request")
    status, _, body = keras_server.request("POST", "/api/predict", body_bytes, {"Content-Type": "multipart/form-data"})
    assert status == 400 and body["error"].startswith("the upload has no usable boundary in its Content-Type")
    for query, expected in (("?top_k=11", "top_k must be between 1 and 10, got 11"),
                            ("?top_k=two", "top_k: Input should be a valid integer")):
        status, _, body = keras_server.post_files([("a.png", test_pngs[0])], query)
        assert status == 422 and body["error"].startswith(expected)
    status, _, body = keras_server.request("GET", "/api/predict")
    assert status == 405 and "\n" not in body["error"]


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


def test_the_bodies_held_at_once_are_bounded_and_freed_when_their_clients_leave(keras_server, test_pngs):
    """Each request being read reserves its declared length: eight that declare the most a request
    may hold fill MAX_HELD_BYTES, the next is answered 503 at once; once they leave, it is answered."""
    head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {MAX_REQUEST_BYTES}\r\n\r\n--x\r\n").encode()
    holders = []
    try:
        for _ in range(MAX_HELD_BYTES // MAX_REQUEST_BYTES):
            holders.append(socket.create_connection((keras_server.host, keras_server.port), timeout=30))
            holders[-1].sendall(head)
        deadline = time.monotonic() + 10
        while keras_server.request("GET", "/api/health")[2]["upload_bytes_held"] < MAX_HELD_BYTES:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, _, said = keras_server.post_files([("a.png", test_pngs[0])])
        assert status == 503 and said["error"].startswith("the server is reading 256 MB of other uploads; try again")
    finally:
        for holder in holders:
            holder.close()
    deadline = time.monotonic() + 10
    while keras_server.request("GET", "/api/health")[2]["upload_bytes_held"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert keras_server.post_files([("a.png", test_pngs[0])])[0] == 200


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


def test_the_server_keeps_serving_after_100_bad_requests(keras_server, test_pngs):
    bad = [[("t.txt", b"text")], [("cut.png", _truncated(test_pngs[1]))], [("bomb.png", _bomb())]]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: keras_server.post_files(bad[i % 3])[0], range(100)))
    assert statuses == [400] * 100
    status, _, results = keras_server.post_files([("a.png", test_pngs[0])])
    assert status == 200 and results[0]["class_name"] in CLASS_NAMES
    assert keras_server.request("GET", "/api/health")[2]["status"] == "ok"
    assert keras_server.process.poll() is None


def test_the_openapi_description_is_served_and_no_page_needs_the_internet(keras_server):
    status, _, schema = keras_server.request("GET", "/openapi.json")
    assert status == 200 and "/api/predict" in schema["paths"]
    assert keras_server.request("GET", "/docs")[0] == 404  # Swagger UI would fetch its scripts from a CDN
    status, answer, page = keras_server.request("GET", "/")
    assert status == 200 and "script-src 'sha256-" in answer.getheader("content-security-policy")
    assert "http://" not in page.replace("http://HOST", "") and "https://" not in page


def test_the_onnx_server_answers_like_the_keras_one(keras_server, onnx_server, test_pngs):
    files = [(f"{i}.png", content) for i, content in enumerate(test_pngs[:8])]
    _, _, by_keras = keras_server.post_files(files)
    status, _, by_onnx = onnx_server.post_files(files)
    assert status == 200
    assert onnx_server.request("GET", "/api/health")[2]["engine"] == "onnx"
    for a, b in zip(by_keras, by_onnx):
        assert a["class_id"] == b["class_id"] and a["probability"] == pytest.approx(b["probability"], abs=1e-5)
    assert onnx_server.request("GET", "/api/model")[2]["name"] == "tiny"


def raw_exchange(server: Server, request: bytes, timeout: float = 30) -> bytes:
    """The bytes a request (sent as it is, on its own connection) gets back until the server closes."""
    with socket.create_connection((server.host, server.port), timeout=timeout) as raw:
        raw.sendall(request)
        return b"".join(iter(lambda: raw.recv(65536), b""))


def status_and_json(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in head.lower(), head
    return int(head.split()[1]), json.loads(body)


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


def test_protocol_errors_and_unknown_routes_are_answered_in_json(keras_server):
    status, body = status_and_json(raw_exchange(keras_server, b"GARBAGE\x00\x01 / HTTP/9\r\n\r\n"))
    assert status == 400 and body["error"] == "the request is not valid HTTP/1.1"
    status, _, body = keras_server.request("GET", "/nowhere")
    assert status == 404 and isinstance(body, dict) and body["error"]
    status, _, body = keras_server.request("DELETE", "/api/model")
    assert status == 405 and isinstance(body, dict) and body["error"]


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


def test_a_request_whose_images_hold_too_many_pixels_is_refused_from_their_headers(keras_server):
    side = int((MAX_REQUEST_PIXELS // 2 + 1_000_000) ** 0.5)
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, format="PNG")
    cut = out.getvalue()[:200]  # the header says side x side; no pixel could be decoded from the rest
    assert side * side < 40_000_000  # each alone is within the limit of one image
    status, _, body = keras_server.post_files([("a.png", cut), ("b.png", cut)])
    assert status == 413 and f"over the {MAX_REQUEST_PIXELS:,} one request may hold" in body["error"]
    status, _, body = keras_server.post_files([("a.png", cut)])
    assert status == 400 and "cannot be decoded" in body["error"]  # alone it passes the header check


def test_a_small_request_does_not_wait_for_a_large_ones_images_to_be_decoded(keras_server, test_pngs):
    rng = np.random.default_rng(0)
    noise = [png(rng.integers(0, 256, (900, 900), dtype=np.uint8)) for _ in range(3)]
    large = [(f"noise{i}.png", noise[i % 3]) for i in range(int(MAX_REQUEST_BYTES * 0.9) // len(noise[0]))]

    def timed(files):
        began = time.monotonic()
        status = keras_server.post_files(files)[0]
        return status, time.monotonic() - began

    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(timed, large)
        time.sleep(0.3)  # the large request is being decoded
        small_status, small_seconds = pool.submit(timed, [("small.png", test_pngs[0])]).result()
        big_status, big_seconds = big.result()
    assert big_status == small_status == 200
    assert small_seconds < 0.4 * (big_seconds - 0.3), (small_seconds, big_seconds)


def test_a_batch_never_holds_more_than_max_batch_images_and_each_request_gets_its_own(tiny_run, synthetic):
    import asyncio

    from fashionlab.prediction import read_probabilities
    from fashionlab.server import Batcher, load_predictor

    predictor = load_predictor(tiny_run.run.path)
    sizes, predict = [], predictor.predict

    def counted(x, *args, **kwargs):
        sizes.append(len(x))
        return predict(x, *args, **kwargs)

    predictor.predict = counted
    images = np.concatenate([synthetic.test_images()] * 2)
    requests = [images[start:start + n] for start, n in zip((0, 40, 70, 134, 135), (40, 30, 64, 1, 63))]
    batcher = Batcher(predictor)

    async def together():  # a request left behind in the queue would hang: bounded
        return await asyncio.wait_for(asyncio.gather(*(batcher.read(x, [True] * len(x)) for x in requests)), 60)

    with ThreadPoolExecutor(1) as thread:
        answers = thread.submit(asyncio.run, together()).result()
    batcher.close()
    assert max(sizes) <= 2 * MAX_BATCH  # a batch of 64 images and their mirrored readings
    assert batcher.images == sum(len(x) for x in requests) and batcher.batches >= 4
    for x, (proba, mirrored) in zip(requests, answers):
        want_proba, want_mirrored = read_probabilities(predictor, x, [True] * len(x))
        np.testing.assert_allclose(proba, want_proba, atol=1e-6)
        np.testing.assert_array_equal(mirrored, want_mirrored)


# --- a model that hangs -------------------------------------------------------------------------


def test_a_slow_model_is_answered_504_and_the_server_stays_healthy(tmp_path, synthetic, test_pngs):
    onnx.save(slow_onnx(), tmp_path / "slow.onnx")
    process, url = start("--onnx", str(tmp_path / "slow.onnx"), "--model-timeout", "0.05", *data_options(synthetic))
    server = Server(process, url)
    files = [(f"{i}.png", test_pngs[i]) for i in range(16)]
    try:
        for _ in range(2):
            status, _, body = server.post_files(files)
            assert status == 504 and "took over 0.05 s on 16 images (stopped)" in body["error"]
        status, _, health = server.request("GET", "/api/health")
        assert status == 200 and health["status"] == "ok" and health["model_timeouts"] == 2
    finally:
        stop(process)
    # onnxruntime's own log stays off the terminal: only the server's own word on Ctrl-C
    assert process.stderr.read() in ("", "fashionlab: interrupted\n")


def asgi(app, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    """One request handed to an ASGI application in this process: (status, JSON answer)."""
    import asyncio

    answer = {"status": None, "body": b""}
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "127.0.0.1", **(headers or {})}.items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "headers": raw, "scheme": "http",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000), "root_path": ""}
    sent = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():  # the body, then a client that waits for its answer
        if sent:
            return sent.pop()
        await asyncio.Event().wait()

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        else:
            answer["body"] += message.get("body", b"")

    with ThreadPoolExecutor(1) as thread:  # a loop of its own: this thread may run one already (Playwright's)
        thread.submit(asyncio.run, app(scope, receive, send)).result(timeout=60)
    return answer["status"], json.loads(answer["body"]) if answer["body"] else None


def test_a_model_stuck_in_a_call_makes_the_server_say_so_until_it_ends(tiny_run, synthetic, test_pngs):
    """A call that cannot be stopped (a JAX call, one long operator) leaves the model busy: requests
    are answered 503 at once and /api/health says why, until it ends; the rest of the API answers."""
    import threading

    from fashionlab.errors import ModelTimeout
    from fashionlab.server import build_app, guarded, load_predictor

    predictor = load_predictor(tiny_run.run.path, model_timeout=0.2)
    inner = build_app(predictor, data=synthetic)
    app = guarded(inner, host="127.0.0.1")
    release = threading.Event()
    with pytest.raises(ModelTimeout):
        predictor.calls.run(lambda: release.wait(60))  # stands for a call that runs on
    body, kind = multipart([("a.png", test_pngs[0])])
    try:
        status, said = asgi(app, "POST", "/api/predict", body, {"content-type": kind})
        assert status == 503 and "still busy with a call that ran over 0.2 s" in said["error"]
        status, health = asgi(app, "GET", "/api/health")
        assert status == 503 and health["status"] == "unavailable" and "stuck" in health["reason"]
        assert health["model_timeouts"] == 1
        assert asgi(app, "HEAD", "/api/health")[0] == 503
        assert asgi(app, "GET", "/api/model")[0] == 200
    finally:
        release.set()
    deadline = time.monotonic() + 30
    while predictor.calls.stuck_for() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    status, health = asgi(app, "GET", "/api/health")
    assert status == 200 and health["status"] == "ok"
    status, results = asgi(app, "POST", "/api/predict", body, {"content-type": kind})
    assert status == 200 and results[0]["class_name"] in CLASS_NAMES
    inner.state.batcher.close()
    inner.state.workers.close()


# --- starting and stopping ------------------------------------------------------------------------


def test_another_host_is_served_with_a_warning(tiny_run, synthetic):
    process, url = start(str(tiny_run.run.path), "--host", "0.0.0.0", *data_options(synthetic))
    try:
        assert url.startswith("http://0.0.0.0:")
    finally:
        stop(process)
    warning = process.stderr.read()
    assert "fashionlab: warning: serving on 0.0.0.0: anyone who can reach this machine can use the model" in warning


def test_a_host_that_is_not_this_machines_is_one_line_without_the_warning():
    other = subprocess.run([sys.executable, "-m", "fashionlab", "serve", "--onnx", "x.onnx", "--host", "192.0.2.1",
                            "--port", "0"], capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and other.stderr == (
        "fashionlab: error: --host 192.0.2.1 is not an address of this machine; use 127.0.0.1 (this machine only) "
        "or 0.0.0.0 (every address)\n")


def test_a_port_in_use_or_a_missing_model_is_one_line_and_exit_1(keras_server, tmp_path):
    used = subprocess.run([sys.executable, "-m", "fashionlab", "serve", "--onnx", "x.onnx", "--port",
                           str(keras_server.port)], capture_output=True, text=True, timeout=120)
    assert used.returncode == 1
    assert used.stderr.startswith(f"fashionlab: error: cannot listen on 127.0.0.1:{keras_server.port} (")
    assert used.stderr.strip().endswith("choose another --port") and used.stderr.count("\n") == 1
    missing = subprocess.run([sys.executable, "-m", "fashionlab", "serve", str(tmp_path / "nothing"), "--port", "0"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    both = subprocess.run([sys.executable, "-m", "fashionlab", "serve", "run", "--onnx", "x.onnx"],
                          capture_output=True, text=True, timeout=120)
    assert both.returncode == 1 and "not both" in both.stderr


# --- the page, in Chromium ------------------------------------------------------------------------


def test_the_page_shows_an_uploaded_images_class_and_bars(keras_server, browser, test_pngs, tmp_path):
    (tmp_path / "garment.png").write_bytes(test_pngs[2])
    _, _, expected = keras_server.post_files([("garment.png", test_pngs[2])])
    for width, height in ((1280, 900), (400, 800)):
        page = browser.new_page(viewport={"width": width, "height": height})
        elsewhere = []
        page.on("request", lambda r: elsewhere.append(r.url) if not r.url.startswith(
            (keras_server.url, "data:", "blob:")) else None)
        page.goto(keras_server.url)
        page.set_input_files("#files", str(tmp_path / "garment.png"))
        result = page.locator(".result").first
        result.locator(".bar-row").first.wait_for(timeout=15_000)
        assert result.locator(".class-name").inner_text() == expected[0]["class_name"]
        labels = result.locator(".bar-label").all_inner_texts()
        assert labels == [t["class_name"] for t in expected[0]["top_k"]]
        values = [float(v) for v in result.locator(".bar").evaluate_all(
            "(bars) => bars.map((b) => b.getAttribute('aria-valuenow'))")]
        assert values == pytest.approx([t["probability"] for t in expected[0]["top_k"]], abs=1e-4)
        fills = result.locator(".bar span").evaluate_all("(s) => s.map((e) => e.getBoundingClientRect().width)")
        assert fills == sorted(fills, reverse=True) and fills[0] > 0
        assert page.evaluate(BROKEN_IMAGES) == 0 and page.evaluate(OUTSIDE) == []
        assert elsewhere == []
        page.locator("#gallery button").first.click()  # a test image from the gallery, with its true label
        page.locator(".result").nth(1).wait_for()
        page.locator(".result").first.locator(".bar-row").first.wait_for(timeout=15_000)
        assert page.locator(".result").first.locator(".truth").inner_text().startswith("true: ")
        shot = tmp_path / f"page-{width}.png"
        page.screenshot(path=shot, full_page=True)
        assert_png(shot, min_width=width - 20, min_height=300)
        page.close()


def test_a_bad_file_on_the_page_shows_the_servers_message(keras_server, browser, tmp_path):
    (tmp_path / "notes.png").write_bytes(b"not an image")
    page = browser.new_page()
    page.goto(keras_server.url)
    page.set_input_files("#files", str(tmp_path / "notes.png"))
    message = page.locator(".result .error").first
    message.wait_for(timeout=15_000)
    assert "is not an image fashionlab reads" in message.inner_text()
    page.close()


def test_the_gallery_is_empty_with_a_note_without_the_data_set(tiny_run, browser, tmp_path):
    process, url = start(str(tiny_run.run.path), "--data-dir", str(tmp_path), "--no-verify")
    try:
        page = browser.new_page()
        page.goto(url)
        assert "not on this machine" in page.locator("#gallery-title").inner_text()
        assert page.locator("#gallery button").count() == 0
        page.close()
    finally:
        stop(process)


def test_ctrl_c_stops_the_server_at_once(tiny_run, synthetic):
    process, url = start(str(tiny_run.run.path), *data_options(synthetic))
    began = time.monotonic()
    code = stop(process)
    assert code in (0, 130) and time.monotonic() - began < 10
    assert "Traceback" not in process.stderr.read()
    assert not os.path.exists(Path("/proc") / str(process.pid))


# --- in process --------------------------------------------------------------------------------


def test_the_predictor_and_batcher_work_across_event_loops_and_after_keras_predicts(tiny_run, synthetic):
    import asyncio

    from fashionlab.evaluation import predict_proba
    from fashionlab.server import Batcher, load_predictor

    predictor = load_predictor(tiny_run.run.path)
    x = synthetic.test_images()[:5]
    expected = predict_proba(tiny_run.model, x)
    predictor.model.predict(x.astype("float32"), verbose=0)  # Keras may hand its weight arrays to XLA
    np.testing.assert_allclose(predictor.predict(x), expected, atol=1e-6)
    batcher = Batcher(predictor)
    for _ in range(2):  # a second event loop, as a test client or a restarted app has; each in its own thread,
        with ThreadPoolExecutor(1) as thread:  # since this one may run a loop already (Playwright's)
            proba, mirrored = thread.submit(asyncio.run, asyncio.wait_for(batcher.read(x, [False] * 5), 30)).result()
        np.testing.assert_allclose(proba, expected, atol=1e-6)
    batcher.close()


def test_the_page_state_survives_names_that_look_like_placeholders():
    import json as json_module
    import re

    from fashionlab.server import serve_page

    page, _ = serve_page({"model": {"name": "shirt__SCRIPT____STATE__"}, "gallery": [], "top_k": 3})
    state = re.search(r'<script type="application/json" id="state">(.*?)</script>', page, re.S)[1]
    assert json_module.loads(state)["model"]["name"] == "shirt__SCRIPT____STATE__"
    assert page.count('"use strict";') == 1
