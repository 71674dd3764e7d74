"""Prediction with a saved run or an exported ONNX file: test-set images by index, or your own
photos, prepared as `images` says.

    results = predict("runs/20260101-120000-tutorial", indices=[0, 1, 2], images=["shoe.jpg"], top_k=3)

Photos are also tried mirrored left to right when the data set's shoes all point one way
(Fashion-MNIST's point left), and the more confident reading is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fashionlab.arguments import checked
from fashionlab.data import DataSource
from fashionlab.datasets import BUILT_IN, FASHION_MNIST, MAX_CLASSES, Dataset
from fashionlab.deadlines import MODEL_TIMEOUT, check_timeout
from fashionlab.errors import ConfigError, RunError
from fashionlab.images import TRIM_LEVEL, read_image_file
from fashionlab.rundir import Run

# Below this top-1 probability a result carries a hint on what photos the model reads well.
LOW_CONFIDENCE = 0.5
MIRRORED_SHARE = 0.42  # a photo whose right half holds less of the garment than this may be mirrored


def blank_hint(dataset: Dataset) -> str:
    return f"no {dataset.subject} found: the image is blank or of one colour"


def low_confidence_hint(dataset: Dataset) -> str:
    return (f"low confidence: the model knows one {dataset.subject}, upright, centred on a plain background"
            f"{', shoes pointing left' if dataset.mirror_turned else ''}; crop to the {dataset.subject} and try again")


BLANK_HINT, LOW_CONFIDENCE_HINT = blank_hint(FASHION_MNIST), low_confidence_hint(FASHION_MNIST)


def top_k(proba: np.ndarray, k: int, class_names: Sequence[str]) -> list[dict[str, Any]]:
    order = np.argsort(-proba, kind="stable")[:k]
    return [{"class_id": int(i), "class_name": class_names[i], "probability": float(proba[i])} for i in order]


def facing_right(pixels: np.ndarray) -> np.ndarray:
    """Which images look turned the other way: the data set's shoes all point left, so their
    right half holds more of the garment (63-72 % on average, under 42 % in 1 test image of
    1,000); other garments are about even."""
    pixels = np.asarray(pixels, dtype=np.float64)
    right, total = pixels[:, :, 14:].sum(axis=(1, 2)), pixels.sum(axis=(1, 2))
    return right < MIRRORED_SHARE * np.maximum(total, 1)


def read_probabilities(model, pixels: np.ndarray, mirror: Sequence[bool] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Each image's class probabilities, and whether they come from its mirror image: an image
    flagged in `mirror` that looks turned the other way (`facing_right`) is also read flipped left
    to right, and the more confident reading kept."""
    from fashionlab.evaluation import predict_proba

    flags = np.zeros(len(pixels), dtype=bool)
    flags[:len(mirror)] = mirror
    flags &= facing_right(pixels)
    batch = np.concatenate([pixels, pixels[flags][:, :, ::-1]])
    proba = predict_proba(model, batch)
    if not np.isfinite(proba).all():
        raise RunError("the model gives probabilities that are not numbers (NaN or infinite); it is damaged, "
                       "train or export it again")
    proba, flipped = proba[:len(pixels)].copy(), proba[len(pixels):]
    mirrored = np.zeros(len(pixels), dtype=bool)
    where = np.flatnonzero(flags)
    better = flipped.max(axis=1) > proba[where].max(axis=1)
    proba[where[better]] = flipped[better]
    mirrored[where[better]] = True
    return proba, mirrored


def results_of(proba: np.ndarray, labels: Sequence[str], dataset: Dataset, k: int, mirrored: Sequence[bool] = (),
               pixels: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One result per image: the best class of `dataset`'s, its probability, the top k, and notes:
    read mirrored; a hint when the model is unsure, or when `pixels` (what it saw) hold nothing."""
    results = []
    for i, (label, row) in enumerate(zip(labels, proba)):
        best = top_k(row, k, dataset.class_names)
        result = {"input": label, "class_id": best[0]["class_id"], "class_name": best[0]["class_name"],
                  "probability": best[0]["probability"], "top_k": best}
        if i < len(mirrored) and mirrored[i]:
            result["mirrored"] = True
        if pixels is not None and pixels[i].max() <= TRIM_LEVEL:
            result["hint"] = blank_hint(dataset)
        elif best[0]["probability"] < LOW_CONFIDENCE:
            result["hint"] = low_confidence_hint(dataset)
        results.append(result)
    return results


def predict_arrays(model, pixels: np.ndarray, labels: Sequence[str], dataset: Dataset, k: int = 3,
                   mirror: Sequence[bool] = ()) -> list[dict[str, Any]]:
    """One result per image: the best class of `dataset`'s, its probability, and the top k (`read_probabilities`)."""
    proba, mirrored = read_probabilities(model, pixels, mirror)
    return results_of(proba, labels, dataset, k, mirrored, pixels)


@checked(top_k=(1, MAX_CLASSES))
def predict(run_dir: str | Path | None = None, *, indices: Sequence[int] = (), images: Sequence[str | Path] = (),
            top_k: int = 3, invert: bool | None = None, data: DataSource = DataSource(),
            allow_incomplete: bool = False, onnx: str | Path | None = None,
            model_timeout: float = MODEL_TIMEOUT) -> list[dict[str, Any]]:
    """Predict test images (by index) and image files with a run's saved model, or with an
    exported ONNX file (`onnx`, run by onnxruntime alone; then no `run_dir`; each of its calls is
    stopped after `model_timeout` seconds).

    `invert` None tells garment from background by colour; `data` is read only for `indices`.
    """
    if (run_dir is None) == (onnx is None):
        raise ConfigError("give a run directory or `onnx`, one of the two", terms=["onnx"])
    check_timeout(model_timeout)
    if onnx is not None:
        from fashionlab.onnxrun import OnnxModel

        model = OnnxModel(onnx, timeout=model_timeout)
        dataset = model.dataset()
        if indices and dataset.name not in BUILT_IN and data.data_dir is None:
            raise ConfigError(f"{onnx} was trained on a data set that is not built in: give `data_dir`, the folder "
                              f"of its test files, to predict by index", terms=["data_dir"])
    else:
        run = Run.open(run_dir, allow_incomplete=allow_incomplete)
        dataset = run.dataset()
    if top_k > dataset.classes:
        raise ConfigError(f"`top_k` must be between 1 and {dataset.classes}, got {top_k}", terms=["top_k"])
    arrays, labels, mirror = [], [], []
    if indices:
        x_test = data.of(dataset).test_images()
        for index in indices:
            if not 0 <= index < len(x_test):
                raise ConfigError(f"`indices` {index} is outside the test set (0..{len(x_test) - 1})",
                                  terms=["indices"])
            arrays.append(x_test[index])
            labels.append(f"test[{index}]")
            mirror.append(False)
    for path in images:
        prepared = read_image_file(path, invert)
        arrays.append(prepared.pixels)
        labels.append(str(path))
        mirror.append(dataset.mirror_turned and not prepared.as_is)
    if not arrays:
        raise ConfigError("nothing to predict: give `indices` and/or image files", terms=["indices"])
    if onnx is None:
        model = run.load_model()
    return predict_arrays(model, np.stack(arrays), labels, dataset, top_k, mirror)
