"""Prediction with a saved run or an exported ONNX file: test-set images by index, or your own
photos, prepared as `images` says.

    results = predict("runs/20260101-120000-tutorial", indices=[0, 1, 2], images=["shoe.jpg"], top_k=3)

A photo in which no garment is found gets no class, and says why. A photo on its side is turned
upright when the data set's images are all upright (an orientation check fitted on its training
images says which way up it is), or said to be maybe not upright; it is also tried mirrored left to
right when the data set's shoes all point one way (Fashion-MNIST's point left), and the mirrored
reading kept when more confident and of a shoe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fashionlab.arguments import checked
from fashionlab.data import DataSource
from fashionlab.datasets import BUILT_IN, FASHION_MNIST, MAX_CLASSES, Dataset
from fashionlab.deadlines import MODEL_TIMEOUT, check_timeout
from fashionlab.errors import ConfigError, RunError
from fashionlab.images import read_image_file
from fashionlab.rundir import Run
from fashionlab.uncertainty import MAX_PASSES

# Below this top-1 probability a result carries a hint on what photos the model reads well.
LOW_CONFIDENCE = 0.5
MIRRORED_SHARE = 0.42  # a photo whose right half holds less of the garment than this may be mirrored
# The orientation check (`orientation.scores`, about 1 for an image's turn, 0 for the others) turns a
# photo back when a quarter turn beats upright by more than TURN_MARGIN, and says it may not be upright
# when another turn beats upright by more than DOUBT_MARGIN. On the first 3,000 test images: upright
# (or mirrored) ones are turned in 1.0 % and doubted in 5.2 %; turned a quarter either way, 89 % are
# turned back upright and 95 % turned back or doubted.
TURN_MARGIN = 0.3
DOUBT_MARGIN = 0.05


def missing_hint(dataset: Dataset, missing: str) -> str:
    """Why no class is given: nothing found of the data set's subject."""
    if missing == "blank":
        return f"no {dataset.subject} found: the image is blank or of one colour"
    return (f"no {dataset.subject} found: nothing stands out from the background as one shape (too faint, or noise "
            f"or texture all over); photograph one {dataset.subject} on a plain background of another colour")


def blank_hint(dataset: Dataset) -> str:
    return missing_hint(dataset, "blank")


def low_confidence_hint(dataset: Dataset, facing: bool = False) -> str:
    """What photos the model reads well; shoes pointing left only when `facing` (the best reading is a shoe)."""
    return (f"low confidence: the model knows one {dataset.subject}, upright, centred on a plain background"
            f"{', shoes pointing left' if facing else ''}; crop to the {dataset.subject} and try again")


def doubt_hint(dataset: Dataset) -> str:
    return (f"this {dataset.subject} may not be upright: the model knows upright ones only; turn the photo and try "
            f"again")


BLANK_HINT, LOW_CONFIDENCE_HINT = blank_hint(FASHION_MNIST), low_confidence_hint(FASHION_MNIST)
NOTHING_HINT = missing_hint(FASHION_MNIST, "shapeless")


@dataclass(frozen=True)
class Readings:
    """What the model read in each image, and how: mirrored, turned back (degrees anticlockwise), or
    read as it is though it may not be upright (`doubtful`); with MC dropout, `proba` is the mean of
    the passes and `spread` each class probability's standard deviation over them."""

    proba: np.ndarray
    mirrored: np.ndarray
    turned: np.ndarray
    doubtful: np.ndarray
    spread: np.ndarray | None = None

    def rows(self, start: int, end: int) -> Readings:
        return Readings(self.proba[start:end], self.mirrored[start:end], self.turned[start:end],
                        self.doubtful[start:end], None if self.spread is None else self.spread[start:end])


def top_k(proba: np.ndarray, k: int, class_names: Sequence[str], spread: np.ndarray | None = None
          ) -> list[dict[str, Any]]:
    order = np.argsort(-proba, kind="stable")[:k]
    return [{"class_id": int(i), "class_name": class_names[i], "probability": float(proba[i]),
             **({} if spread is None else {"spread": float(spread[i])})} for i in order]


def facing_right(pixels: np.ndarray) -> np.ndarray:
    """Which images look turned the other way: the data set's shoes all point left, so their
    right half holds more of the garment (63-72 % on average, under 42 % in 1 test image of
    1,000); other garments are about even."""
    pixels = np.asarray(pixels, dtype=np.float64)
    right, total = pixels[:, :, 14:].sum(axis=(1, 2)), pixels.sum(axis=(1, 2))
    return right < MIRRORED_SHARE * np.maximum(total, 1)


