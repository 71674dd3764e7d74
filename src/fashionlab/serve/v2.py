"""The Open Inference Protocol (KServe's v2, Triton's HTTP/REST API) as `fashionlab serve` speaks it:
one model, one input tensor of raw pixels, one output tensor of class probabilities, in JSON or with
Triton's binary tensor extension (what `tritonclient` sends by default). Parsing and answering only:
the routes are in `serve.app`, and the pixels go through the same batching path as the page's.

    POST /v2/models/NAME/infer
    {"inputs": [{"name": "pixels", "shape": [1, 28, 28], "datatype": "UINT8", "data": [0, 0, ...]}]}
    -> {"model_name": "NAME", "outputs": [{"name": "probabilities", "shape": [1, 10], "datatype": "FP32",
                                           "data": [...]}]}
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from fashionlab.errors import ImageError
from fashionlab.images import raw_pixels

INPUT, OUTPUT = "pixels", "probabilities"
# The datatypes an input may have (the protocol's names), read little-endian in binary; BOOL and BYTES are not pixels.
DATATYPES = {"UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "i1", "INT16": "<i2",
             "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
HEADER = "Inference-Header-Content-Length"  # the binary extension: the JSON's length, the tensors' bytes after it
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
MAX_BODY = 4 * 1024 * 1024  # an inference request: 64 images of 784 numbers as JSON take about 1.3 MB
MAX_ID = 256


class ProtocolError(Exception):
    """A request the protocol refuses: `status` and a one-line message ({"error": message})."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def model_name(name: str | None) -> str:
    """The model's name in v2 paths: its run's name with anything but letters, digits, '_', '-' and '.' as
    '-' (an ONNX file's metadata may name it anything), at most 64 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "-", name or "")[:64].strip(".")
    return cleaned or "model"


def model_metadata(name: str, class_names: list[str], platform: str) -> dict[str, Any]:
    """GET /v2/models/NAME: the input raw pixels (any numeric datatype; FP32 is the one named), the
    output probabilities in the class names' order, which its parameters list."""
    return {"name": name, "versions": ["1"], "platform": platform,
            "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, 28, 28]}],
            "outputs": [{"name": OUTPUT, "datatype": "FP32", "shape": [-1, len(class_names)]}],
            "parameters": {"class_names": list(class_names),
                           "input": "raw pixels from 0 to 255, light on black, N x 28 x 28 or N x 784; any of "
                                    + ", ".join(DATATYPES)}}


def model_config(name: str, classes: int, most: int, platform: str) -> dict[str, Any]:
    """GET /v2/models/NAME/config (Triton's model configuration extension), what its tools read:
    batches of up to `most` images, the input and output without their batch dimension."""
    return {"name": name, "platform": platform, "backend": "fashionlab", "max_batch_size": most,
            "input": [{"name": INPUT, "data_type": "TYPE_FP32", "dims": [28, 28]}],
            "output": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [classes]}]}


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    pixels: np.ndarray  # N x 28 x 28 float32, 0..255
    binary_output: bool


def parse_infer(body: bytes, header_length: str | None, *, most: int) -> InferRequest:
    """An inference request's body (`header_length`: its Inference-Header-Content-Length, when binary
    tensors follow the JSON): its id, its pixels (1 to `most` images), and whether to answer in binary."""
    header, rest = _split(body, header_length)
    try:
        request = json.loads(header)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"the request is not JSON ({str(exc)[:80]})") from None
    if not isinstance(request, dict):
        raise ProtocolError('the request must be a JSON object: {"inputs": [...]}')
    request_id = request.get("id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > MAX_ID
                                   or not request_id.isprintable()):
        raise ProtocolError(f"`id` must be a printable string of at most {MAX_ID} characters")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ProtocolError(f'`inputs` must hold one tensor, named "{INPUT}"')
    pixels = _tensor(inputs[0], rest, most)
    return InferRequest(request_id, pixels, _binary_output(request))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    if not re.fullmatch(r"[0-9]{1,10}", header_length) or not 0 < int(header_length) <= len(body):
        raise ProtocolError(f"{HEADER} must be the length of the JSON at the start of the body, "
                            f"at most {len(body)}")
    return body[:int(header_length)], body[int(header_length):]


