"""Training progress in a Jupyter kernel: one line per epoch, updated in place through IPython's
display machinery (Keras' bar redraws itself with backspaces and carriage returns, which a saved
notebook keeps as rows of boxes), and left as plain text when the epoch ends.

    callbacks.append(NotebookProgress(epochs=10, steps=1719))
"""

from __future__ import annotations

import time
from typing import Any

import keras

BAR = 20  # characters of the bar
EVERY = 0.5  # seconds between two updates of the line


class NotebookProgress(keras.callbacks.Callback):
    """Each epoch's line: `epoch 3/10 ━━━━━━━━━━━━━━━━━━━━ 1719/1719  12.3 s  accuracy 0.8391 ...`."""

    def __init__(self, epochs: int, steps: int):
        super().__init__()
        self.epochs, self.steps = epochs, steps
        self.handle: Any = None
        self.epoch, self.started, self.shown = 0, 0.0, 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        from IPython.display import display

        self.epoch, self.started, self.shown = epoch, time.monotonic(), 0.0
        self.handle = display(self._line(0, {}), display_id=True)  # None outside a kernel: it printed the line

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.handle is not None and time.monotonic() - self.shown >= EVERY:
            self.shown = time.monotonic()
            self.handle.update(self._line(batch + 1, logs or {}))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        line = self._line(self.steps, logs or {})
        if self.handle is not None:
            self.handle.update(line)
        else:
            print(line.data)

    def _line(self, step: int, logs: dict[str, Any]):
        from IPython.display import Pretty

        done = round(BAR * step / max(self.steps, 1))
        figures = "  ".join(f"{key} {value:.4f}" for key, value in logs.items()
                            if key != "learning_rate" and isinstance(value, (int, float)))
        return Pretty(f"epoch {self.epoch + 1}/{self.epochs} {'━' * done}{'·' * (BAR - done)} {step}/{self.steps}  "
                      f"{time.monotonic() - self.started:.1f} s  {figures}".rstrip())
