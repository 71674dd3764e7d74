"""How fast can small CNNs train on this machine's CPU? Side-by-side timings, in one run.

    .venv/bin/python benchmarks/cpu_conv.py [--tf-python /tmp/cnnbench/tfvenv/bin/python] [--out DIR]
    .venv/bin/python benchmarks/cpu_conv.py --sections base,accuracy   # b128 rows + short accuracy checks
    .venv/bin/python benchmarks/cpu_conv.py --recipe fast             # one recipe, trained end to end

The default run (sections batch,bf16,attribution,arch,flags,tf) takes ~19 minutes here; results go
to --out (cpu_conv.json, cpu_conv.md, one log per worker). The TensorFlow rows need a Python that
has tensorflow-cpu, kept out of fashionlab's venv (Keras imports TensorFlow whenever it is there):

    python3 -m venv /tmp/cnnbench/tfvenv
    /tmp/cnnbench/tfvenv/bin/pip install "tensorflow-cpu==2.21.*" "keras==3.15.1"

Every alternative trains the same Keras network (28x28x1 standardized input, 3x3 'same' convs, each
followed by BatchNormalization + ReLU, 2x2 max-pool after each block, Dense head, softmax 10) with
Adam on the 55,000 training images, and differs in one thing:

  keras     Keras Conv2D + MaxPooling2D on JAX, trained by fashionlab's compiled loop (engine.py:
            data on the device, steps inside one jitted lax.fori_loop over stateless_call and
            optimizer.stateless_apply; `compiled_loop` below is that loop's core): loop=fori is
            the reference, "alternative 1". loop=step runs the same step jitted on its own, one
            dispatch per batch from Python, as Keras' own fit does. The difference is large:
            XLA:CPU rewrites convolutions into the form its Eigen kernels take only in the entry
            computation, so inside a while loop (fori_loop, scan) the backward convolutions run
            as naive loops (jax-ml/jax#12868).
  im2col    the same network with each 3x3 conv written as a Keras layer doing im2col with
            keras.ops (the 9 shifted views concatenated on the channel axis, one matmul) and the
            2x2 max-pool as reshape + max (its gradient is a cheap select instead of XLA's
            select-and-scatter). Same loop. Attribution rows split the two changes
            (im2col_kpool: im2col conv + Keras pool; keras_rpool: Keras conv + reshape pool), and
            `patches` uses jax.lax.conv_general_dilated_patches + matmul instead of the slices.
  bf16      the Keras "mixed_bfloat16" policy (float32 variables, bfloat16 compute).
  flags     XLA_FLAGS that exist in jaxlib 0.10.2 (each flag set runs in its own process).
  tf        Keras' TensorFlow backend, model.fit with steps_per_execution and jit_compile, run by
            the separate Python given by --tf-python.
  arch      network changes: 2x2 patchify stem, fewer channels at 28x28, max-pool after the
            first conv, depthwise-separable convs (as 9 shifted multiply-adds + a 1x1 matmul).

Timing: each alternative is compiled first (its compile seconds reported apart), warmed up, then
timed for N steps (N chosen once per alternative so that one measurement takes ~--target seconds;
4 <= N <= 50, 3 when a step takes over a second) and scaled to an epoch of 55,000 images. The
alternatives are measured round-robin, --repeats times each, in worker processes that all stay
alive, so a slow spell on this shared 2-core machine hits them all alike; the table shows the
median, the min-max spread, and the speed-up against alternative 1 (Keras Conv2D in the fori_loop,
float32, default flags, batch 128, same base network) and against Conv2D one step per dispatch,
both measured in this run.

--sections accuracy trains a few networks for 2-3 epochs (Adam 1e-3, same seed) and reports the test
accuracy after each epoch; --recipe trains one recipe of RECIPES end to end (cosine-decayed Adam)
and reports its training seconds (compilation included, test evaluations excluded) and accuracy.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
N_TRAIN = 55_000
BATCHES = (64, 128, 256, 512)

# XLA:CPU flags of jaxlib 0.10.2 worth a try (names checked against the flags the library registers).
# "individual_dot" hands each dot to the library; the convolution types were slower or no-ops.
FLAGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "ynn_dot": "--xla_cpu_experimental_ynn_fusion_type=individual_dot",
    "xnn_dot": "--xla_cpu_experimental_xnn_fusion_type=individual_dot",
    "one_thread": "--xla_cpu_multi_thread_eigen=false",
}

# (kind, width): conv = 3x3 conv + BN + ReLU; stem = 2x2 stride-2 "patchify" conv + BN + ReLU;
# sep = depthwise 3x3 + pointwise 1x1 + BN + ReLU; pool = 2x2 max-pool; dense = Dense + ReLU.
NETS = {
    "small": [("conv", 32), ("pool",), ("conv", 64), ("pool",), ("flatten",), ("dense", 128), ("dropout", 0.3)],
    "small_c16": [("conv", 16), ("pool",), ("conv", 64), ("pool",), ("flatten",), ("dense", 128),
                  ("dropout", 0.3)],
    "small_pstem": [("stem", 32), ("conv", 64), ("pool",), ("flatten",), ("dense", 128), ("dropout", 0.3)],
    # three single-conv blocks, cheap at 28x28: the fast recipe's network
    "small3": [("conv", 16), ("pool",), ("conv", 64), ("pool",), ("conv", 128), ("pool",), ("flatten",),
               ("dense", 128), ("dropout", 0.3)],
    "small3_pstem": [("stem", 32), ("conv", 64), ("pool",), ("conv", 128), ("pool",), ("flatten",),
                     ("dense", 128), ("dropout", 0.3)],
    "medium": [("conv", 32), ("conv", 32), ("pool",), ("conv", 64), ("conv", 64), ("pool",),
               ("conv", 128), ("conv", 128), ("pool",), ("flatten",), ("dense", 256), ("dropout", 0.4)],
    "medium_p1": [("conv", 32), ("pool",), ("conv", 64), ("conv", 64), ("pool",),
                  ("conv", 128), ("conv", 128), ("pool",), ("flatten",), ("dense", 256), ("dropout", 0.4)],
    "medium_pstem": [("stem", 32), ("conv", 64), ("conv", 64), ("pool",),
                     ("conv", 128), ("conv", 128), ("pool",), ("flatten",), ("dense", 256), ("dropout", 0.4)],
    "medium_sep": [("conv", 32), ("sep", 32), ("pool",), ("sep", 64), ("sep", 64), ("pool",),
                   ("sep", 128), ("sep", 128), ("pool",), ("flatten",), ("dense", 256), ("dropout", 0.4)],
}


# --- the layers: keras.ops only (bar `patches`), so they run on the JAX and TensorFlow backends ----

@functools.cache
def custom_layers() -> SimpleNamespace:
    import keras
    from keras import ops

    class SquareKernel(keras.layers.Layer):
        """A bias-free layer with a Conv2D kernel (size, size, in, filters) and Conv2D's initializer."""

        size = 3

        def __init__(self, filters: int, **kwargs):
            super().__init__(**kwargs)
            self.filters = filters

        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(self.size, self.size, input_shape[-1], self.filters),
                                          initializer="glorot_uniform", name="kernel")

    class Conv3x3(SquareKernel):
        """3x3 'same' convolution, no bias, as im2col: the 9 shifted views side by side, one matmul.
        Same kernel shape (3, 3, in, out) and initializer as Conv2D, so it computes the same function."""

        def call(self, x):
            h, w, c = x.shape[1], x.shape[2], x.shape[3]
            padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            views = [padded[:, i:i + h, j:j + w, :] for i in range(3) for j in range(3)]
            return ops.matmul(ops.concatenate(views, axis=-1), ops.reshape(self.kernel, (9 * c, self.filters)))

    class PatchesConv3x3(Conv3x3):
        """The same, with XLA's conv_general_dilated_patches building the patches (JAX only)."""

        def call(self, x):
            import jax

            c = x.shape[-1]
            patches = jax.lax.conv_general_dilated_patches(x, (3, 3), (1, 1), "SAME",
                                                           dimension_numbers=("NHWC", "HWIO", "NHWC"))
            # patches are channel-major (c, kh, kw)
            return ops.matmul(patches, ops.reshape(ops.transpose(self.kernel, (2, 0, 1, 3)), (c * 9, self.filters)))

    class Patchify2(SquareKernel):
        """2x2 stride-2 convolution (a 'patchify' stem) as reshape + transpose + one matmul."""

        size = 2

        def call(self, x):
            h, w, c = x.shape[1] // 2, x.shape[2] // 2, x.shape[3]
            x = ops.reshape(x, (-1, h, 2, w, 2, c))
            x = ops.reshape(ops.transpose(x, (0, 1, 3, 2, 4, 5)), (-1, h, w, 4 * c))
            return ops.matmul(x, ops.reshape(self.kernel, (4 * c, self.filters)))

    class SepConv3x3(keras.layers.Layer):
        """Depthwise 3x3 'same' (9 shifted multiply-adds) then pointwise 1x1 (one matmul), no bias."""

        def __init__(self, filters: int, **kwargs):
            super().__init__(**kwargs)
            self.filters = filters

        def build(self, input_shape):
            c = input_shape[-1]
            self.depthwise = self.add_weight(shape=(3, 3, c), initializer="glorot_uniform", name="depthwise")
            self.pointwise = self.add_weight(shape=(c, self.filters), initializer="glorot_uniform", name="pointwise")

        def call(self, x):
            h, w = x.shape[1], x.shape[2]
            padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
            acc = None
            for i in range(3):
                for j in range(3):
                    term = padded[:, i:i + h, j:j + w, :] * self.depthwise[i, j]
                    acc = term if acc is None else acc + term
            return ops.matmul(acc, self.pointwise)

    class MaxPool2(keras.layers.Layer):
        """2x2 max-pool, stride 2, 'valid' (an odd edge is dropped, as MaxPooling2D does), as reshape + max."""

        def call(self, x):
            h, w, c = x.shape[1] // 2, x.shape[2] // 2, x.shape[3]
            x = x[:, :2 * h, :2 * w, :]
            return ops.max(ops.reshape(x, (-1, h, 2, w, 2, c)), axis=(2, 4))

    class RandomShiftFlip(keras.layers.Layer):
        """Training-time augmentation: random horizontal flip and a random shift of up to `pad` pixels
        (zero padding: the standardized background is the input's minimum, so pad with that)."""

        def __init__(self, pad: int = 2, fill: float = 0.0, seed: int = 0, **kwargs):
            super().__init__(**kwargs)
            self.pad, self.fill = pad, fill
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, x, training=False):
            if not training:
                return x
            n, h, w = ops.shape(x)[0], x.shape[1], x.shape[2]
            p = self.pad
            flip = keras.random.uniform((n, 1, 1, 1), seed=self.seed_generator) < 0.5
            x = ops.where(flip, x[:, :, ::-1, :], x)
            x = ops.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), constant_values=self.fill)
            dy = keras.random.randint((n, 1), 0, 2 * p + 1, seed=self.seed_generator)
            dx = keras.random.randint((n, 1), 0, 2 * p + 1, seed=self.seed_generator)
            rows = ops.reshape(ops.arange(h)[None, :] + dy, (-1, h, 1, 1))
            x = ops.take_along_axis(x, rows, axis=1)
            cols = ops.reshape(ops.arange(w)[None, :] + dx, (-1, 1, w, 1))
            return ops.take_along_axis(x, cols, axis=2)

    return SimpleNamespace(Conv3x3=Conv3x3, PatchesConv3x3=PatchesConv3x3, Patchify2=Patchify2,
                           SepConv3x3=SepConv3x3, MaxPool2=MaxPool2, RandomShiftFlip=RandomShiftFlip)


