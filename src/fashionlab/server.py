"""`fashionlab serve`: a prediction page and a JSON API for one model, with FastAPI and uvicorn.

    app = build_app(load_predictor("runs/x"))      # or load_predictor(onnx="model.onnx")
    serve("runs/x", host="127.0.0.1", port=8000)   # until Ctrl-C

GET /            the page: drop, paste or choose images; a gallery of test images
POST /api/predict  multipart images -> the JSON objects of `fashionlab predict --json`
GET /api/model   config, metrics, class names;  GET /api/health;  GET /api/gallery

Requests are answered from one model compiled at start for every batch size it will run
(`Predictor`), each call bounded in time; uploads are parsed and decoded in worker processes,
each job bounded in time and memory, fairly between requests (`uploads.UploadWorkers`); images
that arrive together are read in one batch (`Batcher`). Every refusal is a JSON answer
{"error": "one line"}, and the server goes on.
"""

import asyncio
import base64
import errno
import hashlib
import html
import ipaddress
import json
import re
import socket
import sys
import threading
import time
import types
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from fashionlab import CLASS_NAMES, __version__
from fashionlab.arguments import checked
from fashionlab.data import DataSource
from fashionlab.deadlines import MODEL_TIMEOUT, BoundedCalls, check_timeout
from fashionlab.errors import ConfigError, FashionlabError, ModelBusy, ModelTimeout, reason
from fashionlab.images import MAX_IMAGE_PIXELS, png_bytes
from fashionlab.prediction import read_probabilities, results_of
from fashionlab.runs import Run
from fashionlab.uploads import MAX_FILES, MAX_REQUEST_PIXELS, ClientGone, UploadError, UploadWorkers, printable

MAX_REQUEST_BYTES = 32 * 1024 * 1024  # one request's body, all its images together
MAX_HELD_BYTES = 256 * 1024 * 1024  # the bodies of all the requests being read and decoded at once
MAX_BATCH = 64  # images the model reads at once; requests that arrive together share a batch
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)  # a batch is padded to the next of these: one compiled program each
MAX_CONNECTIONS = 256  # open at once; a new one closes the one that has waited longest on its client
GALLERY_PER_CLASS = 2
INSTALL_HINT = "pip install 'fashionlab[serve]'"


class Predictor:
    """A model that reads batches of 28 x 28 uint8 images: `predict(x)` as a Keras model's.

    A Keras model on JAX runs as one jitted function of its weights, compiled at start for each
    size in BATCH_SIZES (a batch is padded up to the next one), so no request compiles anything.
    An ONNX model runs in onnxruntime; other backends run `model.predict`.
    """

    def __init__(self, model, engine: str, info: dict[str, Any], timeout: float = MODEL_TIMEOUT):
        self.model, self.engine, self.info = model, engine, info
        self._compiled = None
        # every call of the model is bounded in time; an ONNX model bounds its own (and stops the call)
        self.calls = model.calls if engine == "onnx" else BoundedCalls(timeout, "the model")
        if engine == "keras":
            import keras

            if keras.backend.backend() == "jax":
                self._compile()

    def _compile(self) -> None:
        import jax

        model = self.model

        @jax.jit
        def forward(weights, x):  # the weights are arguments, not constants compiled into the program
            return model.stateless_call(*weights, x, training=False)[0]

        def current(x):  # the variables' arrays read at each call: Keras may replace them (model.predict donates)
            return forward(([v.value for v in model.trainable_variables],
                            [v.value for v in model.non_trainable_variables]), x)

        self._compiled = current
        for size in BATCH_SIZES:  # compile every batch size now, not during a request
            np.asarray(self._compiled(np.zeros((size, 28, 28), np.float32)))

    def predict(self, x: np.ndarray, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.engine == "onnx":
            return self.model.predict(x, batch_size=MAX_BATCH)
        if self._compiled is None:
            return self.calls.run(lambda: np.asarray(self.model.predict(x, batch_size=MAX_BATCH, verbose=0)),
                                  images=len(x))
        parts = []
        for start in range(0, len(x), MAX_BATCH):
            chunk = x[start:start + MAX_BATCH]
            size = next(s for s in BATCH_SIZES if s >= len(chunk))
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), 28, 28), np.float32)])
            # np.asarray waits for the result: JAX returns before the computation ends
            parts.append(self.calls.run(lambda: np.asarray(self._compiled(padded)), images=len(chunk))[:len(chunk)])
        return np.concatenate(parts) if parts else np.zeros((0, len(CLASS_NAMES)), np.float32)


