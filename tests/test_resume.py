"""Interruptions, kills, divergence and failing writes: runs lose nothing and resume exactly."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import keras
import pandas as pd
import pytest
from helpers import TINY, synthetic_arrays, write_dataset

from fashionlab.data import DataSource
from fashionlab.errors import Diverged, Interrupted, RunError
from fashionlab.interrupts import StopRequest
from fashionlab.model import build_model
from fashionlab.rundir import MODEL_FILE, Run
from fashionlab.training import RunRecorder, resume, train

# Big enough that an epoch takes a moment, so a kill lands inside one; every option that draws
# random numbers or depends on the step is on, since resuming must reproduce each of them.
CONFIG = TINY.replace(depth=20, width=100, epochs=8, validation_size=500, augment_shift=2, augment_flip=True,
                      dropout=0.1, label_smoothing=0.1, optimizer="adamw", weight_decay=1e-4, learning_rate=0.003,
                      schedule="one_cycle")
COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
# Where the kill lands is drawn from this seed (printed with any failure), so a failure can be replayed:
# FASHIONLAB_KILL_SEED=<seed> pytest tests/test_resume.py
KILL_SEED = int(os.environ.get("FASHIONLAB_KILL_SEED", random.randrange(2**32)))


@pytest.fixture(scope="module")
def bigger_data(tmp_path_factory):
    directory = write_dataset(tmp_path_factory.mktemp("data"), synthetic_arrays(n_train=6500, n_test=200))
    return DataSource(directory, verify=False)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, bigger_data):
    return train(CONFIG, tmp_path_factory.mktemp("runs") / "whole", data=bigger_data, verbose=0)


def start_training(run_dir, data):
    command = [sys.executable, "-m", "fashionlab", "train", "--run-dir", str(run_dir),
               "--data-dir", str(data.data_dir), "--no-verify", "--config", str(run_dir.parent / "config.json")]
    (run_dir.parent / "config.json").write_text(json.dumps(CONFIG.to_dict()))
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_epochs(process, run_dir, epochs, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        status = run_dir / "run.json"
        if status.is_file() and json.loads(status.read_text()).get("epochs_done", 0) >= epochs:
            return
        time.sleep(0.05)
    pytest.fail(f"training did not reach epoch {epochs}: {process.communicate()}")


def test_sigkill_then_resume_equals_an_uninterrupted_run(tmp_path, bigger_data, uninterrupted):
    draw = random.Random(KILL_SEED)
    epochs, delay = draw.randint(1, CONFIG.epochs // 2), draw.uniform(0, 0.1)
    where = f"kill after epoch {epochs} + {delay:.3f} s (FASHIONLAB_KILL_SEED={KILL_SEED})"
    run_dir = tmp_path / "killed"
    process = start_training(run_dir, bigger_data)
    wait_for_epochs(process, run_dir, epochs)
    time.sleep(delay)  # somewhere inside the next epoch (~0.2 s each)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = len(pd.read_csv(run_dir / "history.csv"))
    assert 1 <= done < CONFIG.epochs and Run(run_dir).checkpoints(), where
    assert json.loads((run_dir / "run.json").read_text())["status"] == "running", where  # it died: never marked

    result = resume(run_dir, data=bigger_data, verbose=0)
    pd.testing.assert_frame_equal(result.history[COLUMNS], uninterrupted.history[COLUMNS], rtol=1e-6, obj=where)
    assert Run(run_dir).status()["status"] == "complete"
    assert not Run(run_dir).checkpoints()
    assert result.metrics["test_accuracy"] == pytest.approx(uninterrupted.metrics["test_accuracy"], abs=1e-9)


def test_ctrl_c_stops_marks_interrupted_and_prints_the_resume_command(tmp_path, bigger_data, uninterrupted):
    run_dir = tmp_path / "stopped"
    process = start_training(run_dir, bigger_data)
    wait_for_epochs(process, run_dir, 2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert f"resume with fashionlab train --resume {run_dir}" in err and "Traceback" not in err
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "interrupted"
    assert len(pd.read_csv(run_dir / "history.csv")) == status["epochs_done"] >= 2
    assert not (run_dir / "metrics.json").exists()
    with pytest.raises(RunError, match="is interrupted"):
        Run.open(run_dir)

    resumed = subprocess.run([sys.executable, "-m", "fashionlab", "train", "--resume", str(run_dir), "--data-dir",
                              str(bigger_data.data_dir), "--no-verify"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    history = pd.read_csv(run_dir / "history.csv")
    pd.testing.assert_frame_equal(history[COLUMNS], uninterrupted.history[COLUMNS], rtol=1e-6)


def test_resume_refuses_a_complete_run_and_changed_options(uninterrupted, bigger_data):
    with pytest.raises(RunError, match="already complete"):
        resume(uninterrupted.run.path, data=bigger_data)
    changed = subprocess.run([sys.executable, "-m", "fashionlab", "train", "--resume", str(uninterrupted.run.path),
                              "--epochs", "9"], capture_output=True, text=True)
    assert changed.returncode == 1 and "drop --epochs" in changed.stderr


def test_divergence_stops_and_marks_the_run_failed(tmp_path, synthetic):
    config = TINY.replace(scale_inputs=False, batch_norm="none", learning_rate=1e30, epochs=3)
    with pytest.raises(Diverged, match="NaN or infinite in epoch 1"):
        train(config, tmp_path / "nan", data=synthetic, verbose=0)
    status = json.loads((tmp_path / "nan" / "run.json").read_text())
    assert status["status"] == "failed" and "lower learning_rate" in status["message"]
    assert not (tmp_path / "nan" / "model.keras").exists() and not (tmp_path / "nan" / "metrics.json").exists()


GOOD_EPOCH = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.1, "val_accuracy": 0.4}


def recorder_after_one_good_epoch(run):
    run.write_json("config.json", TINY.to_dict())
    model = build_model(TINY)
    recorder = RunRecorder(run, StopRequest())
    recorder.set_model(model)
    recorder.on_epoch_begin(0)
    recorder.on_train_batch_end(0, {"loss": 1.0})
    recorder.on_epoch_end(0, GOOD_EPOCH)
    recorder.on_epoch_begin(1)
    return recorder


def assert_only_the_good_epoch_is_kept(run_dir):
    assert len(pd.read_csv(run_dir / "history.csv")) == 1
    assert list(Run(run_dir).checkpoints()) == [1]
    assert json.loads((run_dir / "run.json").read_text())["epochs_done"] == 1


def test_a_diverging_epoch_is_not_recorded_and_the_last_good_one_is_kept(tmp_path):
    with Run.create(tmp_path / "run") as run:
        recorder = recorder_after_one_good_epoch(run)
        recorder.on_train_batch_end(0, {"loss": float("nan")})
        assert recorder.model.stop_training and recorder.diverged_at == 2
        recorder.on_epoch_end(1, {**GOOD_EPOCH, "loss": float("nan")})
    assert_only_the_good_epoch_is_kept(tmp_path / "run")


def test_a_non_finite_validation_loss_is_divergence_too(tmp_path):
    with Run.create(tmp_path / "run") as run:
        recorder = recorder_after_one_good_epoch(run)
        recorder.on_train_batch_end(0, {"loss": 0.9})  # training itself still finite
        recorder.on_epoch_end(1, {**GOOD_EPOCH, "val_loss": float("inf")})
        assert recorder.model.stop_training and recorder.diverged_at == 2
    assert_only_the_good_epoch_is_kept(tmp_path / "run")


def test_a_full_disk_fails_the_run_and_keeps_earlier_artifacts(tmp_path, synthetic, monkeypatch):
    def no_space(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(keras.Model, "save", no_space)
    with pytest.raises(RunError, match="checkpoint-epoch1.keras: the disk is full; earlier artifacts are intact"):
        train(TINY, tmp_path / "full", data=synthetic, verbose=0)
    run_dir = tmp_path / "full"
    assert json.loads((run_dir / "run.json").read_text())["status"] == "failed"
    assert json.loads((run_dir / "config.json").read_text()) == TINY.to_dict()
    assert len(pd.read_csv(run_dir / "history.csv")) == 1  # epoch 1 was recorded before its checkpoint
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".") and p.name != ".lock") == []


def test_history_ahead_of_the_checkpoint_is_trained_again(tmp_path, bigger_data, uninterrupted):
    """A kill between writing history.csv and the epoch's checkpoint: the checkpoint wins."""
    run_dir = tmp_path / "torn"
    process = start_training(run_dir, bigger_data)
    wait_for_epochs(process, run_dir, 3)
    process.send_signal(signal.SIGKILL)
    process.wait()
    run = Run(run_dir)
    last = max(run.checkpoints())
    shutil.copy(run.checkpoints()[last], run_dir / "keep.keras")
    for path in run.checkpoints().values():
        path.unlink()
    shutil.move(run_dir / "keep.keras", run_dir / f"checkpoint-epoch{last - 1}.keras")  # one epoch behind
    result = resume(run_dir, data=bigger_data, verbose=0)
    assert len(result.history) == CONFIG.epochs
    assert list(result.history["epoch"]) == list(range(1, CONFIG.epochs + 1))


