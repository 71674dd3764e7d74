"""TensorBoard event files: read back record by record (TFRecord framing, Event protos) and
compared with the run's history.csv."""

import struct

import pandas as pd
import pytest
from helpers import TINY
from tensorboardX.proto import event_pb2

from fashionlab.cli import main
from fashionlab.tensorboard import tag
from fashionlab.training import train


def scalars(folder) -> dict[str, dict[int, float]]:
    """Every scalar in the event files under `folder`: tag -> step -> value (a later write wins)."""
    found: dict[str, dict[int, float]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4  # length, its CRC, the record, its CRC
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


def test_scalars_match_the_history(tmp_path, synthetic):
    result = train(TINY.replace(epochs=3, schedule="cosine"), tmp_path / "run", data=synthetic, verbose=0,
                   tensorboard=tmp_path / "tb")
    written = scalars(tmp_path / "tb" / "run")
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert set(written) == {"train/loss", "train/accuracy", "validation/loss", "validation/accuracy",
                            "epoch/learning_rate", "epoch/seconds"}
    for column in history.columns.drop("epoch"):
        assert written[tag(column)] == pytest.approx(dict(zip(history["epoch"], history[column])), rel=1e-6)
    assert written["epoch/learning_rate"][3] < written["epoch/learning_rate"][1]  # the cosine schedule
    assert result.metrics["test_accuracy"] > 0


def test_a_folder_that_cannot_be_written_is_one_line(tmp_path, synthetic, capsys):
    (tmp_path / "file").write_text("")
    code = main(["train", "--run-dir", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "file"),
                 "--data-dir", str(synthetic.data_dir), "--no-verify", "--depth", "1", "--width", "4",
                 "--epochs", "1", "--validation-size", "60"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot write TensorBoard files in" in err and "another folder" in err
    assert not (tmp_path / "run").exists()  # refused before the run began
