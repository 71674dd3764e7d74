"""`fashionlab serve` as a process: the listening socket, then the model, then uvicorn running the
guarded app over the guarded protocol until Ctrl-C or SIGTERM.

    serve("runs/x", host="127.0.0.1", port=8000, ready=print)
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fashionlab.arguments import checked
from fashionlab.data import DataSource
from fashionlab.datasets import MAX_CLASSES
from fashionlab.deadlines import MODEL_TIMEOUT, check_timeout
from fashionlab.errors import ConfigError
from fashionlab.rundir import Run
from fashionlab.serve.layers import guarded, host_name, is_loopback, origin_problem, token_problem, url_host, warn
from fashionlab.serve.predictor import Predictor, load_predictor
from fashionlab.serve.v2 import model_name as v2_name

INSTALL_HINT = "pip install 'fashionlab[serve]'"


@checked(port=(0, 65535), top_k=(1, MAX_CLASSES))  # and at most the model's classes
def serve(run_dir: str | Path | None = None, *, onnx: str | Path | None = None, host: str = "127.0.0.1",
          port: int = 8000, top_k: int = 3, data: DataSource = DataSource(), allow_incomplete: bool = False,
          model_timeout: float = MODEL_TIMEOUT, allowed_hosts: Sequence[str] = (), token: str | None = None,
          cors: Sequence[str] = (), metrics: bool = True, model_name: str | None = None,
          ready: Callable[[str], None] | None = None, progress: Callable[[str], None] | None = None) -> None:
    """Serve a model until stopped (Ctrl-C, SIGTERM). `ready(url)` is called once it answers;
    `progress(line)` with what it does until then (loading the model, compiling it for each batch size).
    `allowed_hosts`: names the Host header may give besides localhost, IP addresses and this
    machine's names (a proxy's); `model_timeout`: seconds a call of the model may take; `token`: asked
    of every request but health checks (`Authorization: Bearer TOKEN`); `cors`: the origins whose pages
    may call the API ("*": any); `metrics`: GET /metrics for Prometheus; `model_name`: the model's name in
    the Open Inference Protocol's paths (default: its run's name)."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ConfigError(f"serve needs FastAPI and uvicorn: {INSTALL_HINT}") from None
    from fashionlab.serve.app import build_app
    from fashionlab.serve.protocol import GuardedHttp

    check_timeout(model_timeout)
    _check_options(allowed_hosts, token, cors, model_name, metrics)
    sock = open_socket(host, port)  # first: a port in use fails before the model loads
    bound_host, bound_port = sock.getsockname()[:2]  # what was bound, however `host` said it
    if not is_loopback(bound_host) and token is None:
        warn(f"serving on {host} without a token: anyone who can reach this machine can use the model and "
             f"read its metrics; give --token (or FASHIONLAB_TOKEN), or use --host 127.0.0.1 to keep it local")
    progress = progress or (lambda line: None)
    try:
        began = time.perf_counter()
        predictor = _load(run_dir, onnx, top_k=top_k, allow_incomplete=allow_incomplete, model_timeout=model_timeout,
                          progress=progress)
        counted = _counted(time.perf_counter() - began) if metrics else None
        progress("starting the upload workers and the server")
        app = build_app(predictor, data=data, top_k=top_k, metrics=counted, model_name=model_name)
        # connections are limited by the protocol (GuardedHttp), not by uvicorn's plain-text 503;
        # uvicorn's own log would let any client write to the terminal (a line per malformed request
        # or client gone mid-answer): fashionlab says what matters itself (Shield)
        outer = guarded(app, host=bound_host, allowed_hosts=allowed_hosts, token=token, origins=cors,
                        measured=counted.layer if counted is not None else None)
        config = uvicorn.Config(outer, http=GuardedHttp, ws="none", log_level="critical", access_log=False,
                                timeout_graceful_shutdown=10, lifespan="on")
        server = uvicorn.Server(config)
        url = f"http://{url_host(bound_host)}:{bound_port}/"
        if ready is not None:
            threading.Thread(target=_announce, args=(server, url, ready), daemon=True).start()
        try:
            server.run(sockets=[sock])
        finally:
            app.state.batcher.close()
            app.state.workers.close()
    finally:
        sock.close()


def _check_options(allowed_hosts: Sequence[str], token: str | None, cors: Sequence[str], model_name: str | None,
                   metrics: bool) -> None:
    """The host names, the token, the CORS origins and the model's name, refused with one line before
    anything starts; prometheus-client there when /metrics is served."""
    for name in allowed_hosts:
        bare = host_name(name.removeprefix("*."))
        if not bare or ":" in bare or "." not in bare and name.startswith("*."):
            raise ConfigError(f"`allowed_hosts` holds {name!r}, not a host name (such as proxy.example, or "
                              f"*.svc.cluster.local for every name under it); IP addresses are allowed already",
                              terms=["allowed_hosts"])
    if model_name is not None and model_name != v2_name(model_name):
        raise ConfigError(f"`model_name` {model_name!r} must be 1 to 64 letters, digits, '_', '-' or '.' (it is "
                          f"part of URLs)", terms=["model_name"])
    if metrics:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise ConfigError(f"/metrics needs prometheus-client: {INSTALL_HINT}; or turn `metrics` off",
                              terms=["metrics"]) from None
    problem = token_problem(token) if token is not None else None
    if problem:
        raise ConfigError(f"`token`: {problem}", terms=["token"])
    for origin in cors:
        problem = origin_problem(origin)
        if problem:
            raise ConfigError(f"`cors`: {problem}", terms=["cors"])


def _counted(load_seconds: float):
    """What /metrics shows: the server's own registry, with the model's load time (`build_app` adds what it
    serves and reads)."""
    from fashionlab.serve.metrics import ServeMetrics

    counted = ServeMetrics()
    counted.load_seconds.set(load_seconds)
    return counted


def _load(run_dir, onnx, *, top_k: int, allow_incomplete: bool, model_timeout: float, progress) -> Predictor:
    """The model, `top_k` checked against its classes; what it does said only once the input is known
    good (a bad one is one line)."""
    began = time.perf_counter()
    if run_dir is not None and onnx is None:  # its classes before the (long) loading and compiling
        run = Run.open(run_dir, allow_incomplete=allow_incomplete)
        _check_top_k(top_k, run.dataset().classes)
        progress(f"loading the model of {run.path}")
    predictor = load_predictor(run_dir, onnx=onnx, allow_incomplete=allow_incomplete, model_timeout=model_timeout,
                               progress=progress)
    _check_top_k(top_k, predictor.dataset.classes)
    if onnx is not None:
        progress(f"loaded the ONNX file {onnx} in {time.perf_counter() - began:.1f} s (onnxruntime)")
    return predictor


def _check_top_k(top_k: int, classes: int) -> None:
    if top_k > classes:
        raise ConfigError(f"`top_k` must be between 1 and {classes}, the model's classes, got {top_k}", terms=["top_k"])


def _announce(server, url: str, ready) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.02)
    if server.started:
        ready(url)


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
