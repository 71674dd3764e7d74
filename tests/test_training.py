import json
import shutil
import subprocess
import sys

import keras
import numpy as np
import pandas as pd
import pytest
from helpers import SEVEN_NAMES, TINY, synthetic_arrays, write_seven_class_dataset
from PIL import Image

from fashionlab import CLASS_NAMES
from fashionlab.data import DataSource
from fashionlab.errors import ConfigError, DataError, Interrupted, RunError
from fashionlab.evaluation import predict_proba
from fashionlab.interrupts import StopRequest, stop_when
from fashionlab.model import build_model
from fashionlab.modelfiles import load_model_file
from fashionlab.preprocessing import fit_scaler, patch_whitening
from fashionlab.rundir import Run
from fashionlab.training import RunRecorder, resume, seconds_to_accuracy, train

ARTIFACTS = {"config.json", "history.csv", "learning_curves.png", "model.keras", "metrics.json", "summary.txt",
             "confusion_matrix.csv", "confusion_matrix.png", "reliability.png", "report.html", "run.json", ".lock"}


def test_run_directory_holds_every_artifact(tiny_run):
    path = tiny_run.run.path
    assert {p.name for p in path.iterdir()} == ARTIFACTS
    assert json.loads((path / "config.json").read_text()) == TINY.to_dict()
    status = json.loads((path / "run.json").read_text())
    assert (status["status"], status["epochs_done"], status["epochs"]) == ("complete", 2, 2)

    history = pd.read_csv(path / "history.csv")
    assert list(history["epoch"]) == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"} <= set(history.columns)
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]

    metrics = json.loads((path / "metrics.json").read_text())
    assert 0 <= metrics["test_accuracy"] <= 1 and metrics["test_loss"] > 0
    assert set(metrics["per_class_accuracy"]) == set(CLASS_NAMES)
    assert len(metrics["seconds_per_epoch"]) == 2
    assert metrics["versions"]["keras"].startswith("3.")
    assert metrics["parameters"]["total"] == tiny_run.model.count_params()
    assert metrics["data"]["train"] == 300 and metrics["data"]["valid"] == 60
    assert metrics["best_epoch"] == int(history["val_accuracy"].idxmax()) + 1  # epochs count from 1
    assert metrics["best_val_accuracy"] == history["val_accuracy"].max()
    assert metrics["final_val_accuracy"] == history["val_accuracy"].iloc[-1]

    with Image.open(path / "learning_curves.png") as image:
        assert image.format == "PNG" and image.size[0] >= 600
    assert "Total params" in (path / "summary.txt").read_text()


def test_synthetic_data_is_learned(tiny_run):
    assert tiny_run.metrics["best_val_accuracy"] > 0.5


def test_the_scaler_is_fitted_on_the_training_images_only(tiny_run):
    x_train = synthetic_arrays()["train-images-idx3-ubyte"][TINY.validation_size:]
    expected = fit_scaler(x_train)
    assert tiny_run.metrics["scaler"] == pytest.approx({"mean": expected.mean, "std": expected.std}, rel=1e-6)
    everything = fit_scaler(synthetic_arrays()["train-images-idx3-ubyte"])
    assert tiny_run.metrics["scaler"]["mean"] != pytest.approx(everything.mean, rel=1e-6)


def test_same_seed_same_history(tmp_path, synthetic, tiny_run):
    again = train(TINY, tmp_path / "again", data=synthetic, verbose=0)
    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(again.history[columns], tiny_run.history[columns])
    other = train(TINY.replace(seed=8, epochs=1), tmp_path / "other", data=synthetic, verbose=0)
    assert other.history["loss"].iloc[0] != tiny_run.history["loss"].iloc[0]


def test_the_recipe_and_the_command_are_recorded(tmp_path, synthetic):
    result = train(TINY.replace(epochs=1), tmp_path / "r", data=synthetic, verbose=0, recipe="fast-mlp",
                   command="fashionlab train --recipe fast-mlp")
    status = json.loads((tmp_path / "r" / "run.json").read_text())
    assert (status["recipe"], status["command"]) == ("fast-mlp", "fashionlab train --recipe fast-mlp")
    assert (result.metrics["recipe"], result.metrics["command"]) == (status["recipe"], status["command"])


