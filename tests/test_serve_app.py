"""The routes of `fashionlab serve` (serve/app.py), asked over HTTP of a real server started by
the command, and in process: what each answers, what it refuses, a model that fails or hangs."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from helpers import left_right_model, right_facing_boot, slow_onnx
from PIL import Image
from serving import Server, data_options, multipart, png, start, stop

from fashionlab import CLASS_NAMES
from fashionlab.errors import ModelTimeout
from fashionlab.prediction import predict
from fashionlab.serve.app import MAX_HELD_BYTES, MAX_REQUEST_BYTES, build_app
from fashionlab.serve.layers import guarded
from fashionlab.serve.predictor import load_predictor
from fashionlab.serve.uploads import MAX_FILES, MAX_REQUEST_PIXELS

# --- the API ----------------------------------------------------------------------------------


def test_health_and_model_describe_the_served_run(keras_server, tiny_run):
    assert keras_server.url.startswith("http://127.0.0.1:")  # this machine only, unless --host says otherwise
    status, _, health = keras_server.request("GET", "/api/health")
    assert status == 200 and health["status"] == "ok" and health["engine"] == "keras" and health["model"] == "tiny"
    status, _, model = keras_server.request("GET", "/api/model")
    assert status == 200 and model["class_names"] == list(CLASS_NAMES) and model["config"]["width"] == 16
    assert model["test_accuracy"] == pytest.approx(tiny_run.metrics["test_accuracy"])
    assert model["limits"]["request_bytes"] == MAX_REQUEST_BYTES


def test_several_images_in_one_request_get_the_results_of_fashionlab_predict(keras_server, tiny_run, synthetic,
                                                                             test_pngs, tmp_path):
    photo = Image.fromarray(255 - synthetic.test_images()[3]).resize((90, 90)).convert("RGB")
    buffer = io.BytesIO()
    photo.save(buffer, format="JPEG")
    (tmp_path / "photo.jpg").write_bytes(buffer.getvalue())
    files = [("a.png", test_pngs[0]), ("b.png", test_pngs[1]), ("photo.jpg", buffer.getvalue())]
    status, _, results = keras_server.post_files(files, "?top_k=4")
    assert status == 200 and [r["input"] for r in results] == ["a.png", "b.png", "photo.jpg"]
    expected = predict(tiny_run.run.path, indices=[0, 1], images=[tmp_path / "photo.jpg"], top_k=4, data=synthetic)
    for got, want in zip(results, expected):
        assert got["class_id"] == want["class_id"] and len(got["top_k"]) == 4
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-5)
        assert [t["class_id"] for t in got["top_k"]] == [t["class_id"] for t in want["top_k"]]
        assert got.get("mirrored") == want.get("mirrored") and got.get("hint") == want.get("hint")


def test_noise_gets_no_class_and_why_beside_a_garment_in_the_same_request(keras_server, test_pngs):
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)).save(noise, format="PNG")
    blank = io.BytesIO()
    Image.new("RGB", (40, 30), (250, 250, 250)).save(blank, format="PNG")
    files = [("noise.png", noise.getvalue()), ("a.png", test_pngs[0]), ("blank.png", blank.getvalue())]
    status, _, results = keras_server.post_files(files)
    assert status == 200
    assert [r["class_id"] is None for r in results] == [True, False, True]
    assert results[0]["hint"].startswith("no garment found: nothing stands out") and results[0]["top_k"] == []
    assert results[2]["hint"] == "no garment found: the image is blank or of one colour"


def test_the_prepared_image_is_the_one_the_model_saw(keras_server, synthetic, test_pngs):
    status, _, results = keras_server.post_files([("a.png", test_pngs[5])], "?prepared=true")
    assert status == 200 and len(results[0]["top_k"]) == 3  # no top_k asked: serve's (--top-k, 3 by default)
    prepared = results[0]["prepared"]
    assert prepared.startswith("data:image/png;base64,")
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(prepared.split(",", 1)[1]))))
    np.testing.assert_array_equal(seen, synthetic.test_images()[5])  # data-set format: passed unchanged


def test_concurrent_requests_are_all_answered_as_if_alone(keras_server, test_pngs):
    alone = [keras_server.post_files([(f"{i}.png", content)])[2][0] for i, content in enumerate(test_pngs)]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(lambda i: keras_server.post_files([(f"{i}.png", test_pngs[i])]),
                                 [i for _ in range(4) for i in range(len(test_pngs))]))
    for k, (status, _, results) in enumerate(together):
        assert status == 200
        want = alone[k % len(test_pngs)]
        assert results[0]["class_id"] == want["class_id"]
        assert results[0]["probability"] == pytest.approx(want["probability"], abs=1e-6)
    _, _, health = keras_server.request("GET", "/api/health")
    assert health["images"] >= 4 * len(test_pngs) and health["batches"] <= health["images"]


def _truncated(content: bytes) -> bytes:
    return content[: len(content) // 2]


def _bomb() -> bytes:
    """A 20,000 x 20,000 PNG of a few kilobytes: 400 MP once decoded."""
    out = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(out, format="PNG")
    return out.getvalue()


BAD_UPLOADS = {  # kind: (the files, made from test PNGs; the status; what the message says)
    "text": (lambda pngs: [("notes.txt", b"not an image at all\n")], 400, "is not an image fashionlab reads"),
    "truncated": (lambda pngs: [("cut.png", _truncated(pngs[0]))], 400, "cannot be decoded"),
    "bomb": (lambda pngs: [("bomb.png", _bomb())], 400, "over the 40,000,000 pixel limit"),
    "empty": (lambda pngs: [("empty.png", b"")], 400, "is not an image fashionlab reads"),
    "too many": (lambda pngs: [(f"{i}.png", pngs[0]) for i in range(MAX_FILES + 1)], 400,
                 f"the upload holds more than {MAX_FILES} files"),
}


@pytest.mark.parametrize("kind", BAD_UPLOADS)
def test_every_bad_upload_gets_a_4xx_json_answer_of_one_line(keras_server, test_pngs, kind):
    files, status, message = BAD_UPLOADS[kind]
    got, answer, body = keras_server.post_files(files(test_pngs))
    assert got == status and answer.getheader("content-type") == "application/json"
    assert message in body["error"] and "\n" not in body["error"]


def test_requests_that_are_not_image_uploads_are_refused(keras_server, test_pngs):
    status, _, body = keras_server.request("POST", "/api/predict", b"x=1",
                                           {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "multipart/form-data" in body["error"]
    body_bytes, kind = multipart([])
    status, _, body = keras_server.request("POST", "/api/predict", body_bytes, {"Content-Type": kind})
    assert status == 400 and body["error"].startswith("no image files in the request")
    status, _, body = keras_server.request("POST", "/api/predict", body_bytes, {"Content-Type": "multipart/form-data"})
    assert status == 400 and body["error"].startswith("the upload has no usable boundary in its Content-Type")
    for query, expected in (("?top_k=11", "top_k must be between 1 and 10, got 11"),
                            ("?top_k=two", "top_k: Input should be a valid integer")):
        status, _, body = keras_server.post_files([("a.png", test_pngs[0])], query)
        assert status == 422 and body["error"].startswith(expected)
    status, _, body = keras_server.request("GET", "/api/predict")
    assert status == 405 and "\n" not in body["error"]


def test_the_bodies_held_at_once_are_bounded_and_freed_when_their_clients_leave(keras_server, test_pngs):
    """Each request being read reserves its declared length: eight that declare the most a request
    may hold fill MAX_HELD_BYTES, the next is answered 503 at once; once they leave, it is answered."""
    head = (f"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
            f"Content-Length: {MAX_REQUEST_BYTES}\r\n\r\n--x\r\n").encode()
    holders = []
    try:
        for _ in range(MAX_HELD_BYTES // MAX_REQUEST_BYTES):
            holders.append(socket.create_connection((keras_server.host, keras_server.port), timeout=30))
            holders[-1].sendall(head)
        deadline = time.monotonic() + 10
        while keras_server.request("GET", "/api/health")[2]["upload_bytes_held"] < MAX_HELD_BYTES:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, _, said = keras_server.post_files([("a.png", test_pngs[0])])
        assert status == 503 and said["error"].startswith("the server is reading 256 MB of other requests; try again")
    finally:
        for holder in holders:
            holder.close()
    deadline = time.monotonic() + 10
    while keras_server.request("GET", "/api/health")[2]["upload_bytes_held"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert keras_server.post_files([("a.png", test_pngs[0])])[0] == 200


def test_the_server_keeps_serving_after_100_bad_requests(keras_server, test_pngs):
    bad = [[("t.txt", b"text")], [("cut.png", _truncated(test_pngs[1]))], [("bomb.png", _bomb())]]
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda i: keras_server.post_files(bad[i % 3])[0], range(100)))
    assert statuses == [400] * 100
    status, _, results = keras_server.post_files([("a.png", test_pngs[0])])
    assert status == 200 and results[0]["class_name"] in CLASS_NAMES
    assert keras_server.request("GET", "/api/health")[2]["status"] == "ok"
    assert keras_server.process.poll() is None


def test_the_openapi_description_is_served_and_no_page_needs_the_internet(keras_server):
    status, _, schema = keras_server.request("GET", "/openapi.json")
    assert status == 200 and "/api/predict" in schema["paths"]
    assert keras_server.request("GET", "/docs")[0] == 404  # Swagger UI would fetch its scripts from a CDN
    status, answer, page = keras_server.request("GET", "/")
    assert status == 200 and "script-src 'sha256-" in answer.getheader("content-security-policy")
    assert "http://" not in page.replace("http://HOST", "") and "https://" not in page


def test_the_onnx_server_answers_like_the_keras_one(keras_server, onnx_server, test_pngs):
    files = [(f"{i}.png", content) for i, content in enumerate(test_pngs[:8])]
    _, _, by_keras = keras_server.post_files(files)
    status, _, by_onnx = onnx_server.post_files(files)
    assert status == 200
    assert onnx_server.request("GET", "/api/health")[2]["engine"] == "onnx"
    for a, b in zip(by_keras, by_onnx):
        assert a["class_id"] == b["class_id"] and a["probability"] == pytest.approx(b["probability"], abs=1e-5)
    assert onnx_server.request("GET", "/api/model")[2]["name"] == "tiny"


def test_unknown_routes_and_methods_are_answered_in_json(keras_server):
    status, _, body = keras_server.request("GET", "/nowhere")
    assert status == 404 and isinstance(body, dict) and body["error"]
    status, _, body = keras_server.request("DELETE", "/api/model")
    assert status == 405 and isinstance(body, dict) and body["error"]


def test_a_request_whose_images_hold_too_many_pixels_is_refused_from_their_headers(keras_server):
    side = int((MAX_REQUEST_PIXELS // 2 + 1_000_000) ** 0.5)
    out = io.BytesIO()
    Image.new("1", (side, side)).save(out, format="PNG")
    cut = out.getvalue()[:200]  # the header says side x side; no pixel could be decoded from the rest
    assert side * side < 40_000_000  # each alone is within the limit of one image
    status, _, body = keras_server.post_files([("a.png", cut), ("b.png", cut)])
    assert status == 413 and f"over the {MAX_REQUEST_PIXELS:,} one request may hold" in body["error"]
    status, _, body = keras_server.post_files([("a.png", cut)])
    assert status == 400 and "cannot be decoded" in body["error"]  # alone it passes the header check


def test_a_small_request_does_not_wait_for_a_large_ones_images_to_be_decoded(keras_server, test_pngs):
    rng = np.random.default_rng(0)
    noise = [png(rng.integers(0, 256, (900, 900), dtype=np.uint8)) for _ in range(3)]
    large = [(f"noise{i}.png", noise[i % 3]) for i in range(int(MAX_REQUEST_BYTES * 0.9) // len(noise[0]))]

    def timed(files):
        began = time.monotonic()
        status = keras_server.post_files(files)[0]
        return status, time.monotonic() - began

    with ThreadPoolExecutor(2) as pool:
        big = pool.submit(timed, large)
        time.sleep(0.3)  # the large request is being decoded
        small_status, small_seconds = pool.submit(timed, [("small.png", test_pngs[0])]).result()
        big_status, big_seconds = big.result()
    assert big_status == small_status == 200
    assert small_seconds < 0.4 * (big_seconds - 0.3), (small_seconds, big_seconds)


# --- a model that hangs -----------------------------------------------------------------------


def test_a_slow_model_is_answered_504_and_the_server_stays_healthy(tmp_path, synthetic, test_pngs):
    onnx.save(slow_onnx(), tmp_path / "slow.onnx")
    process, url = start("--onnx", str(tmp_path / "slow.onnx"), "--model-timeout", "0.05", *data_options(synthetic))
    server = Server(process, url)
    files = [(f"{i}.png", test_pngs[i]) for i in range(16)]
    try:
        for _ in range(2):
            status, _, body = server.post_files(files)
            assert status == 504 and "took over 0.05 s on 16 images (stopped)" in body["error"]
        status, _, health = server.request("GET", "/api/health")
        assert status == 200 and health["status"] == "ok" and health["model_timeouts"] == 2
    finally:
        stop(process)
    # onnxruntime's own log stays off the terminal: only the server's own words, as it starts and on Ctrl-C
    said = process.stderr.read().splitlines()
    assert said[0].startswith(f"fashionlab: loaded the ONNX file {tmp_path / 'slow.onnx'} in ")
    assert said[0].endswith(" s (onnxruntime)") and said[1] == "fashionlab: starting the upload workers and the server"
    assert said[2:] in ([], ["fashionlab: interrupted"])


def asgi(app, method: str, path: str, body: bytes = b"", headers: dict | None = None) -> tuple[int, dict]:
    """One request handed to an ASGI application in this process: (status, JSON answer)."""

    answer = {"status": None, "body": b""}
    raw = [(k.lower().encode(), v.encode()) for k, v in {"host": "127.0.0.1", **(headers or {})}.items()]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "headers": raw, "scheme": "http",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 5000), "root_path": ""}
    sent = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():  # the body, then a client that waits for its answer
        if sent:
            return sent.pop()
        await asyncio.Event().wait()

    async def send(message):
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        else:
            answer["body"] += message.get("body", b"")

    with ThreadPoolExecutor(1) as thread:  # a loop of its own: this thread may run one already (Playwright's)
        thread.submit(asyncio.run, app(scope, receive, send)).result(timeout=60)
    return answer["status"], json.loads(answer["body"]) if answer["body"] else None


def test_a_model_stuck_in_a_call_makes_the_server_say_so_until_it_ends(tiny_run, synthetic, test_pngs):
    """A call that cannot be stopped (a JAX call, one long operator) leaves the model busy: requests
    are answered 503 at once and /api/health says why, until it ends; the rest of the API answers."""
    predictor = load_predictor(tiny_run.run.path, model_timeout=0.2)
    inner = build_app(predictor, data=synthetic)
    app = guarded(inner, host="127.0.0.1")
    release = threading.Event()
    with pytest.raises(ModelTimeout):
        predictor.calls.run(lambda: release.wait(60))  # stands for a call that runs on
    body, kind = multipart([("a.png", test_pngs[0])])
    try:
        status, said = asgi(app, "POST", "/api/predict", body, {"content-type": kind})
        assert status == 503 and "still busy with a call that ran over 0.2 s" in said["error"]
        status, health = asgi(app, "GET", "/api/health")
        assert status == 503 and health["status"] == "unavailable" and "stuck" in health["reason"]
        assert health["model_timeouts"] == 1
        assert asgi(app, "HEAD", "/api/health")[0] == 503
        assert asgi(app, "GET", "/api/model")[0] == 200
    finally:
        release.set()
    deadline = time.monotonic() + 30
    while predictor.calls.stuck_for() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    status, health = asgi(app, "GET", "/api/health")
    assert status == 200 and health["status"] == "ok"
    status, results = asgi(app, "POST", "/api/predict", body, {"content-type": kind})
    assert status == 200 and results[0]["class_name"] in CLASS_NAMES
    inner.state.batcher.close()
    inner.state.workers.close()


def test_a_run_of_another_data_set_is_served_with_its_own_classes(tmp_path):
    import re
    import subprocess
    import sys

    from helpers import SEVEN_NAMES, TINY, synthetic_arrays, write_seven_class_dataset

    from fashionlab.training import train

    folder = write_seven_class_dataset(tmp_path / "seven")
    train(TINY.replace(dataset=str(folder)), tmp_path / "run", verbose=0)
    process, url = start(str(tmp_path / "run"))  # its test images from the run's own folder: no --data-dir
    server = Server(process, url)
    try:
        status, _, model = server.request("GET", "/api/model")
        assert status == 200 and model["dataset"] == "seven" and model["class_names"] == list(SEVEN_NAMES)
        assert model["limits"]["top_k"] == [1, 7]
        image = png(synthetic_arrays()["t10k-images-idx3-ubyte"][0])
        status, _, results = server.post_files([("a.png", image)], "?top_k=7")
        assert status == 200 and [t["class_name"] for t in results[0]["top_k"]] != []
        assert sorted(t["class_name"] for t in results[0]["top_k"]) == sorted(SEVEN_NAMES)
        status, _, refused = server.post_files([("a.png", image)], "?top_k=8")
        assert status == 422 and refused["error"] == "top_k must be between 1 and 7, got 8"
        status, _, page = server.request("GET", "/")
        labels = re.findall(r'"label": "([^"]*)"', page)
        assert status == 200 and len(labels) == 14 and set(labels) == set(SEVEN_NAMES)  # two of each class
    finally:
        assert stop(process) in (0, 130)
    refused = subprocess.run([sys.executable, "-m", "fashionlab", "serve", str(tmp_path / "run"), "--top-k", "8",
                              "--port", "0"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 1 and refused.stderr == ("fashionlab: error: --top-k must be between 1 and 7, the "
                                                          "model's classes, got 8\n")


def test_photos_are_tried_mirrored_only_for_a_data_set_whose_shoes_face_one_way(synthetic):

    from fashionlab.datasets import FASHION_MNIST, MNIST
    from fashionlab.serve.predictor import Predictor

    model, photo = left_right_model(), right_facing_boot()
    body, kind = multipart([("boot.png", png(photo))])
    read = {}
    for dataset in (FASHION_MNIST, MNIST):
        inner = build_app(Predictor(model, "keras", {"name": "lr"}, dataset), data=synthetic)
        try:
            status, results = asgi(guarded(inner, host="127.0.0.1"), "POST", "/api/predict", body,
                                   {"content-type": kind})
        finally:
            inner.state.batcher.close()
            inner.state.workers.close()
        assert status == 200
        read[dataset.name] = results[0]
    assert read["fashion-mnist"].get("mirrored") is True
    assert "mirrored" not in read["mnist"] and read["mnist"]["class_name"] == "0"
