"""A run's model as an MLflow model (the pyfunc flavour, with this module as its loader): what
`train --mlflow` logs as each run's "model" artifact.

    model = mlflow.pyfunc.load_model("runs:/<run id>/model")
    probabilities = model.predict(x_test[:5])   # raw pixels, N x 28 x 28 (or N x 784), 0..255

It answers N x classes probabilities, in the order of the class names its metadata lists, as
`fashionlab predict` computes them (the model file holds its scaler and test-time views). It loads
the model file through `modelfiles.load_model_file` (bounded, Keras' safe mode), so it needs
fashionlab installed where it runs: `mlflow models serve -m runs:/<id>/model --env-manager local`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fashionlab.errors import ImageError
from fashionlab.evaluation import PREDICT_BATCH
from fashionlab.images import raw_pixels
from fashionlab.modelfiles import load_model_file
from fashionlab.rundir import Run

MAX_IMAGES = 100_000  # one predict call
INPUT = "raw pixels, N x 28 x 28 or N x 784, numbers from 0 to 255 (light on black, as the data set's)"


def save(run: Run, path: Path) -> Path:
    """The run's model.keras saved at `path` as an MLflow model: what it takes and answers, its data
    set's class names in its metadata, the packages it loads with. No signature: MLflow would enforce
    its one dtype and shape, refusing the data set's own uint8 images and N x 784 tables, which
    `images.raw_pixels` takes and checks."""
    import mlflow.pyfunc

    dataset = run.dataset()
    mlflow.pyfunc.save_model(str(path), loader_module=__name__, data_path=str(run.file("model.keras")),
                             pip_requirements=requirements(),
                             metadata={"class_names": list(dataset.class_names), "dataset": dataset.name,
                                       "run": run.path.name, "input": INPUT,
                                       "output": f"probabilities, N x {dataset.classes}, in the class names' order"})
    return path


def requirements() -> list[str]:
    """The packages the model loads with, at the versions that saved it."""
    from fashionlab.provenance import library_versions

    versions = library_versions()
    return [f"{package}=={versions[package]}" for package in ("fashionlab", "keras", "jax", "jaxlib", "numpy")
            if package in versions]


class PixelModel:
    """What MLflow's pyfunc wraps: predict(raw pixels) -> probabilities."""

    def __init__(self, path: Path):
        self.model = load_model_file(path)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        try:
            pixels = raw_pixels(model_input, most=MAX_IMAGES)
        except ImageError as exc:
            from mlflow.exceptions import INVALID_PARAMETER_VALUE, MlflowException

            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return np.asarray(self.model.predict(pixels, batch_size=PREDICT_BATCH, verbose=0), dtype=np.float32)


def _load_pyfunc(data_path: str) -> PixelModel:
    """MLflow's entry point for a loader module: the model file it saved with the model."""
    path = Path(data_path)
    return PixelModel(path if path.suffix == ".keras" else path / "model.keras")
