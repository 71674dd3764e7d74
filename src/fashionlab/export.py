"""A run's model outside fashionlab: an ONNX file that onnxruntime runs alone.

    result = export("runs/20260101-120000-tutorial")  # -> runs/.../model.onnx, checked
    model = OnnxModel("model.onnx")                     # (fashionlab.onnxrun) predict(pixels) like a Keras model

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
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from fashionlab import __version__
from fashionlab.arguments import checked
from fashionlab.data import DataSource
from fashionlab.datasets import Dataset
from fashionlab.errors import ConfigError, ExportError, Interrupted, RunError, reason
from fashionlab.files import check_writable, open_regular
from fashionlab.interrupts import stop_requests
from fashionlab.onnxrun import INPUT_NAME, MAX_ONNX_BYTES, METADATA_KEY, OUTPUT_NAME, OnnxModel, require_module
from fashionlab.rundir import Run, atomic_path

FORMATS = ("onnx",)
CHECK_IMAGES = 1000
TOLERANCE = 1e-5  # the largest difference of any probability allowed between Keras and onnxruntime


def onnx_ready(model):
    """`model` with MaxPooling2D as BlockMaxPool2D (the same results), in it and in the models it holds
    (an ensemble's members): jax2onnx turns a pooling over channels-last images into an ONNX MaxPool that
    onnxruntime refuses ("Unsupported pooling size")."""
    import keras

    from fashionlab.layers import BlockMaxPool2D, models_within

    if not any(type(layer) is keras.layers.MaxPooling2D for inner in models_within(model) for layer in inner.layers):
        return model

    def traced(layer):
        if isinstance(layer, keras.Model):
            return onnx_ready(layer)
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
    require_module("jax2onnx", "exporting to ONNX")
    onnx = require_module("onnx", "exporting to ONNX")
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
    names = metadata["class_names"]
    graph.doc_string = (f"fashionlab model: float32 pixels (N, 28, 28), 0..255 -> probabilities (N, {len(names)}) "
                        f"of {', '.join(names)}"[:2000])
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
    dataset = run.dataset()
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
        x = data.of(dataset).test_images()[:CHECK_IMAGES]
        model = run.load_model()
        metadata = _describe(run, dataset)
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


def _describe(run: Run, dataset: Dataset) -> dict[str, Any]:
    """What an exported file says it is: the run, its config and test accuracy, its data set and
    classes, the source's digest."""
    metrics = run.metrics() if run.file("metrics.json").exists() else {}
    digest = hashlib.sha256()
    with open_regular(run.model_file(), what="model file", error=RunError, limit=MAX_ONNX_BYTES) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"run": run.path.name, "name": run.name(), "config": run.shared_config(),
            "test_accuracy": metrics.get("test_accuracy"), "dataset": dataset.name,
            "class_names": list(dataset.class_names), "model_keras_sha256": digest.hexdigest(),
            "fashionlab": __version__,
            "input": f"float32 pixels (N, 28, 28), 0..255, light {dataset.subject} on black, as in {dataset.label}",
            "output": f"float32 class probabilities (N, {dataset.classes}), in the order of class_names"}


def format_export(result: dict[str, Any]) -> str:
    check = result["check"]
    return (f"wrote {result['out']} ({result['bytes'] / 1e6:.1f} MB) in {result['seconds']:.1f} s\n"
            f"checked with onnxruntime on {check['images']:,} test images: largest difference "
            f"{check['max_abs_difference']:.1e} (at most {result['tolerance']:.0e}), "
            f"{check['top1_differences']} top-1 classes differ")
