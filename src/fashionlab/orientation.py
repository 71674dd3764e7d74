"""Which way up a 28 x 28 image is: a check fitted on a data set's training images and their
quarter turns, shipped in this package for the data sets whose images are all upright.

    scores(pixels, load("fashion-mnist"))   # (N, 4): how much each image looks turned by 0, 90, 180, 270

The check is linear in the products of the image's 7 x 7 block means (its coarse shape, two blocks
at a time) and its 14 x 14 block means, fitted by ridge regression onto which of the four turns an
image is (closed form: no seed, the same weights from the same images; `scripts/fit_orientation.py`
writes them into orientation/, and a test fits them again and compares). On Fashion-MNIST's test
images it names the turn of 92 % of them, each turn and its mirror image alike (`fit` sees the four
turns of each image and of its mirror image, so the check turns with the image, and a shoe pointing
right is as upright as one pointing left).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

FITTED_ON = 20_000  # the first this many training images, and their turns and mirror images
RIDGE = 1.0
_PAIRS = np.triu_indices(49)


def features(pixels: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 1422) float32: products of pairs of 7 x 7 block means, the 14 x 14
    block means, and 1."""
    x = np.asarray(pixels, dtype=np.float32).reshape(-1, 28, 28) / 255
    fine = x.reshape(len(x), 14, 2, 14, 2).mean(axis=(2, 4)).reshape(len(x), -1)
    coarse = x.reshape(len(x), 7, 4, 7, 4).mean(axis=(2, 4)).reshape(len(x), -1)
    pairs = (coarse[:, :, None] * coarse[:, None, :])[:, _PAIRS[0], _PAIRS[1]]
    return np.concatenate([pairs, fine, np.ones((len(x), 1), np.float32)], axis=1)


def fit(images: np.ndarray) -> np.ndarray:
    """The check's weights (1422, 4) from upright images: each seen turned by 0, 90, 180, 270 degrees
    anticlockwise, and mirrored left to right too (a shoe pointing the other way is still upright),
    the target which of the four turns."""
    both = np.concatenate([images, images[:, :, ::-1]])
    rows = np.concatenate([features(np.rot90(both, turn, axes=(1, 2))) for turn in range(4)])
    targets = np.repeat(np.eye(4, dtype=np.float32), len(both), axis=0)
    gram = rows.T.astype(np.float64) @ rows + RIDGE * np.eye(rows.shape[1])
    return np.linalg.solve(gram, rows.T.astype(np.float64) @ targets).astype(np.float32)


def weights_path(name: str) -> Path:
    return Path(__file__).with_name("orientation") / f"{name}.npy"


def load(name: str) -> np.ndarray:
    """The weights shipped for a data set (`Dataset.name`)."""
    return np.load(weights_path(name), allow_pickle=False)


def scores(pixels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(N, 4): how much each image looks turned by 0, 90, 180 and 270 degrees anticlockwise (about 1
    for the turn it is, 0 for the others)."""
    return features(pixels) @ weights
