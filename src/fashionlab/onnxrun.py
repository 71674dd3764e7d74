"""An ONNX file is an untrusted program: checked before onnxruntime reads it, then run with every
call bounded in time and every answer checked.

    model = OnnxModel("model.onnx")   # refused in one line unless `export` could have written it
    probabilities = model.predict(pixels)

`check_graph` accepts only what `export` writes: operators of a fixed list from the default ONNX
domain (no functions, subgraphs, sparse or external data) and the signature `pixels` float32
(N, 28, 28) -> `probabilities` float32 (N, classes). Then, for every batch size a call will have
(powers of two: a batch is padded up to the next), ONNX's shape inference must work out every
tensor's shape from that size alone (the file's own shape declarations are dropped first: a file
can declare anything), and from those shapes the call's memory and multiply-adds are known before
it runs, and bounded: the largest batch within the bounds is the most a call is given.
onnxruntime then runs the graph as checked, imports no Keras or JAX, and keeps its own log off
the terminal.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashionlab.arguments import checked
from fashionlab.datasets import BUILT_IN, FASHION_MNIST, MAX_CLASSES, MIN_CLASSES, Dataset, parse_class_names
from fashionlab.deadlines import MODEL_TIMEOUT, TIMEOUT_RANGE, BoundedCalls
from fashionlab.errors import ConfigError, DataError, RunError, reason
from fashionlab.files import open_regular
from fashionlab.onnxshapes import SMALL_VALUES, Folding, Unfoldable
from fashionlab.records import MAX_MEMBERS, shown

INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"
METADATA_KEY = "fashionlab"
INSTALL_HINT = "pip install 'fashionlab[onnx]'"
MAX_ONNX_BYTES = 256 * 1024 * 1024
MAX_METADATA_BYTES = 256 * 1024
PREDICT_BATCH = 1024
# The operators fashionlab's exports use (every model family, activation and batch-norm placement;
# an ensemble's average, Mean), and a few of their plain relatives. Each one's memory and work follow
# from the shapes of its inputs and outputs (`_work`); none holds a subgraph, draws random numbers or
# sizes its output from the data it reads.
OPERATORS = frozenset({
    "Abs", "Add", "AveragePool", "BatchNormalization", "Cast", "Clip", "Concat", "Constant", "Conv", "Div", "Elu",
    "Equal", "Erf", "Exp", "Expand", "Flatten", "Gather", "GatherND", "Gelu", "Gemm", "Greater", "HardSigmoid",
    "Identity", "LeakyRelu", "Less", "Log", "MatMul", "Max", "MaxPool", "Mean", "Min", "Mul", "Neg", "Not", "Pad",
    "Pow", "Range", "Reciprocal", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceSum", "Relu", "Reshape", "Selu",
    "Shape", "Sigmoid", "Sign", "Slice", "Softmax", "Softplus", "Sqrt", "Squeeze", "Sub", "Tanh", "Transpose",
    "Unsqueeze", "Where"})
DEFAULT_DOMAINS = ("", "ai.onnx")
# Bytes per value of the element types a graph may compute with (ONNX's TensorProto numbers).
ITEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
TYPE_NAMES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "string",
              9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}
FLOAT = 1
# What one call (a batch) may cost: fashionlab's own exports hold at most ~900 operators and
# 14 MB of tensors per image (wide-cnn), 8 MB of weights (best-mlp).
MAX_NODES = 20_000
RUN_BYTES = 2**30  # every tensor of the call together (an upper bound: onnxruntime reuses memory)
RUN_WORK = 16_000_000_000  # multiply-adds, or values read and written: about a second on two cores
PROBABILITY_SLACK, SUM_SLACK = 1e-5, 1e-3  # float32 rounding in a softmax


def require_module(module: str, purpose: str):
    """An optional package of the onnx extra, or a ConfigError saying how to install it."""
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"{purpose} needs the {module} package: {INSTALL_HINT}") from None


class OnnxModel:
    """An exported model run by onnxruntime: `predict(x)` gives class probabilities as a Keras
    model's `predict` does; `metadata` is what the file says it is, checked (empty when it says
    nothing usable). Each `predict` (all its calls together) is stopped after `timeout` seconds."""

    @checked(threads=(0, 1024), timeout=TIMEOUT_RANGE)
    def __init__(self, path: str | Path, threads: int = 0, timeout: float = MODEL_TIMEOUT):
        self.path = Path(path)
        with open_regular(self.path, what="ONNX model", error=RunError, limit=MAX_ONNX_BYTES) as handle:
            content = handle.read()
        ort = require_module("onnxruntime", "running an ONNX model")
        ort.set_default_logger_severity(4)  # onnxruntime's own log stays off the terminal: errors become one line
        graph = check_graph(content, self.path)
        del content
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = threads
        try:  # the graph as checked (its declarations dropped), not the file's bytes
            self.session = ort.InferenceSession(graph.model.SerializeToString(), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a graph it cannot run
            raise RunError(f"{self.path} is not an ONNX model onnxruntime can run ({_said(exc)})") from None
        self.classes, self.batch_limit, self.costs = graph.classes, graph.batch_limit, graph.costs
        self.calls = BoundedCalls(timeout, f"the ONNX model {self.path.name}")
        self.metadata = _metadata(graph.model.metadata_props)
        self._run_options = ort.RunOptions

    def dataset(self) -> Dataset:
        """The data set the file's classes belong to: the names its metadata gives (a built-in, with
        its photo rules, when they are that built-in's), Fashion-MNIST for a file of 10 classes that
        names none (exports made before data sets were recorded), else "class 0" .. "class N-1"."""
        names = self.metadata.get("class_names")
        try:
            names = parse_class_names("\n".join(names), "class_names") if names is not None else None
        except DataError:  # names that cannot be one a line: as good as none
            names = None
        if names is not None and len(names) == self.classes:
            built = BUILT_IN.get(self.metadata.get("dataset", ""))
            if built is not None and built.class_names == names:
                return built
            return Dataset(name="onnx", title=f"the data set {self.path.name} was trained on", class_names=names)
        if self.classes == FASHION_MNIST.classes:
            return FASHION_MNIST
        return Dataset(name="onnx", title=f"the data set {self.path.name} was trained on",
                       class_names=tuple(f"class {i}" for i in range(self.classes)))

    def predict(self, x: np.ndarray, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        step = min(batch_size or PREDICT_BATCH, self.batch_limit)
        deadline = time.monotonic() + self.calls.seconds  # for all of x's calls together
        parts = [self._call(x[i:i + step], deadline, len(x)) for i in range(0, len(x), step)]
        return np.concatenate(parts) if parts else np.zeros((0, self.classes), np.float32)

    def _call(self, x: np.ndarray, deadline: float, images: int) -> np.ndarray:
        """One call on `x`, padded to the next checked batch size (a power of two), ended by `deadline`."""
        size = 1 << (len(x) - 1).bit_length()
        padded = np.concatenate([x, np.zeros((size - len(x), *x.shape[1:]), np.float32)]) if size > len(x) else x
        options = self._run_options()

        def run() -> Any:
            try:
                return self.session.run([OUTPUT_NAME], {INPUT_NAME: padded}, options)[0]
            except Exception as exc:  # onnxruntime raises its own types for a graph that fails as it runs
                if options.terminate:
                    raise  # stopped: the time limit says so
                raise RunError(f"the ONNX model {self.path.name} failed on {len(x)} images ({_said(exc)}); it "
                               f"is damaged or not a model fashionlab exported") from None

        def stop() -> None:  # onnxruntime checks the flag between two operators
            options.terminate = True

        out = self.calls.run(run, stop, images, seconds=deadline - time.monotonic())
        return self._probabilities(out, size)[:len(x)]

    def _probabilities(self, out: Any, images: int) -> np.ndarray:
        """The call's output, if it is float32 (images, classes) and each row a probability distribution."""
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or out.shape != (images, self.classes):
            said = f"{out.dtype} {out.shape}" if isinstance(out, np.ndarray) else type(out).__name__
            raise RunError(f"the ONNX model {self.path.name} gave {said} for {images} images, not float32 "
                           f"({images}, {self.classes}); it is not a model fashionlab exported")
        if not (np.isfinite(out).all() and (out >= -PROBABILITY_SLACK).all() and (out <= 1 + PROBABILITY_SLACK).all()
                and np.allclose(out.sum(axis=1), 1.0, rtol=0, atol=SUM_SLACK)):
            raise RunError(f"the ONNX model {self.path.name} gives values that are not probabilities (each row "
                           f"must be numbers from 0 to 1 that add up to 1); it is damaged or not a model "
                           f"fashionlab exported")
        return out


