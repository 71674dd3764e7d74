"""What an upload becomes, away from the server's event loop and out of its process: the
multipart body parsed, each image's header read, each image decoded and prepared, in worker
processes where a job may take at most JOB_SECONDS and WORKER_MEMORY. A pathological file (a
JPEG of thousands of scans, a PNG of millions of chunks, a decoder that balloons in memory or
prints to stderr) costs its job the time limit and a worker its life, never the server.

    workers = UploadWorkers()                                # started before serving
    names, images = await workers.read(body, content_type)   # [str], [Prepared]

A request holding few pixels is parsed and decoded in one job; a larger one is parsed in one,
then each image decoded in a job of its own.

Jobs of concurrent requests take turns: a request has at most as many jobs queued or running as
there are workers, and free workers go to the requests in the order they asked, so a small
request waits behind a few of a large request's images, not all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import multiprocessing
import os
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from fashionlab.errors import FashionlabError, ImageError, reason
from fashionlab.images import Prepared, image_pixels, read_image
from fashionlab.serve.layers import printable

MAX_FILES = 64  # images in one request
MAX_FIELDS = 64  # other fields in one request (ignored, but parsed)
MAX_FIELD_BYTES = 64 * 1024  # one such field
MAX_PART_HEADER_BYTES = 16 * 1024  # one header line of a part (a file name is cut to 200 characters later)
MAX_REQUEST_PIXELS = 64_000_000  # what one request's images may declare together (one: 40 million at most)
SMALL_REQUEST_PIXELS = 1_000_000  # a request holding no more is decoded in the job that parses it
WORKERS = 2
JOB_SECONDS = 10.0  # one job: a request's body parsed, or one image decoded
REQUEST_SECONDS = 30.0  # all the jobs of one request together
DIRECT_SEND_BYTES = 32 * 1024  # a job this small is written from the loop: a worker's socket buffer holds it
WORKER_MEMORY = 1536 * 2**20  # a worker's memory beyond what it holds when it starts
HOW_TO_SEND = "send up to 64 images as multipart/form-data files (curl -F image=@shoe.png)"


class UploadError(FashionlabError):
    """An upload that cannot be used; `status` is the HTTP status that says so."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # it crosses from a worker process to the server
        return UploadError, (str(self), self.status)


class ClientGone(Exception):
    """The client went away: its remaining jobs are not run."""


@dataclass(frozen=True)
class Upload:
    name: str  # the client's file name, printable, at most 200 characters
    content: bytes
    pixels: int  # as its header declares


# --- in a worker process ---------------------------------------------------------------------------

def parse_form(body: bytes, content_type: str) -> list[Upload]:
    """The image files of a multipart/form-data body, in order, each with the pixel count its
    header declares (other fields are read and dropped); an UploadError says what is wrong."""
    from python_multipart.multipart import parse_options_header

    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise UploadError(f"the upload has no usable boundary in its Content-Type; {HOW_TO_SEND}")
    files = [p for p in _form_parts(body, boundary) if p.get("filename") is not None]
    if not files:
        raise UploadError(f"no image files in the request; {HOW_TO_SEND}")
    uploads = []
    for number, part in enumerate(files, 1):
        name = printable(part["filename"].decode("utf-8", "replace")) or f"image {number}"
        content = b"".join(part["data"])
        try:
            uploads.append(Upload(name, content, image_pixels(content, name)))
        except ImageError as exc:
            raise UploadError(str(exc)) from None
    return uploads


