"""Whether a model's probabilities mean what they say, and temperature scaling to make them.

    calibration = reliability(y_true, proba)      # {"ece": 0.031, "bins": [{"low": 0.9, ...}, ...]}
    fitted = temperature_scale(model, x_valid, y_valid)   # the last layer's logits divided by fitted.temperature

A model is calibrated when, of the images it gives 80 % to, 80 % are right. The expected calibration
error (ECE) is the gap between confidence (the top probability) and accuracy, averaged over
BINS equal-width confidence bins weighted by their images (Guo et al., 2017, "On Calibration of
Modern Neural Networks"); the reliability diagram draws each bin's accuracy against its confidence.
Temperature scaling divides the logits by one number T fitted on the validation split (its
cross-entropy minimized): the classes' order, so the accuracy, stays (with test-time views, whose
softened probabilities are averaged, it may change slightly); T > 1 softens an overconfident model,
T < 1 sharpens an underconfident one (label smoothing makes them so). T is folded into the
last Dense layer's weights, so the saved model, its ONNX export and everything that serves it give
the calibrated probabilities with no layer added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

BINS = 15
CLASSES_LAYER = "classes"  # the last Dense layer (softmax) of every network fashionlab builds
TEMPERATURES = (0.05, 20.0)  # the range searched; a fitted value at either end says so in the report


def reliability(y_true: np.ndarray, proba: np.ndarray, bins: int = BINS) -> dict[str, Any]:
    """The expected calibration error of `proba` on labels `y_true`, and its reliability bins: each
    non-empty bin's confidence range, image count, mean confidence and accuracy."""
    y_true = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(axis=1) if len(proba) else np.zeros(0)
    right = proba.argmax(axis=1) == y_true if len(proba) else np.zeros(0, dtype=bool)
    # bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of 0 goes in the first
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        count = int(inside.sum())
        if not count:
            continue
        mean_confidence, accuracy = float(confidence[inside].mean()), float(right[inside].mean())
        ece += count * abs(accuracy - mean_confidence)
        rows.append({"low": b / bins, "high": (b + 1) / bins, "count": count,
                     "confidence": min(mean_confidence, 1.0), "accuracy": accuracy})
    return {"ece": float(ece / max(len(y_true), 1)), "bins": rows}


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = BINS) -> float:
    return reliability(y_true, proba, bins)["ece"]


def cross_entropy(y_true: np.ndarray, proba: np.ndarray, epsilon: float = 1e-7) -> float:
    """Keras' sparse categorical cross-entropy on probabilities (normalized, clipped to
    [epsilon, 1 - epsilon]), in NumPy: the same number without compiling a backend kernel."""
    p = np.asarray(proba, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)
    picked = np.clip(p[np.arange(len(y_true)), y_true], epsilon, 1 - epsilon)
    return float(-np.log(picked).mean()) if len(y_true) else 0.0


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Logits:
    """What a model computes before its softmax, for a set of images: the last Dense layer's logits
    (one row per test-time view of each image) and how the views' probabilities become the model's
    (`average`: its TestTimeMean layer; None: one view)."""

    values: np.ndarray
    average: Any = None

    def proba(self, temperature: float = 1.0) -> np.ndarray:
        scaled = _softmax(self.values / temperature)
        if self.average is None:
            return scaled
        return np.asarray(self.average(scaled.astype(np.float32)), dtype=np.float64)


def logits_of(model, x: np.ndarray, batch_size: int = 1000) -> Logits:
    """The logits of the model's last Dense layer for images `x` (raw pixels), in float64."""
    import keras

    layer = classes_layer(model)
    position = model.layers.index(layer)
    features = keras.Model(model.inputs, layer.input)
    hidden = np.asarray(features.predict(np.asarray(x, dtype=np.float32), batch_size=batch_size, verbose=0),
                        dtype=np.float64)
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in layer.get_weights())
    after = model.layers[position + 1:]
    return Logits(hidden @ kernel + bias, after[0] if after else None)


def classes_layer(model):
    """The model's last Dense layer, whose softmax gives the class probabilities."""
    import keras

    layer = next((layer for layer in model.layers if layer.name == CLASSES_LAYER), None)
    if not isinstance(layer, keras.layers.Dense) or layer.get_config().get("activation") != "softmax":
        raise ValueError("temperature scaling needs a network fashionlab built: a last Dense layer named "
                         f"{CLASSES_LAYER!r} with a softmax")
    return layer


def fit_temperature(logits: Logits, y_true: np.ndarray) -> float:
    """The temperature (within TEMPERATURES) that minimizes the cross-entropy of `logits` on `y_true`."""
    from scipy.optimize import minimize_scalar

    y_true = np.asarray(y_true, dtype=np.int64)
    low, high = np.log(TEMPERATURES)
    found = minimize_scalar(lambda log_t: cross_entropy(y_true, logits.proba(float(np.exp(log_t)))),
                            bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


@dataclass(frozen=True)
class Scaled:
    """A temperature fitted on the validation split and folded into a model, and the validation
    split's cross-entropy and ECE before and after."""

    temperature: float
    val_loss_before: float
    val_loss_after: float
    val_ece_before: float
    val_ece_after: float

    def record(self) -> dict[str, float]:
        return {"temperature": self.temperature, "val_loss_before": self.val_loss_before,
                "val_loss_after": self.val_loss_after, "val_ece_before": self.val_ece_before,
                "val_ece_after": self.val_ece_after}


def temperature_scale(model, x_valid: np.ndarray, y_valid: np.ndarray) -> Scaled:
    """Fit a temperature on (x_valid, y_valid) and fold it into `model`'s last Dense layer (its
    kernel and bias divided by it): from now on the model gives softmax(logits / T)."""
    logits = logits_of(model, x_valid)
    temperature = fit_temperature(logits, y_valid)
    before, after = logits.proba(), logits.proba(temperature)
    layer = classes_layer(model)
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel / np.float32(temperature), bias / np.float32(temperature)])
    return Scaled(temperature, cross_entropy(y_valid, before), cross_entropy(y_valid, after),
                  expected_calibration_error(y_valid, before), expected_calibration_error(y_valid, after))