def _said(exc: Exception) -> str:
    """onnxruntime's message in one short line, without the paths of its own source files."""
    return re.sub(r"\S*onnxruntime\S*/\S+", "", reason(exc, 400)).strip()[:200]


@dataclass(frozen=True)
class Cost:
    """What a call of a graph on one batch size holds (bytes of tensors) and does (multiply-adds)."""

    bytes: int = 0
    work: int = 0

    def fits(self) -> bool:
        return self.bytes <= RUN_BYTES and self.work <= RUN_WORK


@dataclass(frozen=True)
class CheckedGraph:
    model: Any  # onnx.ModelProto, its shape declarations and doc strings dropped
    classes: int
    batch_limit: int  # the largest batch size (a power of two) a call may be given
    costs: dict[int, Cost]  # the cost of a call at each batch size checked


def check_graph(content: bytes, path: Path) -> CheckedGraph:
    """The file's graph, if `export` could have written it (see the module's doc); a RunError
    saying what it is instead. The graph returned has its shape declarations and doc strings
    dropped: only what shape inference works out is believed, and only what runs is kept."""
    onnx = require_module("onnx", "checking an ONNX model")
    from google.protobuf.message import DecodeError

    def refuse(what: str) -> RunError:
        return RunError(f"{path} {what}; fashionlab runs only the models it exports")

    try:
        model = onnx.load_model_from_string(content)
    except (DecodeError, ValueError, RecursionError, RuntimeError):
        raise RunError(f"{path} is not an ONNX model (its bytes do not parse as one); pass a file that "
                       f"fashionlab export wrote") from None
    body = model.graph
    if model.functions or model.training_info:
        raise refuse("holds functions or training steps")
    foreign = sorted({o.domain for o in model.opset_import if o.domain not in DEFAULT_DOMAINS}
                     | {n.domain for n in body.node if n.domain not in DEFAULT_DOMAINS})
    if foreign:
        raise refuse(f"uses operators outside the default ONNX domain ({shown(foreign[0])})")
    if len(body.node) > MAX_NODES:
        raise refuse(f"has {len(body.node):,} operators, more than {MAX_NODES:,}")
    unknown = sorted({n.op_type for n in body.node} - OPERATORS)
    if unknown:
        raise refuse(f"uses the operator {shown(unknown[0])}, which fashionlab's exports never do")
    attributes = [a for n in body.node for a in n.attribute]
    if any(a.type in (a.GRAPH, a.GRAPHS) for a in attributes):
        raise refuse("holds subgraphs")
    if body.sparse_initializer or any(a.type in (a.SPARSE_TENSOR, a.SPARSE_TENSORS) for a in attributes):
        raise refuse("holds sparse tensors")
    tensors = [*body.initializer, *(a.t for a in attributes if a.type == a.TENSOR),
               *(t for a in attributes for t in a.tensors)]
    if any(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data for t in tensors):
        raise refuse("refers to tensor data in other files (external data)")
    if any(t.data_type not in ITEM_BYTES or any(d < 0 for d in t.dims) for t in tensors):
        raise refuse("holds tensors of text or of another kind than numbers")
    classes = _signature(body, refuse)
    del body.value_info[:]  # a file may declare any shape: only what inference works out counts
    model.doc_string, body.doc_string = "", ""
    for node in body.node:
        node.doc_string = ""
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # the checker raises its own types
        raise refuse(f"is not a valid ONNX graph ({reason(exc)})") from None
    skeleton = _skeleton(model)
    _fold(skeleton, refuse)  # what does not depend on the batch size, once
    costs: dict[int, Cost] = {}
    size = 1
    while size <= PREDICT_BATCH:
        costs[size] = _cost(skeleton, size, refuse)
        if not costs[size].fits():
            break
        size *= 2
    if not costs[1].fits():
        raise refuse(f"holds {costs[1].bytes:,} bytes of tensors and does {costs[1].work:,} multiply-adds for one "
                     f"image, more than the {RUN_BYTES:,} and {RUN_WORK:,} a call may")
    return CheckedGraph(model, classes, max(s for s, cost in costs.items() if cost.fits()), costs)