def _form_parts(body: bytes, boundary: bytes) -> list[dict[str, Any]]:
    """The parts of a multipart body, in order: each one's headers, file name (None for a field
    that is not a file) and data; refused past MAX_FILES files, MAX_FIELDS other fields, or
    MAX_FIELD_BYTES in one of those."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    parts: list[dict[str, Any]] = []
    header: list[bytes] = [b"", b""]

    def begin() -> None:
        parts.append({"headers": {}, "data": []})

    def header_end() -> None:
        parts[-1]["headers"][header[0].lower()] = header[1].strip()
        header[:] = [b"", b""]

    def headers_done() -> None:
        _, disposition = parse_options_header(parts[-1]["headers"].get(b"content-disposition"))
        filename = disposition.get(b"filename")
        parts[-1]["filename"] = filename
        files = sum(p.get("filename") is not None for p in parts)
        if files > MAX_FILES or len(parts) - files > MAX_FIELDS:
            raise UploadError(f"the upload holds more than {MAX_FILES} files or {MAX_FIELDS} other fields; "
                              f"{HOW_TO_SEND}")

    def data(chunk: bytes, start: int, end: int) -> None:
        part = parts[-1]
        part["data"].append(chunk[start:end])
        part["size"] = part.get("size", 0) + end - start
        if part.get("filename") is None and part["size"] > MAX_FIELD_BYTES:
            raise UploadError(f"a field of the upload that is not a file is over {MAX_FIELD_BYTES // 1024} KB; "
                              f"{HOW_TO_SEND}")

    def field(which: int):
        def take(chunk: bytes, start: int, end: int) -> None:
            header[which] += chunk[start:end]
        return take

    parser = MultipartParser(boundary, {"on_part_begin": begin, "on_header_field": field(0),
                                        "on_header_value": field(1), "on_header_end": header_end,
                                        "on_headers_finished": headers_done, "on_part_data": data},
                             max_header_size=MAX_PART_HEADER_BYTES)
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as exc:
        raise UploadError(f"the upload cannot be read ({reason(exc, 100)}); {HOW_TO_SEND}") from None
    return parts


def read_form(body: bytes, content_type: str, request_pixels: int, small_pixels: int
              ) -> list[Upload] | list[tuple[str, Prepared]]:
    """A request's images: decoded and prepared at once, as (name, Prepared), when they hold at most
    `small_pixels` together (most requests: one job, no more round trips); else parsed only, each
    to be decoded in a job of its own, in turn with other requests'. Refused (413) when they
    declare more than `request_pixels` together."""
    uploads = parse_form(body, content_type)
    total = sum(u.pixels for u in uploads)
    if total > request_pixels:
        raise UploadError(f"the request's images hold {total:,} pixels together, over the {request_pixels:,} one "
                          f"request may hold; send fewer or smaller images", 413)
    if total > small_pixels:
        return uploads
    return [(u.name, decode(u.content, u.name)) for u in uploads]


def decode(content: bytes, name: str) -> Prepared:
    """An image file decoded and prepared as the CLI does (`images.read_image`)."""
    try:
        return read_image(io.BytesIO(content), name)
    except ImageError as exc:
        raise UploadError(str(exc)) from None
    except MemoryError:
        raise UploadError(f"{name} takes more memory to read than a server's worker has; send a smaller image",
                          status=413) from None


JOBS: dict[str, Callable[..., Any]] = {"read": read_form, "decode": decode}


def _serve(connection, memory: int) -> None:
    """A worker process: jobs in, results out, until the server closes its end. Its memory is
    capped at `memory` bytes over what it holds once started; what decoders print on stderr goes
    nowhere (the server's stderr is the operator's)."""
    import resource

    from scipy import ndimage  # noqa: F401  (images.shapeless uses it: imported before the memory cap, as it maps much)

    os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
    with contextlib.suppress(OSError, ValueError):  # Linux: what it holds now (virtual memory), in pages
        with open("/proc/self/statm") as statm:
            held = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (held + memory, held + memory))
    while True:
        try:
            kind, args = connection.recv()
        except (EOFError, OSError):
            return
        try:
            answer = ("ok", JOBS[kind](*args))
        except UploadError as exc:
            answer = ("refused", exc)
        except MemoryError:
            answer = ("refused", UploadError("the upload takes more memory to read than a server's worker has; send "
                                             "fewer or smaller images", status=413))
        except Exception as exc:  # a parser's or decoder's failure on damaged data can be of any type
            answer = ("refused", UploadError(f"the upload cannot be read ({reason(exc) or type(exc).__name__})"))
        connection.send(answer)


# --- in the server ---------------------------------------------------------------------------------

class _Worker:
    def __init__(self, context, memory: int):
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(theirs, memory), name="fashionlab-upload", daemon=True)
        self.process.start()
        theirs.close()

    def kill(self) -> None:
        self.process.kill()
        self.connection.close()
        self.process.join(5)


class _Trip:
    """One job's way to its worker and back, for `UploadWorkers.run`: the job written (from a
    thread when it is large), its answer read on the loop once it comes, into `answered`. The
    answer is always read, even when nobody waits for it any more (the client left): left in the
    pipe, it would be taken for the next job's."""

    def __init__(self, workers: UploadWorkers, worker: _Worker, free: asyncio.Queue):
        self.workers, self.worker, self.free = workers, worker, free
        self.loop = asyncio.get_running_loop()
        self.answered = self.loop.create_future()
        self.fd = worker.connection.fileno()
        self.abandoned = False  # the job ran over its time: its worker is being replaced

    def start(self, kind: str, args: tuple) -> None:
        if sum(len(a) for a in args if isinstance(a, bytes)) <= DIRECT_SEND_BYTES:
            # a free worker has read all it was sent: this fits, the write cannot block
            sending = self.loop.create_future()
            try:
                self.send(kind, args)
                sending.set_result(None)
            except OSError as exc:
                sending.set_exception(exc)
            self.sent(sending)
        else:
            self.loop.run_in_executor(self.workers.senders, self.send, kind, args).add_done_callback(self.sent)

    def send(self, kind: str, args: tuple) -> None:
        """In a thread for a large job: a worker that does not read (stopped, starved) cannot hold up the loop."""
        os.set_blocking(self.fd, True)
        self.worker.connection.send((kind, args))

    def sent(self, sending: asyncio.Future) -> None:  # on the loop, once the job is written, whoever still waits:
        if self.abandoned:  # an answer left unread would be taken for the next job's, so it is always read
            return
        if sending.exception() is None:
            self.loop.add_reader(self.fd, self.readable)
        elif not self.answered.done():
            self.answered.set_result(EOFError())
        else:
            self.workers._replace(self.worker)

    def readable(self) -> None:  # the answer has come: read it here, on the loop (it is small, or the client's bytes)
        self.loop.remove_reader(self.fd)
        os.set_blocking(self.fd, True)  # watching it made it non-blocking (uvloop): the rest of a long answer must wait
        try:
            answer = self.worker.connection.recv()
        except (EOFError, OSError) as exc:  # the worker died on it (a decoder's crash)
            answer = exc
        self.workers.busy.discard(self.worker)
        if not self.answered.done():
            self.answered.set_result(answer)
        elif not isinstance(answer, Exception):  # nobody waits any more (the client left): free again
            self.free.put_nowait(self.worker)

    def abandon(self) -> None:
        """The job ran over its time: its answer is not waited for, its worker is replaced."""
        self.abandoned = True
        self.loop.remove_reader(self.fd)
        self.workers._replace(self.worker)


