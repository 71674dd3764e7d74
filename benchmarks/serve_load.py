"""`fashionlab serve` under load: throughput, latency, errors, memory and CPU of the server, path by path.

    .venv/bin/python benchmarks/serve_load.py RUN [--clients 16] [--requests 3000] [--seconds 60]
                                                  [--paths keras,onnx] [--images 500] [--json FILE]

Paths (each may be given more than once, for rounds in turn): keras and onnx post PNG files to the page's
API (POST /api/predict); v2 and v2-onnx post JSON tensors of raw pixels to the Open Inference Protocol's
POST /v2/models/NAME/infer; keras-no-metrics is keras with `--no-metrics`, so that keras against it is
what counting every request for /metrics costs.
For each path the server runs as its own process, as a user starts it: `fashionlab serve RUN --port 0`
(keras, v2), or `fashionlab serve --onnx FILE` (onnx, v2-onnx) after `fashionlab export RUN --out FILE`
into a temporary folder. Once it prints its "serving ... at URL" line it gets 50 warm-up requests, then one
sequential pass over the image pool (--images test images, each its own request): the class each image
gets there is the reference, and the pass gives the latency of one client alone. Then --clients clients
post single test images (a different one per request, cycling through the pool) over keep-alive
HTTP/1.1 connections to 127.0.0.1, until --requests requests are sent or --seconds have passed.

The clients share one asyncio event loop (uvloop when installed) on raw sockets, with each request's
bytes built beforehand, so that they take little of the CPU the server needs. An answer counts as an
error unless it is status 200 with a JSON list of one object (v2: one output tensor of probabilities) whose
class (the most probable one) is the one the same image got in the sequential pass. Per path:

  req/s        correct answers / wall time of the load phase
  p50 ... max  latency of each request, from its first byte sent to its answer's last byte read (ms)
  errors       wrong status, unreadable or wrong answer, timeout, dropped connection
  RSS          the server's peak resident memory (VmHWM of the fashionlab process), MB = 10^6 bytes
  CPU/req      the server's CPU time (user + system) during the load phase per answered request (ms)
  batch        images / batches the server's Batcher read during the load phase (GET /api/health)

The targets below are those of the issue (throughput with 16 clients). The clients send each request as
soon as the last is answered, so the mean latency is clients / throughput (Little's law): a p50 within
15 ms with 16 clients takes about 16 / 0.015 = 1,070 req/s, not 300. On a shared machine the figures
are indicative: the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import os
import platform
import queue
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fashionlab import CLASS_NAMES
from fashionlab.data import DataSource, load_file
from fashionlab.provenance import cpu_model

BOUNDARY = "fashionlab-load-7d1c9e"
PATHS = {"keras": [], "onnx": [], "v2": [], "v2-onnx": [], "keras-no-metrics": ["--no-metrics"]}  # serve's options
WARMUP = 50
REQUEST_TIMEOUT = 30.0  # seconds for one answer
STOP_TIMEOUT = 10.0  # seconds the server gets to exit after SIGINT
# target: (figure, comparison, bound, unit)
TARGETS = {
    "throughput": ("req_per_s", ">=", 300.0, "req/s"),
    "p50": ("p50_ms", "<=", 15.0, "ms"),
    "p99": ("p99_ms", "<=", 60.0, "ms"),
    "errors": ("errors", "<=", 0, ""),
    "server RSS": ("rss_mb", "<=", 800.0, "MB"),
}


# ---------------------------------------------------------------- the requests


def png_of(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, "PNG")
    return out.getvalue()


def predict_request(png: bytes, name: str) -> bytes:
    """The whole HTTP/1.1 request posting one PNG as a multipart/form-data file, keep-alive."""
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: serve_load\r\n"
            f"Accept: application/json\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def v2_request(pixels: np.ndarray, model: str) -> bytes:
    """The whole HTTP/1.1 request of one image as a JSON tensor (UINT8, 1 x 28 x 28), keep-alive."""
    body = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8",
                                   "data": pixels.reshape(-1).tolist()}]}).encode()
    head = (f"POST /v2/models/{model}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: serve_load\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


def test_pool(count: int) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The first `count` test images: their indices, pixels and true labels."""
    source = DataSource().located()
    images = source.test_images()
    labels = load_file(source.locate(), "t10k-labels-idx1-ubyte", source.verify).astype(np.int64)
    indices = list(range(min(count, len(images))))
    return indices, images[indices], labels[indices]


