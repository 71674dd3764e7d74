"""TensorBoard scalars for a run, without TensorFlow: tensorboardX writes the event files.

    train(config, run_dir, tensorboard="tb")   # then: tensorboard --logdir tb

One folder per run under the given one (named as the run directory), one point per epoch for
each of history.csv's figures. The run directory stays the source of truth: these files are a
view of it, for people who keep their experiments in TensorBoard.
"""

from __future__ import annotations

from pathlib import Path

import keras

from fashionlab.errors import ConfigError
from fashionlab.files import check_writable


def check_folder(folder: str | Path, run_name: str) -> Path:
    """`folder`, once tensorboardX is known to be installed and the run's subfolder (`run_name`)
    can be written there: refused before a run starts rather than after. Nothing is made yet."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ConfigError("`tensorboard` needs the tensorboardX package: pip install 'fashionlab[tensorboard]'",
                          terms=["tensorboard"]) from None
    folder = Path(folder)
    check_writable(folder / run_name, what="TensorBoard files", term="tensorboard")
    return folder


class TensorBoardScalars(keras.callbacks.Callback):
    """Writes each recorded epoch's figures (loss, accuracy, their validation twins, learning rate,
    seconds) as scalars: training ones under train/, validation ones under validation/."""

    def __init__(self, logdir: Path, rows: list[dict[str, float]]):
        super().__init__()
        self.logdir = logdir
        self.rows = rows  # the recorder's rows, appended to as epochs are recorded
        self.written = 0
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(logdir))

    def on_epoch_end(self, epoch, logs=None):
        for row in self.rows[self.written:]:
            step = int(row["epoch"])
            for key, value in row.items():
                if key != "epoch":
                    self.writer.add_scalar(tag(key), float(value), step)
        self.written = len(self.rows)
        self.writer.flush()

    def on_train_end(self, logs=None):
        self.writer.close()


def tag(key: str) -> str:
    """history.csv's column as a TensorBoard tag: val_loss -> validation/loss, loss -> train/loss."""
    if key.startswith("val_"):
        return "validation/" + key[4:]
    return ("train/" if key in ("loss", "accuracy") else "epoch/") + key
