"""A compiled training loop for the JAX backend, driven by the Keras model's stateless API.

    fit_compiled(model, x_train, y_train, x_valid, y_valid, batch_size=32, epochs=10, seed=42)

Keras 3's JAX `fit` dispatches every step from Python and copies every batch from the host.
Here the data lives on the device, each epoch's shuffle is drawn on the device, and hundreds of
steps run inside one compiled call (`lax.fori_loop`), with loss and accuracy accumulated on the
device. The Keras model stays the single source of truth: the same layers, initializers,
`stateless_call`, loss and `optimizer.stateless_apply`; its variables are written back after
every epoch, so callbacks, `model.save` and evaluation see the trained model.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import keras
import numpy as np

from fashionlab import compile_cache_folder
from fashionlab.config import VALIDATION_BATCH
from fashionlab.errors import ConfigError
from fashionlab.model import one_hot_targets

# Steps per compiled call: at most CHUNK_STEPS, large enough that Python dispatch vanishes, and
# as many as take about CHUNK_SECONDS (measured on the chunk before; the first has FIRST_CHUNK_STEPS),
# so the progress bar or line and a stop request (Ctrl-C) are seen every few seconds on a slow
# machine too. The chunk's bounds are arguments of one compiled program: any size compiles nothing.
CHUNK_STEPS = 256
CHUNK_SECONDS = 5.0
FIRST_CHUNK_STEPS = 16
SEED_STATE = "seed_generator_state"  # the name of a keras.random.SeedGenerator's variable


def enable_compilation_cache() -> str | None:
    """Keep compiled programs on disk, so a run after the first skips most compilation.

    JAX keys each entry by the program, the compile options, jaxlib and the device, so a
    changed network or machine compiles afresh. Small programs are kept too: building the
    model runs ~60 tiny initializer kernels whose compilation costs ~2 s in all, ~0.3 s read
    back. FASHIONLAB_COMPILE_CACHE picks the folder; "off" disables it.
    """
    setting = compile_cache_folder()
    if setting is None:
        return None
    if jax.config.jax_compilation_cache_dir != setting:
        jax.config.update("jax_compilation_cache_dir", setting)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return setting


class Totals(NamedTuple):
    """Loss sum, correct predictions and sample count of the epoch so far, kept on the device."""

    loss_sum: jax.Array
    correct: jax.Array
    count: jax.Array

    @classmethod
    def zero(cls) -> Totals:
        return cls(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def logs(self) -> dict[str, float]:
        loss_sum, correct, count = jax.device_get(tuple(self))
        count = max(int(count), 1)
        return {"loss": float(loss_sum) / count, "accuracy": float(correct) / count}


class TrainState(NamedTuple):
    """Everything a training step reads and writes; a NamedTuple is a JAX pytree, so jit takes it as is."""

    trainable: list
    non_trainable: list
    optimizer: list
    totals: Totals


class Programs(NamedTuple):
    """The compiled functions of one fit: the training chunk compiled before the first epoch, the tail
    batch and validation compiling in a background thread meanwhile (None when not needed)."""

    chunk: Any
    tail: Future | None
    evaluate: Future | None


class Augmentation(NamedTuple):
    """Random changes to each training image, drawn anew at every step: a shift by up to `shift`
    pixels in each direction (the uncovered border black, as the images' background), and with
    `flip` a left-right mirror of half the images; with `flip_alternate` too, each image is
    mirrored in every other epoch instead (derandomized: a coin per image in the first epoch,
    its opposite in the next, and so on)."""

    shift: int = 0
    flip: bool = False
    flip_alternate: bool = False


def augment(key: jax.Array, images: jax.Array, augmentation: Augmentation,
            flipped: jax.Array | None = None) -> jax.Array:
    """`images` (batch, 28, 28), each shifted and flipped by its own draw from `key`; `flipped`
    (one bool per image), when given, says which to mirror instead of a draw."""
    shift_key, flip_key = jax.random.split(key)
    if augmentation.shift:
        s = augmentation.shift
        offsets = jax.random.randint(shift_key, (images.shape[0], 2), 0, 2 * s + 1)
        padded = jnp.pad(images, ((0, 0), (s, s), (s, s)))
        images = jax.vmap(lambda image, at: jax.lax.dynamic_slice(image, (at[0], at[1]), (28, 28)))(padded, offsets)
    if augmentation.flip:
        if flipped is None:
            flipped = jax.random.bernoulli(flip_key, 0.5, (images.shape[0],))
        images = jnp.where(flipped[:, None, None], images[:, :, ::-1], images)
    return images


class CompiledTrainer:
    """Holds the jitted functions for one compiled Keras model.

    `bn_lr_scale` multiplies the gradients of BatchNormalization's scale and offset (with plain or
    momentum SGD, their learning rate). An optimizer with `use_ema` keeps an average of the weights;
    validation reads the average, as the run's test and saved model do.
    """

    def __init__(self, model: keras.Model, batch_size: int, augmentation: Augmentation = Augmentation(),
                 bn_lr_scale: float = 1.0):
        if keras.backend.backend() != "jax":
            raise ConfigError(f"engine 'compiled' needs the JAX backend, not {keras.backend.backend()}; "
                              f"use engine 'keras' or KERAS_BACKEND=jax")
        enable_compilation_cache()
        self.model = model
        self.batch_size = batch_size
        self.loss_fn = keras.losses.get(model.loss)
        self.one_hot = one_hot_targets(model)
        self.classes = int(model.output_shape[-1])
        self.augmentation = augmentation
        # Dropout's random state: Keras does not save it with the model, so each step sets it
        # from the seed, the epoch and the step instead, and a resumed run draws what it would have.
        self.seed_slots = [i for i, v in enumerate(model.non_trainable_variables) if v.name == SEED_STATE]
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        self.bn_lr_scale = bn_lr_scale
        normalized = {id(w) for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)
                      for w in layer.trainable_weights}
        self.bn_slots = [i for i, v in enumerate(model.trainable_variables) if id(v) in normalized]
        self.average_slots = average_slots(model)
        self._chunk = jax.jit(self._run_steps)
        self._tail = jax.jit(self._run_tail)
        self._evaluate = jax.jit(self._evaluate_all)
        self._order = jax.jit(epoch_order, static_argnums=(2, 3))

    # --- pure functions, traced once -------------------------------------------------------

    def _targets(self, y):
        return jax.nn.one_hot(y, self.classes) if self.one_hot else y

    def _loss(self, trainable, non_trainable, x, y):
        y_pred, non_trainable = self.model.stateless_call(trainable, non_trainable, x, training=True)
        return jnp.mean(self.loss_fn(self._targets(y), y_pred)), (y_pred, non_trainable)

    def step(self, state: TrainState, x, y, key, flipped=None) -> TrainState:
        """One optimizer step on the batch (x, y); `key` draws its augmentation and dropout,
        `flipped` (when given) says which images to mirror."""
        non_trainable = list(state.non_trainable)
        for slot in self.seed_slots:
            non_trainable[slot] = jax.random.bits(jax.random.fold_in(key, 1 + slot), (2,), jnp.uint32)
        if self.augmentation != Augmentation():
            x = augment(jax.random.fold_in(key, 0), x, self.augmentation, flipped)
        (loss, (y_pred, non_trainable)), grads = jax.value_and_grad(self._loss, has_aux=True)(
            state.trainable, non_trainable, x, y)
        if self.bn_lr_scale != 1:
            grads = [g * self.bn_lr_scale if i in self.bn_slots else g for i, g in enumerate(grads)]
        trainable, optimizer = self.model.optimizer.stateless_apply(state.optimizer, grads, state.trainable)
        n = y.shape[0]
        hits = jnp.sum(jnp.argmax(y_pred, axis=-1) == y)
        totals = Totals(state.totals.loss_sum + loss * n, state.totals.correct + hits, state.totals.count + n)
        return TrainState(trainable, non_trainable, optimizer, totals)

    def batch(self, x_all, y_all, indices):
        """The images (as floats) and labels at `indices`, as `step` takes them."""
        return jnp.take(x_all, indices, axis=0).astype(jnp.float32), jnp.take(y_all, indices, axis=0)

    def _indexed_step(self, state, x_all, y_all, indices, keys: StepKeys, epoch, step):
        """The step on the images at `indices`, in step `step` of epoch `epoch`."""
        flipped = None
        if self.augmentation.flip_alternate:  # each image's own coin, the opposite one in odd epochs
            coins = jax.vmap(lambda i: jax.random.bernoulli(jax.random.fold_in(keys.flips, i)))(indices)
            flipped = coins ^ (epoch % 2 == 1)
        step_key = jax.random.fold_in(jax.random.fold_in(keys.steps, epoch), step)
        return self.step(state, *self.batch(x_all, y_all, indices), step_key, flipped)

    def _run_steps(self, state, x_all, y_all, order, keys, epoch, start, stop):
        def body(i, state):
            indices = jax.lax.dynamic_slice_in_dim(order, i * self.batch_size, self.batch_size)
            return self._indexed_step(state, x_all, y_all, indices, keys, epoch, i)

        return jax.lax.fori_loop(start, stop, body, state)

    def _run_tail(self, state, x_all, y_all, indices, keys, epoch, step):
        return self._indexed_step(state, x_all, y_all, indices, keys, epoch, step)

    def _evaluate_all(self, trainable, non_trainable, x, y):
        """Mean loss and accuracy over (x, y), VALIDATION_BATCH images per model call (with test-time
        views, as many times that pass the network)."""
        def part(xb, yb):
            y_pred, _ = self.model.stateless_call(trainable, non_trainable, xb.astype(jnp.float32), training=False)
            return (jnp.mean(self.loss_fn(self._targets(yb), y_pred)) * yb.shape[0],
                    jnp.sum(jnp.argmax(y_pred, axis=-1) == yb))

        n = x.shape[0]
        b = min(VALIDATION_BATCH, n)
        full = n // b * b
        losses, hits = jax.lax.map(lambda batch: part(*batch), (x[:full].reshape(-1, b, *x.shape[1:]),
                                                                 y[:full].reshape(-1, b)))
        loss, correct = jnp.sum(losses), jnp.sum(hits)
        if full < n:
            rest_loss, rest_hits = part(x[full:], y[full:])
            loss, correct = loss + rest_loss, correct + rest_hits
        return loss / n, correct / n

    # --- state <-> Keras variables ---------------------------------------------------------

    def read_state(self) -> TrainState:
        m = self.model
        return TrainState([v.value for v in m.trainable_variables], [v.value for v in m.non_trainable_variables],
                          [v.value for v in m.optimizer.variables], Totals.zero())

    def write_state(self, state: TrainState) -> None:
        m = self.model
        for variables, values in ((m.trainable_variables, state.trainable),
                                  (m.non_trainable_variables, state.non_trainable),
                                  (m.optimizer.variables, state.optimizer)):
            for variable, value in zip(variables, values):
                variable.assign(value)

    # --- the loop --------------------------------------------------------------------------

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray | None = None,
            y_valid: np.ndarray | None = None, *, epochs: int, seed: int, shuffle: bool = True,
            initial_epoch: int = 0, callbacks: Sequence[keras.callbacks.Callback] = (),
            verbose: int = 1) -> keras.callbacks.History:
        """Train like `model.fit(..., batch_size, epochs, validation_data, shuffle)`; returns its History."""
        n, b = len(x_train), self.batch_size
        full_steps, tail = divmod(n, b)
        steps = full_steps + (1 if tail else 0)
        x_all, y_all = jnp.asarray(x_train), jnp.asarray(y_train, dtype=jnp.int32)
        valid = None if x_valid is None else (jnp.asarray(x_valid), jnp.asarray(y_valid, dtype=jnp.int32))
        key = jax.random.key(seed)
        keys = step_keys(key)

        state = self.read_state()
        programs = None
        chunk = min(FIRST_CHUNK_STEPS, CHUNK_STEPS)
        callback_list = keras.callbacks.CallbackList(list(callbacks), add_history=True, add_progbar=verbose != 0,
                                                     verbose=verbose, epochs=epochs, steps=steps, model=self.model)
        self.model.stop_training = False
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            if programs is None:  # inside the first epoch, whose time includes compilation (as in fit)
                programs = self._compile(state, x_all, y_all, n, tail, valid, keys)
            order = self._order(key, epoch, n, shuffle)
            state = state._replace(totals=Totals.zero())
            start = 0
            while start < full_steps:
                stop = min(start + chunk, full_steps)
                callback_list.on_train_batch_begin(start)
                began = time.perf_counter()
                state = programs.chunk(state, x_all, y_all, order, keys, epoch, start, stop)
                callback_list.on_train_batch_end(stop - 1, state.totals.logs())  # logs() waits for the chunk
                chunk = next_chunk(stop - start, time.perf_counter() - began)
                if self.model.stop_training:
                    break
                start = stop
            if tail and not self.model.stop_training:
                state = programs.tail.result()(state, x_all, y_all, order[full_steps * b:], keys, epoch, full_steps)
                callback_list.on_train_batch_end(steps - 1, state.totals.logs())
            self.write_state(state)
            if self.model.stop_training:  # an unfinished epoch is neither validated nor reported
                break
            logs = {**state.totals.logs(), "learning_rate": current_learning_rate(self.model)}
            if valid is not None:
                val_loss, val_accuracy = programs.evaluate.result()(self.evaluated(state), state.non_trainable, *valid)
                logs.update(val_loss=float(val_loss), val_accuracy=float(val_accuracy))
            callback_list.on_epoch_end(epoch, logs)
            if self.model.stop_training:
                break
        callback_list.on_train_end()
        return self.model.history

    def evaluated(self, state: TrainState) -> list:
        """The weights validation reads: the optimizer's average of them when it keeps one."""
        return [state.optimizer[i] for i in self.average_slots] if self.average_slots else state.trainable

    def _compile(self, state: TrainState, x_all, y_all, n: int, tail: int, valid, keys: StepKeys) -> Programs:
        """Compile the training chunk now, and the rest in a thread while the first epoch runs.

        One training keeps about one core busy, so the tail-batch and validation functions
        compile on another core instead of adding to the first epoch. (Compiling them
        alongside the chunk would slow the chunk's own multithreaded compilation.)
        """
        order = jax.ShapeDtypeStruct((n,), jnp.int32)
        chunk = self._chunk.lower(state, x_all, y_all, order, keys, 0, 0, 1).compile()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fashionlab-compile")
        tail_program = evaluate = None
        if tail:
            indices = jax.ShapeDtypeStruct((tail,), jnp.int32)
            tail_program = pool.submit(self._tail.lower(state, x_all, y_all, indices, keys, 0, 0).compile)
        if valid is not None:
            evaluate = pool.submit(self._evaluate.lower(state.trainable, state.non_trainable, *valid).compile)
        pool.shutdown(wait=False)  # the thread finishes its compiles; nothing waits here
        return Programs(chunk, tail_program, evaluate)