def test_existing_run_directory_is_never_overwritten(tiny_run, synthetic):
    before = (tiny_run.run.path / "metrics.json").read_bytes()
    with pytest.raises(RunError, match="already exists and is not empty"):
        train(TINY, tiny_run.run.path, data=synthetic, verbose=0)
    assert (tiny_run.run.path / "metrics.json").read_bytes() == before


def test_raw_pixels_model_has_no_scaling_layer(tmp_path, synthetic):
    result = train(TINY.replace(scale_inputs=False, epochs=1), tmp_path / "raw", data=synthetic, verbose=0)
    assert "standardize" not in [layer.name for layer in result.model.layers]
    assert result.metrics["scaler"] is None


def test_keras_fit_engine_writes_the_same_kind_of_run(tmp_path, synthetic, tiny_run):
    result = train(TINY.replace(engine="keras"), tmp_path / "fit", data=synthetic, verbose=0)
    assert result.metrics["engine"] == "keras" and tiny_run.metrics["engine"] == "compiled"
    assert {p.name for p in result.run.path.iterdir()} == ARTIFACTS
    assert list(result.history["epoch"]) == [1, 2]
    assert result.metrics["best_val_accuracy"] > 0.5


def test_early_stopping_keeps_the_best_epochs_weights(tmp_path, synthetic):
    """The synthetic classes are learnt perfectly within a few epochs, after which validation
    accuracy cannot improve: patience 1 stops one epoch later and keeps the best epoch's
    weights, which are those of a run trained for just that many epochs."""
    stopped = train(TINY.replace(epochs=12, early_stopping=1), tmp_path / "stopped", data=synthetic, verbose=0)
    best = stopped.metrics["best_epoch"]
    history = stopped.history
    assert len(history) == best + 1 < 12 and history["val_accuracy"].iloc[-1] <= history["val_accuracy"].max()
    assert stopped.metrics["weights_from_epoch"] == best and stopped.metrics["stopped_early"]
    assert Run(stopped.run.path).status()["status"] == "complete" and not Run(stopped.run.path).checkpoints()
    short = train(TINY.replace(epochs=best), tmp_path / "short", data=synthetic, verbose=0)
    saved = keras.saving.load_model(stopped.run.path / "model.keras")
    for mine, theirs in zip(saved.weights, short.model.weights):
        np.testing.assert_allclose(np.asarray(mine.value), np.asarray(theirs.value), rtol=1e-6, atol=1e-7)


