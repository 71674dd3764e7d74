"""The layers fashionlab trains with in place of Keras' own, for speed on a CPU (the same weights,
the same results), and `portable`: a model with plain Keras layers again, for the saved file.

Loading a model file imports this module (checkpoints hold these layers), not the model builder.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="fashionlab")
class PatchConv2D(keras.layers.Conv2D):
    """A stride-1 Conv2D ('same' or 'valid') computed as one matrix product over the k x k shifted
    copies of its input (im2col): the same weights, the same results. XLA's CPU convolutions
    inside a compiled loop are an order of magnitude slower than this product
    (benchmarks/cpu_conv.md); a saved model.keras holds plain Conv2D layers again (`portable`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if tuple(self.strides) != (1, 1) or tuple(self.dilation_rate) != (1, 1) or self.groups != 1:
            raise ValueError("PatchConv2D computes stride-1, undilated, ungrouped convolutions only")

    def convolution_op(self, inputs, kernel):
        height, width, channels = inputs.shape[1:]
        rows, columns = self.kernel_size
        if self.padding == "same":  # as Keras pads: the odd pixel of an even kernel after
            inputs = keras.ops.pad(inputs, [[0, 0], [(rows - 1) // 2, rows // 2], [(columns - 1) // 2, columns // 2],
                                            [0, 0]])
        else:
            height, width = height - rows + 1, width - columns + 1
        shifted = [inputs[:, i:i + height, j:j + width, :] for i in range(rows) for j in range(columns)]
        # kernel (rows, columns, channels, filters): rows in the order of the shifted copies, channels within
        return keras.ops.matmul(keras.ops.concatenate(shifted, axis=-1),
                                keras.ops.reshape(kernel, (rows * columns * channels, self.filters)))


@keras.saving.register_keras_serializable(package="fashionlab")
class BlockMaxPool2D(keras.layers.MaxPooling2D):
    """MaxPooling2D(2) as a reshape and a max over each 2 x 2 block: the same results, and a
    gradient that is a cheap select where XLA's CPU select-and-scatter is slow."""

    def call(self, inputs):
        batch, height, width, channels = keras.ops.shape(inputs)
        even = inputs[:, :height // 2 * 2, :width // 2 * 2, :]  # 'valid' pooling drops an odd last row
        blocks = keras.ops.reshape(even, (-1, height // 2, 2, width // 2, 2, channels))
        return keras.ops.max(blocks, axis=(2, 4))


# Test-time augmentation: the views of each image whose class probabilities are averaged, and
# their weights (airbench's): the image and its mirror image; with "mirror-shift" also both of
# them shifted one pixel down-right and up-left (the uncovered border black), at half the weight.
TTA_VIEWS: dict[str, tuple[tuple[int, bool, float], ...]] = {
    "mirror": ((0, False, 0.5), (0, True, 0.5)),
    "mirror-shift": ((0, False, 0.25), (0, True, 0.25), (1, False, 0.125), (1, True, 0.125),
                     (-1, False, 0.125), (-1, True, 0.125)),
}


def _view_matrices(shift: int, mirror: bool):
    """(left, right) 28 x 28 matrices with left @ image @ right = the image shifted by `shift`
    pixels down and right (black where uncovered), then mirrored left-right if `mirror`: a view
    is two matrix products, which every backend and ONNX compute alike."""
    import numpy as np

    left = np.eye(28, k=-shift, dtype=np.float32)  # (left @ image)[i] = image[i - shift]
    right = np.eye(28, k=shift, dtype=np.float32)  # (image @ right)[:, j] = image[:, j - shift]
    return left, right[:, ::-1].copy() if mirror else right


class _TestTimeLayer(keras.layers.Layer):
    """What both test-time layers hold: the name of their views (`TTA_VIEWS`)."""

    def __init__(self, views: str, **kwargs):
        super().__init__(**kwargs)
        if views not in TTA_VIEWS:
            raise ValueError(f"unknown test-time views {views!r}; choose from {', '.join(TTA_VIEWS)}")
        self.views = views

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "views": self.views}


@keras.saving.register_keras_serializable(package="fashionlab")
class TestTimeViews(_TestTimeLayer):
    """Training: the images as they are. Inference: each 28 x 28 image's views (`TTA_VIEWS[views]`),
    one after another along the batch axis, for `TestTimeMean` to average."""

    def call(self, inputs, training=None):
        if training:
            return inputs
        seen = []
        for shift, mirror, _ in TTA_VIEWS[self.views]:
            left, right = _view_matrices(shift, mirror)
            seen.append(keras.ops.matmul(keras.ops.matmul(left, inputs), right))
        # image by image: (batch, views, 28, 28) -> (batch x views, 28, 28)
        return keras.ops.reshape(keras.ops.stack(seen, axis=1), (-1, *inputs.shape[1:]))


@keras.saving.register_keras_serializable(package="fashionlab")
class TestTimeMean(_TestTimeLayer):
    """Training: the probabilities as they are. Inference: the weighted mean of each image's
    views' probabilities (the rows `TestTimeViews` made), one row per image again."""

    def call(self, inputs, training=None):
        if training:
            return inputs
        views = TTA_VIEWS[self.views]
        weights = keras.ops.convert_to_tensor([[w for *_, w in views]], dtype=inputs.dtype)
        classes = inputs.shape[-1]
        # (batch x views, classes) -> (batch, views, classes) -> weights @ each -> (batch, classes)
        stacked = keras.ops.reshape(inputs, (-1, len(views), classes))
        return keras.ops.reshape(keras.ops.matmul(weights, stacked), (-1, classes))


TRAINING_LAYERS = {PatchConv2D: keras.layers.Conv2D, BlockMaxPool2D: keras.layers.MaxPooling2D}


def models_within(model: keras.Model) -> list[keras.Model]:
    """`model` and every model among its layers, at any depth (an ensemble's members)."""
    found, waiting = [], [model]
    while waiting:
        current = waiting.pop()
        found.append(current)
        waiting += [layer for layer in current.layers if isinstance(layer, keras.Model)]
    return found


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
