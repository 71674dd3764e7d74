"""The model `fashionlab serve` answers with: a run's Keras model, jitted once for each batch size
it will run, or an exported ONNX file in onnxruntime alone; every call bounded in time.

    predictor = load_predictor("runs/x")      # or load_predictor(onnx="model.onnx")
    proba = predictor.predict(images)         # (n, 28, 28) uint8 -> (n, classes), as a Keras model's
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fashionlab.arguments import checked
from fashionlab.datasets import Dataset
from fashionlab.deadlines import MODEL_TIMEOUT, BoundedCalls, check_timeout
from fashionlab.errors import ConfigError
from fashionlab.rundir import Run
from fashionlab.serve.layers import printable

MAX_BATCH = 64  # images the model reads at once; requests that arrive together share a batch
MAX_PASSES = 100  # MC dropout's passes a request may ask for
PASS_ROWS = (64, 512)  # the image passes of one MC dropout call: one compiled program each
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64)  # a batch is padded to the next of these: one compiled program each


class Predictor:
    """A model that reads batches of 28 x 28 uint8 images: `predict(x)` as a Keras model's.

    A Keras model on JAX runs as one jitted function of its weights, compiled at start for each
    size in BATCH_SIZES (a batch is padded up to the next one), so no request compiles anything.
    An ONNX model runs in onnxruntime; other backends run `model.predict`. `dataset` names its
    classes (the run's data set, or the one the ONNX file names).
    """

    def __init__(self, model, engine: str, info: dict[str, Any], dataset: Dataset, timeout: float = MODEL_TIMEOUT,
                 progress: Callable[[str], None] | None = None):
        self.model, self.engine, self.info, self.dataset = model, engine, info, dataset
        self._compiled = None
        self.sampler = None  # MC dropout: a Keras model with dropout
        # every call of the model is bounded in time; an ONNX model bounds its own (and stops the call)
        self.calls = model.calls if engine == "onnx" else BoundedCalls(timeout, "the model")
        if engine == "keras":
            import keras

            if keras.backend.backend() == "jax":
                self._compile(progress or (lambda line: None))
            self._sampling(progress or (lambda line: None))

    def _sampling(self, progress: Callable[[str], None]) -> None:
        """MC dropout's passes, compiled now, when the model has dropout."""
        from fashionlab.uncertainty import DropoutSampler, dropout_layers

        if not dropout_layers(self.model):
            return
        began = time.perf_counter()
        self.sampler = DropoutSampler(self.model, sizes=PASS_ROWS)
        self.sampler.warm()
        progress(f"compiled MC dropout's passes in {time.perf_counter() - began:.1f} s")

    def samples(self, x: np.ndarray, passes: int) -> np.ndarray:
        """(passes, n, classes): MC dropout's passes (`uncertainty.DropoutSampler`), each call bounded in time."""
        if self.sampler is None:
            raise ValueError("this model cannot sample: it has no dropout, or is an ONNX file")
        return self.sampler.samples(x, passes, bounded=self.calls.run)

    def _compile(self, progress: Callable[[str], None]) -> None:
        import jax

        model = self.model

        @jax.jit
        def forward(weights, x):  # the weights are arguments, not constants compiled into the program
            return model.stateless_call(*weights, x, training=False)[0]

        def current(x):  # the variables' arrays read at each call: Keras may replace them (model.predict donates)
            return forward(([v.value for v in model.trainable_variables],
                            [v.value for v in model.non_trainable_variables]), x)

        self._compiled = current
        began = time.perf_counter()
        for count, size in enumerate(BATCH_SIZES, 1):  # compile every batch size now, not during a request
            progress(f"compiling the model for batch size {size} ({count} of {len(BATCH_SIZES)}, "
                     f"{time.perf_counter() - began:.1f} s so far)")
            np.asarray(self._compiled(np.zeros((size, 28, 28), np.float32)))
        seconds = time.perf_counter() - began
        progress(f"compiled for batch sizes {BATCH_SIZES[0]} to {BATCH_SIZES[-1]} in {seconds:.1f} s")

    def predict(self, x: np.ndarray, batch_size: int | None = None, verbose: int = 0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        if self.engine == "onnx":
            return self.model.predict(x, batch_size=MAX_BATCH)
        if self._compiled is None:
            return self.calls.run(lambda: np.asarray(self.model.predict(x, batch_size=MAX_BATCH, verbose=0)),
                                  images=len(x))
        parts = []
        for start in range(0, len(x), MAX_BATCH):
            chunk = x[start:start + MAX_BATCH]
            size = next(s for s in BATCH_SIZES if s >= len(chunk))
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), 28, 28), np.float32)])
            # np.asarray waits for the result: JAX returns before the computation ends
            parts.append(self.calls.run(lambda: np.asarray(self._compiled(padded)), images=len(chunk))[:len(chunk)])
        return np.concatenate(parts) if parts else np.zeros((0, self.dataset.classes), np.float32)


@checked
def load_predictor(run_dir: str | Path | None = None, *, onnx: str | Path | None = None,
                   allow_incomplete: bool = False, model_timeout: float = MODEL_TIMEOUT,
                   progress: Callable[[str], None] | None = None) -> Predictor:
    """The model of a run directory (Keras), or of an exported ONNX file (onnxruntime alone);
    each call on a batch is stopped after `model_timeout` seconds. `progress` hears when a Keras
    model is loaded and each batch size it is compiled for, a line at a time."""
    if (run_dir is None) == (onnx is None):
        raise ConfigError("give a run directory or `onnx`, one of the two", terms=["onnx"])
    check_timeout(model_timeout)
    if onnx is not None:
        from fashionlab.onnxrun import OnnxModel

        # batches are small: more threads only spin, and take the CPU
        model = OnnxModel(onnx, threads=1, timeout=model_timeout)
        meta = model.metadata
        accuracy = meta.get("test_accuracy")
        accuracy = accuracy if isinstance(accuracy, float) and 0 <= accuracy <= 1 else None
        info = {"name": _text(meta.get("name")) or Path(onnx).stem, "run": _text(meta.get("run")),
                "source": str(onnx), "config": meta.get("config") if isinstance(meta.get("config"), dict) else {},
                "test_accuracy": accuracy}
        return Predictor(model, "onnx", info, model.dataset())
    run = Run.open(run_dir, allow_incomplete=allow_incomplete)
    metrics = run.metrics() if run.file("metrics.json").is_file() else {}
    info = {"name": run.name(), "run": run.path.name, "source": str(run.path), "config": run.shared_config(),
            "test_accuracy": metrics.get("test_accuracy")}
    began = time.perf_counter()
    model = run.load_model()
    if progress is not None:
        progress(f"loaded the model in {time.perf_counter() - began:.1f} s (Keras)")
    return Predictor(model, "keras", info, run.dataset(), timeout=model_timeout, progress=progress)


def _text(value: Any) -> str | None:
    """A piece of an ONNX file's metadata shown on the page: a short string, or nothing."""
    return printable(value) if isinstance(value, str) else None
