"""The HTTP protocol `fashionlab serve` runs: uvicorn's (httptools), with what it lacks against
slow, bloated or many connections (`GuardedHttp`).

    uvicorn.Config(app, http=GuardedHttp, ...)

It subclasses uvicorn's internal `HttpToolsProtocol`, overriding its parser callbacks and reading
its connection state: the `serve` extra pins uvicorn below the next minor release, and
tests/test_serve_protocol.py checks each internal it relies on.
"""

from __future__ import annotations

import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_SECONDS = 5.0  # a request's line and headers must arrive within this, from its first byte (or the connection)
BODY_SECONDS = 10.0  # and its body within this of them, and a second more for each MIN_BODY_RATE bytes it holds:
MIN_BODY_RATE = 16 * 1024  # a slow uplink sends a large photo in time; a client trickling bytes does not
SLOW_BODY = (f"the request's body came slower than {MIN_BODY_RATE // 1024} KB/s; send a smaller image, or from a "
             f"faster connection")
MAX_HEADER_BYTES = 64 * 1024
SLOW_HEADERS = "the request's line and headers came too slowly"
MAX_CONNECTIONS = 256  # open at once; a new one closes the one that has waited longest on its client
REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
           503: b"Service Unavailable"}


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's HTTP protocol (httptools) with what it lacks against slow, bloated or many
    connections:
    - a connection that sends no complete request line and headers within HEADER_SECONDS, or
      whose body comes slower than MIN_BODY_RATE (after BODY_SECONDS), is answered 408 and closed;
      headers over MAX_HEADER_BYTES are answered 431;
    - at most MAX_CONNECTIONS are open: a new one closes the connection that has waited longest
      on its client (idle, or still sending its request), so clients that reconnect again and
      again cannot hold every slot; when all are busy computing answers, the new one gets 503;
    - its own refusals (a malformed request included) are JSON, as the application's are."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self.header_bytes, self.in_headers, self.working = 0, True, False
        self.waiting_since = self.loop.time()  # on its client: since it opened, or its last answer
        self.deadline = self.loop.call_later(HEADER_SECONDS, self.refuse, 408, SLOW_HEADERS)
        if len(self.connections) > MAX_CONNECTIONS:
            self.make_room()

    def make_room(self) -> None:
        waiting = [c for c in self.connections if c is not self and not getattr(c, "working", True)
                   and not c.transport.is_closing()]
        if waiting:
            min(waiting, key=lambda c: c.waiting_since).refuse(
                503, "the server is full and this connection had waited longest on its client; send again")
        else:
            self.refuse(503, f"the server is busy answering {MAX_CONNECTIONS} requests; try again in a moment")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self.in_headers:  # the next request on a kept-alive connection
            self.header_bytes, self.in_headers = 0, True
            self.rearm(HEADER_SECONDS, SLOW_HEADERS)

    def on_url(self, url: bytes) -> None:
        self.count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.count(len(name) + len(value))
        if not self.transport.is_closing():
            super().on_header(name, value)

    def count(self, size: int) -> None:
        self.header_bytes += size
        if self.header_bytes > MAX_HEADER_BYTES:
            self.refuse(431, f"the request's line and headers are over {MAX_HEADER_BYTES // 1024} KB")

    def on_headers_complete(self) -> None:
        self.in_headers = False
        if self.transport.is_closing():  # refused: no application call for it
            return
        self.body_started, self.body_bytes = self.loop.time(), 0
        self.rearm(BODY_SECONDS, SLOW_BODY)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        due = self.body_started + BODY_SECONDS + self.body_bytes / MIN_BODY_RATE
        self.rearm(due - self.loop.time(), SLOW_BODY)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self.deadline.cancel()
        self.working = True
        super().on_message_complete()

    def on_response_complete(self) -> None:
        self.working, self.waiting_since = False, self.loop.time()
        super().on_response_complete()

    def connection_lost(self, exc) -> None:
        self.deadline.cancel()
        super().connection_lost(exc)

    def rearm(self, seconds: float, message: str) -> None:
        self.deadline.cancel()
        self.deadline = self.loop.call_later(seconds, self.refuse, 408, message)

    def send_400_response(self, msg: str) -> None:  # uvicorn's answer to a malformed request
        self.refuse(400, "the request is not valid HTTP/1.1")

    def refuse(self, status: int, message: str) -> None:
        if self.transport.is_closing():
            return
        if self.cycle is None or not self.cycle.response_started:
            body = json.dumps({"error": message}).encode()
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                 b"connection: close\r\n\r\n%s" % (status, REASONS[status], len(body), body))
        self.transport.close()