class UploadWorkers:
    """WORKERS processes that parse and decode uploads for the server (see the module's doc)."""

    def __init__(self, workers: int = WORKERS, job_seconds: float = JOB_SECONDS,
                 request_seconds: float = REQUEST_SECONDS, request_pixels: int = MAX_REQUEST_PIXELS,
                 small_pixels: int = SMALL_REQUEST_PIXELS, memory: int = WORKER_MEMORY):
        self.size, self.job_seconds, self.memory = workers, job_seconds, memory
        self.request_seconds, self.request_pixels, self.small_pixels = request_seconds, request_pixels, small_pixels
        self.context = multiprocessing.get_context("spawn")  # not fork: the server's runtime is multithreaded
        self.workers = [_Worker(self.context, memory) for _ in range(workers)]
        self.threads = ThreadPoolExecutor(1, thread_name_prefix="fashionlab-uploads")  # restarting workers
        self.senders = ThreadPoolExecutor(workers, thread_name_prefix="fashionlab-sends")  # a job into its worker
        self.free: asyncio.Queue[_Worker] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.waiting = self.killed = self.jobs = 0  # jobs waiting for a worker; workers killed; jobs sent
        self.busy: set[_Worker] = set()  # sent a job whose answer is not read yet
        self.lock = threading.Lock()

    def _queue(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:  # the first request, or the app now runs in another event loop
            self.loop, self.free = loop, asyncio.Queue()
            for worker in list(self.workers):
                if worker in self.busy:  # the old loop ended before its answer was read: it would be the next job's
                    self._replace(worker)
                else:
                    self.free.put_nowait(worker)
        return self.free

    async def run(self, kind: str, *args: Any, seconds: float | None = None, late: str | None = None) -> Any:
        """One job on the next free worker (free workers go to jobs in the order they asked); a
        job over its time (`seconds`, default `job_seconds`) is an UploadError (408, saying `late`
        if given) and its worker is replaced."""
        free = self._queue()
        worker = await self._next(free)
        what = args[-1] if kind == "decode" else "the upload"
        self.jobs += 1
        self.busy.add(worker)
        trip = _Trip(self, worker, free)
        trip.start(kind, args)
        try:
            answer = await asyncio.wait_for(trip.answered, seconds or self.job_seconds)
        except TimeoutError:
            trip.abandon()
            raise UploadError(late or f"{what} takes over {seconds or self.job_seconds:g} s to read; send a smaller "
                                      f"or plainer image (a PNG, or a baseline JPEG)", status=408) from None
        if isinstance(answer, Exception):
            self._replace(worker)
            raise UploadError(f"{what} cannot be read (its decoder failed); send a PNG or a JPEG") from None
        free.put_nowait(worker)
        status, value = answer
        if status != "ok":
            raise value
        return value

    async def _next(self, free: asyncio.Queue) -> _Worker:
        """The next free worker, in the order jobs asked for one."""
        self.waiting += 1
        try:
            worker = await free.get()
            while not worker.process.is_alive():  # died while idle (killed from outside): replaced, not used
                self._replace(worker)
                worker = await free.get()
        finally:
            self.waiting -= 1
        return worker

    def _replace(self, worker: _Worker) -> None:
        """Kill a worker that overran, and start another in its place without holding up the loop."""
        self.killed += 1
        self.busy.discard(worker)
        with self.lock:
            self.workers.remove(worker)
        loop, free = self.loop, self.free

        def restart() -> None:
            worker.kill()
            fresh = _Worker(self.context, self.memory)
            with self.lock:
                self.workers.append(fresh)
            loop.call_soon_threadsafe(free.put_nowait, fresh)

        self.threads.submit(restart)

    async def read(self, body: bytes, content_type: str, gone: Callable[[], Awaitable[bool]] | None = None
                   ) -> tuple[list[str], list[Prepared]]:
        """The names and prepared images of a multipart body's image files (`read_form`, then
        `decode` for a large request's images one by one)."""
        found = await self.run("read", body, content_type, self.request_pixels, self.small_pixels)
        if found and isinstance(found[0], Upload):
            return [u.name for u in found], await self.decode(found, gone)
        return [name for name, _ in found], [image for _, image in found]

    async def decode(self, uploads: Sequence[Upload], gone: Callable[[], Awaitable[bool]] | None = None
                     ) -> list[Prepared]:
        """Every upload decoded and prepared, at most `size` at a time for this request; stopped when
        `gone()` says the client left, or when the request's jobs have taken `request_seconds`."""
        turns, started = asyncio.Semaphore(self.size), time.monotonic()
        late = f"the request's images take over {self.request_seconds:g} s to read; send fewer or smaller images"

        async def one(upload: Upload) -> Prepared:
            async with turns:
                if gone is not None and await gone():
                    raise ClientGone()
                left = self.request_seconds - (time.monotonic() - started)
                if left <= 0:
                    raise UploadError(late, status=408)
                return await self.run("decode", upload.content, upload.name, seconds=min(self.job_seconds, left),
                                      late=late if left < self.job_seconds else None)

        try:  # the first failure cancels the images still waiting for their turn
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(upload)) for upload in uploads]
        except BaseExceptionGroup as failed:
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    def close(self) -> None:
        for worker in list(self.workers):
            with contextlib.suppress(Exception):
                worker.kill()
        self.threads.shutdown(wait=False, cancel_futures=True)
        self.senders.shutdown(wait=False, cancel_futures=True)

