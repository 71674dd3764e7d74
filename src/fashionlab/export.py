"""A run's model outside fashionlab: an ONNX file that onnxruntime runs alone.

    result = export("runs/20260101-120000-tutorial")  # -> runs/.../model.onnx, checked
    model = OnnxModel("model.onnx")                     # predict(pixels) like a Keras model

The file takes raw pixels, float32 (N, 28, 28) in 0..255, light garment on black as in the data
set, and gives the 10 class probabilities: the standardization is inside, as in model.keras. It
also carries what it is (run, config, test accuracy, class names) as ONNX metadata. Before the
file is written, onnxruntime runs it on the first 1,000 test images and it must agree with the
Keras model within 1e-5 and on every top-1 class.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashionlab import CLASS_NAMES, __version__
from fashionlab.arguments import checked
from fashionlab.data import DataSource
from fashionlab.deadlines import MODEL_TIMEOUT, BoundedCalls
from fashionlab.errors import ConfigError, ExportError, Interrupted, RunError, reason
from fashionlab.files import check_writable, open_regular
from fashionlab.interrupts import stop_requests
from fashionlab.records import shown
from fashionlab.runs import Run, atomic_path

FORMATS = ("onnx",)
CHECK_IMAGES = 1000
TOLERANCE = 1e-5  # the largest difference of any probability allowed between Keras and onnxruntime
INPUT_NAME, OUTPUT_NAME = "pixels", "probabilities"
METADATA_KEY = "fashionlab"
MAX_ONNX_BYTES = 512 * 1024 * 1024
MAX_METADATA_BYTES = 256 * 1024
PREDICT_BATCH = 1024
# What an ONNX file may be (check_graph) and do (OnnxModel): fashionlab's own exports hold at most
# ~900 operators, 3.5 M values per image (wide-cnn) and 1.9 M weights (best-mlp).
DEFAULT_DOMAINS = ("", "ai.onnx")
MAX_NODES = 20_000
MAX_IMAGE_ELEMENTS = 16 * 2**20  # values of the tensors that grow with the batch, per image
MAX_FIXED_ELEMENTS = 256 * 2**20  # values of the others: weights, constants
RUN_ELEMENTS = 256 * 2**20  # a call's batch is cut so that its tensors hold at most this many values (1 GiB)
PROBABILITY_SLACK, SUM_SLACK = 1e-5, 1e-3  # float32 rounding in a softmax
INSTALL_HINT = "pip install 'fashionlab[onnx]'"


def _require(module: str, purpose: str):
    try:
        return __import__(module)
    except ImportError:
        raise ConfigError(f"{purpose} needs the {module} package: {INSTALL_HINT}") from None


class OnnxModel:
    """An exported model run by onnxruntime: `predict(x)` gives class probabilities as a Keras
    model's `predict` does; `metadata` is what the file says it is (empty when it says nothing).

    The file is an untrusted program: `check_graph` refuses anything `export` does not write
    before onnxruntime sees it, each call is stopped after `timeout` seconds, and every answer must be
    one probability distribution per image.
    """

    @checked(threads=(0, 1024), timeout=(0.001, 3600))
    def __init__(self, path: str | Path, threads: int = 0, timeout: float = MODEL_TIMEOUT):
        self.path = Path(path)
        with open_regular(self.path, what="ONNX model", error=RunError, limit=MAX_ONNX_BYTES) as handle:
            content = handle.read()
        ort = _require("onnxruntime", "running an ONNX model")
        ort.set_default_logger_severity(4)  # onnxruntime's own log stays off the terminal: errors become one line
        checked = check_graph(content, self.path)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        options.intra_op_num_threads = threads
        try:  # the graph as checked, not the file's bytes: onnxruntime reads exactly what was checked
            self.session = ort.InferenceSession(checked.graph.SerializeToString(), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for a graph it cannot run
            raise RunError(f"{self.path} is not an ONNX model onnxruntime can run ({reason(exc)})") from None
        self.classes, self.image_elements = checked.classes, checked.image_elements
        # a call's batch holds at most RUN_ELEMENTS values in all its tensors together
        self.batch_limit = max(1, min(PREDICT_BATCH, RUN_ELEMENTS // max(checked.image_elements, 1)))
        self.calls = BoundedCalls(timeout, f"the ONNX model {self.path.name}")
        self.metadata = _metadata(checked.graph.metadata_props)
        self._run_options = ort.RunOptions

    def predict(self, x: np.ndarray, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        step = min(batch_size or PREDICT_BATCH, self.batch_limit)
        parts = [self._call(x[i:i + step]) for i in range(0, len(x), step)]
        return np.concatenate(parts) if parts else np.zeros((0, self.classes), np.float32)

    def _call(self, x: np.ndarray) -> np.ndarray:
        options = self._run_options()

        def run() -> Any:
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: x}, options)[0]

        def stop() -> None:  # onnxruntime checks the flag between two operators
            options.terminate = True

        return self._probabilities(self.calls.run(run, stop, len(x)), len(x))

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


@dataclass(frozen=True)
class CheckedGraph:
    graph: Any  # onnx.ModelProto
    classes: int
    image_elements: int  # values held by the tensors that grow with the batch, per image


def check_graph(content: bytes, path: Path) -> CheckedGraph:
    """An ONNX file's graph, if it is one that `export` could have written: operators of the
    default ONNX domain only, no functions, subgraphs or external data, the signature `pixels`
    float32 (N, 28, 28) -> `probabilities` float32 (N, classes), and every tensor's shape known
    from the batch size alone and within the size bounds. A RunError says what it is instead."""
    onnx = _require("onnx", "checking an ONNX model")
    from google.protobuf.message import DecodeError

    def refuse(what: str) -> RunError:
        return RunError(f"{path} {what}; fashionlab runs only the models it exports")

    try:
        graph = onnx.load_model_from_string(content)
    except (DecodeError, ValueError, RecursionError, RuntimeError):
        raise RunError(f"{path} is not an ONNX model (its bytes do not parse as one); pass a file that "
                       f"fashionlab export wrote") from None
    body = graph.graph
    if graph.functions or graph.training_info:
        raise refuse("holds functions or training steps")
    foreign = sorted({o.domain for o in graph.opset_import if o.domain not in DEFAULT_DOMAINS}
                     | {n.domain for n in body.node if n.domain not in DEFAULT_DOMAINS})
    if foreign:
        raise refuse(f"uses operators outside the default ONNX domain ({shown(foreign[0])})")
    if len(body.node) > MAX_NODES:
        raise refuse(f"has {len(body.node):,} operators, more than {MAX_NODES:,}")
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in body.node for a in n.attribute):
        raise refuse("holds subgraphs (If, Loop, Scan)")
    if any(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data for t in _tensors(body)):
        raise refuse("refers to tensor data in other files (external data)")
    batch, classes = _signature(body, refuse)
    try:
        onnx.checker.check_model(graph)
        inferred = onnx.shape_inference.infer_shapes(graph, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # the checker and shape inference raise their own types
        raise refuse(f"is not a valid ONNX graph ({reason(exc)})") from None
    values = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output]}
    image_elements = fixed_elements = 0
    for name in (out for node in body.node for out in node.output if out):
        value = values.get(name)
        kind = value.type.tensor_type if value is not None and value.type.HasField("tensor_type") else None
        if kind is None or not kind.HasField("shape") or kind.elem_type == onnx.TensorProto.STRING:
            raise refuse(f"computes {shown(name)}, whose kind or shape cannot be known before it runs")
        grows = sum(d.dim_param == batch and not d.HasField("dim_value") for d in kind.shape.dim)
        if grows > 1 or any(not d.HasField("dim_value") and d.dim_param != batch for d in kind.shape.dim):
            raise refuse(f"computes {shown(name)}, whose shape does not follow from the batch size alone")
        size = math.prod(d.dim_value for d in kind.shape.dim if d.HasField("dim_value"))
        if grows:
            image_elements += size
        else:
            fixed_elements += size
    fixed_elements += sum(math.prod(t.dims) for t in body.initializer)
    if image_elements > MAX_IMAGE_ELEMENTS or fixed_elements > MAX_FIXED_ELEMENTS:
        raise refuse(f"holds {image_elements:,} values per image and {fixed_elements:,} others, more than the "
                     f"{MAX_IMAGE_ELEMENTS:,} and {MAX_FIXED_ELEMENTS:,} allowed")
    return CheckedGraph(graph, classes, image_elements)


def _signature(body, refuse) -> tuple[str, int]:
    """The batch dimension's name and the class count, if the graph takes `pixels` float32
    (N, 28, 28) and gives `probabilities` float32 (N, classes)."""
    import onnx

    def dims(value) -> list[int | str | None]:
        kind = value.type.tensor_type
        if kind.elem_type != onnx.TensorProto.FLOAT or not kind.HasField("shape"):
            return []
        return [d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in kind.shape.dim]

    initialized = {t.name for t in body.initializer}
    inputs = [i for i in body.input if i.name not in initialized]
    taken = dims(inputs[0]) if len(inputs) == 1 and inputs[0].name == INPUT_NAME else []
    if len(taken) == 3 and isinstance(taken[0], int):
        raise refuse(f"takes batches of exactly {taken[0]} images; export it with a batch size left open "
                     f"(fashionlab export does)")
    if len(taken) != 3 or not isinstance(taken[0], str) or taken[1:] != [28, 28]:
        said = [(i.name, dims(i)) for i in inputs][:3]
        raise refuse(f"takes {said}, not one input `{INPUT_NAME}` of float32 (N, 28, 28) images")
    given = dims(body.output[0]) if len(body.output) == 1 and body.output[0].name == OUTPUT_NAME else []
    if len(given) != 2 or given[0] != taken[0] or given[1] != len(CLASS_NAMES):
        said = [(o.name, dims(o)) for o in body.output][:3]
        raise refuse(f"gives {said}, not one output `{OUTPUT_NAME}` of float32 (N, {len(CLASS_NAMES)}) "
                     f"class probabilities")
    return taken[0], len(CLASS_NAMES)


def _tensors(body) -> Iterator[Any]:
    """Every tensor a graph holds: its initializers (sparse ones too) and its operators' attributes."""
    yield from body.initializer
    for sparse in body.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    for node in body.node:
        for attribute in node.attribute:
            yield from [attribute.t] if attribute.HasField("t") else []
            yield from attribute.tensors
            for sparse in ([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []):
                yield from (sparse.values, sparse.indices)
            for sparse in attribute.sparse_tensors:
                yield from (sparse.values, sparse.indices)


def _metadata(props) -> dict[str, Any]:
    """The file's fashionlab metadata, or {} when it has none or it is not a JSON table."""
    text = next((p.value for p in props if p.key == METADATA_KEY), None)
    if not text or len(text) > MAX_METADATA_BYTES:
        return {}
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return {}
    return value if isinstance(value, dict) else {}


def onnx_ready(model):
    """`model` with MaxPooling2D as BlockMaxPool2D (the same results): jax2onnx turns a pooling over
    channels-last images into an ONNX MaxPool that onnxruntime refuses ("Unsupported pooling size")."""
    import keras

    from fashionlab.model import BlockMaxPool2D

    if not any(type(layer) is keras.layers.MaxPooling2D for layer in model.layers):
        return model

    def traced(layer):
        kind = BlockMaxPool2D if type(layer) is keras.layers.MaxPooling2D else type(layer)
        return kind.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=traced)
    copy.set_weights(model.get_weights())
    return copy


