"""The Open Inference Protocol (v2) routes of `fashionlab serve`, asked raw and through tritonclient's
HTTP client, against the real server: the same probabilities as the run's own model, in JSON and binary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fashionlab.modelfiles import load_model_file
from fashionlab.serve.v2 import HEADER

NAME = "tiny"  # TINY's config name: the model's name in v2 paths


def expected(tiny_run, images: np.ndarray) -> np.ndarray:
    return load_model_file(tiny_run.run.file("model.keras")).predict(images.astype(np.float32), verbose=0)


def infer(server, body: dict | bytes, headers: dict | None = None, name: str = NAME):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return server.request("POST", f"/v2/models/{name}/infer", data, {"Content-Type": "application/json",
                                                                      **(headers or {})})


def tensor(images: np.ndarray, datatype: str = "UINT8", **extra) -> dict:
    return {"inputs": [{"name": "pixels", "shape": list(images.shape), "datatype": datatype,
                        "data": images.reshape(-1).tolist()}], **extra}


def test_health_server_and_model_metadata(keras_server, synthetic):
    assert keras_server.request("GET", "/v2/health/live")[:3:2] == (200, {"live": True})
    assert keras_server.request("GET", "/v2/health/ready")[:3:2] == (200, {"ready": True})
    status, _, server = keras_server.request("GET", "/v2")
    assert status == 200 and server["name"] == "fashionlab" and "binary_tensor_data" in server["extensions"]
    status, _, model = keras_server.request("GET", f"/v2/models/{NAME}")
    assert status == 200 and model["name"] == NAME
    assert model["inputs"] == [{"name": "pixels", "datatype": "FP32", "shape": [-1, 28, 28]}]
    assert model["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}]
    assert model["parameters"]["class_names"][9] == "Ankle boot"
    assert keras_server.request("GET", f"/v2/models/{NAME}/ready")[:3:2] == (200, {"name": NAME, "ready": True})
    status, _, said = keras_server.request("GET", "/v2/models/other")
    assert status == 404 and said["error"] == ("no model 'other' here; this server serves 'tiny' (version 1): "
                                               "/v2/models/tiny")
    # Triton's versioned paths (version 1), its model configuration and repository index
    assert keras_server.request("GET", f"/v2/models/{NAME}/versions/1")[2] == model
    assert keras_server.request("GET", f"/v2/models/{NAME}/versions/2")[0] == 404
    status, _, config = keras_server.request("GET", f"/v2/models/{NAME}/config")
    assert status == 200 and config["max_batch_size"] == 64
    assert config["input"] == [{"name": "pixels", "data_type": "TYPE_FP32", "dims": [28, 28]}]
    assert config["output"] == [{"name": "probabilities", "data_type": "TYPE_FP32", "dims": [10]}]
    status, _, index = keras_server.request("POST", "/v2/repository/index")
    assert status == 200 and index == [{"name": NAME, "version": "1", "state": "READY"}]


def test_json_inference_gives_the_runs_probabilities(keras_server, tiny_run, synthetic):
    images = synthetic.test_images()[:5]
    status, answer, said = infer(keras_server, tensor(images, id="req-1"))
    assert status == 200 and said["model_name"] == NAME and said["id"] == "req-1"
    (output,) = said["outputs"]
    assert output["name"] == "probabilities" and output["datatype"] == "FP32" and output["shape"] == [5, 10]
    assert np.array(output["data"]).reshape(5, 10) == pytest.approx(expected(tiny_run, images), abs=1e-5)
    # the versioned path, any numeric datatype, flat N x 784 or nested data: the same answer
    versioned = keras_server.request("POST", f"/v2/models/{NAME}/versions/1/infer", json.dumps(tensor(images)).encode(),
                                     {"Content-Type": "application/json"})[2]
    assert versioned["outputs"][0]["data"] == pytest.approx(output["data"], abs=1e-6)
    nested = {"inputs": [{"name": "pixels", "shape": [5, 784], "datatype": "FP64",
                          "data": images.reshape(5, 784).astype(float).tolist()}]}
    assert infer(keras_server, nested)[2]["outputs"][0]["data"] == pytest.approx(output["data"], abs=1e-6)


def test_binary_tensors_in_and_out(keras_server, tiny_run, synthetic):
    images = synthetic.test_images()[:3]
    head = json.dumps({"inputs": [{"name": "pixels", "shape": [3, 28, 28], "datatype": "UINT8",
                                   "parameters": {"binary_data_size": images.nbytes}}],
                       "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}]}).encode()
    status, answer, content = keras_server.request("POST", f"/v2/models/{NAME}/infer", head + images.tobytes(),
                                                    {"Content-Type": "application/octet-stream",
                                                     HEADER: str(len(head))})
    assert status == 200
    raw = content.encode("utf-8", "surrogateescape") if isinstance(content, str) else content
    length = int(answer.getheader(HEADER))
    said = json.loads(raw[:length])
    assert said["outputs"][0]["parameters"]["binary_data_size"] == 3 * 10 * 4


def test_tritonclient_http_speaks_to_the_server(keras_server, tiny_run, synthetic):
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(f"{keras_server.host}:{keras_server.port}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(NAME)
    assert client.get_model_metadata(NAME)["outputs"][0]["name"] == "probabilities"
    images = synthetic.test_images()[:4]
    for binary in (True, False):  # tritonclient's default is binary tensors both ways
        pixels = httpclient.InferInput("pixels", list(images.shape), "UINT8")
        pixels.set_data_from_numpy(images, binary_data=binary)
        result = client.infer(NAME, [pixels], request_id="7",
                              outputs=[httpclient.InferRequestedOutput("probabilities", binary_data=binary)])
        assert result.as_numpy("probabilities") == pytest.approx(expected(tiny_run, images), abs=1e-5)
        assert result.get_response()["id"] == "7"
    pixels = httpclient.InferInput("pixels", [1, 28, 28], "FP32")
    pixels.set_data_from_numpy(images[:1].astype(np.float32))
    assert client.infer(NAME, [pixels]).as_numpy("probabilities").shape == (1, 10)  # no outputs named: binary
    client.close()


@pytest.mark.parametrize("body, said", [
    (b"{", "not JSON"),
    (b"[]", "JSON object"),
    (b'{"inputs": []}', "one tensor"),
    (json.dumps({"inputs": [{"name": "x", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}]}).encode(),
     'named "pixels"'),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "BYTES", "data": ["a"]}]}).encode(),
     "`datatype` must be one of"),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [1, 28, 27], "datatype": "UINT8", "data": [0]}]}).encode(),
     "`shape` must be"),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [65, 28, 28], "datatype": "UINT8", "data": [0]}]}).encode(),
     "N from 1 to 64"),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [True, 28, 28], "datatype": "UINT8", "data": [0]}]}).encode(),
     "`shape` must be"),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8",
                             "data": [0] * 783}]}).encode(), "784 numbers"),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8",
                             "data": [True] * 784}]}).encode(), "numbers only"),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32",
                             "data": [300.0] * 784}]}).encode(), "from 0 to 255"),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32",
                             "data": ["NaN"] * 784}]}).encode(), "numbers only"),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}],
                 "outputs": [{"name": "logits"}]}).encode(), '"probabilities"'),
    (json.dumps({"id": 5, "inputs": []}).encode(), "`id`"),
    (b"[" * 100_000, "not JSON"),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [1, 784], "datatype": ["UINT8"], "data": [0]}]}).encode(),
     "`datatype` must be one of"),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32",
                             "data": [0.5] * 784}]}).encode(), "within 0..1"),
    (json.dumps({"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0] * 784}],
                 "outputs": [{"name": "probabilities", "parameters": {"class_count": 2}}]}).encode(),
     "classification extension"),
])
def test_bad_requests_get_one_line_400(keras_server, body, said):
    status, _, answer = infer(keras_server, body)
    assert status == 400 and said in answer["error"] and "\n" not in answer["error"]


def test_bad_binary_requests_get_one_line_400(keras_server):
    head = json.dumps({"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 784 * 4}}]}).encode()
    for extra, length, said in ((b"\0" * 10, str(len(head)), "binary_data_size"),
                                (b"\0" * 3136, "999999", HEADER), (b"\0" * 3136, "-1", HEADER),
                                (np.full(784, np.inf, "<f4").tobytes(), str(len(head)), "finite"),
        (b"\0" * 3136, "\u00b2", HEADER), (b"\0" * 3136, "0" * 5000 + "1", HEADER)):
        status, _, answer = infer(keras_server, head + extra, {HEADER: length})
        assert status == 400 and said in answer["error"], answer


def test_the_onnx_server_speaks_v2_too(onnx_server, tiny_run, synthetic):
    images = synthetic.test_images()[:2]
    status, _, model = onnx_server.request("GET", f"/v2/models/{NAME}")
    assert status == 200 and model["platform"] == "onnxruntime"
    said = infer(onnx_server, tensor(images))[2]
    assert np.array(said["outputs"][0]["data"]).reshape(2, 10) == pytest.approx(expected(tiny_run, images), abs=1e-5)


def test_zeros_and_ones_as_integers_are_pixels_not_a_scale(keras_server):
    body = {"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0, 1] * 392}]}
    assert infer(keras_server, body)[0] == 200


def test_a_compressed_or_oversized_request_is_refused_before_it_is_parsed(keras_server):
    status, _, said = infer(keras_server, b"\x1f\x8b...", {"Content-Encoding": "gzip"})
    assert status == 415 and "Content-Encoding gzip" in said["error"]
    status, _, said = infer(keras_server, b"[" + b"0," * (2 * 1024 * 1024) + b"0]")
    assert status == 413 and "at most 4 MB" in said["error"]
    assert keras_server.request("GET", "/v2/health/ready")[0] == 200
