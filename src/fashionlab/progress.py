"""Training progress where Keras' bar does not fit. In a Jupyter kernel: one line per epoch, updated
in place through IPython's display machinery (Keras' bar redraws itself with backspaces and carriage
returns, which a saved notebook keeps as rows of boxes), and left as plain text when the epoch ends.
In logs and pipes: a plain line every LINE_EVERY seconds within an epoch (Keras prints one per epoch,
minutes apart for a CNN on a slow machine).

    callbacks.append(NotebookProgress(epochs=10, steps=1719))
    callbacks.append(LineProgress(epochs=10, steps=1719))
"""

from __future__ import annotations

import time
from typing import Any

import keras

BAR = 20  # characters of the bar
EVERY = 0.5  # seconds between two updates of the line
LINE_EVERY = 30.0  # seconds between two lines within an epoch, in logs and pipes


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


class LineProgress(keras.callbacks.Callback):
    """Within an epoch, a line at least every `every` seconds once that much has passed:
    `epoch 2/10  step 812/1719 (47%)  41 s  19.8 steps/s  about 46 s left  loss 0.4312  accuracy 0.8421`.
    The check is one clock reading per batch (per compiled chunk of batches in the compiled
    engine); Keras' own line still ends each epoch."""

    def __init__(self, epochs: int, steps: int, every: float = LINE_EVERY, write: Any = None):
        super().__init__()
        self.epochs, self.steps, self.every = epochs, steps, every
        self.write = write or (lambda line: print(line, flush=True))
        self.epoch, self.started, self.shown = 0, 0.0, 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch, self.started = epoch, time.monotonic()
        self.shown = self.started

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        now = time.monotonic()
        if now - self.shown >= self.every and batch + 1 < self.steps:
            self.shown = now
            self.write(self.line(batch + 1, now - self.started, logs or {}))

    def line(self, done: int, seconds: float, logs: dict[str, Any]) -> str:
        rate = done / max(seconds, 1e-9)
        figures = "".join(f"  {key} {float(logs[key]):.4f}" for key in ("loss", "accuracy") if key in logs)
        return (f"epoch {self.epoch + 1}/{self.epochs}  step {done}/{self.steps} ({100 * done // self.steps}%)  "
                f"{seconds:.0f} s  {rate:.1f} steps/s  about {(self.steps - done) / rate:.0f} s left{figures}")