def write_onnx(model, path: Path, metadata: dict[str, Any]) -> None:
    """The model as an ONNX file at `path`: input `pixels`, output `probabilities`, the metadata."""
    import keras

    if keras.backend.backend() != "jax":
        raise ConfigError(f"export runs on the JAX backend, not {keras.backend.backend()}; use KERAS_BACKEND=jax")
    _require("jax2onnx", "exporting to ONNX")
    onnx = _require("onnx", "exporting to ONNX")
    signature = [keras.InputSpec(shape=(None, 28, 28), dtype="float32", name=INPUT_NAME)]
    # jax2onnx writes the weights beside its file (model.onnx.data): both go to a folder of our own
    with tempfile.TemporaryDirectory(prefix="fashionlab-export-", dir=path.parent) as scratch:
        converted = Path(scratch) / "model.onnx"
        try:
            onnx_ready(model).export(str(converted), format="onnx", input_signature=signature, verbose=False)
        except Exception as exc:  # jax2onnx fails with many types on a layer it cannot convert
            raise ExportError(f"the model cannot be converted to ONNX ({reason(exc, 300)})") from None
        graph = onnx.load(str(converted))  # the weights read back in: one self-contained file
    produced = graph.graph.output[0].name
    for node in graph.graph.node:
        node.output[:] = [OUTPUT_NAME if name == produced else name for name in node.output]
    graph.graph.output[0].name = OUTPUT_NAME
    graph.doc_string = ("fashionlab model: float32 pixels (N, 28, 28), 0..255, light garment on black -> "
                        f"probabilities (N, 10) of {', '.join(CLASS_NAMES)}")
    graph.metadata_props.add(key=METADATA_KEY, value=json.dumps(metadata))
    onnx.checker.check_model(graph)
    onnx.save(graph, str(path))


