import keras
import pytest

from fashionlab.config import TrainConfig
from fashionlab.model import build_mlp, build_model, parameter_counts, summary_text
from fashionlab.preprocessing import Scaler


@pytest.mark.parametrize("batch_norm", ["after", "before"])
def test_tutorial_parameter_counts(batch_norm):
    counts = parameter_counts(build_mlp(batch_norm=batch_norm, scaler=Scaler(72.9, 90.0)))
    assert counts == {"total": 279_410, "trainable": 275_410, "non_trainable": 4_000}


def test_plain_network_has_no_batch_norm():
    model = build_mlp(batch_norm="none")
    assert parameter_counts(model) == {"total": 271_410, "trainable": 271_410, "non_trainable": 0}
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in model.layers)


def test_layer_order_follows_the_batch_norm_choice():
    after = [type(layer).__name__ for layer in build_mlp(depth=1, batch_norm="after").layers]
    before = [type(layer).__name__ for layer in build_mlp(depth=1, batch_norm="before").layers]
    assert after == ["Flatten", "Dense", "BatchNormalization", "Dense"]
    assert before == ["Flatten", "Dense", "BatchNormalization", "Activation", "Dense"]


def test_compiled_as_the_tutorial_and_summary_totals():
    model = build_model(TrainConfig(), Scaler(0.0, 1.0))
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.01)
    text = summary_text(model)
    for line in ("Total params: 279,410", "Trainable params: 275,410", "Non-trainable params: 4,000"):
        assert line in text
    adam = build_model(TrainConfig(optimizer="adam", learning_rate=0.003)).optimizer
    assert adam.name == "adam" and float(adam.learning_rate) == pytest.approx(0.003)


def test_selu_variant_uses_lecun_normal():
    model = build_mlp(depth=2, activation="selu", batch_norm="none", kernel_initializer="lecun_normal")
    dense = model.layers[1]
    assert dense.activation.__name__ == "selu"
    assert type(dense.kernel_initializer).__name__ == "LecunNormal"