def build_model(net: str, form: str, dtype: str = "float32", augment: float | None = None, learning_rate=1e-3):
    """The network `net` in formulation `form`, compiled with Adam and sparse categorical cross-entropy.

    form: keras (Conv2D, MaxPooling2D, SeparableConv2D), im2col (Conv3x3, MaxPool2, SepConv3x3),
    im2col_kpool, keras_rpool, patches. dtype: float32 or bf16 (the mixed_bfloat16 policy).
    augment: None, or the standardized background value for RandomShiftFlip.
    """
    import keras

    L = custom_layers()
    keras_conv, keras_pool = form in ("keras", "keras_rpool"), form in ("keras", "im2col_kpool")
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16" if dtype == "bf16" else "float32")
    try:
        layers = [keras.Input((28, 28, 1))]
        if augment is not None:
            layers.append(L.RandomShiftFlip(fill=augment))
        for spec in NETS[net]:
            kind = spec[0]
            if kind in ("conv", "stem", "sep"):
                f = spec[1]
                if kind == "conv":
                    layer = (keras.layers.Conv2D(f, 3, padding="same", use_bias=False) if keras_conv
                             else L.PatchesConv3x3(f) if form == "patches" else L.Conv3x3(f))
                elif kind == "stem":
                    layer = keras.layers.Conv2D(f, 2, strides=2, use_bias=False) if keras_conv else L.Patchify2(f)
                else:
                    layer = (keras.layers.SeparableConv2D(f, 3, padding="same", use_bias=False) if keras_conv
                             else L.SepConv3x3(f))
                layers += [layer, keras.layers.BatchNormalization(), keras.layers.ReLU()]
            elif kind == "pool":
                layers.append(keras.layers.MaxPooling2D(2) if keras_pool else L.MaxPool2())
            elif kind == "flatten":
                layers.append(keras.layers.Flatten())
            elif kind == "dense":
                layers.append(keras.layers.Dense(spec[1], activation="relu"))
            elif kind == "dropout":
                layers.append(keras.layers.Dropout(spec[1]))
        layers.append(keras.layers.Dense(10, activation="softmax", dtype="float32"))
        model = keras.Sequential(layers, name=f"{net}_{form}_{dtype}")
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return model


