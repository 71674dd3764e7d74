"""Uploads parsed and decoded in worker processes: the multipart form's limits, and jobs that
run over their time or memory, crash, or belong to a client that left."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from fashionlab.serve.uploads import MAX_FIELD_BYTES, MAX_FILES, ClientGone, UploadError, UploadWorkers, parse_form

BOUNDARY = "test-boundary"
KIND = f"multipart/form-data; boundary={BOUNDARY}"


def form(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body of (field name, file name or None for a plain field, content) parts."""
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


GARMENT_PIXELS = np.pad(np.full((20, 12), 200, np.uint8), ((4, 4), (8, 8)))
GARMENT = png(GARMENT_PIXELS)  # in the data set's format: used as it is


def run(coroutine, loop: str = "uvloop"):
    """The coroutine run to its end on an event loop of its own, uvloop's (the server's) by default."""
    import uvloop

    runner = uvloop.run if loop == "uvloop" else asyncio.run
    with ThreadPoolExecutor(1) as thread:  # a loop of its own: this thread may run one already
        return thread.submit(runner, coroutine).result(timeout=300)


@pytest.fixture(scope="module")
def workers():  # every image in a job of its own (small_pixels=0), as a large request's are
    pool = UploadWorkers(job_seconds=2.0, request_seconds=5.0, small_pixels=0, memory=400 * 2**20)
    yield pool
    pool.close()


# --- the form ------------------------------------------------------------------------------------

def test_the_files_of_a_form_come_in_order_with_their_declared_pixels_and_other_fields_are_dropped():
    big = png(np.zeros((300, 200), np.uint8))
    uploads = parse_form(form(("note", None, b"hello"), ("image", "a.png", GARMENT), ("other", "b\t\u202e.png", big)),
                         KIND)
    assert [(u.name, u.content, u.pixels) for u in uploads] == [("a.png", GARMENT, 28 * 28), ("b.png", big, 60_000)]


@pytest.mark.parametrize("body, kind, message", [
    (form(*[("image", f"{i}.png", GARMENT) for i in range(MAX_FILES + 1)]), KIND,
     f"holds more than {MAX_FILES} files or"),
    (form(*[("field", None, b"x") for _ in range(65)], ("image", "a.png", GARMENT)), KIND, "64 other fields"),
    (form(("field", None, b"x" * (MAX_FIELD_BYTES + 1)), ("image", "a.png", GARMENT)), KIND, "is over 64 KB"),
    (form(("image", "a" * 20_000 + ".png", GARMENT)), KIND, "the upload cannot be read"),
    (form(("image", "a.png", GARMENT)), "multipart/form-data", "has no usable boundary"),
    (form(("field", None, b"x")), KIND, "no image files in the request"),
    (form(("image", "notes.txt", b"not an image")), KIND, "notes.txt is not an image fashionlab reads"),
    (b"garbage", KIND, "the upload cannot be read|no image files"),
])
def test_a_form_that_cannot_be_used_is_refused_in_one_line(body, kind, message):
    with pytest.raises(UploadError, match=message) as refused:
        parse_form(body, kind)
    assert refused.value.status == 400 and "\n" not in str(refused.value)


# --- jobs in worker processes ----------------------------------------------------------------------

def scan_bomb(scans: int) -> bytes:
    """A 2000 x 2000 progressive JPEG whose second scan's header is repeated `scans` times: a few
    tens of kilobytes that take a decoder seconds."""
    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (2000, 2000), dtype=np.uint8)).save(out, format="JPEG", progressive=True,
                                                                              quality=50)
    data, position, segments = out.getvalue(), 2, []
    while data[position + 1] != 0xD9:
        end = position + 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
        if data[position + 1] == 0xDA:  # a scan: its header, then entropy-coded data up to the next marker
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        segments.append((data[position + 1], data[position:end]))
        position = end
    scans_found = [s for marker, s in segments if marker == 0xDA]
    second = scans_found[1][:2 + struct.unpack(">H", scans_found[1][2:4])[0]]
    header = b"\xff\xd8" + b"".join(s for marker, s in segments if marker != 0xDA)
    return header + scans_found[0] + second * scans + b"\xff\xd9"


def test_an_image_that_takes_too_long_to_decode_is_refused_and_its_worker_replaced(workers):
    bomb = scan_bomb(10_000)

    async def attempt():
        began = time.monotonic()
        with pytest.raises(UploadError, match="bomb.jpg takes over 2 s to read") as refused:
            await workers.read(form(("image", "bomb.jpg", bomb)), KIND)
        assert refused.value.status == 408 and time.monotonic() - began < 4
        killed = workers.killed
        deadline = time.monotonic() + 60
        while len(workers.workers) < workers.size and time.monotonic() < deadline:  # the replacement starts
            await asyncio.sleep(0.05)
        return killed, (await workers.read(form(("image", "a.png", GARMENT)), KIND))[1]

    killed, images = run(attempt())
    assert killed >= 1 and len(workers.workers) == workers.size
    np.testing.assert_array_equal(images[0].pixels, GARMENT_PIXELS)
    assert images[0].as_is is True