def upright_turns(pixels: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """For each image, the quarter turns (0, 1 or 3) anticlockwise that make it upright, by the
    orientation check's `weights` (None: none, every image taken as upright), and whether it may not
    be upright though it is not turned."""
    from fashionlab.orientation import scores

    if weights is None or not len(pixels):
        return np.zeros(len(pixels), dtype=int), np.zeros(len(pixels), dtype=bool)
    score = scores(pixels, weights)
    looks, beyond = score.argmax(axis=1), score.max(axis=1) - score[:, 0]
    on_side = ((looks == 1) | (looks == 3)) & (beyond > TURN_MARGIN)
    turns = np.where(on_side, (4 - looks) % 4, 0)
    return turns, (looks != 0) & ~on_side & (beyond > DOUBT_MARGIN)


def read_probabilities(model, pixels: np.ndarray, mirror: Sequence[bool] = (), facing: Sequence[int] | None = None,
                       upright: np.ndarray | None = None, passes: int | None = None) -> Readings:
    """Each image's class probabilities, and how they were read. An image flagged in `mirror` (a
    photo) is first turned upright when the orientation check (`upright`, its weights) says it lies
    on its side (`upright_turns`); when it then looks turned the other way (`facing_right`) it is also
    read flipped left to right, and that reading kept when more confident and of a class in `facing`
    (None: any). With `passes`, the model is read that many times with its dropout on
    (`model.samples`: an `uncertainty.DropoutSampler`, or the server's predictor): the mean, and the spread."""

    flags = np.zeros(len(pixels), dtype=bool)
    flags[:len(mirror)] = mirror
    turns, doubtful = upright_turns(pixels[flags], upright)
    pixels = np.array(pixels, copy=True)
    for turn in (1, 3):
        where = np.flatnonzero(flags)[turns == turn]
        pixels[where] = np.rot90(pixels[where], turn, axes=(1, 2))
    flipping = flags & facing_right(pixels) & (facing is None or len(facing) > 0)
    batch = np.concatenate([pixels, pixels[flipping][:, :, ::-1]])
    proba, spread = _read(model, batch, passes)
    proba, flipped = proba[:len(pixels)].copy(), proba[len(pixels):]
    where = np.flatnonzero(flipping)
    better = flipped.max(axis=1) > proba[where].max(axis=1)
    if facing is not None:
        better &= np.isin(flipped.argmax(axis=1), facing)
    proba[where[better]] = flipped[better]
    if spread is not None:
        spread, flipped_spread = spread[:len(pixels)].copy(), spread[len(pixels):]
        spread[where[better]] = flipped_spread[better]
    mirrored = np.zeros(len(pixels), dtype=bool)
    mirrored[where[better]] = True
    turned, doubt = np.zeros(len(pixels), dtype=int), np.zeros(len(pixels), dtype=bool)
    turned[flags], doubt[flags] = 90 * turns, doubtful
    return Readings(proba, mirrored, turned, doubt, spread)


def _read(model, batch: np.ndarray, passes: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's probabilities for `batch`, and with `passes` (MC dropout) their spread, checked finite."""
    from fashionlab.evaluation import predict_proba

    if passes:
        samples = model.samples(batch, passes)
        proba, spread = samples.mean(axis=0), samples.std(axis=0)
    else:
        proba, spread = predict_proba(model, batch), None
    if not np.isfinite(proba).all():
        raise RunError("the model gives probabilities that are not numbers (NaN or infinite); it is damaged, "
                       "train or export it again")
    return proba, spread


def results_of(readings: Readings, labels: Sequence[str], dataset: Dataset, k: int,
               missing: Sequence[str | None] = ()) -> list[dict[str, Any]]:
    """One result per image: the best class of `dataset`'s, its probability, the top k, and notes
    where they apply: read mirrored or turned, may not be upright, a hint when the model is unsure;
    no class at all, and why, for an image in which no garment was found (`missing`)."""
    results = []
    for i, (label, row) in enumerate(zip(labels, readings.proba)):
        if i < len(missing) and missing[i]:
            results.append({"input": label, "class_id": None, "class_name": None, "probability": None, "top_k": [],
                            "hint": missing_hint(dataset, missing[i])})
            continue
        spread = None if readings.spread is None else readings.spread[i]
        best = top_k(row, k, dataset.class_names, spread)
        result = {"input": label, "class_id": best[0]["class_id"], "class_name": best[0]["class_name"],
                  "probability": best[0]["probability"], "top_k": best}
        if spread is not None:
            result["spread"] = best[0]["spread"]
        if readings.mirrored[i]:
            result["mirrored"] = True
        if readings.turned[i]:
            result["turned"] = int(readings.turned[i])
        if readings.doubtful[i]:
            result["upright"] = False
            result["hint"] = doubt_hint(dataset)
        elif best[0]["probability"] < LOW_CONFIDENCE:
            result["hint"] = low_confidence_hint(dataset, best[0]["class_name"] in dataset.facing)
        results.append(result)
    return results


def orientation_of(dataset: Dataset) -> np.ndarray | None:
    """The orientation check shipped for a data set whose images are all upright; None for others."""
    from fashionlab.orientation import load

    return load(dataset.name) if dataset.upright else None


def facing_ids(dataset: Dataset) -> list[int]:
    return [dataset.class_names.index(name) for name in dataset.facing if name in dataset.class_names]


def predict_arrays(model, pixels: np.ndarray, labels: Sequence[str], dataset: Dataset, k: int = 3,
                   mirror: Sequence[bool] = (), missing: Sequence[str | None] = (),
                   passes: int | None = None) -> list[dict[str, Any]]:
    """One result per image: the best class of `dataset`'s, its probability, and the top k
    (`read_probabilities`: photos flagged in `mirror` turned upright and mirrored as `dataset` says;
    with `passes`, MC dropout's mean and spread)."""
    readings = read_probabilities(model, pixels, mirror, facing_ids(dataset), orientation_of(dataset), passes)
    return results_of(readings, labels, dataset, k, missing)


def _check_sampled(run: Run) -> None:
    """Refuse MC dropout for a run whose model has no dropout to sample, before anything is read."""
    if run.is_ensemble():
        raise ConfigError(f"{run.path} is an ensemble: MC dropout samples one run's model (its members' "
                          f"spread is the ensemble's own uncertainty)", terms=["mc_dropout"])
    if not (run.config().dropout or run.config().alpha_dropout):
        from fashionlab.uncertainty import no_dropout

        raise no_dropout(str(run.path))


@checked(top_k=(1, MAX_CLASSES), mc_dropout=(2, MAX_PASSES))
def predict(run_dir: str | Path | None = None, *, indices: Sequence[int] = (), images: Sequence[str | Path] = (),
            top_k: int = 3, invert: bool | None = None, data: DataSource = DataSource(),
            allow_incomplete: bool = False, onnx: str | Path | None = None,
            model_timeout: float = MODEL_TIMEOUT, mc_dropout: int | None = None) -> list[dict[str, Any]]:
    """Predict test images (by index) and image files with a run's saved model, or with an
    exported ONNX file (`onnx`, run by onnxruntime alone; then no `run_dir`; each of its calls is
    stopped after `model_timeout` seconds).

    `invert` None tells garment from background by colour; `data` is read only for `indices`;
    `mc_dropout` N averages N passes with the run's dropout on (`uncertainty`), each result then
    giving the spread (standard deviation) of its probabilities over them.
    """
    if (run_dir is None) == (onnx is None):
        raise ConfigError("give a run directory or `onnx`, one of the two", terms=["onnx"])
    check_timeout(model_timeout)
    if mc_dropout is not None and onnx is not None:
        raise ConfigError("an ONNX file computes the model with its dropout off: give the run directory for "
                          "`mc_dropout`", terms=["mc_dropout", "onnx"])
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
        if mc_dropout is not None:
            _check_sampled(run)
    if top_k > dataset.classes:
        raise ConfigError(f"`top_k` must be between 1 and {dataset.classes}, got {top_k}", terms=["top_k"])
    arrays, labels, mirror, missing = [], [], [], []
    if indices:
        x_test = data.of(dataset).test_images()
        for index in indices:
            if not 0 <= index < len(x_test):
                raise ConfigError(f"`indices` {index} is outside the test set (0..{len(x_test) - 1})",
                                  terms=["indices"])
            arrays.append(x_test[index])
            labels.append(f"test[{index}]")
            mirror.append(False)
            missing.append(None)
    for path in images:
        prepared = read_image_file(path, invert)
        arrays.append(prepared.pixels)
        labels.append(str(path))
        mirror.append(not prepared.as_is)
        missing.append(prepared.missing)
    if not arrays:
        raise ConfigError("nothing to predict: give `indices` and/or image files", terms=["indices"])
    if onnx is None:
        model = run.load_model()
        if mc_dropout is not None:
            from fashionlab.uncertainty import DropoutSampler

            model = DropoutSampler(model, what=str(run.path))
    return predict_arrays(model, np.stack(arrays), labels, dataset, top_k, mirror, missing, mc_dropout)
