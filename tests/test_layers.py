"""The layers fashionlab trains with: the same results as Keras' own, saved as Keras' own."""

import subprocess
import sys
import zipfile

import keras
import numpy as np

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