def agreement(model, onnx_model: OnnxModel, x: np.ndarray) -> dict[str, Any]:
    """How the two models' probabilities differ on `x`: the largest difference, the top-1 classes that differ."""
    from fashionlab.evaluation import predict_proba

    expected, got = predict_proba(model, x), onnx_model.predict(x)
    return {"images": len(x), "max_abs_difference": float(np.abs(expected - got).max()) if len(x) else 0.0,
            "top1_differences": int((expected.argmax(axis=1) != got.argmax(axis=1)).sum())}


@checked
def export(run_dir: str | Path, *, format: str = "onnx", out: str | Path | None = None,
           data: DataSource = DataSource(), allow_incomplete: bool = False) -> dict[str, Any]:
    """Write the run's model as an ONNX file (`out`, default RUN/model.onnx), once onnxruntime has
    been checked to agree with Keras on the first 1,000 test images; nothing is written otherwise."""
    if format not in FORMATS:
        raise ConfigError(f"`format` must be one of {', '.join(FORMATS)}, got {format!r}", terms=["format"])
    run = Run.open(run_dir, allow_incomplete=allow_incomplete)
    target = Path(out) if out is not None else run.file("model.onnx")
    if target.suffix != ".onnx":
        raise ConfigError(f"`out` {target} must end in .onnx", terms=["out"])
    if target.is_dir() or not target.parent.is_dir():
        raise ConfigError(f"`out` {target} must be a file in an existing folder", terms=["out"])
    check_writable(target.parent, what="the ONNX file", term="out")
    started = time.perf_counter()
    inside = target.resolve().parent == run.path.resolve()
    # Writing into the run takes its lock, as training and evaluate do; Ctrl-C is a stop request,
    # answered between the steps, with every scratch file removed.
    with stop_requests() as stop, Run.acquire(run.path) if inside else contextlib.nullcontext():
        x = data.test_images()[:CHECK_IMAGES]
        model = run.load_model()
        metadata = _describe(run)
        with atomic_path(target) as scratch:
            write_onnx(model, scratch, metadata)
            _stop_if_asked(stop)
            checked = agreement(model, OnnxModel(scratch), x)
            if checked["max_abs_difference"] > TOLERANCE or checked["top1_differences"]:
                raise ExportError(f"onnxruntime disagrees with Keras on {checked['images']} test images (largest "
                                  f"difference {checked['max_abs_difference']:.2e}, {checked['top1_differences']} "
                                  f"top-1 classes differ); nothing written")
            _stop_if_asked(stop)
    return {"run": str(run.path), "format": format, "out": str(target), "bytes": target.stat().st_size,
            "seconds": time.perf_counter() - started, "check": checked, "tolerance": TOLERANCE}