@checked
def load_predictor(run_dir: str | Path | None = None, *, onnx: str | Path | None = None,
                   allow_incomplete: bool = False, model_timeout: float = MODEL_TIMEOUT) -> Predictor:
    """The model of a run directory (Keras), or of an exported ONNX file (onnxruntime alone);
    each call on a batch is stopped after `model_timeout` seconds."""
    if (run_dir is None) == (onnx is None):
        raise ConfigError("give a run directory or `onnx`, one of the two", terms=["onnx"])
    check_timeout(model_timeout)
    if onnx is not None:
        from fashionlab.onnxrun import OnnxModel

        # batches are small: more threads only spin, and take the CPU
        model = OnnxModel(onnx, threads=1, timeout=model_timeout)
        meta = model.metadata
        accuracy = meta.get("test_accuracy")
        accuracy = accuracy if isinstance(accuracy, float) and 0 <= accuracy <= 1 else None
        info = {"name": _text(meta.get("name")) or Path(onnx).stem, "run": _text(meta.get("run")),
                "source": str(onnx), "config": meta.get("config") if isinstance(meta.get("config"), dict) else {},
                "test_accuracy": accuracy}
        return Predictor(model, "onnx", info)
    run = Run.open(run_dir, allow_incomplete=allow_incomplete)
    run.check_fashion_mnist("serve")
    config = run.config()
    metrics = run.metrics() if run.file("metrics.json").is_file() else {}
    info = {"name": config.name, "run": run.path.name, "source": str(run.path), "config": config.to_dict(),
            "test_accuracy": metrics.get("test_accuracy")}
    return Predictor(run.load_model(), "keras", info, timeout=model_timeout)


@dataclass
class _Job:
    pixels: np.ndarray
    mirror: list[bool]
    future: asyncio.Future = field(repr=False)


