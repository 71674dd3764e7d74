"""The layers fashionlab trains with: the same results as Keras' own, saved as Keras' own."""

import subprocess
import sys
import typing
import zipfile

import keras
import numpy as np
import pytest

from fashionlab.config import TrainConfig
from fashionlab.layers import BlockMaxPool2D, PatchConv2D, portable
from fashionlab.model import build_model
from fashionlab.preprocessing import Scaler


def test_patch_convolution_equals_conv2d_and_saves_as_conv2d(tmp_path):
    config = TrainConfig(model="cnn", filters=5, conv_blocks=3, convs_per_block=2, depth=1, width=8)  # 7 -> 3
    model = build_model(config, Scaler(72.9, 90.0))
    assert all(type(layer) is PatchConv2D for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    for layer in model.layers:  # non-zero biases too
        if isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(np.linspace(-1, 1, layer.filters))
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28)).astype("float32")
    plain = portable(model)
    assert [type(layer) for layer in plain.layers].count(keras.layers.Conv2D) == 6
    assert [type(layer) for layer in plain.layers].count(keras.layers.MaxPooling2D) == 3
    assert not any(isinstance(layer, (PatchConv2D, BlockMaxPool2D)) for layer in plain.layers)
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-6)
    plain.save(tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        declared = archive.read("config.json").decode()
    assert '"Conv2D"' in declared and '"MaxPooling2D"' in declared and "fashionlab>" not in declared
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-4, atol=1e-6)
    assert portable(build_model(TrainConfig(depth=1))).layers  # an mlp comes back as it is


def test_loading_a_model_file_imports_the_layers_not_the_model_builder(tmp_path):
    model = build_model(TrainConfig(model="cnn", filters=2, conv_blocks=1, convs_per_block=1, depth=1, width=4))
    model.save(tmp_path / "checkpoint.keras")  # a checkpoint holds the training layers
    code = ("import sys; from fashionlab.modelfiles import load_model_file; "
            f"m = load_model_file({str(tmp_path / 'checkpoint.keras')!r}); "
            "print(type(m.layers[1]).__name__, 'fashionlab.model' in sys.modules, 'fashionlab.config' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["PatchConv2D", "False", "False"], done.stderr


def numpy_view(images: np.ndarray, shift: int, mirror: bool) -> np.ndarray:
    """Images shifted `shift` pixels down and right (black where uncovered), then maybe mirrored."""
    out = np.zeros_like(images)
    s = abs(shift)
    if shift > 0:
        out[:, s:, s:] = images[:, :-s, :-s]
    elif shift < 0:
        out[:, :-s, :-s] = images[:, s:, s:]
    else:
        out = images.copy()
    return out[:, :, ::-1] if mirror else out


@pytest.mark.parametrize("tta, views", [
    ("mirror", [(0, False, 0.5), (0, True, 0.5)]),
    ("mirror-shift", [(0, False, 0.25), (0, True, 0.25), (1, False, 0.125), (1, True, 0.125),
                      (-1, False, 0.125), (-1, True, 0.125)]),
])
def test_test_time_augmentation_averages_each_images_views_and_training_sees_the_image(tta, views, tmp_path):
    """Inference: the weighted mean of the network's probabilities on each view, computed here with
    numpy shifts and mirrors; training: the network alone. The saved file keeps both layers."""
    config = TrainConfig(model="cnn", filters=3, conv_blocks=1, depth=1, width=8)
    plain, augmented = (build_model(config.replace(tta=choice), Scaler(72.9, 90.0)) for choice in ("none", tta))
    augmented.set_weights(plain.get_weights())
    x = np.random.default_rng(1).integers(0, 256, (5, 28, 28)).astype("float32")
    expected = sum(weight * np.asarray(plain(numpy_view(x, shift, mirror))) for shift, mirror, weight in views)
    got = np.asarray(augmented(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, np.asarray(plain(x)), atol=1e-4)  # the views count
    np.testing.assert_allclose(np.asarray(augmented(x, training=True)), np.asarray(plain(x, training=True)),
                               rtol=1e-5, atol=1e-6)
    portable(augmented).save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    # (training moved the BN statistics of both: compare with the model as it is now)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(augmented(x)), rtol=1e-5, atol=1e-6)


def test_the_config_counts_each_test_time_choice_as_the_layers_view_it():
    """config.TTA_VIEW_COUNT (the FLOP and memory estimates; config imports no Keras) against the views."""
    from fashionlab.config import TTA_VIEW_COUNT, TestTime
    from fashionlab.layers import TTA_VIEWS

    assert set(TTA_VIEW_COUNT) == set(typing.get_args(TestTime)) == {"none", *TTA_VIEWS}
    assert TTA_VIEW_COUNT == {"none": 1, **{name: len(views) for name, views in TTA_VIEWS.items()}}
    assert all(sum(weight for *_, weight in views) == 1 for views in TTA_VIEWS.values())
