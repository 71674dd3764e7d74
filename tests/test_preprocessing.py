import keras
import numpy as np
import pytest

from fashionlab.preprocessing import Scaler, fit_scaler, scaler_of, scaling_layer


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
