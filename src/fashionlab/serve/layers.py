"""The ASGI layers every request of `fashionlab serve` passes, plain ASGI with no framework: the
Host header checked (`HostCheck`), HEAD answered as GET (`HeadAsGet`), nothing below escaping as a
traceback (`Shield`), a body over its limit answered 413 (`BodyLimit`). Their refusals are JSON.

    app = guarded(app, host="127.0.0.1", allowed_hosts=["proxy.example"])
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sys
from collections.abc import Sequence

from fashionlab.errors import reason


def guarded(app, *, host: str, allowed_hosts: Sequence[str] = ()):
    """`app` as it meets clients: a request naming another host is refused (`HostCheck`), HEAD
    answers as GET does without the body (`HeadAsGet`), and nothing below can print a traceback
    or answer in anything but JSON (`Shield`)."""
    return Shield(HostCheck(HeadAsGet(app), is_loopback(host), allowed_hosts))


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
        self.names |= {host_name(name) for name in allowed}

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
            allowed = name in self.names
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