def _stop_if_asked(stop) -> None:
    if stop.requested:
        raise Interrupted("export interrupted; nothing written")


def _describe(run: Run) -> dict[str, Any]:
    """What an exported file says it is: the run, its config and test accuracy, the classes, the source's digest."""
    config = run.config()
    metrics = run.metrics() if run.file("metrics.json").exists() else {}
    digest = hashlib.sha256()
    with open_regular(run.model_file(), what="model file", error=RunError, limit=MAX_ONNX_BYTES) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"run": run.path.name, "name": config.name, "config": config.to_dict(),
            "test_accuracy": metrics.get("test_accuracy"), "class_names": list(CLASS_NAMES),
            "model_keras_sha256": digest.hexdigest(), "fashionlab": __version__,
            "input": "float32 pixels (N, 28, 28), 0..255, light garment on black, as in Fashion-MNIST",
            "output": "float32 class probabilities (N, 10), in the order of class_names"}


def format_export(result: dict[str, Any]) -> str:
    check = result["check"]
    return (f"wrote {result['out']} ({result['bytes'] / 1e6:.1f} MB) in {result['seconds']:.1f} s\n"
            f"checked with onnxruntime on {check['images']:,} test images: largest difference "
            f"{check['max_abs_difference']:.1e} (at most {result['tolerance']:.0e}), "
            f"{check['top1_differences']} top-1 classes differ")
