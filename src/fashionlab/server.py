"""`fashionlab serve`: a prediction page and a JSON API for one model, with FastAPI and uvicorn.

    app = build_app(load_predictor("runs/x"))      # or load_predictor(onnx="model.onnx")
    serve("runs/x", host="127.0.0.1", port=8000)   # until Ctrl-C

GET /            the page: drop, paste or choose images; a gallery of test images
POST /api/predict  multipart images -> the JSON objects of `fashionlab predict --json`
GET /api/model   config, metrics, class names;  GET /api/health;  GET /api/gallery

Requests are answered from one model compiled at start for every batch size it will run
(`Predictor`); images that arrive together are read in one batch (`Batcher`). Bad input gets
a 4xx JSON answer {"error": "one line"}, and the server goes on.
"""

import asyncio
import base64
import errno
import hashlib
import html
import io
import json
import re
import socket
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fashionlab import CLASS_NAMES, __version__
from fashionlab.data import DataSource
from fashionlab.errors import ConfigError, FashionlabError, RunError, reason
from fashionlab.prediction import MAX_IMAGE_PIXELS, png_bytes, read_image, read_probabilities, results_of
from fashionlab.runs import Run

MAX_REQUEST_BYTES = 32 * 1024 * 1024  # one request's body, all its images together
MAX_FILES = 64  # images in one request
MAX_BATCH = 64  # images the model reads at once; requests that arrive together share a batch
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)  # a batch is padded to the next of these: one compiled program each
MAX_CONNECTIONS = 256  # more at once are answered 503 by uvicorn
DECODE_THREADS = 2
INLINE_BYTES, INLINE_PIXELS = 64 * 1024, 256 * 256  # uploads decoded on the event loop, not in a thread
GALLERY_PER_CLASS = 2
INSTALL_HINT = "pip install 'fashionlab[serve]'"


class Predictor:
    """A model that reads batches of 28 x 28 uint8 images: `predict(x)` as a Keras model's.

    A Keras model on JAX runs as one jitted function of its weights, compiled at start for each
    size in BATCH_SIZES (a batch is padded up to the next one), so no request compiles anything.
    An ONNX model runs in onnxruntime; other backends run `model.predict`.
    """

    def __init__(self, model, engine: str, info: dict[str, Any]):
        self.model, self.engine, self.info = model, engine, info
        self._compiled = None
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
        if self._compiled is None:
            return np.asarray(self.model.predict(x, batch_size=MAX_BATCH, verbose=0))
        parts = []
        for start in range(0, len(x), MAX_BATCH):
            chunk = x[start:start + MAX_BATCH]
            size = next(s for s in BATCH_SIZES if s >= len(chunk))
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), 28, 28), np.float32)])
            parts.append(np.asarray(self._compiled(padded))[:len(chunk)])
        return np.concatenate(parts) if parts else np.zeros((0, len(CLASS_NAMES)), np.float32)


