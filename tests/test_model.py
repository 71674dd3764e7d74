
import keras
import numpy as np
import pytest
from helpers import TINY

from fashionlab.config import TrainConfig, parameter_estimate
from fashionlab.model import (
    build_model,
    build_network,
    learning_rate,
    one_hot_targets,
    parameter_counts,
    set_whitening,
    summary_text,
)
from fashionlab.preprocessing import Scaler


def layer_names(config: TrainConfig) -> list[str]:
    return [type(layer).__name__ for layer in build_network(config).layers]


@pytest.mark.parametrize("batch_norm", ["after", "before"])
def test_tutorial_parameter_counts(batch_norm):
    counts = parameter_counts(build_network(TrainConfig(batch_norm=batch_norm), Scaler(72.9, 90.0)))
    assert counts == {"total": 279_410, "trainable": 275_410, "non_trainable": 4_000}


def test_plain_network_has_no_batch_norm():
    model = build_network(TrainConfig(batch_norm="none"))
    assert parameter_counts(model) == {"total": 271_410, "trainable": 271_410, "non_trainable": 0}
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_layer_order_follows_the_batch_norm_choice():
    assert layer_names(TrainConfig(depth=1, batch_norm="after")) == ["Flatten", "Dense", "BatchNormalization", "Dense"]
    assert layer_names(TrainConfig(depth=1, batch_norm="before")) == \
        ["Flatten", "Dense", "BatchNormalization", "Activation", "Dense"]


def test_dropout_follows_each_hidden_block_and_alpha_dropout_replaces_it():
    assert layer_names(TrainConfig(depth=2, batch_norm="none", dropout=0.2)) == \
        ["Flatten", "Dense", "Dropout", "Dense", "Dropout", "Dense"]
    selu = build_network(TrainConfig(depth=1, batch_norm="none", activation="selu", kernel_initializer="lecun_normal",
                                     alpha_dropout=0.1))
    assert [type(layer).__name__ for layer in selu.layers] == ["Flatten", "Dense", "AlphaDropout", "Dense"]
    assert selu.layers[2].rate == pytest.approx(0.1)
    assert selu.layers[1].activation.__name__ == "selu"
    assert type(selu.layers[1].kernel_initializer).__name__ == "LecunNormal"


def test_cnn_blocks_double_their_filters_and_halve_the_image():
    config = TrainConfig(model="cnn", filters=8, conv_blocks=2, convs_per_block=2, depth=1, width=16,
                         batch_norm="before", dropout=0.25)
    model = build_network(config, Scaler(72.9, 90.0))
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [c.filters for c in convs] == [8, 8, 16, 16]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert sum(isinstance(layer, keras.layers.MaxPooling2D) for layer in model.layers) == 2
    assert sum(isinstance(layer, keras.layers.Dropout) for layer in model.layers) == 3  # 2 blocks + 1 Dense
    flatten = next(layer for layer in model.layers if isinstance(layer, keras.layers.Flatten))
    assert flatten.output.shape == (None, 7 * 7 * 16)
    assert model.output_shape == (None, 10)
    proba = np.asarray(model(np.zeros((2, 28, 28), np.float32)))
    assert proba.shape == (2, 10) and np.allclose(proba.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("config", [
    TrainConfig(),
    TrainConfig(depth=0),
    TrainConfig(depth=3, width=7, batch_norm="before"),
    TrainConfig(model="cnn", depth=0, filters=4, conv_blocks=3),
    TrainConfig(model="cnn", depth=2, width=9, filters=5, conv_blocks=4, convs_per_block=3, batch_norm="none"),
    TrainConfig(model="cnn", depth=1, width=3, filters=2, conv_blocks=1, batch_norm="after"),
])
def test_parameter_estimate_matches_the_built_network(config):
    assert parameter_estimate(config) == parameter_counts(build_network(config))["total"]


def test_compiled_as_the_tutorial_and_summary_totals():
    model = build_model(TrainConfig(), Scaler(0.0, 1.0))
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)
    assert not one_hot_targets(model)
    text = summary_text(model)
    for line in ("Total params: 279,410", "Trainable params: 275,410", "Non-trainable params: 4,000"):
        assert line in text
    adam = build_model(TrainConfig(optimizer="adam", learning_rate=0.003)).optimizer
    assert type(adam) is keras.optimizers.Adam and float(adam.learning_rate) == pytest.approx(0.003)


def test_optimizer_options_reach_the_optimizer():
    sgd = build_model(TrainConfig(momentum=0.9, weight_decay=1e-4)).optimizer
    assert sgd.momentum == pytest.approx(0.9) and sgd.nesterov and sgd.weight_decay == pytest.approx(1e-4)
    adamw = build_model(TrainConfig(optimizer="adamw", weight_decay=0.05)).optimizer
    assert isinstance(adamw, keras.optimizers.AdamW) and adamw.weight_decay == pytest.approx(0.05)


