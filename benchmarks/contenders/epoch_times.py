"""A Keras callback timing each epoch, for the contenders that train with Keras' own fit."""

import time

import keras


class EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds, self.last = [], time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.seconds.append(now - self.last)  # epoch 1 includes compilation, as fit reports it
        self.last = now