def load_predictor(run_dir: str | Path | None = None, *, onnx: str | Path | None = None,
                   allow_incomplete: bool = False) -> Predictor:
    """The model of a run directory (Keras), or of an exported ONNX file (onnxruntime alone)."""
    if (run_dir is None) == (onnx is None):
        raise ConfigError("give a run directory or `onnx`, one of the two", terms=["onnx"])
    if onnx is not None:
        from fashionlab.export import OnnxModel

        model = OnnxModel(onnx, threads=1)  # batches are small: more threads only spin, and take the CPU
        meta = model.metadata
        accuracy = meta.get("test_accuracy")
        accuracy = accuracy if isinstance(accuracy, float) and 0 <= accuracy <= 1 else None
        info = {"name": _text(meta.get("name")) or Path(onnx).stem, "run": _text(meta.get("run")),
                "source": str(onnx), "config": meta.get("config") if isinstance(meta.get("config"), dict) else {},
                "test_accuracy": accuracy}
        return Predictor(model, "onnx", info)
    run = Run.open(run_dir, allow_incomplete=allow_incomplete)
    config = run.config()
    metrics = run.metrics() if run.file("metrics.json").is_file() else {}
    info = {"name": config.name, "run": run.path.name, "source": str(run.path), "config": config.to_dict(),
            "test_accuracy": metrics.get("test_accuracy")}
    return Predictor(run.load_model(), "keras", info)


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

    async def read(self, pixels: np.ndarray, mirror: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # the first request, or the app now runs in another event loop
            self.queue, self.loop, self.carried = asyncio.Queue(), loop, None
            self.task = loop.create_task(self._loop(self.queue))
        future = loop.create_future()
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
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge()
            return message

        async def watched_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _TooLarge:
            if not started:
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


def build_app(predictor: Predictor, *, data: DataSource = DataSource(), top_k: int = 3):
    """The FastAPI application serving `predictor`: the page and the API."""
    try:
        from fastapi import FastAPI, Request
        from fastapi.exceptions import RequestValidationError
        from fastapi.responses import HTMLResponse, JSONResponse, Response
        from starlette.concurrency import run_in_threadpool
        from starlette.datastructures import UploadFile
        from starlette.exceptions import HTTPException
        from starlette.requests import ClientDisconnect
    except ImportError:
        raise ConfigError(f"serve needs FastAPI and uvicorn: {INSTALL_HINT}") from None
    batcher = Batcher(predictor)
    decoding = asyncio.Semaphore(DECODE_THREADS * 2)
    started = time.time()
    model_info = {**predictor.info, "engine": predictor.engine, "class_names": list(CLASS_NAMES),
                  "fashionlab": __version__,
                  "limits": {"request_bytes": MAX_REQUEST_BYTES, "images_per_request": MAX_FILES,
                             "image_pixels": MAX_IMAGE_PIXELS, "top_k": [1, len(CLASS_NAMES)]}}
    pictures = gallery(data)
    page, script_hash = serve_page({"model": model_info, "gallery": pictures, "top_k": top_k})
    policy = (f"default-src 'none'; img-src 'self' data: blob:; style-src 'unsafe-inline'; script-src '{script_hash}'; "
              f"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    security = {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer"}

    app = FastAPI(title="fashionlab", version=__version__, docs_url=None, redoc_url=None,
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

    @app.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse, include_in_schema=False)
    async def index() -> Response:
        return HTMLResponse(page, headers=security)

    @app.api_route("/api/health", methods=["GET", "HEAD"])
    async def health() -> dict[str, Any]:
        return {"status": "ok", "engine": predictor.engine, "model": predictor.info["name"],
                "uptime_seconds": round(time.time() - started, 1), "batches": batcher.batches,
                "images": batcher.images}

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
        try:
            form = await request.form(max_files=MAX_FILES, max_fields=MAX_FILES, max_part_size=64 * 1024)
        except ClientDisconnect:  # the client went away: nobody to answer
            return Response(status_code=400)
        except HTTPException as exc:  # the multipart parser's refusal
            return error(400, f"the upload cannot be read ({str(exc.detail).rstrip('.')}); send up to {MAX_FILES} "
                              f"images as multipart/form-data files (curl -F image=@shoe.png)")
        try:
            uploads = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
            if not uploads:
                return error(400, "no image files in the request; send them as files (curl -F image=@shoe.png)")
            names, contents = [], []
            for number, upload in enumerate(uploads, 1):
                names.append(_printable(upload.filename or f"image {number}"))
                contents.append(await upload.read())
        except ClientDisconnect:
            return Response(status_code=400)
        finally:
            await form.close()
        try:
            if all(_small(content) for content in contents):  # ~0.1 ms each: a thread's hand-off costs more
                images = _decode_all(contents, names)
            else:
                async with decoding:
                    images = await run_in_threadpool(_decode_all, contents, names)
        except FashionlabError as exc:
            return error(400 if not isinstance(exc, RunError) else 500, str(exc))
        pixels = np.stack([image.pixels for image in images])
        try:
            proba, mirrored = await batcher.read(pixels, [not image.as_is for image in images])
        except Exception as exc:  # the model failed on this batch: say so, keep serving
            return error(500, f"the model failed: {reason(exc)}")
        results = results_of(proba, names, top_k, mirrored, pixels)
        if prepared:
            for result, image in zip(results, images):
                result["prepared"] = data_url(png_bytes(image.pixels))
        return Response(json.dumps(results), media_type="application/json")

    app.state.batcher = batcher  # closed by whoever runs the app (serve)
    return app


def _small(content: bytes) -> bool:
    """Whether an upload is small enough to decode on the event loop: a short file whose header
    declares few pixels (a short file can still declare millions)."""
    if len(content) > INLINE_BYTES:
        return False
    try:
        with Image.open(io.BytesIO(content)) as image:
            return image.size[0] * image.size[1] <= INLINE_PIXELS
    except Exception:  # not an image: read_image says why, at once
        return True


def _decode_all(contents: Sequence[bytes], names: Sequence[str]):
    return [read_image(io.BytesIO(content), name) for content, name in zip(contents, names)]


def _text(value: Any) -> str | None:
    """A piece of an ONNX file's metadata shown on the page: a short string, or nothing."""
    return _printable(value) if isinstance(value, str) else None


def _printable(name: str) -> str:
    """A client's file name, cut to 200 characters, control characters dropped."""
    return "".join(ch for ch in name[:200] if ch.isprintable())


LOOPBACK = ("127.0.0.1", "localhost", "::1")
HEADER_SECONDS = 5.0  # a request's line and headers must arrive within this, from its first byte (or the connection)
BODY_SECONDS = 30.0  # and its body within this, from the end of its headers
MAX_HEADER_BYTES = 64 * 1024
SLOW_HEADERS = "the request's line and headers came too slowly"


def guarded_protocol():
    """uvicorn's HTTP protocol (httptools) with what it lacks against slow or bloated requests:
    a connection that sends no complete request line and headers within HEADER_SECONDS, or no
    complete body within BODY_SECONDS of them, is answered 408 and closed; headers over
    MAX_HEADER_BYTES are answered 431. Without this, a few hundred connections sending a byte
    now and then would hold every connection the server allows."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class GuardedHttp(HttpToolsProtocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.header_bytes, self.in_headers = 0, True
            self.deadline = self.loop.call_later(HEADER_SECONDS, self.refuse, 408, SLOW_HEADERS)

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
            self.rearm(BODY_SECONDS, "the request's body came too slowly")
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            self.deadline.cancel()
            super().on_message_complete()

        def connection_lost(self, exc) -> None:
            self.deadline.cancel()
            super().connection_lost(exc)

        def rearm(self, seconds: float, message: str) -> None:
            self.deadline.cancel()
            self.deadline = self.loop.call_later(seconds, self.refuse, 408, message)

        def refuse(self, status: int, message: str) -> None:
            if self.transport.is_closing():
                return
            if self.cycle is None or not self.cycle.response_started:
                body = json.dumps({"error": message}).encode()
                reason = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}[status]
                self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                                     b"connection: close\r\n\r\n%s" % (status, reason, len(body), body))
            self.transport.close()

    return GuardedHttp



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


def serve(run_dir: str | Path | None = None, *, onnx: str | Path | None = None, host: str = "127.0.0.1",
          port: int = 8000, top_k: int = 3, data: DataSource = DataSource(), allow_incomplete: bool = False,
          ready=None) -> None:
    """Serve a model until stopped (Ctrl-C, SIGTERM). `ready(url)` is called once it answers."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError(f"serve needs FastAPI and uvicorn: {INSTALL_HINT}") from None
    if not 1 <= top_k <= len(CLASS_NAMES):
        raise ConfigError(f"`top_k` must be between 1 and {len(CLASS_NAMES)}, got {top_k}", terms=["top_k"])
    sock = open_socket(host, port)  # first: a port in use fails before the model loads
    if not is_loopback(host):
        warn(f"serving on {host}: anyone who can reach this machine can use the model (there is no "
             f"authentication); use --host 127.0.0.1 to keep it local")
    try:
        predictor = load_predictor(run_dir, onnx=onnx, allow_incomplete=allow_incomplete)
        app = build_app(predictor, data=data, top_k=top_k)
        config = uvicorn.Config(app, http=guarded_protocol(), log_level="warning", access_log=False,
                                limit_concurrency=MAX_CONNECTIONS, timeout_graceful_shutdown=10, lifespan="on")
        server = uvicorn.Server(config)
        bound_host, bound_port = sock.getsockname()[:2]
        url = f"http://{'[' + bound_host + ']' if ':' in bound_host else bound_host}:{bound_port}/"
        if ready is not None:
            threading.Thread(target=_announce, args=(server, url, ready), daemon=True).start()
        try:
            server.run(sockets=[sock])
        finally:
            app.state.batcher.close()
    finally:
        sock.close()


def _announce(server, url: str, ready) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.02)
    if server.started:
        ready(url)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


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
