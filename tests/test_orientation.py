"""The orientation check (orientation.py): what its fit sees, and the weights shipped in the package."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import synthetic_arrays

from fashionlab.orientation import FITTED_ON, features, fit, load, scores


def lopsided(n: int = 40) -> np.ndarray:
    """Images unlike their own turns and mirror images: fake garments, a bar, a corner block."""
    images = synthetic_arrays(n_train=n, n_test=1)["train-images-idx3-ubyte"].copy()
    images[:, 20:26, 2:9] = 255
    return images


def test_the_check_turns_with_the_image_and_ignores_mirroring():
    """Fitted on every turn of every image and of its mirror image, the check's answer for an
    image turned a quarter is its answer for the image, moved on by a quarter; mirrored, the
    same, with the two quarter turns swapped."""
    weights = fit(lopsided())
    images = lopsided(12)
    plain = scores(images, weights)
    turned = scores(np.rot90(images, 1, axes=(1, 2)), weights)
    np.testing.assert_allclose(turned, plain[:, [3, 0, 1, 2]], atol=1e-3)
    mirrored = scores(images[:, :, ::-1], weights)
    np.testing.assert_allclose(mirrored, plain[:, [0, 3, 2, 1]], atol=1e-3)
    assert (plain.argmax(axis=1) == 0).all() and (turned.argmax(axis=1) == 1).all()


def test_features_are_products_of_coarse_blocks_fine_blocks_and_one():
    image = np.zeros((1, 28, 28), np.uint8)
    image[0, :4, :4] = 255  # the first 7 x 7 block and the first four 14 x 14 blocks, full
    row = features(image)[0]
    assert row.shape == (1422,) and row[-1] == 1
    assert row[0] == 1 and row[1:1225].sum() == 0  # its product with itself; no other block lit
    assert row[1225:1421].sum() == 4


@pytest.mark.realdata
def test_the_shipped_check_is_what_the_training_images_give(real_data):
    from fashionlab.data import load_file

    images = load_file(real_data.locate(), "train-images-idx3-ubyte", real_data.verify)[:FITTED_ON]
    np.testing.assert_allclose(fit(images), load("fashion-mnist"), rtol=1e-3, atol=1e-4)
