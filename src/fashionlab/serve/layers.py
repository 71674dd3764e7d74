"""The ASGI layers every request of `fashionlab serve` passes, plain ASGI with no framework: the
Host header checked (`HostCheck`), HEAD answered as GET (`HeadAsGet`), nothing below escaping as a
traceback (`Shield`), a body over its limit answered 413 (`BodyLimit`), the server's token asked of
every route but health (`TokenCheck`), and other origins' pages let in (`cors`, Starlette's). Their
refusals are JSON.

    app = guarded(app, host="127.0.0.1", allowed_hosts=["proxy.example"], token=None, origins=())
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
import sys
from collections.abc import Callable, Sequence
from urllib.parse import unquote

from fashionlab.errors import reason


def guarded(app, *, host: str, allowed_hosts: Sequence[str] = (), token: str | None = None,
            origins: Sequence[str] = (), measured: Callable | None = None):
    """`app` as it meets clients: a request naming another host is refused (`HostCheck`), HEAD
    answers as GET does without the body (`HeadAsGet`), pages of `origins` may call it (`cors`), a
    request without `token` is refused but health (`TokenCheck`), and nothing below can print a
    traceback or answer in anything but JSON (`Shield`). `measured`: a layer that counts and times
    every request, refused ones included (`ServeMetrics.layer`)."""
    inner = HeadAsGet(TokenCheck(app, token) if token else app)
    if origins:
        inner = cors(inner, origins)
    inner = HostCheck(inner, is_loopback(host), allowed_hosts)
    return Shield(measured(inner) if measured else inner)


def cors(app, origins: Sequence[str]):
    """Starlette's CORS layer for the pages of `origins` ("*": any), as browsers send them (lower case):
    GET and POST with any header (the token, the binary tensors' length, a client's own), from a public
    page to a server on a private address too (Chrome's Private Network Access); preflight requests
    answered before the token is asked for, and refused ones in JSON."""
    from starlette.middleware.cors import CORSMiddleware
    from starlette.responses import JSONResponse

    class JsonCors(CORSMiddleware):
        def preflight_response(self, request_headers):
            said = super().preflight_response(request_headers)
            if said.status_code < 400:
                return said
            headers = {k: v for k, v in said.headers.items() if k not in ("content-type", "content-length")}
            return JSONResponse({"error": f"{said.body.decode('latin-1')}: this server lets in pages of "
                                          f"{', '.join(origins)}"}, status_code=said.status_code, headers=headers)

    return JsonCors(app, allow_origins=[o.lower() for o in origins], allow_methods=["GET", "POST"],
                    allow_headers=["*"], expose_headers=["Inference-Header-Content-Length"], max_age=600,
                    allow_private_network=True)


ORIGIN = re.compile(r"https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+)(:(?P<port>\d{1,5}))?")


def origin_problem(origin: str) -> str | None:
    """What is wrong with an origin a page may call from: scheme://host[:port], nothing after, or "*"."""
    found = ORIGIN.fullmatch(origin)
    if origin == "*" or (found and int(found["port"] or 0) <= 65535):
        return None
    return (f"{printable(origin)[:80]!r} is not an origin: give scheme://host[:port] as a browser sends it "
            f"(https://lab.example, http://localhost:3000), or *")


OPEN_PATHS = ("/api/health", "/v2/health/live", "/v2/health/ready")  # a load balancer's checks need no token
COOKIE = "fashionlab_token"  # and the server's port: a browser sends one host's cookies to every port of it
MIN_TOKEN = 16


def token_problem(token: str) -> str | None:
    """What is wrong with a token: at least MIN_TOKEN visible ASCII characters, no spaces, quotes or ';'."""
    if len(token) < MIN_TOKEN or len(token) > 512 or not re.fullmatch(r"[A-Za-z0-9._~+/=-]+", token):
        return (f"a token must be {MIN_TOKEN} to 512 letters, digits or ._~+/=- characters; make one with "
                f"python -c 'import secrets; print(secrets.token_urlsafe())'")
    return None


class TokenCheck:
    """ASGI middleware: every route but health needs the server's token, as `Authorization: Bearer TOKEN`
    or the cookie the page gets when it is opened as /?token=TOKEN (then sent to / without it, so the
    token leaves the address bar; the cookie, named with the server's port, is HttpOnly and
    SameSite=Strict: other sites' pages cannot send it). Compared in constant time; a refusal is 401
    with WWW-Authenticate."""

    def __init__(self, app, token: str):
        self.app, self.token = app, token.encode()

    def given(self, scope) -> bool:
        name = self.cookie_name(scope).encode()
        for key, value in scope["headers"]:
            if key == b"authorization" and value[:7].lower() == b"bearer " and self._same(value[7:].strip()):
                return True
            if key == b"cookie":  # read leniently: another application's odd cookie does not hide this one
                pairs = (pair.strip().partition(b"=") for pair in value.split(b";"))
                if any(k == name and self._same(v.strip()) for k, _, v in pairs):
                    return True
        return False

    @staticmethod
    def cookie_name(scope) -> str:
        port = (scope.get("server") or (None, None))[1]
        return f"{COOKIE}_{port}" if isinstance(port, int) else COOKIE

    def _same(self, said: bytes) -> bool:
        return hmac.compare_digest(said, self.token)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self.given(scope):
            return await self.app(scope, receive, send)
        asked = [unquote(v) for k, _, v in (p.partition("=") for p in scope.get("query_string", b"")
                                                .decode("latin-1").split("&")) if k == "token"]  # '+' stays '+'
        if scope["path"] == "/" and asked and self._same(asked[0].encode("latin-1")):
            cookie = f"{self.cookie_name(scope)}={asked[0]}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")
            await send({"type": "http.response.start", "status": 303,
                        "headers": [(b"location", b"/"), (b"set-cookie", cookie), (b"content-length", b"0"),
                                    (b"cache-control", b"no-store")]})
            return await send({"type": "http.response.body", "body": b""})
        body = json.dumps({"error": "this server needs its token: send Authorization: Bearer TOKEN, or open the "
                                    "page as /?token=TOKEN"}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="fashionlab"')]})
        await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware: a request whose body is over `limit` bytes is answered 413 at once,
    whether it says its length (Content-Length) or streams it (chunked)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await send_error(send, 413, self._message())
        seen, watched = 0, _Watched(send)

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counted_receive, watched)
        except _TooLarge:
            if not watched.started:
                await send_error(send, 413, self._message())

    def _message(self) -> str:
        return f"the request is over {self.limit // (1024 * 1024)} MB; send fewer or smaller images"