def test_recorder_stops_after_patience_epochs_and_keeps_the_best_checkpoint(tmp_path):
    with Run.create(tmp_path / "run") as run:
        run.write_json("config.json", TINY.to_dict())
        recorder = RunRecorder(run, StopRequest(), patience=2)
        recorder.set_model(build_model(TINY))
        for epoch, accuracy in enumerate([0.5, 0.7, 0.6, 0.7]):
            recorder.on_epoch_begin(epoch)
            recorder.on_epoch_end(epoch, {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": accuracy})
            assert recorder.model.stop_training == (epoch == 3)  # a tie is no improvement
            assert list(run.checkpoints()) == sorted({2, epoch + 1} if epoch else {1})


class SetFromTheSecondLook:
    """An event that is clear when training starts and set as soon as the first epoch asks."""

    def __init__(self):
        self.looks = 0

    def is_set(self):
        self.looks += 1
        return self.looks > 1


def test_a_stop_within_the_first_epoch_leaves_an_interrupted_run_that_resumes(tmp_path, synthetic):
    stop_when(SetFromTheSecondLook())
    try:
        with pytest.raises(Interrupted, match="after 0 finished epoch"):
            train(TINY, tmp_path / "run", data=synthetic, verbose=0)
    finally:
        stop_when()
    run = Run(tmp_path / "run")
    assert run.status()["status"] == "interrupted" and not run.checkpoints()
    assert not (tmp_path / "run" / "history.csv").exists()
    assert list(resume(tmp_path / "run", data=synthetic, verbose=0).history["epoch"]) == [1, 2]


class FileWritten:
    """An event set once a file exists."""

    def __init__(self, path):
        self.path = path

    def is_set(self):
        return self.path.exists()


def test_a_stop_while_the_model_is_written_ends_the_run_before_the_test_set_is_read(tmp_path, synthetic):
    """Asked to stop once model.keras exists: the next safe point comes before the test evaluation
    and its reports, and resuming writes them."""
    path = tmp_path / "run"
    stop_when(FileWritten(path / "model.keras"))
    try:
        with pytest.raises(Interrupted, match=f"after {TINY.epochs} finished epoch"):
            train(TINY, path, data=synthetic, verbose=0)
    finally:
        stop_when()
    assert Run(path).status()["status"] == "interrupted"
    assert not any((path / name).exists() for name in ("report.html", "confusion_matrix.csv", "metrics.json"))
    resumed = resume(path, data=synthetic, verbose=0)
    assert Run(path).status()["status"] == "complete" and (path / "report.html").exists()
    assert len(resumed.history) == TINY.epochs

def test_seconds_to_accuracy_counts_training_time_from_the_start():
    history = pd.DataFrame({"seconds": [2.0, 1.0, 1.5], "val_accuracy": [0.80, 0.91, 0.95]})
    assert seconds_to_accuracy(history) == {"0.85": 3.0, "0.90": 3.0, "0.93": 4.5}
    assert seconds_to_accuracy(history.iloc[:1]) == {"0.85": None, "0.90": None, "0.93": None}


def test_metrics_time_the_whole_call_and_its_training(tiny_run):
    m = tiny_run.metrics
    assert m["train_seconds"] == pytest.approx(sum(m["seconds_per_epoch"]))
    assert m["wall_seconds"] > m["train_seconds"] > 0
    assert m["started"] <= m["finished"] and not m["stopped_early"]
    assert m["weights_from_epoch"] == len(m["seconds_per_epoch"])


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("run_dir, tensorboard, said", [
    ("run", "file", "cannot write TensorBoard files in {t}/file/run: {t}/file is a file, not a folder; "
                    "give `tensorboard` another folder"),
    ("run", "tb", "cannot write TensorBoard files in {t}/tb/run: {t}/tb/run is a file"),  # the run's own subfolder
    ("file/run", None, "cannot write the run in {t}/file/run: {t}/file is a file, not a folder; give `run_dir`"),
    ("/proc/fashionlab-run", None, "cannot write the run in /proc/fashionlab-run: nothing can be made in /proc"),
])
def test_every_folder_a_run_writes_is_checked_before_its_run_directory(tmp_path, synthetic, run_dir, tensorboard,
                                                                        said):
    (tmp_path / "file").write_text("")
    (tmp_path / "tb").mkdir()
    (tmp_path / "tb" / "run").write_text("")
    before = listing(tmp_path)
    with pytest.raises(ConfigError) as caught:
        train(TINY, tmp_path / run_dir, data=synthetic, verbose=0,
              tensorboard=tmp_path / tensorboard if tensorboard else None)
    assert said.format(t=tmp_path) in str(caught.value) and "\n" not in str(caught.value)
    assert listing(tmp_path) == before and not (tmp_path / "run").exists()


def test_a_refused_run_leaves_no_tensorboard_folder_either(tmp_path):
    with pytest.raises(DataError):
        train(TINY, tmp_path / "run", data=DataSource(tmp_path / "no-data"), verbose=0, tensorboard=tmp_path / "tb")
    assert listing(tmp_path) == []


def test_resume_checks_its_folders_before_its_lock(tiny_run, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_run.run.path, copy)
    (copy / ".lock").unlink()
    (copy / "file").write_text("")
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    with pytest.raises(ConfigError, match=f"cannot write TensorBoard files in {copy}/file/copy: {copy}/file is a "
                                          f"file, not a folder; give `tensorboard` another folder"):
        resume(copy, tensorboard=copy / "file")
    assert {p.name: p.read_bytes() for p in copy.iterdir()} == before  # not even the lock file


def test_the_cli_refuses_an_unwritable_tensorboard_folder_in_one_line_before_any_run(tmp_path, synthetic_dir):
    (tmp_path / "file").write_text("")
    done = subprocess.run([sys.executable, "-m", "fashionlab", "train", "--epochs", "1", "--depth", "1", "--width",
                           "4", "--validation-size", "60", "--tensorboard", str(tmp_path / "file" / "tb"),
                           "--data-dir", str(synthetic_dir), "--no-verify"], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 1 and done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.startswith(f"fashionlab: error: cannot write TensorBoard files in {tmp_path}/file/tb/")
    assert done.stderr.endswith(f": {tmp_path}/file is a file, not a folder; give --tensorboard another folder\n")
    assert done.stderr.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "synthetic"]  # no runs/ folder


@pytest.mark.parametrize("call, name", [
    (lambda t, d: train("tiny", t / "r", data=d), "config"),
    (lambda t, d: train(TINY, t / "r", data=str(d.data_dir)), "data"),
    (lambda t, d: train(TINY, t / "r", data=d, verbose=3), "verbose"),
    (lambda t, d: train(TINY, t / "r", data=d, test="no"), "test"),
    (lambda t, d: train(TINY, t / "r", data=d, callbacks=keras.callbacks.Callback()), "callbacks"),
    (lambda t, d: train(TINY, "", data=d), "run_dir"),
    (lambda t, d: resume(t / "r", data=d, tensorboard=""), "tensorboard"),
    (lambda t, d: resume(7), "run_dir"),
])
def test_train_and_resume_check_their_arguments_before_anything(tmp_path, synthetic, call, name):
    with pytest.raises(ConfigError) as caught:
        call(tmp_path, synthetic)
    assert str(caught.value).startswith(f"`{name}` must be ") and caught.value.terms == (name,)
    assert listing(tmp_path) == []


def test_a_data_set_of_seven_classes_trains_and_is_named_downstream(tmp_path):
    """A folder with the four IDX files and classes.txt: the model has seven outputs, the run records
    the folder, its names and its files' digests, and its reports, evaluation and predictions speak
    of its own classes, and so does the ONNX file exported from it."""
    import json

    from fashionlab.evaluation import evaluate
    from fashionlab.export import export
    from fashionlab.prediction import predict

    names = list(SEVEN_NAMES)
    folder = write_seven_class_dataset(tmp_path / "seven")
    result = train(TINY.replace(dataset=str(folder)), tmp_path / "run", verbose=0)
    assert result.model.output_shape == (None, 7) and list(result.metrics["per_class_accuracy"]) == names
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["dataset"]
    assert recorded["class_names"] == names and recorded["folder"] == str(folder) and len(recorded["sha256"]) == 4
    assert json.loads((tmp_path / "run" / "config.json").read_text())["dataset"] == str(folder)
    assert list(evaluate(tmp_path / "run")["per_class"]) == names
    said = predict(tmp_path / "run", indices=[0, 1], top_k=7)
    assert all(r["class_name"] in names and len(r["top_k"]) == 7 for r in said)
    with pytest.raises(ConfigError, match="`top_k` must be between 1 and 7, got 8"):
        predict(tmp_path / "run", indices=[0], top_k=8)
    photos = []  # photos of boots facing right (heavy heel left): Fashion-MNIST's would also be read mirrored
    for i, rng in enumerate(np.random.default_rng(s) for s in range(20)):
        picture, colour = np.full((56, 56, 3), 255, np.uint8), rng.integers(0, 120, 3)
        picture[rng.integers(4, 16):46, 4:rng.integers(16, 24)] = colour  # the shaft, on the left
        picture[38:46, 4:rng.integers(40, 52)] = colour  # the sole, pointing right
        photos.append(tmp_path / f"photo{i}.png")
        Image.fromarray(picture).save(photos[-1])
    assert not any("mirrored" in r for r in predict(tmp_path / "run", images=photos))
    exported = export(tmp_path / "run", out=tmp_path / "seven.onnx")  # checked on the folder's own test images
    assert exported["check"]["images"] == len(synthetic_arrays()["t10k-images-idx3-ubyte"])
    from fashionlab.onnxrun import OnnxModel

    onnx_model = OnnxModel(tmp_path / "seven.onnx")
    assert onnx_model.classes == 7 and onnx_model.dataset().class_names == tuple(names)
    assert onnx_model.metadata["dataset"] == "seven" and "(N, 7)" in onnx_model.metadata["output"]
    by_onnx = predict(onnx=tmp_path / "seven.onnx", indices=[0, 1], top_k=7, data=DataSource(folder))
    assert [r["class_name"] for r in by_onnx] == [r["class_name"] for r in said]
    with pytest.raises(ConfigError, match="not built in: give `data_dir`"):
        predict(onnx=tmp_path / "seven.onnx", indices=[0])
    stop_when(FileWritten(tmp_path / "again" / "model.keras"))  # stopped after its epochs: resumed on its data set
    try:
        with pytest.raises(Interrupted):
            train(TINY.replace(dataset=str(folder)), tmp_path / "again", verbose=0)
    finally:
        stop_when()
    resumed = resume(tmp_path / "again", verbose=0)
    assert resumed.model.output_shape == (None, 7) and list(resumed.metrics["per_class_accuracy"]) == names
    import fashionlab as fl  # the notebook API: its tables speak of the run's classes

    opened = fl.Run.open(tmp_path / "run")
    assert list(opened.confusion().index) == names and set(opened.predict([0, 1])["class"]) <= set(names)


def test_a_run_keeps_the_folder_it_read_in_full_and_does_not_claim_digests_it_had_none_of(tmp_path, monkeypatch):
    import json
    import shutil

    from fashionlab.evaluation import evaluate

    folder = write_seven_class_dataset(tmp_path / "seven")
    copy = shutil.copytree(folder, tmp_path / "copy")
    monkeypatch.chdir(tmp_path)
    train(TINY.replace(dataset="./seven"), "run", data=DataSource("copy"), verbose=0)
    kept = json.loads((tmp_path / "run" / "run.json").read_text())["dataset"]
    assert kept["folder"] == str(copy)  # the files it was trained on, wherever it is opened from
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]["verified"] is False
    monkeypatch.chdir(tmp_path / "seven")  # elsewhere: a relative folder would now name nothing, or another
    assert list(evaluate(tmp_path / "run")["per_class"]) == list(SEVEN_NAMES)


def test_in_a_notebook_each_epoch_is_one_line_updated_in_place(tmp_path, synthetic, monkeypatch, capsys):
    """Outside a kernel IPython's display prints what a kernel would show: the line of each update."""
    from fashionlab import training

    monkeypatch.setattr(training, "in_notebook", lambda: True)
    train(TINY.replace(epochs=2), tmp_path / "run", data=synthetic)
    shown = capsys.readouterr().out
    assert "Epoch 1/2" not in shown and "\b" not in shown  # not Keras' bar, redrawn with backspaces
    ends = [line for line in shown.splitlines() if line.startswith("epoch ") and "val_accuracy" in line]
    assert [line.split(" ━")[0] for line in ends] == ["epoch 1/2", "epoch 2/2"]


def test_in_logs_and_pipes_a_line_comes_within_each_epoch(tmp_path, synthetic, monkeypatch, capsys):
    """Standard output is not a terminal here: Keras' line ends each epoch, and progress.LineProgress says
    how far it got every LINE_EVERY seconds within it (at most once per compiled chunk of steps)."""
    from fashionlab import engine, progress

    monkeypatch.setattr(progress, "LINE_EVERY", 0.0)
    monkeypatch.setattr(engine, "CHUNK_STEPS", 4)
    monkeypatch.setattr(engine, "CHUNK_SECONDS", 1e9)  # chunks of 4 steps however slow this machine is
    train(TINY.replace(epochs=2, batch_size=16), tmp_path / "run", data=synthetic)  # 300 images: 18 steps + 1
    shown = capsys.readouterr().out
    lines = [line.split() for line in shown.splitlines() if line.startswith("epoch ")]
    expected = [(f"{epoch}/2", f"{done}/19") for epoch in (1, 2) for done in (4, 8, 12, 16, 18)]
    assert [(words[1], words[3]) for words in lines] == expected
    for words in lines:
        assert words[4] == f"({100 * int(words[3].split('/')[0]) // 19}%)" and words[8:10] == ["steps/s", "about"]
        assert words[-4] == "loss" and words[-2] == "accuracy" and 0 <= float(words[-1]) <= 1
    assert shown.count("19/19") == 2  # Keras' line at each epoch's end
    monkeypatch.setattr(progress, "LINE_EVERY", 30.0)
    train(TINY.replace(epochs=1, batch_size=16), tmp_path / "quick", data=synthetic)
    quick = capsys.readouterr().out.splitlines()
    assert quick and not [line for line in quick if line.startswith("epoch ")]  # shorter than the interval


# The speedrun's techniques all on: a whitening first layer, SGD with Nesterov momentum and BN at
# 4 x the learning rate, a moving average of the weights, test-time views, alternating flips,
# shifts, label smoothing.
SPEEDRUN = TINY.replace(name="speedrun", model="cnn", whiten=True, filters=4, conv_blocks=1, depth=1, width=16,
                        batch_norm="before", momentum=0.9, bn_lr_scale=4.0, ema=0.9, tta="mirror-shift",
                        augment_shift=1, augment_flip=True, augment_flip_alternate=True, label_smoothing=0.1,
                        schedule="one_cycle", learning_rate=0.05, epochs=4)


def saved_weights(path):
    return load_model_file(path / "model.keras").get_weights()


def test_a_stopped_run_with_every_speedrun_technique_resumes_to_the_uninterrupted_run(tmp_path, synthetic):
    whole = train(SPEEDRUN, tmp_path / "whole", data=synthetic, verbose=0)
    stop_when(FileWritten(tmp_path / "stopped" / "checkpoint-epoch2.keras"))
    try:
        with pytest.raises(Interrupted, match="after 2 finished epoch"):
            train(SPEEDRUN, tmp_path / "stopped", data=synthetic, verbose=0)
    finally:
        stop_when()
    resumed = resume(tmp_path / "stopped", data=synthetic, verbose=0)
    columns = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"]
    pd.testing.assert_frame_equal(resumed.history[columns], whole.history[columns], rtol=1e-6)
    for a, b in zip(saved_weights(tmp_path / "whole"), saved_weights(tmp_path / "stopped")):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert resumed.metrics["test_accuracy"] == pytest.approx(whole.metrics["test_accuracy"], abs=1e-9)
    # the whitening layer: computed from the training split, frozen, a plain Conv2D in the saved file
    splits = synthetic.splits(SPEEDRUN.validation_size)
    whiten = load_model_file(tmp_path / "whole" / "model.keras").get_layer("whiten")
    assert type(whiten) is keras.layers.Conv2D and whiten.kernel_size == (2, 2) and not whiten.trainable
    np.testing.assert_allclose(np.asarray(whiten.kernel.value), patch_whitening(splits.x_train, fit_scaler(
        splits.x_train)), rtol=1e-5, atol=1e-6)


def test_a_moving_average_is_what_the_run_validates_tests_and_saves(tmp_path, synthetic):
    """The average trains nothing (the same losses as without it) but is the model kept: model.keras
    holds it, not the last weights, and the test figures are its own."""
    plain = train(SPEEDRUN.replace(ema=0.0, tta="none"), tmp_path / "plain", data=synthetic, verbose=0)
    averaged = train(SPEEDRUN.replace(ema=0.9, tta="none"), tmp_path / "averaged", data=synthetic, verbose=0)
    assert list(averaged.history["loss"]) == pytest.approx(list(plain.history["loss"]), rel=1e-6)
    assert list(averaged.history["val_loss"]) != pytest.approx(list(plain.history["val_loss"]), rel=1e-4)
    model = load_model_file(tmp_path / "averaged" / "model.keras")
    kept, last = model.get_weights(), saved_weights(tmp_path / "plain")
    assert not all(np.allclose(a, b) for a, b in zip(kept, last))
    x_test, y_test = synthetic.test_images(), synthetic.arrays()["t10k-labels-idx1-ubyte"]
    accuracy = float(np.mean(predict_proba(model, x_test).argmax(axis=1) == y_test))
    assert averaged.metrics["test_accuracy"] == pytest.approx(accuracy, abs=1e-9)



def test_a_max_norm_run_says_how_many_units_ended_at_the_bound(synthetic, tmp_path):
    result = train(TINY.replace(max_norm=0.5, learning_rate=0.5, batch_norm="none"), tmp_path / "run", data=synthetic,
                   verbose=0)
    record = json.loads((result.run.path / "metrics.json").read_text())["max_norm"]
    assert record["units"] == 2 * TINY.width and record["max_norm"] == 0.5
    assert 0 < record["at_bound"] <= record["units"] and record["largest"] <= 0.5 * (1 + 1e-5)
    page = (result.run.path / "report.html").read_text()
    assert f"{record['at_bound']:,} of {record['units']:,} hidden units at the bound 0.5" in page