def test_a_signal_during_the_final_writes_leaves_a_run_that_resume_finishes(tmp_path, synthetic, tiny_run, monkeypatch):
    """A real SIGTERM, sent just after model.keras is written: the run stops before its test
    outputs, is marked interrupted, and resuming (no epoch left to train) writes the rest."""
    save_model = Run.save_model

    def save_then_signal(self, model, name=MODEL_FILE):
        path = save_model(self, model, name)
        if name == MODEL_FILE:
            os.kill(os.getpid(), signal.SIGTERM)
        return path

    monkeypatch.setattr(Run, "save_model", save_then_signal)
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted, match=f"interrupted after {TINY.epochs} finished epoch"):
        train(TINY, run_dir, data=synthetic, verbose=0)
    assert Run(run_dir).status()["status"] == "interrupted"
    assert not (run_dir / "metrics.json").exists() and Run(run_dir).checkpoints()
    assert not (run_dir / "report.html").exists()  # stopped at once, not after the next writes
    monkeypatch.undo()
    result = resume(run_dir, data=synthetic, verbose=0)
    assert Run(run_dir).status()["status"] == "complete" and not Run(run_dir).checkpoints()
    pd.testing.assert_frame_equal(result.history[COLUMNS], tiny_run.history[COLUMNS])
    assert result.metrics["test_accuracy"] == tiny_run.metrics["test_accuracy"]