def _skeleton(model):
    """The graph with its constants as initializers and the large ones' values dropped (their kinds
    and shapes kept), and every value computed before any pixel is read worked out (`_fold`): all
    that shape inference needs, to be worked on again for each batch size without the weights."""
    onnx = require_module("onnx", "checking an ONNX model")
    skeleton = onnx.ModelProto()
    skeleton.CopyFrom(model)
    constants = [n for n in skeleton.graph.node if n.op_type == "Constant"]
    for node in constants:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if value is not None:
            value.t.name = node.output[0]
            skeleton.graph.initializer.append(value.t)
            skeleton.graph.node.remove(node)
    for tensor in skeleton.graph.initializer:
        if math.prod(tensor.dims) > SMALL_VALUES:
            for values in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                tensor.ClearField(values)
    return skeleton


def _fold(graph, refuse):
    """Shape inference (without its data propagation) for the tensors computed from pixels, and
    numpy (`onnxshapes`) for the values computed before any pixel is read, over and over until
    neither learns more: `graph` keeps the values worked out as initializers. Returns the inferred
    graph, every tensor's kind, and the shapes known in full."""
    onnx = require_module("onnx", "checking an ONNX model")
    from onnx import numpy_helper

    folding = Folding(next((o.version for o in graph.opset_import if o.domain in DEFAULT_DOMAINS), 1))
    values = {t.name: numpy_helper.to_array(t) for t in graph.graph.initializer if math.prod(t.dims) <= SMALL_VALUES}
    while True:
        try:
            inferred = onnx.shape_inference.infer_shapes(graph, check_type=True, strict_mode=True).graph
        except Exception as exc:  # shape inference raises its own types
            raise refuse(f"is not a valid ONNX graph ({reason(exc)})") from None
        known = {v.name: v.type for v in [*inferred.input, *inferred.value_info, *inferred.output]}
        shapes = {name: [d.dim_value for d in kind.tensor_type.shape.dim] for name, kind in known.items()
                  if kind.HasField("tensor_type") and kind.tensor_type.HasField("shape")
                  and all(d.HasField("dim_value") for d in kind.tensor_type.shape.dim)}
        nodes = list(graph.graph.node)
        try:
            folded = folding.run(nodes, values, shapes)
        except Unfoldable as exc:
            raise refuse(f"computes {exc} before it reads the pixels") from None
        if not folded:
            return inferred, known, shapes
        del graph.graph.node[:]
        graph.graph.node.extend(n for i, n in enumerate(nodes) if i not in folded)
        graph.graph.initializer.extend(numpy_helper.from_array(values[nodes[i].output[0]], nodes[i].output[0])
                                       for i in sorted(folded))


