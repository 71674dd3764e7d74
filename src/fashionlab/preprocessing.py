"""The tutorial's StandardScaler, folded into the model so it can never be mislaid.

    layer = scaling_layer(fit_scaler(splits.x_train))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Scaler:
    """One mean and one standard deviation over all training pixels, as StandardScaler on x.reshape(-1, 1)."""

    mean: float
    std: float

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)


def fit_scaler(x_train: np.ndarray) -> Scaler:
    """Fit on the training images only: the population mean and std, as scikit-learn computes them."""
    x_train = np.asarray(x_train)
    if x_train.dtype == np.uint8 and x_train.size:
        # Exact integer sums, ~20x faster than float64 copies of 43M pixels.
        pixels = x_train.reshape(1, -1)
        n = pixels.size
        total = int(pixels.sum(dtype=np.int64))
        squares = int(np.einsum("ij,ij->", pixels, pixels, dtype=np.int64, casting="unsafe"))
        mean, std = total / n, math.sqrt(squares * n - total * total) / n
    else:
        pixels = np.asarray(x_train, dtype=np.float64)
        mean, std = float(pixels.mean()), float(pixels.std())
    return Scaler(mean=mean, std=std if std > 0 else 1.0)


LAYER_NAME = "standardize"


def scaling_layer(scaler: Scaler):
    """A parameter-free Rescaling layer computing (x - mean) / std on raw 0..255 pixels."""
    import keras

    return keras.layers.Rescaling(scale=1.0 / scaler.std, offset=-scaler.mean / scaler.std, name=LAYER_NAME)


def scaler_of(model) -> Scaler | None:
    """The scaler built into `model` by `scaling_layer`, or None for a model fed raw pixels."""
    layer = next((layer for layer in model.layers if layer.name == LAYER_NAME), None)
    if layer is None:
        return None
    return Scaler(mean=-layer.offset / layer.scale, std=1 / layer.scale)


WHITENING_SIZE = 2  # patches of 2 x 2 pixels, as airbench's first layer
WHITENING_EPSILON = 5e-4


def patch_whitening(x_train: np.ndarray, scaler: Scaler | None, images: int = 10_000):
    """The kernel (2, 2, 1, 8) of a frozen first convolution that whitens 2 x 2 patches: the
    eigenvectors of the patches' covariance over (at most `images`) standardized training images,
    each divided by the square root of its eigenvalue, and their negatives (an activation after
    it then keeps both signs). Computed from the training split alone."""
    k = WHITENING_SIZE
    x = np.asarray(x_train[:images], dtype=np.float64)
    if scaler is not None:
        x = (x - scaler.mean) / scaler.std
    patches = np.stack([x[:, i:x.shape[1] - k + 1 + i, j:x.shape[2] - k + 1 + j]
                        for i in range(k) for j in range(k)], axis=-1).reshape(-1, k * k)
    patches -= patches.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(patches.T @ patches / max(len(patches) - 1, 1))
    filters = eigenvectors / np.sqrt(np.maximum(eigenvalues, 0) + WHITENING_EPSILON)
    return np.concatenate([filters, -filters], axis=1).reshape(k, k, 1, 2 * k * k).astype(np.float32)