def test_label_smoothing_trains_on_smoothed_one_hot_targets():
    model = build_model(TrainConfig(depth=1, label_smoothing=0.1))
    assert one_hot_targets(model) and model.loss.label_smoothing == pytest.approx(0.1)
    proba = np.full((1, 10), 0.1, np.float32)
    proba[0, 3] = 0.1
    target = keras.ops.one_hot(np.array([3]), 10)
    # against a uniform prediction the smoothed loss is still log 10
    assert float(model.loss(target, proba)) == pytest.approx(np.log(10), rel=1e-4)


def rates(config: TrainConfig, steps: int, at: list[int]) -> list[float]:
    schedule = learning_rate(config, steps)
    return [float(schedule(step)) if callable(schedule) else schedule for step in at]


def test_schedules_over_training():
    # 10 epochs x 10 steps = 100 steps
    assert rates(TrainConfig(learning_rate=0.1), 10, [0, 50, 99]) == [0.1, 0.1, 0.1]
    cosine = rates(TrainConfig(learning_rate=0.1, schedule="cosine"), 10, [0, 50, 100])
    assert cosine == pytest.approx([0.1, 0.05, 0.0], abs=1e-6)
    warm = rates(TrainConfig(learning_rate=0.1, warmup_epochs=2), 10, [0, 10, 20, 60, 100])
    assert warm == pytest.approx([0.0, 0.05, 0.1, 0.1, 0.1], abs=1e-6)
    one_cycle = rates(TrainConfig(learning_rate=0.1, schedule="one_cycle"), 10, [0, 15, 30, 65, 100])
    assert one_cycle == pytest.approx([0.004, 0.052, 0.1, 0.05, 0.0], abs=1e-6)
    warm_cosine = rates(TrainConfig(learning_rate=0.1, schedule="cosine", warmup_epochs=5), 10, [0, 25, 50, 75, 100])
    assert warm_cosine == pytest.approx([0.0, 0.05, 0.1, 0.05, 0.0], abs=1e-6)


def test_schedule_is_saved_with_the_model(tmp_path):
    model = build_model(TrainConfig(depth=1, width=4, schedule="one_cycle", learning_rate=0.2), steps_per_epoch=5)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    schedule = again.optimizer.learning_rate if callable(again.optimizer.learning_rate) else \
        again.optimizer._learning_rate
    assert float(schedule(15)) == pytest.approx(0.2)


def test_the_last_layer_has_one_output_a_class_and_the_estimate_counts_them():
    config = TrainConfig(depth=2, width=16)
    model = build_model(config, Scaler(mean=0.0, std=1.0), classes=7)
    assert model.output_shape == (None, 7) and model.layers[-1].name == "classes"
    assert model.count_params() == parameter_estimate(config, classes=7) != parameter_estimate(config)


def test_the_whitening_layer_is_frozen_and_takes_its_kernel():
    """A whitened cnn starts with a 2 x 2 'valid' convolution that training never changes (no
    trainable weight), then the activation; set_whitening gives it its kernel."""
    model = build_model(TrainConfig(model="cnn", whiten=True, filters=4, conv_blocks=1, depth=0), Scaler(72.9, 90.0))
    whiten = model.get_layer("whiten")
    assert whiten.kernel_size == (2, 2) and whiten.padding == "valid" and not whiten.use_bias
    assert not whiten.trainable and not any(w is whiten.kernel for w in model.trainable_weights)
    assert whiten.output.shape == (None, 27, 27, 8)
    assert isinstance(model.layers[model.layers.index(whiten) + 1], keras.layers.Activation)
    kernel = np.arange(32, dtype="float32").reshape(2, 2, 1, 8)
    set_whitening(model, kernel)
    np.testing.assert_array_equal(np.asarray(whiten.kernel.value), kernel)


def test_max_norm_constrains_each_hidden_unit_dense_columns_and_conv_filters():
    config = TINY.replace(model="cnn", filters=4, conv_blocks=1, depth=1, width=8, max_norm=0.5)
    model = build_model(config, None)
    hidden = [layer for layer in model.layers if hasattr(layer, "kernel") and layer.name != "classes"]
    assert len(hidden) == 2 and model.get_layer("classes").kernel.constraint is None
    rng = np.random.default_rng(0)
    for layer in hidden:
        kernel = rng.normal(size=layer.kernel.shape).astype("float32")
        bounded = np.asarray(layer.kernel.constraint(keras.ops.convert_to_tensor(kernel)))
        units = bounded.reshape(-1, bounded.shape[-1])  # one column per unit: a Dense unit, a conv filter
        np.testing.assert_allclose(np.linalg.norm(units, axis=0), 0.5, rtol=1e-4)
    assert all(getattr(layer, "kernel_constraint", None) is None for layer in build_model(TINY, None).layers)