def _cost(skeleton, size: int, refuse) -> Cost:
    """What a call on `size` images holds and does, from every tensor's shape at that batch size
    (`_fold`); refused unless every shape is known."""
    onnx = require_module("onnx", "checking an ONNX model")
    graph = onnx.ModelProto()
    graph.CopyFrom(skeleton)
    for value in (next(i for i in graph.graph.input if i.name == INPUT_NAME), graph.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = size
    inferred, known, shapes = _fold(graph, refuse)
    dims: dict[str, list[int]] = {t.name: list(t.dims) for t in inferred.initializer}
    held = sum(math.prod(t.dims) * ITEM_BYTES[t.data_type] for t in inferred.initializer)
    for name in [*(out for node in inferred.node for out in node.output if out), INPUT_NAME]:
        kind = known.get(name)
        tensor = kind.tensor_type if kind is not None and kind.HasField("tensor_type") else None
        if tensor is None or not tensor.HasField("shape") or tensor.elem_type not in ITEM_BYTES:
            raise refuse(f"computes {shown(name)}, whose kind or shape cannot be known before it runs")
        if name not in shapes:
            raise refuse(f"computes {shown(name)}, whose shape does not follow from the batch size alone")
        dims[name] = shapes[name]
        held += math.prod(dims[name]) * ITEM_BYTES[tensor.elem_type] if name != INPUT_NAME else 0
    work = 0
    for node in inferred.node:
        shapes_here = {name: dims[name] for name in [*node.input, *node.output] if name}
        work += _work(node, shapes_here)
        held += _scratch(node, shapes_here)
    return Cost(held, work)


def _scratch(node, dims: dict[str, list[int]]) -> int:
    """The bytes an operator holds besides its inputs and outputs: a convolution unrolls each image's
    patches (its kernel's values times the output's positions) before its matrix product."""
    if node.op_type != "Conv" or len(node.input) < 2:
        return 0
    out, kernel = dims[node.output[0]], dims.get(node.input[1], [])
    return math.prod(kernel[1:]) * math.prod(out[2:]) * 4 if len(out) > 2 else 0


def _work(node, dims: dict[str, list[int]]) -> int:
    """A node's work: the values it reads and writes, and for a matrix product, a convolution or a
    pooling, its multiply-adds (the output's values times what each one sums)."""
    touched = sum(math.prod(d) for d in dims.values())
    out = math.prod(dims[node.output[0]])
    first = dims.get(node.input[0], []) if node.input else []
    if node.op_type == "MatMul" and first:
        per_value = first[-1]
    elif node.op_type == "Gemm" and len(first) == 2:
        per_value = first[0] if any(a.name == "transA" and a.i for a in node.attribute) else first[1]
    elif node.op_type == "Conv" and len(node.input) > 1:
        per_value = math.prod(dims.get(node.input[1], [])[1:])
    elif node.op_type in ("MaxPool", "AveragePool"):
        per_value = math.prod(v for a in node.attribute if a.name == "kernel_shape" for v in a.ints)
    else:
        per_value = 0
    return out * per_value + touched


def _signature(body, refuse) -> int:
    """The class count, if the graph takes `pixels` float32 (N, 28, 28) and gives `probabilities`
    float32 (N, classes), N left open."""

    def said(value) -> str:
        kind = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param or "?" for d in kind.shape.dim]
        return f"{shown(value.name)} {TYPE_NAMES.get(kind.elem_type, 'non-tensor')} {tuple(dims)}"

    def dims(value) -> list[int | str | None]:
        kind = value.type.tensor_type
        if kind.elem_type != FLOAT or not kind.HasField("shape"):
            return []
        return [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in kind.shape.dim]

    initialized = {t.name for t in body.initializer}
    inputs = [i for i in body.input if i.name not in initialized]
    taken = dims(inputs[0]) if len(inputs) == 1 and inputs[0].name == INPUT_NAME else []
    if len(taken) == 3 and isinstance(taken[0], int):
        raise refuse(f"takes batches of exactly {taken[0]} images; export it with a batch size left open "
                     f"(fashionlab export does)")
    if len(taken) != 3 or not isinstance(taken[0], str) or taken[1:] != [28, 28]:
        raise refuse(f"takes {', '.join(said(i) for i in inputs[:3]) or 'nothing'}, not one input `{INPUT_NAME}` "
                     f"of float32 (N, 28, 28) images")
    given = dims(body.output[0]) if len(body.output) == 1 and body.output[0].name == OUTPUT_NAME else []
    if len(given) != 2 or given[0] != taken[0] or not isinstance(given[1], int) or \
            not MIN_CLASSES <= given[1] <= MAX_CLASSES:
        raise refuse(f"gives {', '.join(said(o) for o in body.output[:3]) or 'nothing'}, not one output "
                     f"`{OUTPUT_NAME}` of float32 (N, classes) class probabilities, {MIN_CLASSES} to {MAX_CLASSES:,} "
                     f"classes")
    return given[1]