class Batcher:
    """Reads the images of requests that arrive together in one batch: while the model reads a
    batch (in its own thread), the next requests queue, and are read together next."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.queue: asyncio.Queue[_Job] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="fashionlab-model")
        self.task: asyncio.Task | None = None
        self.carried: _Job | None = None  # taken from the queue, but over the last batch's size
        self.batches = self.images = 0
        self.waiting = 0  # images queued, not yet in a batch

    async def read(self, pixels: np.ndarray, mirror: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # the first request, or the app now runs in another event loop
            self.queue, self.loop, self.carried = asyncio.Queue(), loop, None
            self.task = loop.create_task(self._loop(self.queue))
        future = loop.create_future()
        self.waiting += len(pixels)
        await self.queue.put(_Job(pixels, list(mirror), future))
        return await future

    async def _loop(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [self.carried or await queue.get()]
            self.carried, count = None, len(jobs[0].pixels)
            while not queue.empty():
                job = queue.get_nowait()
                if count + len(job.pixels) > MAX_BATCH:
                    self.carried = job
                    break
                jobs.append(job)
                count += len(job.pixels)
            pixels = np.concatenate([job.pixels for job in jobs])
            mirror = [flag for job in jobs for flag in job.mirror]
            self.waiting -= len(pixels)
            try:
                proba, mirrored = await loop.run_in_executor(self.model_thread, read_probabilities,
                                                             self.predictor, pixels, mirror)
            except Exception as exc:  # the model failed: every waiting request says so
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.batches, self.images = self.batches + 1, self.images + len(pixels)
            start = 0
            for job in jobs:
                end = start + len(job.pixels)
                if not job.future.done():
                    job.future.set_result((proba[start:end], mirrored[start:end]))
                start = end

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        self.model_thread.shutdown(wait=False, cancel_futures=True)


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def gallery(data: DataSource, per_class: int = GALLERY_PER_CLASS, seed: int = 0) -> list[dict[str, Any]]:
    """Test images to try, `per_class` of each class, with their true labels; [] without the data set."""
    from fashionlab.data import load_file

    try:
        source = data.located()
        images = source.test_images()
        labels = load_file(source.locate(), "t10k-labels-idx1-ubyte", source.verify)
    except FashionlabError:
        return []
    order = np.random.default_rng(seed).permutation(len(images))
    chosen: list[int] = []
    for label in range(len(CLASS_NAMES)):
        chosen += [int(i) for i in order[labels[order] == label][:per_class]]
    return [{"index": i, "label": CLASS_NAMES[int(labels[i])], "png": data_url(png_bytes(images[i]))}
            for i in sorted(chosen)]


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
            return await _send_error(send, 413, self._message())
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
                await _send_error(send, 413, self._message())

    def _message(self) -> str:
        return f"the request is over {self.limit // (1024 * 1024)} MB; send fewer or smaller images"


class _TooLarge(Exception):
    pass


async def _send_error(send, status: int, message: str) -> None:
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
                return await _send_error(send, 400, f"{problem}; open it as http://{_url_host(address)}:{port}/, or "
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


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


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
            await _send_error(send, 500, "the server failed on this request; it goes on serving others")


def build_app(predictor: Predictor, *, data: DataSource = DataSource(), top_k: int = 3):
    """The FastAPI application serving `predictor`: the page and the API. `serve` wraps it in
    `guarded` (Host check, HEAD, no tracebacks) before it meets a client."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse, Response
        from starlette.exceptions import HTTPException
        from starlette.requests import ClientDisconnect
    except ImportError:
        raise ConfigError(f"serve needs FastAPI and uvicorn: {INSTALL_HINT}") from None
    batcher, workers = Batcher(predictor), UploadWorkers()
    held = types.SimpleNamespace(bytes=0)  # of the request bodies being read and decoded
    started = time.time()
    model_info = {**predictor.info, "engine": predictor.engine, "class_names": list(CLASS_NAMES),
                  "fashionlab": __version__,
                  "limits": {"request_bytes": MAX_REQUEST_BYTES, "images_per_request": MAX_FILES,
                             "image_pixels": MAX_IMAGE_PIXELS, "request_pixels": MAX_REQUEST_PIXELS,
                             "model_seconds": predictor.calls.seconds, "decode_seconds": workers.job_seconds,
                             "top_k": [1, len(CLASS_NAMES)]}}
    pictures = gallery(data)
    page, script_hash = serve_page({"model": model_info, "gallery": pictures, "top_k": top_k})
    policy = (f"default-src 'none'; img-src 'self' data: blob:; style-src 'unsafe-inline'; script-src '{script_hash}'; "
              f"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    security = {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer"}

    app = FastAPI(title="fashionlab", version=__version__, docs_url=None, redoc_url=None, redirect_slashes=False,
                  description="Fashion-MNIST classes for images: the API of `fashionlab serve`.")
    app.add_middleware(BodyLimit, limit=MAX_REQUEST_BYTES)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return error(exc.status_code, str(exc.detail) if exc.detail else "request refused")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body"))
        return error(422, f"{where}: {first.get('msg', 'invalid value')}" if where else "invalid request")

    @app.exception_handler(Exception)  # a bug: the answer is JSON too, and one line on stderr says what failed
    async def failed(request: Request, exc: Exception):
        warn(f"a request to {printable(request.url.path)[:80]} failed: {type(exc).__name__}: {reason(exc)}")
        return error(500, "the server failed on this request; it goes on serving others")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> Response:
        return HTMLResponse(page, headers=security)

    @app.get("/api/health")
    async def health() -> Response:
        """200 while the model answers; 503 while it is stuck in a call that ran over its time limit."""
        stuck = predictor.calls.stuck_for()
        said = {"status": "ok" if stuck is None else "unavailable", "engine": predictor.engine,
                "model": predictor.info["name"], "uptime_seconds": round(time.time() - started, 1),
                "batches": batcher.batches, "images": batcher.images, "model_timeouts": predictor.calls.timeouts,
                "uploads_waiting": workers.waiting, "upload_bytes_held": held.bytes,
                "images_waiting": batcher.waiting}
        if stuck is not None:
            said["reason"] = (f"the model has been stuck for {stuck:.0f} s in a call that ran over "
                              f"{predictor.calls.seconds:g} s")
        return JSONResponse(said, status_code=200 if stuck is None else 503)

    @app.get("/api/model")
    async def model() -> dict[str, Any]:
        return model_info

    @app.get("/api/gallery")
    async def test_images() -> list[dict[str, Any]]:
        return pictures

    @app.post("/api/predict")
    async def predict(request: Request, top_k: int = top_k, prepared: bool = False) -> Response:
        """Images as multipart/form-data files (any field names), in order -> one result each."""
        if not 1 <= top_k <= len(CLASS_NAMES):
            return error(422, f"top_k must be between 1 and {len(CLASS_NAMES)}, got {top_k}")
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "multipart/form-data":
            return error(415, "send the images as multipart/form-data files (curl -F image=@shoe.png)")
        declared = request.headers.get("content-length", "")
        size = min(int(declared), MAX_REQUEST_BYTES) if declared.isdigit() else MAX_REQUEST_BYTES
        if held.bytes and held.bytes + size > MAX_HELD_BYTES:  # every body waits in memory for its decoding
            return error(503, f"the server is reading {held.bytes / 2**20:.0f} MB of other uploads; try again in "
                              f"a moment")
        held.bytes += size
        try:
            body = await request.body()
            names, images = await workers.read(body, request.headers.get("content-type", ""),
                                               gone=request.is_disconnected)
        except ClientDisconnect:  # the client went away: nobody to answer
            return Response(status_code=400)
        except UploadError as exc:
            return error(exc.status, str(exc))
        except ClientGone:
            return Response(status_code=400)
        finally:
            held.bytes -= size
            body = None
        pixels = np.stack([image.pixels for image in images])
        try:
            proba, mirrored = await batcher.read(pixels, [not image.as_is for image in images])
        except ModelTimeout as exc:
            return error(504, str(exc))
        except ModelBusy as exc:
            return error(503, str(exc))
        except Exception as exc:  # the model failed on this batch: say so, keep serving
            return error(500, f"the model failed: {reason(exc)}")
        results = results_of(proba, names, top_k, mirrored, pixels)
        if prepared:
            for result, image in zip(results, images):
                result["prepared"] = data_url(png_bytes(image.pixels))
        return Response(json.dumps(results), media_type="application/json")

    app.state.batcher, app.state.workers = batcher, workers  # closed by whoever runs the app (serve)
    return app