class _TooLarge(Exception):
    pass


async def send_error(send, status: int, message: str) -> None:
    """The JSON answer {"error": message}, the connection closed after it."""
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class HostCheck:
    """ASGI middleware: a request whose Host header names another server is refused (400). A web
    page from anywhere can make a browser send requests to 127.0.0.1 under its own domain name
    (DNS rebinding); those name that domain. Allowed: IP addresses (only loopback ones when the
    server listens on loopback), localhost, this machine's names, and `allowed` names; an HTTP/1.0
    request may give none (no browser sends that)."""

    def __init__(self, app, loopback: bool, allowed: Sequence[str] = ()):
        self.app, self.loopback_only = app, loopback
        self.names = {"localhost", socket.gethostname().lower(), socket.getfqdn().lower()}
        self.names |= {host_name(name) for name in allowed if not name.startswith("*.")}
        self.suffixes = tuple("." + host_name(name[2:]) for name in allowed if name.startswith("*."))  # *.svc.local

    def problem(self, scope) -> str | None:
        """What is wrong with the request's Host header, or None."""
        hosts = [value for key, value in scope["headers"] if key == b"host"]
        if len(hosts) > 1:
            return "the request gives two Host headers"
        if not hosts:
            return None if scope.get("http_version") == "1.0" else "the request gives no Host header"
        said = hosts[0].decode("latin-1")
        name = host_name(said)
        try:
            address = ipaddress.ip_address(name or "-")
        except ValueError:
            allowed = name in self.names or bool(self.suffixes and name.endswith(self.suffixes))
        else:
            allowed = address.is_loopback or not self.loopback_only
        return None if allowed else f"the Host header {printable(said)[:80]!r} does not name this server"

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            problem = self.problem(scope)
            if problem:
                address, port = (scope.get("server") or ("127.0.0.1", "PORT"))[:2]
                return await send_error(send, 400, f"{problem}; open it as http://{url_host(address)}:{port}/, or "
                                                   f"start serve with --allow-host NAME")
        return await self.app(scope, receive, send)


HOST = re.compile(r"(\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[a-z0-9_.-]+))(:\d{1,5})?")


def host_name(value: str) -> str:
    """The name in a Host header (host[:port]), lower case, without its port, IPv6 brackets or
    trailing dot; "" when it is not of that form."""
    found = HOST.fullmatch(value.strip().lower())
    if not found:
        return ""
    return found["v6"] or found["name"].rstrip(".")


def url_host(address: str) -> str:
    """An address as the host of a URL: an IPv6 one in brackets."""
    return f"[{address}]" if ":" in address else address


def is_loopback(host: str) -> bool:
    """Whether an address (or localhost) is this machine's loopback, IPv4-mapped IPv6 included."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


class HeadAsGet:
    """ASGI middleware: HEAD is answered wherever GET is, with GET's status and headers and no body."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "HEAD":
            return await self.app(scope, receive, send)

        async def without_body(message):
            await send({**message, "body": b""} if message["type"] == "http.response.body" else message)

        return await self.app({**scope, "method": "GET"}, receive, without_body)


class _Watched:
    """An ASGI `send` that remembers whether the answer has started (its status is then sent)."""

    def __init__(self, send):
        self.send, self.started = send, False

    async def __call__(self, message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


class Shield:
    """ASGI middleware, the outermost: an exception from below becomes one line on stderr (a JSON
    500 when no answer has started), never a traceback from uvicorn."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        watched = _Watched(send)
        try:
            await self.app(scope, receive, watched)
        except Exception as exc:
            if scope["type"] != "http":  # the lifespan's own failure: uvicorn reports it
                raise
            if watched.started:  # answers are sent whole: what fails after the start is the client's connection
                return
            warn(f"a request to {printable(scope.get('path', ''))[:80]} failed: {type(exc).__name__}: {reason(exc)}")
            await send_error(send, 500, "the server failed on this request; it goes on serving others")


def printable(text: str) -> str:
    """A client's text (a file name, a header, a path), cut to 200 characters, control characters dropped."""
    return "".join(ch for ch in text[:200] if ch.isprintable())


def warn(message: str) -> None:
    print(f"fashionlab: warning: {message}", file=sys.stderr, flush=True)