def compile_model(model, learning_rate, **kwargs):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], **kwargs)
    return model


def steps_for(seconds_per_step: float, target: float, multiple: int = 1) -> int:
    n = min(50, max(4 if seconds_per_step < 1 else 3, math.ceil(target / max(seconds_per_step, 1e-6))))
    return multiple * math.ceil(n / multiple)


# --- the JAX worker: fashionlab's compiled loop --------------------------------------------------

def compiled_loop(model, batch: int):
    """fashionlab's compiled training loop (src/fashionlab/engine.py) reduced to its core, kept here
    so the benchmark does not follow the engine's private API: the images live on the device, a
    batch is gathered by a permutation, `stateless_call` + `optimizer.stateless_apply` make a step,
    loss and hits are summed on the device, and steps start..stop run in one jitted lax.fori_loop."""
    import jax
    import jax.numpy as jnp
    import keras

    loss_fn = keras.losses.get(model.loss)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)

    def step(state, x, y):
        trainable, non_trainable, optimizer, loss_sum, hits = state

        def loss(trainable, non_trainable):
            y_pred, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
            return jnp.mean(loss_fn(y, y_pred)), (y_pred, non_trainable)

        (value, (y_pred, non_trainable)), grads = jax.value_and_grad(loss, has_aux=True)(trainable, non_trainable)
        trainable, optimizer = model.optimizer.stateless_apply(optimizer, grads, trainable)
        hits = hits + jnp.sum(jnp.argmax(y_pred, axis=-1) == y)
        return trainable, non_trainable, optimizer, loss_sum + value * y.shape[0], hits

    def chunk(state, x_all, y_all, order, start, stop):
        def body(i, state):
            indices = jax.lax.dynamic_slice_in_dim(order, i * batch, batch)
            x = jnp.take(x_all, indices, axis=0).astype(jnp.float32)
            return step(state, x, jnp.take(y_all, indices, axis=0))

        return jax.lax.fori_loop(start, stop, body, state)

    def one_step(state, x_all, y_all, order, i):  # the same step, outside any loop
        indices = jax.lax.dynamic_slice_in_dim(order, i * batch, batch)
        return step(state, jnp.take(x_all, indices, axis=0).astype(jnp.float32), jnp.take(y_all, indices, axis=0))

    def read_state():
        return ([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables],
                [v.value for v in model.optimizer.variables], jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

    def write_state(state):
        for variables, values in ((model.trainable_variables, state[0]), (model.non_trainable_variables, state[1]),
                                  (model.optimizer.variables, state[2])):
            for variable, value in zip(variables, values):
                variable.assign(value)

    return SimpleNamespace(chunk=jax.jit(chunk), one_step=jax.jit(one_step), read_state=read_state,
                           write_state=write_state)


def jax_worker(data_path: str) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    data = np.load(data_path)
    x_train, y_train = jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"])
    x_test, y_test = jnp.asarray(data["x_test"]), data["y_test"]
    order = jax.random.permutation(jax.random.key(0), N_TRAIN)
    jobs: dict[str, dict] = {}

    def prepare(req):
        model = compile_model(build_model(req["net"], req["form"], req["dtype"]), 1e-3)
        loop = compiled_loop(model, req["batch"])
        state = loop.read_state()
        started = time.perf_counter()
        if req.get("loop", "fori") == "fori":
            program = loop.chunk.lower(state, x_train, y_train, order, 0, 1).compile()
        else:
            program = loop.one_step.lower(state, x_train, y_train, order, 0).compile()
        compile_s = time.perf_counter() - started
        job = {"program": program, "loop": req.get("loop", "fori"), "state": state, "batch": req["batch"], "pos": 0}
        run(job, 2)  # warm-up
        per_step = run(job, 2) / 2
        job["steps"] = steps_for(per_step, req["target"])
        jobs[req["id"]] = job
        return {"compile_s": compile_s, "steps": job["steps"], "probe_step_s": per_step,
                "params": int(sum(np.prod(w.shape) for w in model.trainable_weights))}

    def run(job, steps):
        per_epoch = N_TRAIN // job["batch"]
        start = job["pos"] if job["pos"] + steps <= per_epoch else 0
        started = time.perf_counter()
        if job["loop"] == "fori":
            job["state"] = job["program"](job["state"], x_train, y_train, order, start, start + steps)
        else:  # one dispatch per step, as Keras' fit does (asynchronous: Python runs ahead)
            for i in range(start, start + steps):
                job["state"] = job["program"](job["state"], x_train, y_train, order, i)
        jax.block_until_ready(job["state"])
        job["pos"] = start + steps
        return time.perf_counter() - started

    def timed(req):
        job = jobs[req["id"]]
        seconds = run(job, job["steps"])
        return {"seconds": seconds, "steps": job["steps"], "epoch_s": seconds / job["steps"] * N_TRAIN / job["batch"]}

    def accuracy(req):
        """Train `epochs` epochs (a fresh permutation each; the last partial batch dropped) with the
        compiled loop; the test accuracy after each epoch, outside the timed training."""
        import keras

        augment = float(data["background"]) if req.get("augment") else None
        epochs, batch = req["epochs"], req["batch"]
        steps = N_TRAIN // batch
        lr = req.get("lr", 1e-3)
        if req.get("cosine"):
            lr = keras.optimizers.schedules.CosineDecay(lr, epochs * steps)
        keras.utils.set_random_seed(req.get("seed", 0))
        model = compile_model(build_model(req["net"], req["form"], req["dtype"], augment=augment), lr)
        loop = compiled_loop(model, batch)
        predict = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
        key = jax.random.key(req.get("seed", 0))
        started = time.perf_counter()
        state = loop.read_state()
        program = loop.chunk.lower(state, x_train, y_train, order, 0, 1).compile()
        compile_s = time.perf_counter() - started
        train_s, accs, ends = compile_s, [], []
        for epoch in range(epochs):
            t = time.perf_counter()
            perm = jax.random.permutation(jax.random.fold_in(key, epoch), N_TRAIN)
            state = program(state, x_train, y_train, perm, 0, steps)
            jax.block_until_ready(state)
            train_s += time.perf_counter() - t
            ends.append(train_s)
            pred = np.concatenate([np.asarray(predict(state[0], state[1], x_test[i:i + 2000]))
                                   for i in range(0, len(y_test), 2000)])
            accs.append(float(np.mean(pred.argmax(-1) == y_test)))
            state = state[:3] + (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        loop.write_state(state)
        return {"test_acc": accs, "train_s": train_s, "compile_s": compile_s, "epoch_end_s": ends}

    serve({"prepare": prepare, "time": timed, "accuracy": accuracy})


# --- the TensorFlow worker: Keras' own model.fit ------------------------------------------------

def tf_worker(data_path: str) -> None:
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import numpy as np
    import tensorflow as tf  # noqa: F401  (imported so its version is loaded before keras)

    data = np.load(data_path)
    x_train, y_train = data["x_train"], data["y_train"]
    jobs: dict[str, dict] = {}

    def fit(job, steps):
        b = job["batch"]
        start = job["pos"] if job["pos"] + steps * b <= N_TRAIN else 0
        x, y = x_train[start:start + steps * b], y_train[start:start + steps * b]
        started = time.perf_counter()
        job["model"].fit(x, y, batch_size=b, epochs=1, shuffle=False, verbose=0)
        job["pos"] = start + steps * b
        return time.perf_counter() - started

    def prepare(req):
        spe = req["spe"]
        model = compile_model(build_model(req["net"], req["form"], req["dtype"]), 1e-3,
                              steps_per_execution=spe, jit_compile=req["jit"])
        job = {"model": model, "batch": req["batch"], "pos": 0}
        first = fit(job, 2 * spe)  # traces and compiles the train function
        probe = fit(job, spe) / spe
        job["steps"] = steps_for(probe, req["target"], multiple=spe)
        jobs[req["id"]] = job
        return {"compile_s": max(first - 2 * spe * probe, 0.0), "steps": job["steps"], "probe_step_s": probe,
                "params": int(sum(np.prod(w.shape) for w in model.trainable_weights))}

    def timed(req):
        job = jobs[req["id"]]
        seconds = fit(job, job["steps"])
        return {"seconds": seconds, "steps": job["steps"], "epoch_s": seconds / job["steps"] * N_TRAIN / job["batch"]}

    serve({"prepare": prepare, "time": timed})


def serve(handlers) -> None:
    import traceback

    out = sys.stdout
    sys.stdout = sys.stderr  # library chatter goes to the log, not the protocol
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = handlers[request["op"]](request)
        except Exception as error:  # reported, and the run goes on without this alternative
            traceback.print_exc()
            reply = {"error": f"{type(error).__name__}: {error}"[:300]}
        out.write("@@" + json.dumps(reply) + "\n")
        out.flush()


# --- the orchestrator ----------------------------------------------------------------------------

class Worker:
    def __init__(self, key: str, python: str, kind: str, env: dict, data: Path, logs: Path):
        self.key = key
        self.log = open(logs / f"worker-{key}.log", "w")
        self.proc = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker", kind, "--data", str(data)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     env=env, cwd=str(ROOT))

    def ask(self, request: dict) -> dict:
        if self.proc.poll() is not None:
            return {"error": f"worker {self.key} exited with {self.proc.returncode}"}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        return {"error": f"worker {self.key} exited with {self.proc.wait()} (see its log)"}

    def close(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def prepare_data(path: Path) -> None:
    import numpy as np

    sys.path.insert(0, str(ROOT / "src"))
    from fashionlab.data import DataSource
    from fashionlab.preprocessing import fit_scaler

    splits = DataSource().splits(validation_size=5000)
    scaler = fit_scaler(splits.x_train)
    x_train = scaler.transform(splits.x_train)[..., None]
    x_test = scaler.transform(splits.x_test)[..., None]
    np.savez(path, x_train=x_train, y_train=splits.y_train.astype(np.int32), x_test=x_test,
             y_test=splits.y_test.astype(np.int32), background=np.float32(-scaler.mean / scaler.std))


def speed_plan(args) -> list[dict]:
    """Every alternative to time: a request for worker 'jax:<flags>' or 'tf'."""
    plan = []

    def add(worker, net, form, batch=128, dtype="float32", **extra):
        if worker != "tf":
            extra.setdefault("loop", "fori")
        name = f"{worker} {net} {form} b{batch} {dtype}" + "".join(f" {k}={v}" for k, v in extra.items())
        plan.append({"worker": worker, "id": name, "net": net, "form": form, "batch": batch, "dtype": dtype,
                     **extra})

    sections = args.sections
    if not sections & {"base", "batch", "bf16", "attribution", "arch", "flags", "tf"}:
        return plan
    for net in ("small", "medium"):
        # Alternative 1, Conv2D inside the fori_loop: its backward convolutions run as naive loops
        # (XLA:CPU canonicalizes convolutions for its Eigen kernels in the entry computation only),
        # so a step takes seconds; a few batches suffice to show it.
        for batch in ((64, 128, 256) if net == "small" and "batch" in sections else (128,)):
            add("jax:default", net, "keras", batch)
        for batch in (BATCHES if "batch" in sections else (128,)):
            add("jax:default", net, "keras", batch, loop="step")  # Conv2D, one jitted step per dispatch
            add("jax:default", net, "im2col", batch)
        add("jax:default", net, "im2col", loop="step")
        if "bf16" in sections:
            add("jax:default", net, "keras", dtype="bf16", loop="step")
            add("jax:default", net, "im2col", dtype="bf16")
    if "attribution" in sections:
        for form in ("im2col_kpool", "keras_rpool", "patches"):
            add("jax:default", "small", form)
    if "arch" in sections:
        for net in ("small_c16", "small_pstem", "small3", "medium_p1", "medium_pstem", "medium_sep"):
            add("jax:default", net, "im2col")
        add("jax:default", "medium_sep", "keras", loop="step")
    if "flags" in sections:
        for flag in FLAGS:
            if flag == "default":
                continue
            add(f"jax:{flag}", "small", "keras", loop="step")
            add(f"jax:{flag}", "small", "im2col")
            add(f"jax:{flag}", "medium", "im2col")
            if flag == "onednn":
                add(f"jax:{flag}", "small", "im2col", dtype="bf16")
                add(f"jax:{flag}", "medium", "keras", loop="step")
    if "tf" in sections and args.tf_python and Path(args.tf_python).exists():
        for net in ("small", "medium"):
            add("tf", net, "keras", spe=10, jit=False)
            add("tf", net, "keras", spe=10, jit=True)
            add("tf", net, "keras", 256, spe=10, jit=False)
        add("tf", "small", "im2col", spe=10, jit=False)
        add("tf", "small", "keras", spe=1, jit=False)
    if args.match:
        plan = [item for item in plan if any(m in item["id"] for m in args.match.split(","))]
    return plan


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_speed(args, workers: dict, plan: list[dict], log) -> dict:
    results = {}
    for item in plan:  # compile + warm up, one at a time
        reply = workers[item["worker"]].ask({"op": "prepare", "target": args.target, **item})
        results[item["id"]] = {**item, **reply, "epoch_s": []}
        log(f"prepared {item['id']}: {reply}")
    ready = [item for item in plan if "error" not in results[item["id"]]]
    for rep in range(args.repeats):
        shift = rep * len(ready) // max(args.repeats, 1)
        log(f"round {rep + 1}/{args.repeats}, load {load()}")
        for item in ready[shift:] + ready[:shift]:
            reply = workers[item["worker"]].ask({"op": "time", "id": item["id"]})
            if "error" in reply:
                results[item["id"]]["error"] = reply["error"]
                continue
            results[item["id"]]["epoch_s"].append(reply["epoch_s"])
            log(f"  {item['id']}: {reply['epoch_s']:.1f} s/epoch ({reply['steps']} steps, {reply['seconds']:.1f} s)")
    return results


ACCURACY_CHECKS = [
    # (label, request): short checks that decide between alternatives, not full trainings.
    # Adam 1e-3 constant, batch --accuracy-batch, same seed; test accuracy after every epoch.
    ("small im2col float32, 3 epochs", {"net": "small", "form": "im2col", "dtype": "float32", "epochs": 3}),
    ("small im2col bf16, 2 epochs", {"net": "small", "form": "im2col", "dtype": "bf16", "epochs": 2}),
    ("small_pstem im2col float32, 3 epochs", {"net": "small_pstem", "form": "im2col", "dtype": "float32",
                                              "epochs": 3}),
    ("small_c16 im2col float32, 3 epochs", {"net": "small_c16", "form": "im2col", "dtype": "float32", "epochs": 3}),
]

RECIPES = {
    # label: request. Batch 128, Adam with cosine decay over the planned epochs.
    "fast": {"net": "small3", "form": "im2col", "dtype": "float32", "batch": 64, "epochs": 6, "lr": 2e-3,
             "cosine": True},
    "fast_b128": {"net": "small3", "form": "im2col", "dtype": "float32", "batch": 128, "epochs": 5, "lr": 2e-3,
                  "cosine": True},
    "fast_small": {"net": "small", "form": "im2col", "dtype": "float32", "batch": 128, "epochs": 5, "lr": 2e-3,
                   "cosine": True},
    "full": {"net": "medium_p1", "form": "im2col", "dtype": "float32", "batch": 128, "epochs": 8, "lr": 2e-3,
             "cosine": True, "augment": True},
}


def markdown(results: dict, accuracy: list, info: dict) -> str:
    def med(r):
        return statistics.median(r["epoch_s"]) if r.get("epoch_s") else None

    base, step = {}, {}  # alternative 1 (Conv2D in the fori_loop) and Conv2D one step per dispatch, f32 b128
    for r in results.values():
        if r["worker"] == "jax:default" and r["form"] == "keras" and r["dtype"] == "float32" and r["batch"] == 128:
            (base if r["loop"] == "fori" else step)[r["net"]] = med(r)
    lines = [f"Machine: {info['cpu']}, {info['cores']} cores; load average at start {info['load_start']}, "
             f"end {info['load_end']}. {info['versions']}", "",
             "| engine | net | formulation | loop | batch | dtype | params | compile s | steps | s/epoch (median) "
             "| min–max | speed-up vs alt. 1 (Conv2D fori b128) | vs Conv2D step b128 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        loop = f"fit spe={r['spe']} jit={r['jit']}" if r["worker"] == "tf" else r["loop"]
        head = f"| {r['worker']} | {r['net']} | {r['form']} | {loop} | {r['batch']} | {r['dtype']} |"
        if "error" in r or not r["epoch_s"]:
            lines.append(f"{head} | | | failed: {r.get('error', 'no result')} | | | |")
            continue
        m = med(r)
        net = r["net"].split("_")[0]
        b, st = base.get(net), step.get(net)
        lines.append(f"{head} {r['params']:,} | {r['compile_s']:.1f} | {r['steps']} | {m:.1f} | "
                     f"{min(r['epoch_s']):.1f}–{max(r['epoch_s']):.1f} | {f'{b / m:.2f}x' if b else '–'} | "
                     f"{f'{st / m:.2f}x' if st else '–'} |")
    if accuracy:
        lines += ["", "| accuracy check | batch | test accuracy after each epoch | training s (compile incl.) |",
                  "|---|---|---|---|"]
        for label, r in accuracy:
            if "error" in r:
                lines.append(f"| {label} | | failed: {r['error']} | |")
            else:
                accs = ", ".join(f"{a:.4f}" for a in r["test_acc"])
                lines.append(f"| {label} | {r['batch']} | {accs} | {r['train_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=("jax", "tf"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--sections", default="batch,bf16,attribution,arch,flags,tf",
                        help="comma-separated: base (the b128 rows alone), batch, bf16, attribution, arch, flags, tf, "
                        "accuracy")
    parser.add_argument("--match", help="keep only the alternatives whose name contains one of these "
                        "comma-separated strings (names as in the log, e.g. 'tf small,small im2col b128')")
    parser.add_argument("--recipe", choices=sorted(RECIPES), help="train one recipe end to end instead")
    parser.add_argument("--epochs", type=int, help="override the recipe's epochs")
    parser.add_argument("--tf-python", default="/tmp/cnnbench/tfvenv/bin/python",
                        help="a Python with tensorflow-cpu and keras (kept out of fashionlab's venv)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--target", type=float, default=2.5, help="seconds one timing should take")
    parser.add_argument("--out", default="/tmp/cnnbench/out")
    parser.add_argument("--accuracy-batch", type=int, default=128)
    args = parser.parse_args()
    if args.worker:
        (jax_worker if args.worker == "jax" else tf_worker)(args.data)
        return
    args.sections = set(args.sections.split(","))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    transcript = open(out / "transcript.log", "a")

    def log(message: str) -> None:
        line = f"[{time.perf_counter() - started:7.1f}s] {message}"
        print(line, flush=True)
        transcript.write(line + "\n")
        transcript.flush()

    data = out / "data.npz"
    if not data.exists():
        prepare_data(data)
    info = {"cpu": open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip(),
            "cores": os.cpu_count(), "load_start": load(), "python": platform.python_version()}
    base_env = {**os.environ, "FASHIONLAB_COMPILE_CACHE": "off", "KERAS_BACKEND": "jax",
                "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore"}
    base_env.pop("XLA_FLAGS", None)

    def start(key: str) -> Worker:
        if key == "tf":
            return Worker("tf", args.tf_python, "tf", {**base_env, "KERAS_BACKEND": "tensorflow"}, data, out)
        flags = FLAGS[key.split(":")[1]]
        env = {**base_env, **({"XLA_FLAGS": flags} if flags else {})}
        return Worker(key.replace(":", "-"), sys.executable, "jax", env, data, out)

    workers: dict[str, Worker] = {}
    results, accuracy = {}, []
    try:
        if args.recipe:
            request = {**RECIPES[args.recipe], "op": "accuracy"}
            if args.epochs:
                request["epochs"] = args.epochs
            workers["jax:default"] = start("jax:default")
            log(f"recipe {args.recipe}: {request}")
            reply = workers["jax:default"].ask(request)
            log(f"recipe {args.recipe}: {reply}")
            (out / f"recipe-{args.recipe}.json").write_text(json.dumps({"request": request, "result": reply}))
            return
        plan = speed_plan(args)
        for key in dict.fromkeys(item["worker"] for item in plan):
            workers[key] = start(key)
        if plan:
            results = run_speed(args, workers, plan, log)
        if "accuracy" in args.sections:
            worker = workers.get("jax:default") or start("jax:default")
            workers["jax:default"] = worker
            for label, request in ACCURACY_CHECKS:
                request = {"op": "accuracy", "batch": args.accuracy_batch, **request}
                reply = worker.ask(request)
                accuracy.append((label, {**request, **reply}))
                log(f"accuracy {label}: {reply}")
    finally:
        for worker in workers.values():
            worker.close()
    info["load_end"] = load()
    versions = subprocess.run([sys.executable, "-c", "import jax, keras; print(f'jax {jax.__version__}, "
                               "keras {keras.__version__}')"], capture_output=True, text=True,
                              env=base_env).stdout.strip()
    if "tf" in {r["worker"] for r in results.values()}:
        versions += ", " + subprocess.run([args.tf_python, "-c", "import tensorflow as tf; print(f'tensorflow "
                                           "{tf.__version__}')"], capture_output=True, text=True,
                                          env=base_env).stdout.strip()
    info["versions"] = versions
    (out / "cpu_conv.json").write_text(json.dumps({"info": info, "results": results, "accuracy": accuracy},
                                                  indent=1, default=str))
    table = markdown(results, accuracy, info)
    (out / "cpu_conv.md").write_text(table)
    log(f"done in {time.perf_counter() - started:.0f} s\n{table}")


if __name__ == "__main__":
    main()
