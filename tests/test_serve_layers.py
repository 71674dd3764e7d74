"""The layers every request passes (serve/layers.py), asked over HTTP of a real server: the body
limit, the Host check, HEAD as GET; who may use a served model: a token asked of every route but
health (`--token`, `--token-file`, FASHIONLAB_TOKEN), the page let in by /?token=TOKEN and its cookie
(in headless Chromium), the pages of other origins let in only as `--cors` names them; and Shield,
in process."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from serving import Server, data_options, multipart, raw_exchange, start, status_and_json, stop

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


# --- the token and CORS ----------------------------------------------------------------------

TOKEN = "a-token-for-the-tests+/=0123456789"  # '+', '/', '=': a base64 token
ORIGIN = "https://lab.example"


@pytest.fixture(scope="module")
def locked(tiny_run, synthetic, tmp_path_factory):
    """The tiny run served with a token (from a file) and one CORS origin."""
    token_file = tmp_path_factory.mktemp("token") / "token"
    token_file.write_text(TOKEN + "\n")
    process, url = start(str(tiny_run.run.path), "--token-file", str(token_file), "--cors", ORIGIN,
                         *data_options(synthetic))
    yield Server(process, url)
    assert stop(process) in (0, 130)
    assert "Traceback" not in process.stderr.read()


BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize("method, path", [("GET", "/api/model"), ("GET", "/metrics"), ("GET", "/"),
                                          ("GET", "/api/gallery"), ("POST", "/api/predict"),
                                          ("GET", "/v2/models/tiny"), ("POST", "/v2/models/tiny/infer"),
                                          ("GET", "/openapi.json"), ("GET", "/no/such/route")])
def test_every_route_but_health_needs_the_token(locked, method, path):
    status, answer, said = locked.request(method, path)
    assert status == 401 and answer.getheader("www-authenticate") == 'Bearer realm="fashionlab"'
    assert said["error"].startswith("this server needs its token")
    for wrong in ("Bearer nope", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN[:-1]}"):
        assert locked.request(method, path, headers={"Authorization": wrong})[0] == 401
    assert locked.request(method, path, headers=BEARER)[0] != 401


def test_health_needs_no_token(locked):
    for path in ("/api/health", "/v2/health/live", "/v2/health/ready"):
        assert locked.request("GET", path)[0] == 200


def test_the_page_opened_with_the_token_gets_a_strict_cookie(locked):
    status, answer, _ = locked.request("GET", f"/?token={TOKEN}")
    cookie, name = answer.getheader("set-cookie"), f"fashionlab_token_{locked.port}"  # one per server on a host
    assert status == 303 and answer.getheader("location") == "/"
    assert cookie == f"{name}={TOKEN}; Path=/; HttpOnly; SameSite=Strict"
    assert locked.request("GET", "/", headers={"Cookie": f"{name}={TOKEN}"})[0] == 200
    for others in ('a=b c; ', 'prefs={"a":1}; ', "path=/; ", f"{name}=wrong; "):  # other applications' cookies
        assert locked.request("GET", "/", headers={"Cookie": f"{others}{name}={TOKEN}"})[0] == 200
    assert locked.request("GET", "/", headers={"Cookie": f"fashionlab_token_1={TOKEN}"})[0] == 401
    assert locked.request("GET", "/", headers={"Cookie": f"{name}=wrong"})[0] == 401
    assert locked.request("GET", "/?token=" + TOKEN.replace("+", "%2B").replace("/", "%2F"))[0] == 303
    assert locked.request("GET", "/?token=wrong")[0] == 401
    assert locked.request("GET", "/api/model?token=" + TOKEN)[0] == 401  # only the page takes it in its address


def test_the_page_works_in_chromium_after_opening_it_with_the_token(locked, browser):
    page = browser.new_page()
    try:
        page.goto(f"{locked.url}?token={TOKEN}")
        assert page.url == locked.url and "token" not in page.url
        page.locator("#gallery button").first.click()  # the page's own requests carry the cookie
        page.locator(".result").first.locator(".bar-row").first.wait_for(timeout=15_000)
        assert page.evaluate("fetch('/api/model').then((r) => r.status)") == 200
    finally:
        page.close()


def test_cors_lets_in_the_named_origin_only(locked):
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    status, answer, _ = locked.request("OPTIONS", "/v2/models/tiny/infer", headers=preflight)
    assert status == 200 and answer.getheader("access-control-allow-origin") == ORIGIN
    assert "authorization" in answer.getheader("access-control-allow-headers").lower()
    status, answer, said = locked.request("OPTIONS", "/v2/models/tiny/infer",
                                          headers={**preflight, "Origin": "https://evil.example"})
    assert status == 400 and answer.getheader("access-control-allow-origin") is None
    assert said["error"] == "Disallowed CORS origin: this server lets in pages of https://lab.example"
    status, answer, _ = locked.request("OPTIONS", "/v2/models/tiny/infer", headers={
        **preflight, "Access-Control-Request-Headers": "authorization, x-request-id",
        "Access-Control-Request-Private-Network": "true"})  # a client's own header; a public page, a local server
    assert status == 200 and answer.getheader("access-control-allow-private-network") == "true"
    status, answer, _ = locked.request("GET", "/api/model", headers={**BEARER, "Origin": ORIGIN})
    assert status == 200 and answer.getheader("access-control-allow-origin") == ORIGIN
    status, answer, _ = locked.request("GET", "/api/model", headers={**BEARER, "Origin": "https://evil.example"})
    assert answer.getheader("access-control-allow-origin") is None


def test_without_cors_no_origin_is_let_in(keras_server):
    status, answer, _ = keras_server.request("GET", "/api/model", headers={"Origin": ORIGIN})
    assert status == 200 and answer.getheader("access-control-allow-origin") is None


def test_token_alone_makes_one_and_prints_the_pages_address(tiny_run, synthetic):
    process, url = start(str(tiny_run.run.path), "--token", *data_options(synthetic))
    try:
        assert "?token=" in url
        server = Server(process, url.split("?")[0])
        made = url.split("?token=")[1]
        assert len(made) >= 32 and server.request("GET", "/api/model")[0] == 401
        assert server.request("GET", "/api/model", headers={"Authorization": f"Bearer {made}"})[0] == 200
    finally:
        stop(process)


def test_the_environment_gives_the_token(tiny_run, synthetic, monkeypatch):
    monkeypatch.setenv("FASHIONLAB_TOKEN", TOKEN)
    process, url = start(str(tiny_run.run.path), *data_options(synthetic))
    try:
        server = Server(process, url)
        assert server.request("GET", "/api/model")[0] == 401 and server.request("GET", "/api/model",
                                                                                 headers=BEARER)[0] == 200
    finally:
        stop(process)


@pytest.mark.parametrize("options, said", [
    (["--token", "short"], "--token: a token must be 16 to 512"),
    (["--token", "has spaces in it, sixteen+"], "--token: a token must be"),
    (["--token", TOKEN, "--token-file", "x"], "give --token or --token-file, not both"),
    (["--cors", "https://lab.example/path"], "--cors: 'https://lab.example/path' is not an origin"),
    (["--cors", "lab.example"], "is not an origin"),
    (["--token-file", "/nonexistent/token"], "token file"),
    (["--cors", "http://a.example:99999"], "is not an origin"),
    (["--allow-host", "*.com:80"], "not a host name"),
    (["--model-name", "a/b"], "--model-name 'a/b' must be"),
])
def test_bad_access_options_are_one_line_before_anything_starts(tiny_run, options, said):
    done = subprocess.run([sys.executable, "-m", "fashionlab", "serve", str(tiny_run.run.path), *options, "--port",
                           "0"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FASHIONLAB_TOKEN": ""})
    assert done.returncode != 0 and said in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_an_empty_token_file_is_refused(tiny_run, tmp_path):
    (tmp_path / "token").write_text("\n")
    done = subprocess.run([sys.executable, "-m", "fashionlab", "serve", str(tiny_run.run.path), "--token-file",
                           str(tmp_path / "token"), "--port", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "its first line is empty" in done.stderr


def test_a_token_from_the_environment_is_checked_under_its_name(tiny_run):
    done = subprocess.run([sys.executable, "-m", "fashionlab", "serve", str(tiny_run.run.path), "--port", "0"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "FASHIONLAB_TOKEN": "short"})
    assert done.returncode != 0 and done.stderr.startswith("fashionlab: error: FASHIONLAB_TOKEN: a token must be")


def test_an_option_that_took_the_run_as_its_value_says_so(tiny_run):
    done = subprocess.run([sys.executable, "-m", "fashionlab", "serve", "--token", str(tiny_run.run.path), "--port",
                           "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and f"--token or --cors took {tiny_run.run.path} as its value" in done.stderr


def test_a_wildcard_host_and_a_model_name(tiny_run, synthetic):
    process, url = start(str(tiny_run.run.path), "--allow-host", "*.svc.cluster.local", "--model-name", "fashion",
                         *data_options(synthetic))
    try:
        server = Server(process, url)
        inside = {"Host": "fashionlab.default.svc.cluster.local:8000"}
        assert server.request("GET", "/v2/health/ready", headers=inside)[0] == 200
        assert server.request("GET", "/v2/health/ready", headers={"Host": "svc.cluster.local.evil.example"})[0] == 400
        assert server.request("GET", "/v2/models/fashion")[2]["name"] == "fashion"
        assert server.request("GET", "/v2/models/tiny")[0] == 404
    finally:
        stop(process)