def guarded(app, *, host: str, allowed_hosts: Sequence[str] = ()):
    """`app` as it meets clients: a request naming another host is refused (`HostCheck`), HEAD
    answers as GET does without the body (`HeadAsGet`), and nothing below can print a traceback
    or answer in anything but JSON (`Shield`)."""
    return Shield(HostCheck(HeadAsGet(app), is_loopback(host), allowed_hosts))


def _text(value: Any) -> str | None:
    """A piece of an ONNX file's metadata shown on the page: a short string, or nothing."""
    return printable(value) if isinstance(value, str) else None


HEADER_SECONDS = 5.0  # a request's line and headers must arrive within this, from its first byte (or the connection)
BODY_SECONDS = 10.0  # and its body within this of them, and a second more for each MIN_BODY_RATE bytes it holds:
MIN_BODY_RATE = 16 * 1024  # a slow uplink sends a large photo in time; a client trickling bytes does not
SLOW_BODY = (f"the request's body came slower than {MIN_BODY_RATE // 1024} KB/s; send a smaller image, or from a "
             f"faster connection")
MAX_HEADER_BYTES = 64 * 1024
SLOW_HEADERS = "the request's line and headers came too slowly"


def guarded_protocol():
    """uvicorn's HTTP protocol (httptools) with what it lacks against slow, bloated or many
    connections:
    - a connection that sends no complete request line and headers within HEADER_SECONDS, or
      whose body comes slower than MIN_BODY_RATE (after BODY_SECONDS), is answered 408 and closed;
      headers over MAX_HEADER_BYTES are answered 431;
    - at most MAX_CONNECTIONS are open: a new one closes the connection that has waited longest
      on its client (idle, or still sending its request), so clients that reconnect again and
      again cannot hold every slot; when all are busy computing answers, the new one gets 503;
    - its own refusals (a malformed request included) are JSON, as the application's are."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttp(HttpToolsProtocol):
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

    return GuardedHttp


REASONS = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large",
           503: b"Service Unavailable"}


def open_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (0: any free port), or a one-line error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"`host` {host!r} is not an address this machine has ({exc.strerror})",
                          terms=["host"]) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(f"`host` {host} is not an address of this machine; use 127.0.0.1 (this machine "
                              f"only) or 0.0.0.0 (every address)", terms=["host"]) from None
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another `port`",
                          terms=["port"]) from None
    sock.set_inheritable(True)
    return sock


@checked(port=(0, 65535), top_k=(1, len(CLASS_NAMES)))
def serve(run_dir: str | Path | None = None, *, onnx: str | Path | None = None, host: str = "127.0.0.1",
          port: int = 8000, top_k: int = 3, data: DataSource = DataSource(), allow_incomplete: bool = False,
          model_timeout: float = MODEL_TIMEOUT, allowed_hosts: Sequence[str] = (),
          ready: Callable[[str], None] | None = None) -> None:
    """Serve a model until stopped (Ctrl-C, SIGTERM). `ready(url)` is called once it answers.
    `allowed_hosts`: names the Host header may give besides localhost, IP addresses and this
    machine's names (a proxy's); `model_timeout`: seconds a call of the model may take."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError(f"serve needs FastAPI and uvicorn: {INSTALL_HINT}") from None
    check_timeout(model_timeout)
    for name in allowed_hosts:
        if not host_name(name) or ":" in host_name(name):
            raise ConfigError(f"`allowed_hosts` holds {name!r}, not a host name (such as proxy.example); IP "
                              f"addresses are allowed already", terms=["allowed_hosts"])
    sock = open_socket(host, port)  # first: a port in use fails before the model loads
    bound_host, bound_port = sock.getsockname()[:2]  # what was bound, however `host` said it
    if not is_loopback(bound_host):
        warn(f"serving on {host}: anyone who can reach this machine can use the model (there is no "
             f"authentication); use --host 127.0.0.1 to keep it local")
    try:
        predictor = load_predictor(run_dir, onnx=onnx, allow_incomplete=allow_incomplete, model_timeout=model_timeout)
        app = build_app(predictor, data=data, top_k=top_k)
        # connections are limited by the protocol (guarded_protocol), not by uvicorn's plain-text 503;
        # uvicorn's own log would let any client write to the terminal (a line per malformed request
        # or client gone mid-answer): fashionlab says what matters itself (Shield)
        config = uvicorn.Config(guarded(app, host=bound_host, allowed_hosts=allowed_hosts), http=guarded_protocol(),
                                ws="none", log_level="critical", access_log=False, timeout_graceful_shutdown=10,
                                lifespan="on")
        server = uvicorn.Server(config)
        url = f"http://{_url_host(bound_host)}:{bound_port}/"
        if ready is not None:
            threading.Thread(target=_announce, args=(server, url, ready), daemon=True).start()
        try:
            server.run(sockets=[sock])
        finally:
            app.state.batcher.close()
            app.state.workers.close()
    finally:
        sock.close()


def _announce(server, url: str, ready) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.02)
    if server.started:
        ready(url)


def is_loopback(host: str) -> bool:
    """Whether an address (or localhost) is this machine's loopback, IPv4-mapped IPv6 included."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def serve_page(state: dict[str, Any]) -> tuple[str, str]:
    """The page (pages/serve.html, its script pages/serve.js inline, `state` as JSON in it) and the
    script's digest for the Content-Security-Policy: nothing is fetched from anywhere else."""
    pages = resources.files("fashionlab") / "pages"
    template = (pages / "serve.html").read_text(encoding="utf-8")
    script = (pages / "serve.js").read_text(encoding="utf-8")
    data = json.dumps(state).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = html.escape(str(state["model"]["name"]))
    values = {"TITLE": title, "STATE": data, "SCRIPT": script}  # in one pass: a value may hold "__SCRIPT__"
    page = re.sub(r"__(TITLE|STATE|SCRIPT)__", lambda found: values[found[1]], template)
    return page, "sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


def warn(message: str) -> None:
    print(f"fashionlab: warning: {message}", file=sys.stderr, flush=True)
