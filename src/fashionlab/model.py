"""The networks: the tutorial's deep MLP and a small CNN, built from one config.

    model = build_model(TrainConfig(model="cnn", depth=1, width=128), scaler, steps_per_epoch=1719)

Both take raw 28 x 28 pixels (0..255) and hold their own standardization, so a saved model
is self-contained; both are plain Keras layers, so any backend trains and loads them.
"""

from __future__ import annotations

import math

import keras

from fashionlab.config import WHITENED, TrainConfig, conv_channels
from fashionlab.layers import BlockMaxPool2D, PatchConv2D, TestTimeMean, TestTimeViews
from fashionlab.preprocessing import Scaler, scaling_layer


def hidden_block(layer_type: type[keras.layers.Layer], size: int, config: TrainConfig,
                 **options) -> list[keras.layers.Layer]:
    """A Dense or Conv2D layer with the config's activation and batch norm: "after": layer(act)
    then BN (the tutorial); "before": layer, BN, act; "none": layer(act). With `max_norm` its kernel
    is constrained (Keras applies the constraint after each optimizer step, in fit and in
    `stateless_apply`, so in both engines)."""
    options["kernel_initializer"] = config.kernel_initializer
    if config.max_norm:  # a unit's incoming weights: a Dense kernel's column, a conv filter (rows, columns, channels)
        axis = 0 if issubclass(layer_type, keras.layers.Dense) else [0, 1, 2]
        options["kernel_constraint"] = keras.constraints.MaxNorm(config.max_norm, axis=axis)
    if config.batch_norm == "before":
        return [layer_type(size, **options), keras.layers.BatchNormalization(),
                keras.layers.Activation(config.activation)]
    layer = layer_type(size, activation=config.activation, **options)
    return [layer] + ([keras.layers.BatchNormalization()] if config.batch_norm == "after" else [])


def _dropout(config: TrainConfig) -> list[keras.layers.Layer]:
    if config.alpha_dropout:
        return [keras.layers.AlphaDropout(config.alpha_dropout)]
    return [keras.layers.Dropout(config.dropout)] if config.dropout else []


def build_network(config: TrainConfig, scaler: Scaler | None = None, *, classes: int = 10) -> keras.Sequential:
    """Input 28x28 raw pixels -> [standardize] -> [conv blocks] -> depth x Dense block -> Dense(10, softmax).

    A cnn block is convs_per_block x (3x3 'same' convolution + BN + act) then 2x2 max pooling; the
    filters double from block to block. Dropout follows each conv block and each Dense block.
    """
    layers: list[keras.layers.Layer] = [keras.Input(shape=(28, 28), name="pixels")]
    if config.tta != "none":
        layers.append(TestTimeViews(config.tta, name="test_time_views"))
    if scaler is not None and config.scale_inputs:
        layers.append(scaling_layer(scaler))
    if config.model == "cnn":
        layers.append(keras.layers.Reshape((28, 28, 1)))
        if config.whiten:  # its kernel is set from the training images (set_whitening)
            layers += [PatchConv2D(WHITENED, 2, padding="valid", use_bias=False, trainable=False, name=WHITEN_LAYER),
                       keras.layers.Activation(config.activation)]
        channels = conv_channels(config)
        for block in range(config.conv_blocks):
            for filters in channels[block * config.convs_per_block:(block + 1) * config.convs_per_block]:
                layers += hidden_block(PatchConv2D, filters, config, kernel_size=3, padding="same")
            layers.append(BlockMaxPool2D(2))
            layers += _dropout(config)
    layers.append(keras.layers.Flatten())
    for _ in range(config.depth):
        layers += hidden_block(keras.layers.Dense, config.width, config) + _dropout(config)
    layers.append(keras.layers.Dense(classes, activation="softmax", name="classes"))
    if config.tta != "none":
        layers.append(TestTimeMean(config.tta, name="test_time_mean"))
    return keras.Sequential(layers, name=f"fashionlab_{config.model}")


WHITEN_LAYER = "whiten"


def set_whitening(model: keras.Model, kernel) -> None:
    """Give the model's whitening layer its kernel (`preprocessing.patch_whitening`)."""
    model.get_layer(WHITEN_LAYER).kernel.assign(kernel)


def learning_rate(config: TrainConfig, steps_per_epoch: int) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The config's learning rate over training, as a Keras schedule of the optimizer's step
    (so it is saved with the optimizer and a resumed run continues it exactly)."""
    total = config.epochs * steps_per_epoch
    warmup = round(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "one_cycle" and not config.warmup_epochs:
        warmup = round(0.3 * total)
    if config.schedule == "constant" and not warmup:
        return config.learning_rate
    start = config.learning_rate / 25 if config.schedule == "one_cycle" else 0.0
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=start if warmup else config.learning_rate, decay_steps=max(total - warmup, 1),
        alpha=1.0 if config.schedule == "constant" else 0.0,
        warmup_target=config.learning_rate if warmup else None, warmup_steps=warmup)


def build_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    options = {"learning_rate": learning_rate(config, steps_per_epoch)}
    if config.weight_decay:
        options["weight_decay"] = config.weight_decay
    if config.momentum:
        options.update(momentum=config.momentum, nesterov=True)
    if config.ema:  # the average is optimizer state: checkpoints keep it, a resumed run continues it
        options.update(use_ema=True, ema_momentum=config.ema)
    return keras.optimizers.get({"class_name": config.optimizer, "config": options})


def build_model(config: TrainConfig, scaler: Scaler | None = None, *, steps_per_epoch: int = 1,
                classes: int = 10) -> keras.Sequential:
    """The configured network, compiled: the tutorial's sparse cross-entropy, or with label
    smoothing a categorical one on one-hot targets. `steps_per_epoch` times the schedule."""
    model = build_network(config, scaler, classes=classes)
    loss = (keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
            if config.label_smoothing else "sparse_categorical_crossentropy")
    model.compile(loss=loss, optimizer=build_optimizer(config, steps_per_epoch), metrics=["accuracy"])
    return model


def max_norm_units(model: keras.Model) -> dict[str, float] | None:
    """What max-norm did by the end: the constrained units, how many sit at the bound (within 0.1 %),
    and the largest unit norm; None when no layer is constrained."""
    import numpy as np

    constrained = [layer for layer in model.layers if isinstance(
        getattr(getattr(layer, "kernel", None), "constraint", None), keras.constraints.MaxNorm)]
    if not constrained:
        return None
    bound = constrained[0].kernel.constraint.max_value
    norms = np.concatenate([np.linalg.norm(np.asarray(layer.kernel.value).reshape(-1, layer.kernel.shape[-1]), axis=0)
                            for layer in constrained])
    return {"max_norm": float(bound), "units": int(len(norms)), "at_bound": int((norms >= bound * 0.999).sum()),
            "largest": float(norms.max())}


def one_hot_targets(model: keras.Model) -> bool:
    """Whether the model trains on one-hot targets (label smoothing) rather than class indices."""
    return isinstance(model.loss, keras.losses.CategoricalCrossentropy)


def summary_text(model: keras.Model) -> str:
    """model.summary() as plain text, for summary.txt and `fashionlab summary`."""
    lines: list[str] = []
    model.summary(print_fn=lambda line, line_break=True: lines.append(line), line_length=80)
    return "\n".join(lines)


def parameter_counts(model: keras.Model) -> dict[str, int]:
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    non_trainable = sum(math.prod(w.shape) for w in model.non_trainable_weights)
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}
