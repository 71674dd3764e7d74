"""The layers fashionlab trains with in place of Keras' own, for speed on a CPU (the same weights,
the same results), and `portable`: a model with plain Keras layers again, for the saved file.

Loading a model file imports this module (checkpoints hold these layers), not the model builder.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="fashionlab")
class PatchConv2D(keras.layers.Conv2D):
    """A 3 x 3 'same' Conv2D computed as one matrix product over the 9 shifted copies of its
    input (im2col): the same weights, the same results. XLA's CPU convolutions inside a compiled
    loop are an order of magnitude slower than this product (benchmarks/cpu_conv.md); a saved
    model.keras holds plain Conv2D layers again (`portable`)."""

    def convolution_op(self, inputs, kernel):
        height, width, channels = inputs.shape[1:]
        padded = keras.ops.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
        shifted = [padded[:, i:i + height, j:j + width, :] for i in range(3) for j in range(3)]
        # kernel (3, 3, channels, filters): rows in the order of the shifted copies, channels within
        return keras.ops.matmul(keras.ops.concatenate(shifted, axis=-1),
                                keras.ops.reshape(kernel, (9 * channels, self.filters)))


@keras.saving.register_keras_serializable(package="fashionlab")
class BlockMaxPool2D(keras.layers.MaxPooling2D):
    """MaxPooling2D(2) as a reshape and a max over each 2 x 2 block: the same results, and a
    gradient that is a cheap select where XLA's CPU select-and-scatter is slow."""

    def call(self, inputs):
        batch, height, width, channels = keras.ops.shape(inputs)
        even = inputs[:, :height // 2 * 2, :width // 2 * 2, :]  # 'valid' pooling drops an odd last row
        blocks = keras.ops.reshape(even, (-1, height // 2, 2, width // 2, 2, channels))
        return keras.ops.max(blocks, axis=(2, 4))


TRAINING_LAYERS = {PatchConv2D: keras.layers.Conv2D, BlockMaxPool2D: keras.layers.MaxPooling2D}


def portable(model: keras.Sequential) -> keras.Sequential:
    """`model` with plain Keras layers only (PatchConv2D -> Conv2D, BlockMaxPool2D ->
    MaxPooling2D, the same weights), for the model.keras that any Keras loads."""
    if not any(type(layer) in TRAINING_LAYERS for layer in model.layers):
        return model

    def plain(layer: keras.layers.Layer) -> keras.layers.Layer:
        return TRAINING_LAYERS.get(type(layer), type(layer)).from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=plain)
    copy.set_weights(model.get_weights())
    copy.compile(loss=model.loss, optimizer=model.optimizer, metrics=["accuracy"])
    return copy
