"""GET /metrics of `fashionlab serve`, parsed by prometheus-client's own parser: requests by route and
status, images, batch sizes, latencies, queues and the model's load time, counted as requests come;
what clients send never makes new series; --no-metrics turns it off."""

from __future__ import annotations

import json

from prometheus_client.parser import text_string_to_metric_families
from serving import Server, data_options, start, stop

from fashionlab.serve.app import router
from fashionlab.serve.metrics import ServeMetrics


def scrape(server) -> dict[tuple[str, tuple], float]:
    """Every sample: (name, its labels sorted) -> value."""
    status, answer, text = server.request("GET", "/metrics")
    assert status == 200 and answer.getheader("content-type").startswith("text/plain; version=0.0.4")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def requests(samples, route: str, status: str, method: str = "GET") -> float:
    return samples.get(("fashionlab_http_requests_total", (("method", method), ("route", route),
                                                           ("status", status))), 0.0)


def test_requests_images_and_batches_are_counted(keras_server, synthetic, test_pngs):
    before = scrape(keras_server)
    images = synthetic.test_images()[:3]
    body = json.dumps({"inputs": [{"name": "pixels", "shape": [3, 28, 28], "datatype": "UINT8",
                                   "data": images.reshape(-1).tolist()}]}).encode()
    assert keras_server.request("POST", "/v2/models/tiny/infer", body)[0] == 200
    assert keras_server.post_files([("a.png", test_pngs[0]), ("b.png", test_pngs[1])])[0] == 200
    assert keras_server.request("POST", "/v2/models/tiny/infer", b"{")[0] == 400
    after = scrape(keras_server)
    assert requests(after, "/v2/models/{name}/infer", "200", "POST") - requests(
        before, "/v2/models/{name}/infer", "200", "POST") == 1
    assert requests(after, "/v2/models/{name}/infer", "400", "POST") - requests(
        before, "/v2/models/{name}/infer", "400", "POST") == 1
    assert requests(after, "/api/predict", "200", "POST") - requests(before, "/api/predict", "200", "POST") == 1
    assert after[("fashionlab_images_total", ())] - before.get(("fashionlab_images_total", ()), 0) >= 5
    assert after[("fashionlab_batch_size_count", ())] > before.get(("fashionlab_batch_size_count", ()), 0)
    assert after[("fashionlab_batch_size_sum", ())] - before.get(("fashionlab_batch_size_sum", ()), 0) >= 5
    latency = ("fashionlab_http_request_duration_seconds_count", (("route", "/api/predict"),))
    assert after[latency] > before.get(latency, 0)
    assert after[("fashionlab_model_load_seconds", ())] > 0
    for gauge in ("fashionlab_queue_images", "fashionlab_uploads_waiting", "fashionlab_upload_bytes_held",
                  "fashionlab_model_timeouts_total"):
        assert after[(gauge, ())] == 0  # nothing waiting between requests
    assert requests(after, "/metrics", "200") >= 1  # the scrape before this one
    assert after[("fashionlab_model_info", (("dataset", "fashion-mnist"), ("engine", "keras"), ("model", "tiny")))] == 1
    assert after[("process_resident_memory_bytes", ())] > 10e6
    assert not any(name.endswith("_created") for name, _ in after)


def test_types_and_openmetrics(keras_server):
    status, answer, text = keras_server.request("GET", "/metrics")
    assert "# TYPE fashionlab_model_timeouts_total counter" in text  # Prometheus' text format names it whole
    status, answer, text = keras_server.request("GET", "/metrics",
                                                headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert status == 200 and answer.getheader("content-type").startswith("application/openmetrics-text")
    assert text.rstrip().endswith("# EOF")


def test_what_clients_send_never_makes_new_series(keras_server):
    def send(start: int) -> dict:
        for i in range(start, start + 30):
            keras_server.request("GET", f"/no/such/{i}")
            keras_server.request(f"X{i}", "/api/model")
            keras_server.request("GET", f"/v2/models/m{i}")
        return scrape(keras_server)

    first, second = send(0), send(1000)
    assert set(first) == set(second)  # 30 more paths, methods and model names: not one new series
    assert requests(second, "other", "404") >= 60


def test_routes_are_labelled_by_their_pattern():
    metrics = ServeMetrics()
    metrics.label_routes(router.routes)
    assert metrics.route_of("/v2/models/tiny/infer") == "/v2/models/{name}/infer"
    assert metrics.route_of("/v2/models/x") == "/v2/models/{name}"
    assert metrics.route_of("/v2/models/x/versions/1/config") == "/v2/models/{name}/versions/{version}/config"
    assert metrics.route_of("/v2/repository/index") == "/v2/repository/index"
    assert metrics.route_of("/v2/models/x/y/infer") == "other" and metrics.route_of("/api/predict/") == "other"


def test_no_metrics_turns_the_endpoint_off(tiny_run, synthetic):
    process, url = start(str(tiny_run.run.path), "--no-metrics", *data_options(synthetic))
    try:
        status, _, said = Server(process, url).request("GET", "/metrics")
        assert status == 404 and "--no-metrics" in said["error"]
    finally:
        stop(process)
