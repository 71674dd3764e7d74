"""The tutorial's network: a deep Dense MLP with optional batch normalization.

    model = build_mlp(depth=20, width=100, batch_norm="after")
"""

from __future__ import annotations

import math

import keras

from fashionlab.config import TrainConfig
from fashionlab.preprocessing import Scaler, scaling_layer


def build_mlp(depth: int = 20, width: int = 100, activation: str = "relu", batch_norm: str = "after",
              kernel_initializer: str = "glorot_uniform", scaler: Scaler | None = None,
              name: str = "fashionlab_mlp") -> keras.Sequential:
    """Input 28x28 raw pixels -> [standardize] -> Flatten -> depth x hidden block -> Dense(10, softmax).

    batch_norm "after": Dense(act), BN (the tutorial); "before": Dense, BN, Activation; "none": Dense(act).
    """
    layers: list[keras.layers.Layer] = [keras.Input(shape=(28, 28), name="pixels")]
    if scaler is not None:
        layers.append(scaling_layer(scaler))
    layers.append(keras.layers.Flatten())
    for _ in range(depth):
        if batch_norm == "before":
            layers += [keras.layers.Dense(width, kernel_initializer=kernel_initializer),
                       keras.layers.BatchNormalization(), keras.layers.Activation(activation)]
        else:
            layers.append(keras.layers.Dense(width, activation=activation, kernel_initializer=kernel_initializer))
            if batch_norm == "after":
                layers.append(keras.layers.BatchNormalization())
    layers.append(keras.layers.Dense(10, activation="softmax", name="classes"))
    return keras.Sequential(layers, name=name)


def build_model(config: TrainConfig, scaler: Scaler | None = None) -> keras.Sequential:
    """The configured network, compiled as the tutorial compiles it."""
    model = build_mlp(config.depth, config.width, config.activation, config.batch_norm,
                      config.kernel_initializer, scaler if config.scale_inputs else None)
    optimizer = keras.optimizers.get({"class_name": config.optimizer,
                                      "config": {"learning_rate": config.learning_rate}})
    model.compile(loss="sparse_categorical_crossentropy", optimizer=optimizer, metrics=["accuracy"])
    return model


def summary_text(model: keras.Model) -> str:
    """model.summary() as plain text, for summary.txt and `fashionlab summary`."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, line_break=True: lines.append(line), line_length=80)
    return "\n".join(lines)


def parameter_counts(model: keras.Model) -> dict[str, int]:
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    non_trainable = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}
