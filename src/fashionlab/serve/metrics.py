"""What `fashionlab serve` has done, for Prometheus: GET /metrics in its text format (prometheus-client),
from a registry of the server's own (never the process-wide default one).

    fashionlab_http_requests_total{route, method, status}      fashionlab_http_request_duration_seconds{route}
    fashionlab_images_total   fashionlab_batch_size   fashionlab_model_call_seconds   fashionlab_model_load_seconds
    fashionlab_queue_images   fashionlab_uploads_waiting   fashionlab_upload_bytes_held
    fashionlab_model_timeouts_total

Routes are labelled by their pattern (/v2/models/{name}/infer), and any other path as "other", methods
other than GET, HEAD, POST and OPTIONS as "other": what a client sends never makes a new series.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from fashionlab.serve.predictor import BATCH_SIZES

ROUTES = [(re.compile(pattern + "$"), label) for pattern, label in (
    (r"/", "/"), (r"/api/predict", "/api/predict"), (r"/api/model", "/api/model"), (r"/api/health", "/api/health"),
    (r"/api/gallery", "/api/gallery"), (r"/metrics", "/metrics"), (r"/v2", "/v2"),
    (r"/v2/health/live", "/v2/health/live"), (r"/v2/health/ready", "/v2/health/ready"),
    (r"/v2/models/[^/]+", "/v2/models/{name}"), (r"/v2/models/[^/]+/ready", "/v2/models/{name}/ready"),
    (r"/v2/models/[^/]+/infer", "/v2/models/{name}/infer"))]
METHODS = ("GET", "HEAD", "POST", "OPTIONS")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def route_of(path: str) -> str:
    return next((label for pattern, label in ROUTES if pattern.match(path)), "other")


class ServeMetrics:
    """The server's counters and histograms, and gauges read from its state when scraped (`watch`)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry = CollectorRegistry()
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
        self._gauges: dict[str, Any] = {}
        self._Gauge = Gauge

    def watch(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge whose value is `read()` when scraped (the batcher's queue, the uploads waiting)."""
        gauge = self._Gauge(name, documentation, registry=self.registry)
        gauge.set_function(read)
        self._gauges[name] = gauge

    def batch(self, images: int, seconds: float) -> None:
        """One call of the model, on `images` images."""
        self.images.inc(images)
        self.batch_size.observe(images)
        self.model_seconds.observe(seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

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
                route = route_of(scope["path"])
                method = scope["method"] if scope["method"] in METHODS else "other"
                metrics.requests.labels(route, method, str(status)).inc()
                metrics.latency.labels(route).observe(time.perf_counter() - began)

        return measured