def _tensor(tensor: dict[str, Any], rest: bytes, most: int) -> np.ndarray:
    """The input tensor as pixels: its name, datatype and shape checked, its data from JSON or the
    bytes after the JSON, its values 0..255."""
    if tensor.get("name") != INPUT:
        raise ProtocolError(f'the input tensor must be named "{INPUT}", not {str(tensor.get("name"))[:40]!r}')
    datatype, shape = tensor.get("datatype"), tensor.get("shape")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise ProtocolError(f"`datatype` must be one of {', '.join(DATATYPES)}, not {str(datatype)[:20]!r}")
    if (not isinstance(shape, list) or not all(type(d) is int for d in shape)
            or shape[1:] not in ([28, 28], [784]) or not 1 <= shape[0] <= most):
        raise ProtocolError(f"`shape` must be [N, 28, 28] or [N, 784], N from 1 to {most}, not {str(shape)[:60]}")
    count = math.prod(shape)
    parameters = tensor.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("`parameters` of the input must be a JSON object")
    size = parameters.get("binary_data_size")
    if size is not None:
        dtype = np.dtype(DATATYPES[datatype])
        if type(size) is not int or size != len(rest) or size != count * dtype.itemsize:
            raise ProtocolError(f"`binary_data_size` must be the {count * dtype.itemsize} bytes of a {datatype} "
                                f"tensor of shape {shape}, all the body holds after the JSON ({len(rest)})")
        values = np.frombuffer(rest, dtype=dtype)
    elif rest:
        raise ProtocolError("the body holds bytes after the JSON but the input does not say `binary_data_size`")
    else:
        values = _json_data(tensor.get("data"), count)
    try:
        return raw_pixels(values.reshape(shape), most=most, floats=datatype.startswith("FP"))
    except ImageError as exc:
        raise ProtocolError(str(exc)) from None


def _json_data(data: Any, count: int) -> np.ndarray:
    """A tensor's `data` (flat, or nested as its shape) as `count` numbers; booleans and strings refused."""
    if not isinstance(data, list):
        raise ProtocolError("the input needs its `data` (a list of numbers) or `binary_data_size`")
    try:
        if not _only_numbers(data):
            raise ValueError
        values = np.asarray(data, dtype=np.float64).reshape(-1)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise ProtocolError("`data` must hold numbers only, as a flat list or nested as the shape") from None
    if values.size != count:
        raise ProtocolError(f"`data` must hold {count} numbers (the shape's product), not {values.size} values")
    return values


def _only_numbers(data: list) -> bool:
    """Numbers only, at any depth: no booleans (NumPy reads True as 1), no strings ("NaN" reads as NaN)."""
    stack = [data]
    while stack:
        items = stack.pop()
        for item in items:
            if isinstance(item, list):
                stack.append(item)
            elif isinstance(item, bool) or not isinstance(item, (int, float)):
                return False
    return True


def _binary_output(request: dict[str, Any]) -> bool:
    """Whether the answer's tensor goes as bytes after the JSON: the output asks for it (`binary_data`),
    or, when no output is named, the request does (`binary_data_output`), as tritonclient does."""
    outputs, parameters = request.get("outputs"), request.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ProtocolError("`parameters` must be a JSON object")
    if outputs is None:
        return parameters.get("binary_data_output") is True
    if (not isinstance(outputs, list) or len(outputs) != 1 or not isinstance(outputs[0], dict)
            or outputs[0].get("name") != OUTPUT):
        raise ProtocolError(f'`outputs` may name one tensor, "{OUTPUT}"')
    asked = outputs[0].get("parameters") or {}
    if not isinstance(asked, dict):
        raise ProtocolError("`parameters` of the output must be a JSON object")
    if asked.get("classification") or "class_count" in asked:
        raise ProtocolError("the classification extension (`class_count`) is not served; ask for the "
                            "probabilities: the classes are in the model's metadata")
    return asked.get("binary_data") is True


def infer_response(name: str, request: InferRequest, proba: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """The answer's body and its headers: the probabilities as FP32, in JSON or as bytes after it."""
    proba = np.ascontiguousarray(proba, dtype="<f4")
    output: dict[str, Any] = {"name": OUTPUT, "datatype": "FP32", "shape": list(proba.shape)}
    if request.binary_output:
        output["parameters"] = {"binary_data_size": proba.nbytes}
    else:
        output["data"] = proba.reshape(-1).tolist()
    answer = {"model_name": name, "model_version": "1", **({"id": request.id} if request.id is not None else {}),
              "outputs": [output]}
    header = json.dumps(answer).encode()
    if not request.binary_output:
        return header, {"content-type": "application/json"}
    return header + proba.tobytes(), {"content-type": "application/octet-stream", HEADER: str(len(header))}
