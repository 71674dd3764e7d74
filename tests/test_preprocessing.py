import keras
import numpy as np
import pytest

from fashionlab.preprocessing import Scaler, fit_scaler, patch_whitening, scaler_of, scaling_layer


def test_scaler_is_one_mean_and_std_over_all_pixels():
    x = np.array([[[0, 255]], [[10, 20]]], dtype=np.uint8)
    scaler = fit_scaler(x)
    assert scaler.mean == pytest.approx(71.25)
    assert scaler.std == pytest.approx(np.std([0, 255, 10, 20]))
    scaled = scaler.transform(x)
    assert scaled.dtype == np.float32
    assert scaled.mean() == pytest.approx(0, abs=1e-6) and scaled.std() == pytest.approx(1, abs=1e-6)


def test_constant_images_do_not_divide_by_zero():
    assert fit_scaler(np.full((2, 28, 28), 7, np.uint8)).std == 1.0


def test_rescaling_layer_matches_the_scaler_without_parameters():
    scaler = Scaler(mean=72.94, std=90.02)
    layer = scaling_layer(scaler)
    x = np.arange(0, 256, dtype=np.float32).reshape(1, 16, 16)
    np.testing.assert_allclose(np.asarray(layer(x)), scaler.transform(x), rtol=1e-5, atol=1e-5)
    assert layer.count_params() == 0


def test_the_scaler_is_read_back_from_the_model():
    scaler = Scaler(mean=72.94, std=90.02)
    model = keras.Sequential([keras.Input((28, 28)), scaling_layer(scaler), keras.layers.Flatten()])
    found = scaler_of(model)
    assert found.mean == pytest.approx(scaler.mean) and found.std == pytest.approx(scaler.std)
    assert scaler_of(keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten()])) is None


@pytest.mark.realdata
def test_tutorial_scaled_range(real_data):
    splits = real_data.splits()
    scaled = fit_scaler(splits.x_train).transform(splits.x_train)
    assert float(scaled.max()) == pytest.approx(2.0231433, abs=1e-6)
    assert float(scaled.min()) == pytest.approx(-0.8105136, abs=1e-6)


def test_patch_whitening_makes_the_training_patches_uncorrelated_with_unit_variance():
    """The kernel's first four filters applied to every 2 x 2 patch of the (standardized) images
    give features of covariance ~ identity; the other four are their negatives."""
    rng = np.random.default_rng(0)
    base = rng.normal(100, 40, (300, 28, 28))
    images = np.clip(base + np.roll(base, 1, axis=2) + 0.5 * np.roll(base, 1, axis=1), 0, 255).astype(np.uint8)
    scaler = fit_scaler(images)
    kernel = patch_whitening(images, scaler)
    assert kernel.shape == (2, 2, 1, 8) and kernel.dtype == np.float32
    np.testing.assert_allclose(kernel[..., 4:], -kernel[..., :4])
    x = (images.astype(np.float64) - scaler.mean) / scaler.std
    patches = np.stack([x[:, i:27 + i, j:27 + j] for i in range(2) for j in range(2)], axis=-1).reshape(-1, 4)
    features = patches @ kernel[..., :4].reshape(4, 4).astype(np.float64)
    np.testing.assert_allclose(np.cov(features, rowvar=False), np.eye(4), atol=0.02)
    assert not np.allclose(np.cov(patches, rowvar=False), np.eye(4), atol=0.1)  # they were correlated
