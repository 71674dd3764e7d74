"""What `fashionlab serve` has done, for Prometheus: GET /metrics in its text format (prometheus-client),
from a registry of the server's own (never the process-wide default one).

    fashionlab_http_requests_total{route, method, status}      fashionlab_http_request_duration_seconds{route}
    fashionlab_images_total   fashionlab_batch_size   fashionlab_model_call_seconds   fashionlab_model_load_seconds
    fashionlab_queue_images   fashionlab_uploads_waiting   fashionlab_upload_bytes_held
    fashionlab_model_timeouts_total   fashionlab_model_info{model, engine, dataset}   process_* (CPU, memory, files)

Routes are labelled by their pattern as the application declares it (/v2/models/{name}/infer: `label_routes`),
and any other path as "other", methods
other than GET, HEAD, POST and OPTIONS as "other": what a client sends never makes a new series. No
`_created` series (prometheus-client's default would double every counter's). Requests the HTTP protocol
refuses before the application sees them (a malformed request line, headers too long or too slow) are
not counted: `serve.protocol` answers them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from fashionlab.serve.predictor import BATCH_SIZES

METHODS = ("GET", "HEAD", "POST", "OPTIONS")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServeMetrics:
    """The server's counters and histograms, gauges and counters read from its state when scraped
    (`watch`), what it serves (`describe`), and its process's CPU and memory."""

    def __init__(self):
        import prometheus_client
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        prometheus_client.disable_created_metrics()  # this process serves one registry: its own
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        self.requests = Counter("fashionlab_http_requests", "HTTP requests answered, by route, method and status",
                                ["route", "method", "status"], registry=registry)
        self.latency = Histogram("fashionlab_http_request_duration_seconds", "Time from a request's start to its "
                                 "answer's end, by route", ["route"], buckets=LATENCY_BUCKETS, registry=registry)
        self.images = Counter("fashionlab_images", "Images the model read", registry=registry)
        self.batch_size = Histogram("fashionlab_batch_size", "Images in each call of the model",
                                    buckets=BATCH_SIZES, registry=registry)
        self.model_seconds = Histogram("fashionlab_model_call_seconds", "Time of each call of the model",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.load_seconds = Gauge("fashionlab_model_load_seconds", "Time the model took to load and compile",
                                  registry=registry)
        self.info = Gauge("fashionlab_model_info", "The model served (value 1)", ["model", "engine", "dataset"],
                          registry=registry)
        self.watched = Watched()
        registry.register(self.watched)
        self.routes: list[tuple[re.Pattern, str]] = []  # the application's: (what a path matches, its label)

    def label_routes(self, routes) -> None:
        """Label requests by the application's routes (Starlette's: each its pattern and its path's regex)."""
        self.routes = [(route.path_regex, route.path) for route in routes if hasattr(route, "path_regex")]

    def route_of(self, path: str) -> str:
        """A path's label: the pattern of the route it matches, else "other"."""
        return next((label for pattern, label in self.routes if pattern.match(path)), "other")

    def describe(self, **labels: str) -> None:
        """What is served, as fashionlab_model_info's labels (the server's own values, never a client's)."""
        self.info.labels(**labels).set(1)

    def watch(self, name: str, documentation: str, read: Callable[[], float], *, counter: bool = False) -> None:
        """A gauge (or a `counter`, named ..._total) whose value is `read()` when scraped (the batcher's
        queue, the uploads waiting, the model's timeouts)."""
        self.watched.series.append((name, documentation, read, counter))

    def batch(self, images: int, seconds: float) -> None:
        """One call of the model, on `images` images."""
        self.images.inc(images)
        self.batch_size.observe(images)
        self.model_seconds.observe(seconds)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition a scraper asked for (`accept`: its Accept header; OpenMetrics or Prometheus' text
        format) and its content type."""
        from prometheus_client.exposition import choose_encoder

        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    def layer(self, app):
        """`app` with every request counted and timed (status 500 when the app answered nothing)."""
        metrics = self

        async def measured(scope, receive, send):
            if scope["type"] != "http":
                return await app(scope, receive, send)
            began, status = time.perf_counter(), 500

            async def watched(message):
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, watched)
            finally:
                route = metrics.route_of(scope["path"])
                method = scope["method"] if scope["method"] in METHODS else "other"
                metrics.requests.labels(route, method, str(status)).inc()
                metrics.latency.labels(route).observe(time.perf_counter() - began)

        return measured


class Watched:
    """A collector of values read from the server's state when scraped: gauges, and counters."""

    def __init__(self):
        self.series: list[tuple[str, str, Callable[[], float], bool]] = []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        for name, documentation, read, counter in self.series:
            family = CounterMetricFamily if counter else GaugeMetricFamily
            yield family(name.removesuffix("_total") if counter else name, documentation, value=float(read()))
