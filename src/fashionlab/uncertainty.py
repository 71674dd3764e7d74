"""Monte-Carlo dropout: a prediction with an uncertainty, from a model trained with dropout.

    sampler = DropoutSampler(model)               # refuses a model without Dropout or AlphaDropout
    samples = sampler.samples(images, passes=30)  # (30, n, classes): one pass each, dropout on
    mean, spread = samples.mean(axis=0), samples.std(axis=0)

Each pass runs the network as at inference (BatchNormalization's moving statistics, test-time
views) except its dropout layers, which drop units as in training (Gal and Ghahramani, 2016). The
passes of all images go through the model together, `rows` at a time, as one compiled program on
JAX; each call's dropout draws come from `seed` and the call's number alone, so the same images
with the same seed give the same answer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from fashionlab.errors import ConfigError

MAX_PASSES = 1000
ROWS = 2048  # image passes per model call, at most
SEED_STATE = "seed_generator_state"  # the name of a keras.random.SeedGenerator's variable


def dropout_layers(model) -> list:
    """The model's Dropout and AlphaDropout layers."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, (keras.layers.Dropout, keras.layers.AlphaDropout))]


def no_dropout(what: str) -> ConfigError:
    return ConfigError(f"{what} has no dropout layer, so every pass would give the same probabilities; MC dropout "
                       f"needs a model trained with dropout or alpha_dropout (e.g. --recipe best-mlp)",
                       terms=["mc_dropout"])


class DropoutSampler:
    """A model's passes with its dropout on and everything else as at inference: `samples(x, passes)`."""

    def __init__(self, model, rows: int = ROWS, what: str = "the model", sizes: tuple[int, ...] = ()):
        """`rows`: image passes per call at most (a call's rows are padded to a power of two); `sizes`:
        the only row counts a call may have instead (a server compiles each at start: `warm`)."""
        import keras

        if not dropout_layers(model):
            raise no_dropout(what)
        self.model, self.rows, self.sizes = model, rows, tuple(sorted(sizes))
        self.seed_slots = [i for i, v in enumerate(model.non_trainable_variables) if v.name == SEED_STATE]
        self._forward = self._pure
        if keras.backend.backend() == "jax":
            import jax

            self._forward = jax.jit(self._pure)

    def _pure(self, trainable: list, non_trainable: list, x, seeds: list):
        """The model on `x` with its dropout layers in training mode, their seeds `seeds`, the weights given."""
        import keras

        non_trainable = list(non_trainable)
        for slot, seed in zip(self.seed_slots, seeds):
            non_trainable[slot] = seed
        model = self.model
        mapping = [*zip(model.trainable_variables, trainable), *zip(model.non_trainable_variables, non_trainable)]
        dropouts = tuple(type(layer) for layer in dropout_layers(model))
        with keras.StatelessScope(state_mapping=mapping):
            for layer in model.layers:
                x = layer(x, training=isinstance(layer, dropouts))
        return x

    def _call(self, x: np.ndarray, seed: int, call: int) -> np.ndarray:
        """One model call on `x`: the dropout draws of call number `call` with `seed`."""
        model = self.model
        seeds = [np.random.default_rng([seed, call, slot]).integers(0, 2**32, 2, dtype=np.uint32)
                 for slot in range(len(self.seed_slots))]
        return np.asarray(self._forward([v.value for v in model.trainable_variables],
                                        [v.value for v in model.non_trainable_variables], x, seeds))

    def _size(self, remaining: int) -> int:
        """The rows of the next call: few shapes, so few compiled programs."""
        if self.sizes:
            return next((size for size in self.sizes if size >= remaining), self.sizes[-1])
        return min(self.rows, 1 << max(remaining - 1, 0).bit_length())

    def warm(self) -> None:
        """Compile the call for each of `sizes` now."""
        for size in self.sizes:
            self._call(np.zeros((size, 28, 28), np.float32), 0, 0)

    def samples(self, x: np.ndarray, passes: int, *, seed: int = 0,
                bounded: Callable[..., Any] | None = None) -> np.ndarray:
        """(passes, n, classes): each image's class probabilities in each pass. `bounded(call, images=k)`
        runs each model call (a deadline, say) when given."""
        x = np.asarray(x, dtype=np.float32)
        n, total = len(x), passes * len(x)
        parts, start = [], 0
        while start < total:  # row r is image r % n in pass r // n: only one call's rows are ever made
            size = self._size(total - start)
            chunk = x[np.arange(start, min(start + size, total)) % n]
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), *x.shape[1:]), np.float32)])
            call = functools.partial(self._call, padded, seed, len(parts))  # the call's number: its draws
            parts.append((bounded(call, images=len(chunk)) if bounded else call())[:len(chunk)])
            start += size
        classes = int(self.model.output_shape[-1])
        joined = np.concatenate(parts) if parts else np.zeros((0, classes), np.float32)  # n x classes per pass
        return joined.reshape(passes, n, classes)
