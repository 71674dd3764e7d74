"""A minimal hand-written JAX loop for the same network: the framework floor.

    python benchmarks/contenders/jax_reference.py

20 x (Dense(100, relu) -> BatchNorm) -> Dense(10, softmax), Glorot-uniform weights, plain SGD
0.01, batch 32, one compiled lax.scan per epoch over the full batches (the last partial batch
is dropped), data and shuffle on the device, validation each epoch.
"""

import json
import os
import time

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from fashionlab import data  # noqa: E402

EPOCHS = int(os.environ.get("BENCH_EPOCHS", "10"))
BATCH, LR, DEPTH, WIDTH, MOMENTUM, EPS = 32, 0.01, 20, 100, 0.99, 1e-3  # Keras' BN momentum and epsilon

splits = data.DataSource().splits()
started = time.perf_counter()
mean, std = float(splits.x_train.mean()), float(splits.x_train.std())


def standardize(x):
    return (jnp.asarray(x, jnp.float32).reshape(len(x), -1) - mean) / std


x_train, y_train = standardize(splits.x_train), jnp.asarray(splits.y_train, jnp.int32)
x_valid, y_valid = standardize(splits.x_valid), jnp.asarray(splits.y_valid, jnp.int32)
x_test, y_test = standardize(splits.x_test), jnp.asarray(splits.y_test, jnp.int32)


def glorot(key, n_in, n_out):
    limit = np.sqrt(6 / (n_in + n_out))
    return jax.random.uniform(key, (n_in, n_out), jnp.float32, -limit, limit)


keys = jax.random.split(jax.random.key(0), DEPTH + 1)
dims = [784] + [WIDTH] * DEPTH
params = {"hidden": [{"w": glorot(keys[i], dims[i], WIDTH), "b": jnp.zeros(WIDTH), "gamma": jnp.ones(WIDTH),
                      "beta": jnp.zeros(WIDTH)} for i in range(DEPTH)],
          "out": {"w": glorot(keys[-1], WIDTH, 10), "b": jnp.zeros(10)}}
stats = [{"mean": jnp.zeros(WIDTH), "var": jnp.ones(WIDTH)} for _ in range(DEPTH)]


def forward(params, stats, x, training):
    new_stats = []
    for layer, stat in zip(params["hidden"], stats):
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
        if training:
            mu, var = x.mean(0), x.var(0)
            new_stats.append({"mean": stat["mean"] * MOMENTUM + mu * (1 - MOMENTUM),
                              "var": stat["var"] * MOMENTUM + var * (1 - MOMENTUM)})
        else:
            mu, var = stat["mean"], stat["var"]
        x = (x - mu) * jax.lax.rsqrt(var + EPS) * layer["gamma"] + layer["beta"]
    return jax.nn.log_softmax(x @ params["out"]["w"] + params["out"]["b"]), new_stats


def loss_fn(params, stats, x, y):
    log_p, new_stats = forward(params, stats, x, True)
    return -jnp.take_along_axis(log_p, y[:, None], 1).mean(), (log_p, new_stats)


def step(carry, idx):
    params, stats = carry
    (loss, (log_p, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x_train[idx],
                                                                               y_train[idx])
    params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
    return (params, stats), (loss, (log_p.argmax(1) == y_train[idx]).mean())


@jax.jit
def train_epoch(params, stats, key):
    steps = len(x_train) // BATCH
    order = jax.random.permutation(key, len(x_train))[: steps * BATCH].reshape(steps, BATCH)
    (params, stats), (losses, accuracies) = jax.lax.scan(step, (params, stats), order)
    return params, stats, losses.mean(), accuracies.mean()


@jax.jit
def evaluate(params, stats, x, y):
    log_p, _ = forward(params, stats, x, False)
    return -jnp.take_along_axis(log_p, y[:, None], 1).mean(), (log_p.argmax(1) == y).mean()


epoch_seconds, last = [], time.perf_counter()
for epoch in range(EPOCHS):
    params, stats, loss, accuracy = train_epoch(params, stats, jax.random.fold_in(jax.random.key(1), epoch))
    val_loss, val_accuracy = evaluate(params, stats, x_valid, y_valid)
    float(val_accuracy)  # wait for the device
    now = time.perf_counter()
    epoch_seconds.append(now - last)
    last = now
train_seconds = time.perf_counter() - started
_, test_accuracy = evaluate(params, stats, x_test, y_test)
print("RESULT " + json.dumps({"epoch_seconds": epoch_seconds, "train_seconds": train_seconds,
                              "test_accuracy": float(test_accuracy)}))