def test_an_image_that_needs_more_memory_than_a_worker_has_is_refused():
    flat = png(np.zeros((6000, 6000, 3), np.uint8))  # 100 KB that decode to 108 MB
    pool = UploadWorkers(workers=1, job_seconds=120, memory=150 * 2**20)
    try:
        async def attempt():
            return await pool.read(form(("image", "flat.png", flat)), KIND)

        with pytest.raises(UploadError, match="flat.png takes more memory to read than a server's worker") as refused:
            run(attempt())
        assert refused.value.status == 413
    finally:
        pool.close()


def test_a_worker_that_dies_on_a_job_is_replaced_and_the_image_refused(workers):
    async def attempt():
        task = asyncio.ensure_future(workers.read(form(("image", "bomb.jpg", scan_bomb(3000))), KIND))
        await asyncio.sleep(0.5)
        for worker in workers.workers:
            if worker.process.is_alive():
                os.kill(worker.process.pid, 9)
        with pytest.raises(UploadError, match="cannot be read \\(its decoder failed\\)|takes over"):
            await task

    run(attempt())


def test_a_small_request_is_read_in_one_job_a_large_one_image_by_image():
    pool = UploadWorkers(workers=1, small_pixels=3 * 28 * 28)
    try:
        async def jobs_for(count: int) -> tuple[int, list[str]]:
            before = pool.jobs
            names, images = await pool.read(form(*[("image", f"{i}.png", GARMENT) for i in range(count)]), KIND)
            assert all(np.array_equal(image.pixels, GARMENT_PIXELS) for image in images)
            return pool.jobs - before, names

        assert run(jobs_for(3)) == (1, ["0.png", "1.png", "2.png"])
        assert run(jobs_for(4)) == (1 + 4, ["0.png", "1.png", "2.png", "3.png"])
        pool.request_pixels = 1000
        with pytest.raises(UploadError, match="hold 1,568 pixels together, over the 1,000 one request") as refused:
            run(pool.read(form(("image", "a.png", GARMENT), ("image", "b.png", GARMENT)), KIND))
        assert refused.value.status == 413
    finally:
        pool.close()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_a_large_request_comes_back_whole_whatever_the_event_loop(workers, loop):
    rng = np.random.default_rng(3)
    noise = [png(rng.integers(0, 256, (900, 900), dtype=np.uint8)) for _ in range(2)]  # ~1.6 MB each
    files = [(f"noise{i}.png", noise[i % 2]) for i in range(12)]

    async def attempt():
        return await workers.read(form(*[("image", name, content) for name, content in files]), KIND)

    names, images = run(attempt(), loop)
    assert names == [name for name, _ in files] and len(images) == 12
    assert np.array_equal(images[0].pixels, images[2].pixels) and not np.array_equal(images[0].pixels, images[1].pixels)


def test_a_clients_images_are_not_decoded_once_it_has_gone(workers):
    left = [False, False, True]  # the client leaves after its first two images

    async def gone() -> bool:
        return left.pop(0) if left else True

    async def attempt():
        before = workers.jobs
        with pytest.raises(ClientGone):
            await workers.read(form(*[("image", f"{i}.png", GARMENT) for i in range(8)]), KIND, gone=gone)
        return workers.jobs - before

    assert run(attempt()) == 1 + 2  # the form read, then two images: none decoded once it has gone


def test_a_request_whose_images_together_take_too_long_is_refused():
    pool = UploadWorkers(workers=1, job_seconds=2.0, request_seconds=1.0)
    try:
        async def attempt():
            await pool.read(form(*[("image", f"{i}.jpg", scan_bomb(1500)) for i in range(6)]), KIND)

        with pytest.raises(UploadError, match="^the request's images take over 1 s to read; send fewer") as refused:
            run(attempt())
        assert refused.value.status == 408
    finally:
        pool.close()


def test_once_a_requests_time_is_spent_its_remaining_images_are_not_even_sent():
    pool = UploadWorkers(workers=1, request_seconds=0.5, small_pixels=0)
    try:
        async def slow_to_answer() -> bool:  # the client is still there, but asking takes the request's time
            await asyncio.sleep(0.6)
            return False

        async def attempt():
            before = pool.jobs
            with pytest.raises(UploadError, match="^the request's images take over 0.5 s to read") as refused:
                await pool.read(form(("image", "a.png", GARMENT)), KIND, gone=slow_to_answer)
            return refused.value.status, pool.jobs - before

        assert run(attempt()) == (408, 1)  # the form read; no decode sent, so no worker killed over it
        assert pool.killed == 0
    finally:
        pool.close()


