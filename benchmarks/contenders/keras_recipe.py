"""A fashionlab recipe trained by Keras' own `fit`, as an informed Keras user runs it: the same
network (with Keras' Conv2D and MaxPooling2D), optimizer, schedule and loss, compiled with
`steps_per_execution=64` and `jit_compile=True`; then `evaluate` on the test set.

    KERAS_BACKEND=jax python benchmarks/contenders/keras_recipe.py fast-cnn 42
    BENCH_EPOCHS=1 KERAS_BACKEND=jax python benchmarks/contenders/keras_recipe.py fast-cnn 42   # a first epoch only

Keras' fit has no on-device augmentation of its own and knows nothing of bn_lr_scale: a recipe
using them is refused. Prints one RESULT line of JSON; writes nothing.
"""

import json
import math
import os
import sys
import time

import keras
import numpy as np
from epoch_times import EpochTimes  # beside this script

from fashionlab import recipes
from fashionlab.data import DataSource
from fashionlab.layers import portable
from fashionlab.model import build_model
from fashionlab.preprocessing import fit_scaler

name, seed = sys.argv[1], int(sys.argv[2])
config = recipes.get(name).config({"seed": seed, "engine": "keras"})  # refused if only the compiled engine does it
epochs = int(os.environ.get("BENCH_EPOCHS", config.epochs))  # fewer: the schedule still spans the recipe's epochs
splits = DataSource().splits(config.validation_size)

started = time.perf_counter()
keras.utils.set_random_seed(seed)
steps = math.ceil(len(splits.x_train) / config.batch_size)
model = portable(build_model(config, fit_scaler(splits.x_train), steps_per_epoch=steps))
model.compile(loss=model.loss, optimizer=model.optimizer, metrics=["accuracy"], steps_per_execution=64,
              jit_compile=True)


def targets(y):
    return np.eye(10, dtype=np.float32)[y] if config.label_smoothing else y


timer = EpochTimes()
model.fit(splits.x_train.astype(np.float32), targets(splits.y_train), batch_size=config.batch_size,
          epochs=epochs, validation_data=(splits.x_valid.astype(np.float32), targets(splits.y_valid)),
          shuffle=config.shuffle, callbacks=[timer], verbose=0)
train_seconds = time.perf_counter() - started
_, accuracy = model.evaluate(splits.x_test.astype(np.float32), targets(splits.y_test), verbose=0)
print("RESULT " + json.dumps({"epoch_seconds": timer.seconds, "train_seconds": train_seconds,
                              "test_accuracy": float(accuracy), "backend": keras.backend.backend()}))
