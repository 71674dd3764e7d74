"""fashionlab export: an ONNX file that onnxruntime runs alone and that agrees with the run's model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers import SEVEN_NAMES, TINY, write_seven_class_dataset

from fashionlab import CLASS_NAMES, export
from fashionlab.errors import ConfigError, ExportError, RunError
from fashionlab.evaluation import predict_proba
from fashionlab.onnxrun import OnnxModel
from fashionlab.prediction import predict
from fashionlab.rundir import Run
from fashionlab.training import train

TINY_CNN = TINY.replace(name="tiny-cnn", model="cnn", filters=4, conv_blocks=2, convs_per_block=1, width=8,
                        batch_norm="after", dropout=0.2)


@pytest.fixture(scope="module")
def exported(tiny_run, synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny.onnx"
    return export.export(tiny_run.run.path, out=out, data=synthetic), out


def test_the_file_agrees_with_the_keras_model_and_says_what_it_is(exported, tiny_run, synthetic):
    result, out = exported
    assert list(out.parent.iterdir()) == [out]  # no scratch file, no weights file beside it
    assert result["out"] == str(out) and result["bytes"] == out.stat().st_size
    assert result["check"]["images"] == len(synthetic.test_images())  # all of them: fewer than 1,000
    assert result["check"]["max_abs_difference"] <= 1e-5 and result["check"]["top1_differences"] == 0
    model = OnnxModel(out)
    x = synthetic.test_images()
    np.testing.assert_allclose(model.predict(x), predict_proba(tiny_run.model, x), atol=1e-5)
    assert model.metadata["name"] == "tiny" and model.metadata["class_names"] == list(CLASS_NAMES)
    assert model.metadata["test_accuracy"] == pytest.approx(tiny_run.metrics["test_accuracy"])
    assert model.metadata["config"] == tiny_run.run.config().to_dict()
    assert model.metadata["run"] == tiny_run.run.path.name
    assert model.metadata["model_keras_sha256"] == hashlib.sha256(tiny_run.run.model_file().read_bytes()).hexdigest()
    graph = onnx.load(out)
    assert [i.name for i in graph.graph.input] == ["pixels"] and [o.name for o in graph.graph.output] == [
        "probabilities"]


def test_predict_with_the_onnx_file_gives_the_runs_answers(exported, tiny_run, synthetic):
    _, out = exported
    by_onnx = predict(onnx=out, indices=[0, 1, 2], data=synthetic)
    by_keras = predict(tiny_run.run.path, indices=[0, 1, 2], data=synthetic)
    assert [r["class_id"] for r in by_onnx] == [r["class_id"] for r in by_keras]
    for a, b in zip(by_onnx, by_keras):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_a_cnn_with_pooling_and_batch_norm_exports(tmp_path, synthetic):
    run = train(TINY_CNN, tmp_path / "cnn", data=synthetic, verbose=0)
    with Run.acquire(run.run.path), pytest.raises(RunError, match="is in use by another fashionlab process"):
        export.export(run.run.path, data=synthetic)  # into the run: not while another process writes it
    result = export.export(run.run.path, data=synthetic)  # default: into the run
    assert result["out"] == str(run.run.path / "model.onnx") and result["check"]["top1_differences"] == 0
    assert not [p.name for p in run.run.path.iterdir() if p.name.startswith((".", "fashionlab-export"))
                and p.name != ".lock"]
    x = synthetic.test_images()
    np.testing.assert_allclose(OnnxModel(result["out"]).predict(x), predict_proba(run.model, x), atol=1e-5)


def test_an_ensemble_exports_its_members_average_and_says_what_it_averages(tiny_run, synthetic, tmp_path):
    from fashionlab.ensembles import ensemble

    cnn = train(TINY_CNN.replace(tta="mirror"), tmp_path / "cnn", data=synthetic, verbose=0)  # pooling in a member
    made = ensemble([tiny_run.run.path, cnn.run.path], tmp_path / "ensemble", data=synthetic)
    result = export.export(made.run.path, out=tmp_path / "ensemble.onnx", data=synthetic)
    x = synthetic.test_images()
    mean = (predict_proba(tiny_run.model, x) + predict_proba(cnn.model, x)) / 2
    model = OnnxModel(result["out"])
    np.testing.assert_allclose(model.predict(x), mean, atol=1e-5)
    assert model.metadata["name"] == "ensemble-2" and model.metadata["config"]["dataset"] == "fashion-mnist"
    assert [c["name"] for c in model.metadata["config"]["ensemble"]] == ["tiny", "tiny-cnn"]


def test_a_disagreeing_export_writes_nothing(tiny_run, synthetic, tmp_path, monkeypatch):
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # any difference at all, even none, is too much
    with pytest.raises(ExportError, match="onnxruntime disagrees with Keras on 100 test images.*nothing written"):
        export.export(tiny_run.run.path, out=tmp_path / "m.onnx", data=synthetic)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out, message", [
    ("m.txt", "must end in .onnx"), ("missing/m.onnx", "must be a file in an existing folder"),
])
def test_a_bad_output_path_is_refused_before_any_work(tiny_run, synthetic, tmp_path, out, message):
    with pytest.raises(ConfigError, match=message):
        export.export(tiny_run.run.path, out=tmp_path / out, data=synthetic)
    with pytest.raises(ConfigError, match="`format` must be one of onnx"):
        export.export(tiny_run.run.path, format="tflite", data=synthetic)


def test_the_command_prints_the_check_and_predict_takes_the_file(exported, tiny_run, synthetic, tmp_path):
    _, out = exported
    data = ["--data-dir", str(synthetic.data_dir), "--no-verify"]
    made = subprocess.run([sys.executable, "-m", "fashionlab", "export", str(tiny_run.run.path), "--out",
                           str(tmp_path / "cli.onnx"), *data], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stderr
    assert "checked with onnxruntime on 100 test images" in made.stdout and "0 top-1 classes differ" in made.stdout
    shown = subprocess.run([sys.executable, "-m", "fashionlab", "predict", "--onnx", str(out), "--index", "0", "1",
                            "--json", *data], capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    assert [r["class_id"] for r in json.loads(shown.stdout)] == [
        r["class_id"] for r in predict(tiny_run.run.path, indices=[0, 1], data=synthetic)]
    both = subprocess.run([sys.executable, "-m", "fashionlab", "predict", str(tiny_run.run.path), "--onnx", str(out),
                           "--index", "0", *data], capture_output=True, text=True, timeout=300)
    assert both.returncode == 1 and both.stderr == (f"fashionlab: error: {tiny_run.run.path} is a run directory: with "
                                                    f"--onnx FILE, give image files only (a run directory goes "
                                                    f"without --onnx)\n")
    wrong = subprocess.run([sys.executable, "-m", "fashionlab", "predict", str(out), "--index", "0", *data],
                           capture_output=True, text=True, timeout=300)
    assert wrong.returncode == 1 and wrong.stderr.strip() == f"fashionlab: error: {out} is an ONNX file: pass it " \
                                                             f"as --onnx {out}"


def test_a_run_of_another_data_set_is_exported_with_its_classes_and_checked_on_its_test_images(tmp_path):
    folder = write_seven_class_dataset(tmp_path / "seven")
    train(TINY.replace(dataset=str(folder)), tmp_path / "run", verbose=0)
    result = export.export(tmp_path / "run")  # the data it checks against is the run's own folder
    model = OnnxModel(result["out"])
    assert result["check"]["images"] == 100 and result["check"]["top1_differences"] == 0
    assert model.classes == 7 and model.metadata["dataset"] == "seven"
    assert model.metadata["class_names"] == list(SEVEN_NAMES) and model.dataset().class_names == SEVEN_NAMES
    assert "(N, 7)" in model.metadata["output"] and model.metadata["input"].endswith("as in seven")
    assert model.metadata["config"]["dataset"] == "seven"  # named, not located: the file may be shared
    assert str(tmp_path) not in json.dumps(model.metadata)
    assert "(N, 7) of zero, one, two" in onnx.load(result["out"]).doc_string


def test_a_model_with_test_time_views_and_whitening_exports_them_and_agrees(tmp_path, synthetic):
    """The ONNX file averages the same six views of each image as the Keras model (the export's own
    check, and here on the test images), so its answers are not the single view's; the whitening
    layer (a 2 x 2 'valid' convolution) converts too."""
    config = TINY_CNN.replace(tta="mirror-shift", augment_flip=True, whiten=True)
    run = train(config, tmp_path / "tta", data=synthetic, verbose=0)
    result = export.export(run.run.path, out=tmp_path / "tta.onnx", data=synthetic)
    assert result["check"]["top1_differences"] == 0
    x = synthetic.test_images()
    probabilities = OnnxModel(tmp_path / "tta.onnx").predict(x)
    np.testing.assert_allclose(probabilities, predict_proba(run.model, x), atol=1e-5)
    single = run.model.layers[1:-1]  # the network between the views and their mean
    import keras

    alone = np.asarray(keras.Sequential([keras.Input((28, 28)), *single])(x.astype("float32")))
    assert np.abs(probabilities - alone).max() > 1e-3