def test_a_small_request_is_not_queued_behind_every_image_of_a_large_one():
    pool = UploadWorkers(workers=1, small_pixels=0)
    slow = png(np.random.default_rng(4).integers(0, 256, (1500, 1500), dtype=np.uint8))
    try:
        async def attempt():
            finished: list[str] = []

            async def send(name: str, images: list[bytes]) -> None:
                await pool.read(form(*[("image", f"{name}{i}.png", image) for i, image in enumerate(images)]), KIND)
                finished.append(name)

            large = asyncio.create_task(send("large", [slow] * 8))
            while pool.jobs < 2:  # its form read, its first image being decoded
                await asyncio.sleep(0.001)
            await send("small", [GARMENT])
            await large
            return finished

        assert run(attempt()) == ["small", "large"]  # a turn after a few of the large one's images, not all 8
    finally:
        pool.close()


def test_a_worker_that_does_not_read_its_job_holds_up_neither_the_loop_nor_the_request():
    """A stopped (or starved) worker and a body larger than a pipe holds: the job is sent from a
    thread, so the event loop goes on, and the job's time limit still ends the request."""
    import signal

    def resume(pid: int) -> None:  # so that a loop held up by the worker is let go, and the test ends
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    pool = UploadWorkers(workers=1, job_seconds=1.0)
    pid = pool.workers[0].process.pid
    later = threading.Timer(5, resume, [pid])
    try:
        os.kill(pid, signal.SIGSTOP)
        later.start()
        body = form(("image", "big.png", b"\x89PNG" + os.urandom(8 * 2**20)))

        async def attempt():
            ticks = 0

            async def tick():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.05)
                    ticks += 1

            ticker = asyncio.create_task(tick())
            began = time.monotonic()
            with pytest.raises(UploadError, match="takes over 1 s to read") as refused:
                await pool.read(body, KIND)
            ticker.cancel()
            return refused.value.status, time.monotonic() - began, ticks

        status, seconds, ticks = run(attempt())
        assert status == 408 and seconds < 3 and ticks >= 10  # the loop ran all along
    finally:
        later.cancel()
        pool.close()


def test_a_job_given_up_while_it_is_sent_is_still_answered_and_never_mistaken_for_the_next():
    """A client that leaves while its image is being written to the worker: the worker's answer
    to it is read and dropped, and the worker then serves the next request its own answer."""
    pool = UploadWorkers(workers=1, small_pixels=0)
    other = png(np.random.default_rng(5).integers(0, 256, (300, 300), dtype=np.uint8))  # ~90 KB: sent from a thread
    try:
        async def leave_while_sending():
            job = asyncio.create_task(pool.run("decode", other, "white.png"))
            await asyncio.sleep(0)  # the job is on its way to the worker
            job.cancel()
            with pytest.raises(asyncio.CancelledError):
                await job
            await asyncio.sleep(1)  # its answer comes, and is read

        run(leave_while_sending())
        names, images = run(pool.read(form(("image", "a.png", GARMENT)), KIND))  # another loop, as a new app's
        assert names == ["a.png"] and np.array_equal(images[0].pixels, GARMENT_PIXELS)
    finally:
        pool.close()


def test_a_worker_whose_answer_was_never_read_is_not_given_the_next_loops_jobs():
    """The event loop ends (an app stopped, a test's loop) while a worker still decodes a job
    nobody waits for: in the next loop that worker is replaced, never asked again, since its old
    answer would be taken for the new job's."""
    pool = UploadWorkers(workers=1, small_pixels=0)
    try:
        async def leave_and_end():
            job = asyncio.create_task(pool.run("decode", scan_bomb(3000), "slow.jpg"))  # about a second
            await asyncio.sleep(0.2)  # being decoded
            job.cancel()  # and the loop ends at once, before the answer comes

        run(leave_and_end())
        names, images = run(pool.read(form(("image", "a.png", GARMENT)), KIND))
        assert names == ["a.png"] and np.array_equal(images[0].pixels, GARMENT_PIXELS) and pool.killed == 1
    finally:
        pool.close()


def test_what_a_decoder_prints_stays_out_of_the_servers_stderr(workers, capfd):
    data = zlib.compress(b"\x00" * 1024)
    tile = 32768  # a 16 x 16 TIFF in one tile of 32768 x 32768: libtiff complains on stderr
    entries = [(256, 3, 16), (257, 3, 16), (258, 3, 8), (259, 3, 8), (262, 3, 1), (277, 3, 1), (322, 4, tile),
               (323, 4, tile), (324, 4, 8 + 2 + 10 * 12 + 4), (325, 4, len(data))]
    tiff = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, value in entries:
        tiff += struct.pack("<HHI", tag, kind, 1) + (struct.pack("<HH", value, 0) if kind == 3 else
                                                      struct.pack("<I", value))
    tiff += b"\x00\x00\x00\x00" + data

    async def attempt():
        try:
            await workers.read(form(("image", "tile.tif", tiff)), KIND)
        except UploadError:
            pass

    run(attempt())
    assert capfd.readouterr().err == ""