# What an exported file's metadata may say, and how: anything else is left out.
METADATA_FIELDS = {"run": str, "name": str, "fashionlab": str, "model_keras_sha256": str, "input": str, "output": str,
                   "test_accuracy": float, "dataset": str, "class_names": list, "config": dict}
MAX_TEXT = 1000


def _metadata(props) -> dict[str, Any]:
    """The file's fashionlab metadata, checked: the fields `export` writes, each of its kind (text
    short, class names a list of text, the config a flat table of plain values, and for an ensemble
    its members' configs, each such a table); {} when there is none or it is not a JSON table."""
    text = next((p.value for p in props if p.key == METADATA_KEY), None)
    if not text or len(text) > MAX_METADATA_BYTES:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    if not isinstance(value, dict):
        return {}
    kept = {}
    for key, kind in METADATA_FIELDS.items():
        item = value.get(key)
        if kind is float and _plain(item) and isinstance(item, (int, float)) and not isinstance(item, bool):
            kept[key] = float(item)
        elif kind is str and isinstance(item, str) and _plain(item):
            kept[key] = item
        elif kind is list and isinstance(item, list) and all(isinstance(c, str) and _plain(c) for c in item):
            kept[key] = item
        elif kind is dict and isinstance(item, dict):
            kept[key] = _flat(item)
            members = item.get("ensemble")  # an ensemble's config: its members' configs
            if isinstance(members, list) and len(members) <= MAX_MEMBERS and all(isinstance(m, dict) for m in members):
                kept[key]["ensemble"] = [_flat(member) for member in members]
    return kept


def _flat(table: dict) -> dict[str, Any]:
    """A table's plain values (`_plain`) under plain text keys; the rest left out."""
    return {k: v for k, v in table.items() if isinstance(k, str) and _plain(k) and _plain(v)}


def _plain(value: Any) -> bool:
    """None, a bool, a finite number or a short text: what a metadata field or config value may be."""
    if isinstance(value, float):
        return math.isfinite(value)
    return value is None or isinstance(value, (bool, int)) or isinstance(value, str) and len(value) <= MAX_TEXT