# ---------------------------------------------------------------- the client


class Answer:
    """One answer: its status, whether the server closes the connection after it, and its body."""

    __slots__ = ("status", "close", "body")

    def __init__(self, status: int, close: bool, body: bytes):
        self.status, self.close, self.body = status, close, body


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ConnectionError(f"bad status line {status_line[:60]!r}")
    status = int(parts[1])
    length, chunked, close = None, False, parts[0] == b"HTTP/1.0"
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value
        elif name == b"connection":
            close = value == b"close"
    if chunked:
        pieces = []
        while size := int((await reader.readline()).split(b";")[0], 16):
            pieces.append(await reader.readexactly(size))
            await reader.readexactly(2)
        while await reader.readline() not in (b"\r\n", b"\n", b""):  # trailers
            pass
        body = b"".join(pieces)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body, close = await reader.read(), True
    return Answer(status, close, body)


def check(answer: Answer, expected: str | None) -> tuple[str | None, str | None]:
    """(class name, None) for a right answer, else (None, what is wrong)."""
    if answer.status != 200:
        return None, f"status {answer.status}"
    try:
        results = json.loads(answer.body)
    except ValueError:
        return None, "answer is not JSON"
    if isinstance(results, dict) and "outputs" in results:  # the v2 protocol's answer
        results = v2_results(results)
    if not (isinstance(results, list) and len(results) == 1 and isinstance(results[0], dict)):
        return None, "answer is not a list of one object"
    name = results[0].get("class_name")
    if name not in CLASS_NAMES:
        return None, f"class_name {str(name)[:30]!r} is not a class"
    if expected is not None and name != expected:
        return None, "class differs from the sequential pass"
    return name, None


def v2_results(answer: dict) -> list[dict] | None:
    """A v2 answer as the page API's list: the most probable class of its one image."""
    try:
        (output,) = answer["outputs"]
        probabilities = np.asarray(output["data"], dtype=float).reshape(output["shape"])
    except (KeyError, TypeError, ValueError):
        return None
    return [{"class_name": CLASS_NAMES[int(row.argmax())]} for row in probabilities]


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)  # seconds, answered requests
    ok: int = 0
    errors: Counter = field(default_factory=Counter)
    classes: dict[int, str] = field(default_factory=dict)  # pool position -> class name

    @property
    def answered(self) -> int:
        return len(self.latencies)


class Client:
    """One keep-alive connection to 127.0.0.1:port, opened again when the server closes it."""

    def __init__(self, port: int):
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, request: bytes) -> tuple[Answer, float]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        started = time.perf_counter()
        self.writer.write(request)
        answer = await read_answer(self.reader)
        elapsed = time.perf_counter() - started
        if answer.close:
            self.close()
        return answer, elapsed

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def one_request(client: Client, request: bytes, position: int, expected: str | None, tally: Tally) -> None:
    try:
        async with asyncio.timeout(REQUEST_TIMEOUT):
            answer, elapsed = await client.post(request)
    except TimeoutError:
        client.close()
        tally.errors["timeout"] += 1
        return
    except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
        client.close()
        tally.errors[f"connection: {type(exc).__name__}"] += 1
        return
    tally.latencies.append(elapsed)
    name, wrong = check(answer, expected)
    if wrong:
        tally.errors[wrong] += 1
    else:
        tally.ok += 1
        tally.classes.setdefault(position, name)


async def sequential(port: int, requests: list[bytes], positions: list[int],
                     reference: dict[int, str] | None = None) -> Tally:
    """The requests one after another on one connection."""
    tally, client = Tally(), Client(port)
    try:
        for position in positions:
            expected = reference.get(position) if reference else None
            await one_request(client, requests[position], position, expected, tally)
    finally:
        client.close()
    return tally


async def concurrent(port: int, requests: list[bytes], reference: dict[int, str], clients: int, total: int,
                     seconds: float) -> tuple[Tally, float]:
    """`clients` connections posting the pool's requests in turn until `total` are sent or `seconds`
    have passed; the tally and the wall time until the last answer."""
    tally = Tally()
    sent = 0
    deadline = time.perf_counter() + seconds

    async def run_client() -> None:
        nonlocal sent
        client = Client(port)
        try:
            while sent < total and time.perf_counter() < deadline:
                position = sent % len(requests)
                sent += 1
                await one_request(client, requests[position], position, reference.get(position), tally)
        finally:
            client.close()

    started = time.perf_counter()
    await asyncio.gather(*(run_client() for _ in range(clients)))
    return tally, time.perf_counter() - started


