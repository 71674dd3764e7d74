"""Who may use a served model: a token asked of every route but health (`--token`, `--token-file`,
FASHIONLAB_TOKEN), the page let in by /?token=TOKEN and its cookie (in headless Chromium), and the
pages of other origins let in only as `--cors` names them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from serving import Server, data_options, start, stop

TOKEN = "a-token-for-the-tests-0123456789"
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
    cookie = answer.getheader("set-cookie")
    assert status == 303 and answer.getheader("location") == "/"
    assert cookie == f"fashionlab_token={TOKEN}; Path=/; HttpOnly; SameSite=Strict"
    assert locked.request("GET", "/", headers={"Cookie": f"fashionlab_token={TOKEN}"})[0] == 200
    assert locked.request("GET", "/", headers={"Cookie": "fashionlab_token=wrong"})[0] == 401
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
    status, answer, _ = locked.request("OPTIONS", "/v2/models/tiny/infer",
                                       headers={**preflight, "Origin": "https://evil.example"})
    assert status == 400 and answer.getheader("access-control-allow-origin") is None
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
])
def test_bad_access_options_are_one_line_before_anything_starts(tiny_run, options, said):
    done = subprocess.run([sys.executable, "-m", "fashionlab", "serve", str(tiny_run.run.path), *options, "--port",
                           "0"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "FASHIONLAB_TOKEN": ""})
    assert done.returncode != 0 and said in done.stderr and done.stderr.count("\n") == 1, done.stderr
