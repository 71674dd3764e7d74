"""The tutorial's code as written (part 3), on Keras 3 with whatever KERAS_BACKEND says.

    KERAS_BACKEND=tensorflow python benchmarks/contenders/tutorial_keras.py
    BENCH_STEPS_PER_EXECUTION=64 python benchmarks/contenders/tutorial_keras.py   # as an informed user sets it

BENCH_STEPS_PER_EXECUTION above 1 compiles with steps_per_execution and jit_compile=True: Keras'
own way to run many steps per dispatch, the best-configured `fit` to compare the compiled engine with.

Only the data loading differs: keras.datasets.fashion_mnist.load_data() would download, so
the same arrays come from the official files through fashionlab.data (not timed).
"""

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "src"))
import keras  # noqa: E402
from epoch_times import EpochTimes  # noqa: E402  (beside this script)
from sklearn.preprocessing import StandardScaler  # noqa: E402

from fashionlab import data  # noqa: E402  (sets no backend: KERAS_BACKEND is already set)

epochs = int(os.environ.get("BENCH_EPOCHS", "10"))
steps_per_execution = int(os.environ.get("BENCH_STEPS_PER_EXECUTION", "1"))
splits = data.DataSource().splits()
x_train, y_train, x_valid, y_valid = splits.x_train, splits.y_train, splits.x_valid, splits.y_valid
x_test, y_test = splits.x_test, splits.y_test

started = time.perf_counter()
scaler = StandardScaler()
x_train = scaler.fit_transform(x_train.astype(np.float32).reshape(-1, 1)).reshape(-1, 28, 28)
x_valid = scaler.transform(x_valid.astype(np.float32).reshape(-1, 1)).reshape(-1, 28, 28)
x_test = scaler.transform(x_test.astype(np.float32).reshape(-1, 1)).reshape(-1, 28, 28)

model = keras.models.Sequential()
model.add(keras.layers.Input(shape=[28, 28]))  # Keras 3: Flatten(input_shape=...) is deprecated
model.add(keras.layers.Flatten())
for _ in range(20):
    model.add(keras.layers.Dense(100, activation="relu"))
    model.add(keras.layers.BatchNormalization())
model.add(keras.layers.Dense(10, activation="softmax"))
model.compile(loss="sparse_categorical_crossentropy", optimizer="sgd", metrics=["accuracy"],
              **({"steps_per_execution": steps_per_execution, "jit_compile": True} if steps_per_execution > 1 else {}))


timer = EpochTimes()
model.fit(x_train, y_train, epochs=epochs, validation_data=(x_valid, y_valid), callbacks=[timer], verbose=0)
train_seconds = time.perf_counter() - started
loss, accuracy = model.evaluate(x_test, y_test, verbose=0)
print("RESULT " + json.dumps({"epoch_seconds": timer.seconds, "train_seconds": train_seconds,
                              "test_accuracy": float(accuracy), "backend": keras.backend.backend()}))