def run_async(coroutine):
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coroutine)


# ---------------------------------------------------------------- the server


def fashionlab_command() -> list[str]:
    """The `fashionlab` command of this Python's environment: its script, run directly, so that the
    process started is the server itself (no shell between)."""
    script = Path(sys.executable).parent / "fashionlab"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "fashionlab"]


class Server:
    """`fashionlab serve ...` as a child process; `url` once it said it answers."""

    def __init__(self, arguments: list[str], log: Path, timeout: float):
        self.log = log
        self.lines: queue.Queue[str | None] = queue.Queue()
        command = fashionlab_command() + ["serve", *arguments, "--host", "127.0.0.1", "--port", "0"]
        started = time.perf_counter()
        with open(log, "wb") as errors:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        try:
            threading.Thread(target=self._read, daemon=True).start()
            self.url, self.port = self._wait(timeout)
            self.start_seconds = time.perf_counter() - started
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
            if not any(b"fashionlab" in part for part in cmdline[:2]):
                raise RuntimeError(f"process {self.pid} is not the server: {cmdline}")
        except BaseException:  # not started, or interrupted while starting: it stops here
            stop(self.process)
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.decode(errors="replace").rstrip())
        self.lines.put(None)

    def _wait(self, timeout: float) -> tuple[str, int]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise RuntimeError(f"the server exited with {self.process.wait()} before serving:\n{self.tail()}")
            if line.startswith("serving ") and " at http://" in line:
                url = line.split(" at ", 1)[1].split()[0]
                return url, int(url.rstrip("/").rsplit(":", 1)[1])
        raise RuntimeError(f"the server did not say it serves within {timeout:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def health(self) -> dict[str, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT)
        try:
            connection.request("GET", "/api/health")
            answer = connection.getresponse()
            return json.loads(answer.read())
        finally:
            connection.close()

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process (all its threads)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; utime, stime: fields 14, 15
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_bytes(self, key: str = "VmHWM") -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {key} in /proc/{self.pid}/status")

    def stop(self) -> int:
        return stop(self.process)


def stop(process: subprocess.Popen) -> int:
    """SIGINT, then SIGKILL after STOP_TIMEOUT seconds; its exit code (waited for: no zombie left)."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def export_onnx(run: str, out: Path, timeout: float) -> float:
    """`fashionlab export RUN --out FILE`; its seconds."""
    started = time.perf_counter()
    process = subprocess.Popen(fashionlab_command() + ["export", run, "--out", str(out)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        _, errors = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"fashionlab export took over {timeout:.0f} s") from None
    finally:
        stop(process)
    if process.returncode != 0 or not out.is_file():
        raise RuntimeError(f"fashionlab export failed ({process.returncode}):\n{errors[-2000:]}")
    return time.perf_counter() - started


# ---------------------------------------------------------------- one path


def percentile(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q)) if len(values) else float("nan")


def measure(path: str, arguments: list[str], requests: list[bytes], labels: np.ndarray, args: argparse.Namespace,
            folder: Path) -> dict[str, Any]:
    """Start the server, warm it up, take the reference pass, load it; its figures."""
    print(f"{path}: starting fashionlab serve {shlex.join(arguments)}", flush=True)
    server = Server(arguments, folder / f"{path}-stderr.log", args.start_timeout)
    try:
        print(f"{path}: serving at {server.url} (pid {server.pid}) after {server.start_seconds:.1f} s", flush=True)
        pool = range(len(requests))
        warm = run_async(sequential(server.port, requests, [i % len(requests) for i in range(WARMUP)]))
        first = run_async(sequential(server.port, requests, list(pool)))
        if first.ok != len(requests):
            raise RuntimeError(f"{path}: the sequential pass failed on {len(requests) - first.ok} images: "
                               f"{dict(first.errors)}\n{server.tail()}")
        reference = first.classes
        accuracy = float(np.mean([reference[i] == CLASS_NAMES[labels[i]] for i in pool]))
        single = np.array(first.latencies) * 1000
        print(f"{path}: {WARMUP} warm-up requests ({sum(warm.errors.values())} errors), sequential pass over "
              f"{len(requests)} images: p50 {percentile(single, 50):.1f} ms, accuracy {accuracy:.3f}", flush=True)

        before_health, before_cpu = server.health(), server.cpu_seconds()
        client_before = resource.getrusage(resource.RUSAGE_SELF)
        tally, wall = run_async(concurrent(server.port, requests, reference, args.clients, args.requests,
                                           args.seconds))
        client_after = resource.getrusage(resource.RUSAGE_SELF)
        if server.process.poll() is not None:
            raise RuntimeError(f"{path}: the server exited with {server.process.returncode} during the load:\n"
                               f"{server.tail()}")
        after_cpu, after_health = server.cpu_seconds(), server.health()
        peak, resident = server.memory_bytes("VmHWM"), server.memory_bytes("VmRSS")
    finally:
        code = server.stop()
    latencies = np.array(tally.latencies) * 1000
    batches = after_health["batches"] - before_health["batches"]
    images = after_health["images"] - before_health["images"]
    answered = max(tally.answered, 1)
    client_cpu = (client_after.ru_utime + client_after.ru_stime) - (client_before.ru_utime + client_before.ru_stime)
    figures = {
        "path": path, "server_args": arguments, "start_seconds": server.start_seconds,
        "answered": tally.answered, "ok": tally.ok, "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors), "wall_seconds": wall, "req_per_s": tally.ok / wall if wall else 0.0,
        "p50_ms": percentile(latencies, 50), "p90_ms": percentile(latencies, 90),
        "p99_ms": percentile(latencies, 99), "max_ms": float(latencies.max()) if len(latencies) else float("nan"),
        "mean_ms": float(latencies.mean()) if len(latencies) else float("nan"),
        "rss_mb": peak / 1e6, "rss_now_mb": resident / 1e6,
        "server_cpu_seconds": after_cpu - before_cpu,
        "server_cpu_ms_per_req": 1000 * (after_cpu - before_cpu) / answered,
        "server_cores_busy": (after_cpu - before_cpu) / wall if wall else 0.0,
        "client_cpu_ms_per_req": 1000 * client_cpu / answered,
        "batches": batches, "batched_images": images, "mean_batch": images / batches if batches else float("nan"),
        "sequential_p50_ms": percentile(single, 50), "sequential_p99_ms": percentile(single, 99),
        "pool_accuracy": accuracy, "server_exit_code": code,
    }
    print(f"{path}: {tally.ok} right answers of {tally.answered} in {wall:.1f} s; server exited with {code}",
          flush=True)
    said = "\n".join(line for line in server.tail(5).splitlines() if line != "fashionlab: interrupted")
    if said.strip():  # what the server wrote on stderr besides its answer to SIGINT: warnings, tracebacks
        figures["server_stderr_tail"] = said
        print(f"{path}: the server's stderr ends with:\n  " + said.replace("\n", "\n  "), flush=True)
    return figures


# ---------------------------------------------------------------- the report


def met(figures: dict[str, Any], target: str) -> bool:
    key, comparison, bound, _ = TARGETS[target]
    value = figures[key]
    return value >= bound if comparison == ">=" else value <= bound


def report(results: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    lines = [f"{settings['clients']} clients, up to {settings['requests']} requests or {settings['seconds']:.0f} s "
             f"per path, pool of {settings['images']} test images; {settings['cpus']} CPUs ({settings['cpu']}); "
             f"load average {settings['load_before']} before, {settings['load_after']} after", ""]
    header = (f"{'path':<17}{'req/s':>8}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}{'errors':>8}{'RSS MB':>8}"
              f"{'CPU/req':>9}{'batch':>7}{'1-client p50':>14}{'start s':>9}")
    lines += [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r['path']:<17}{r['req_per_s']:>8.1f}{r['p50_ms']:>8.1f}{r['p90_ms']:>8.1f}{r['p99_ms']:>8.1f}"
                     f"{r['max_ms']:>8.1f}{r['errors']:>8d}{r['rss_mb']:>8.0f}{r['server_cpu_ms_per_req']:>9.2f}"
                     f"{r['mean_batch']:>7.2f}{r['sequential_p50_ms']:>14.1f}{r['start_seconds']:>9.1f}")
    lines.append("(latencies in ms; CPU/req: server CPU ms per answered request; batch: mean images per model "
                 "batch; 1-client p50: the sequential pass)")
    rates = {path: [r["req_per_s"] for r in results if r["path"] == path] for path in ("keras", "keras-no-metrics")}
    if all(rates.values()) and min(rates["keras-no-metrics"]) > 0:  # a path given twice: the mean of its rounds
        ratio = float(np.mean(rates["keras"]) / np.mean(rates["keras-no-metrics"]))
        lines.append(f"/metrics' cost: keras at {ratio:.3f}x the throughput of keras-no-metrics, means of "
                     f"{len(rates['keras'])} and {len(rates['keras-no-metrics'])} round(s) "
                     f"({100 * (1 - ratio):+.1f} % lost; target < 5 %)")
    for r in results:
        extra = f"; errors: {r['error_kinds']}" if r["error_kinds"] else ""
        lines.append(f"{r['path']}: {r['answered']} answered in {r['wall_seconds']:.1f} s, server busy "
                     f"{r['server_cores_busy']:.2f} cores, client {r['client_cpu_ms_per_req']:.2f} ms CPU/req, "
                     f"{r['batches']} batches{extra}")
    lines += ["", "targets" + ("" if settings["clients"] == 16 else " (throughput is set for 16 clients)")]
    header = f"{'':<22}" + "".join(f"{r['path']:>18}" for r in results)
    lines.append(header)
    for target, (key, comparison, bound, unit) in TARGETS.items():
        cells = "".join(f"{format(r[key], '.1f' if isinstance(r[key], float) else 'd'):>9} "
                        f"{'met' if met(r, target) else 'missed':>8}" for r in results)
        lines.append(f"{target + ' ' + comparison + ' ' + format(bound, 'g') + (' ' + unit if unit else ''):<22}"
                     f"{cells}")
    return "\n".join(lines)


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    # Ctrl-C and SIGTERM stop the benchmark through its `finally`s (the server stopped, the folder removed),
    # also where SIGINT came in ignored (a background job of a script)
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a finished run directory (holding model.keras)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent connections (default 16)")
    parser.add_argument("--requests", type=int, default=3000, help="requests per path at most (default 3000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds of load per path at most (default 60)")
    parser.add_argument("--paths", default="keras,onnx",
                        help=f"comma-separated: {', '.join(PATHS)} (default: keras,onnx)")
    parser.add_argument("--images", type=int, default=500, help="test images in the pool (default 500)")
    parser.add_argument("--start-timeout", type=float, default=300.0,
                        help="seconds a server (or the export) may take to start (default 300)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if not paths or set(paths) - set(PATHS):
        parser.error(f"--paths takes {', '.join(PATHS)}")
    if args.clients < 1 or args.requests < 1 or args.seconds <= 0 or not 1 <= args.images <= 10000:
        parser.error("--clients, --requests, --seconds must be positive; --images between 1 and 10000")
    if not Path(args.run, "model.keras").is_file():
        parser.error(f"{args.run} holds no model.keras")
    print(f"command: {shlex.join(sys.argv)}")
    started = time.perf_counter()
    settings = {"run": args.run, "clients": args.clients, "requests": args.requests, "seconds": args.seconds,
                "images": args.images, "paths": paths, "cpus": os.cpu_count(), "cpu": cpu_model(),
                "processor": platform.processor(), "platform": platform.platform(), "load_before": load_average()}
    indices, images, labels = test_pool(args.images)
    uploads = [predict_request(png_of(image), f"test-{i:05d}.png") for i, image in zip(indices, images)]
    from fashionlab.rundir import Run
    from fashionlab.serve.v2 import model_name

    tensors = [v2_request(image, model_name(Run(args.run).name())) for image in images]
    results = []
    with tempfile.TemporaryDirectory(prefix="fashionlab-serve-load-") as name:
        folder = Path(name)
        model = folder / "model.onnx"
        for path in paths:
            arguments = [args.run, *PATHS[path]]
            if path.endswith("onnx"):
                if not model.is_file():
                    print(f"{path}: exporting {args.run} to {model}", flush=True)
                    print(f"{path}: exported in {export_onnx(args.run, model, args.start_timeout):.1f} s", flush=True)
                arguments = ["--onnx", str(model)]
            requests = tensors if path.startswith("v2") else uploads
            results.append(measure(path, arguments, requests, labels, args, folder))
    settings["load_after"] = load_average()
    settings["seconds_total"] = time.perf_counter() - started
    print()
    print(report(results, settings))
    print(f"\n{settings['seconds_total']:.1f} s in all")
    if args.json:
        args.json.write_text(json.dumps({"command": shlex.join(sys.argv), "settings": settings,
                                         "targets": {t: list(v) for t, v in TARGETS.items()},
                                         "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("serve_load: interrupted", file=sys.stderr)
        sys.exit(130)