class StepKeys(NamedTuple):
    """The random streams of a fit apart from the shuffle: `steps` (augmentation and dropout,
    folded with the epoch and the step) and `flips` (each image's coin for alternating flips)."""

    steps: jax.Array
    flips: jax.Array


def step_keys(key: jax.Array) -> StepKeys:
    return StepKeys(jax.random.split(key)[1], jax.random.split(key, 3)[2])


def average_slots(model: keras.Model) -> list[int]:
    """Where in the optimizer's variables its moving average of each trainable weight is, in the
    order of `model.trainable_variables`; [] when it keeps none (`use_ema` off)."""
    optimizer = model.optimizer
    if not getattr(optimizer, "use_ema", False):
        return []
    slot = {id(v): i for i, v in enumerate(optimizer.variables)}
    return [slot[id(average)] for average in optimizer._model_variables_moving_average]


def next_chunk(steps: int, seconds: float) -> int:
    """The steps of the next compiled call: about CHUNK_SECONDS' worth at the rate of the last one
    (`steps` in `seconds`), from 1 to CHUNK_STEPS."""
    return max(1, min(CHUNK_STEPS, int(steps * CHUNK_SECONDS / max(seconds, 1e-9))))


def epoch_order(key: jax.Array, epoch: int, n: int, shuffle: bool) -> jax.Array:
    """The order in which an epoch visits the n training images: a permutation drawn from the
    seed's key and the epoch number alone, so a resumed run visits them as an uninterrupted one."""
    return jax.random.permutation(jax.random.fold_in(key, epoch), n) if shuffle else jnp.arange(n)


def current_learning_rate(model: keras.Model) -> float:
    """The optimizer's learning rate now: its schedule at the steps taken so far."""
    return float(model.optimizer.learning_rate)


def fit_compiled(model: keras.Model, x_train, y_train, x_valid=None, y_valid=None, *, batch_size: int = 32,
                 epochs: int = 1, seed: int = 0, shuffle: bool = True, initial_epoch: int = 0,
                 augmentation: Augmentation = Augmentation(), bn_lr_scale: float = 1.0,
                 callbacks: Sequence[keras.callbacks.Callback] = (), verbose: int = 1) -> keras.callbacks.History:
    """`model.fit` for in-memory arrays on the JAX backend, compiled end to end, with the
    training images augmented on the device."""
    trainer = CompiledTrainer(model, batch_size, augmentation, bn_lr_scale)
    return trainer.fit(x_train, y_train, x_valid, y_valid, epochs=epochs, seed=seed, shuffle=shuffle,
                       initial_epoch=initial_epoch, callbacks=callbacks, verbose=verbose)
