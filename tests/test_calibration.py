import json

import keras
import numpy as np
import pytest
from helpers import TINY

from fashionlab import calibration
from fashionlab.calibration import Logits, cross_entropy, fit_temperature, logits_of, reliability, temperature_scale
from fashionlab.evaluation import predict_proba
from fashionlab.model import build_model
from fashionlab.rundir import Run
from fashionlab.training import train


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def confident(top: float, right: bool, classes: int = 4) -> tuple[np.ndarray, int]:
    """A probability row whose top class (0) has probability `top`, and a label that is right or not."""
    row = np.full(classes, (1 - top) / (classes - 1))
    row[0] = top
    return row, 0 if right else 1


def test_ece_is_the_weighted_gap_between_each_bins_confidence_and_accuracy():
    # 10 images at 0.9 confidence, 9 right: no gap; 10 at 0.6, 3 right: a gap of 0.3 over half the images
    rows = [confident(0.9, i < 9) for i in range(10)] + [confident(0.6, i < 3) for i in range(10)]
    proba, labels = np.array([r for r, _ in rows]), np.array([y for _, y in rows])
    found = reliability(labels, proba, bins=10)
    assert found["ece"] == pytest.approx(0.5 * 0.3)
    assert [(b["low"], b["high"], b["count"]) for b in found["bins"]] == [
        (pytest.approx(0.5), pytest.approx(0.6), 10), (pytest.approx(0.8), pytest.approx(0.9), 10)]
    assert found["bins"][0]["confidence"] == pytest.approx(0.6) and found["bins"][0]["accuracy"] == pytest.approx(0.3)
    assert found["bins"][1]["accuracy"] == pytest.approx(0.9)


def test_a_confidence_on_a_bin_edge_goes_in_the_bin_it_closes():
    proba, labels = np.array([confident(0.6, True)[0], confident(0.61, True)[0]]), np.array([0, 0])
    bins = reliability(labels, proba, bins=10)["bins"]
    assert [(round(b["low"], 2), b["count"]) for b in bins] == [(0.5, 1), (0.6, 1)]


def test_perfectly_calibrated_draws_have_a_small_ece_and_overconfident_ones_a_large_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(20000, 10)) * 3
    labels = np.array([rng.choice(10, p=p) for p in softmax(logits)])  # drawn as the probabilities say
    assert reliability(labels, softmax(logits))["ece"] < 0.015
    assert reliability(labels, softmax(3 * logits))["ece"] > 0.1


def test_the_fitted_temperature_is_the_one_that_made_the_labels():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(20000, 10)) * 4
    labels = np.array([rng.choice(10, p=p) for p in softmax(logits / 2.5)])
    assert fit_temperature(Logits(logits), labels) == pytest.approx(2.5, rel=0.05)
    sharp = np.array([rng.choice(10, p=p) for p in softmax(logits / 0.5)])
    assert fit_temperature(Logits(logits), sharp) == pytest.approx(0.5, rel=0.05)


@pytest.mark.parametrize("tta", ["none", "mirror-shift"])
def test_temperature_scaling_folds_into_the_last_layer_and_the_model_gives_the_scaled_probabilities(tta):
    keras.utils.set_random_seed(0)
    model = build_model(TINY.replace(tta=tta), None)
    rng = np.random.default_rng(2)
    last = model.get_layer("classes")  # a bias of its own, as a trained layer has: it is scaled too
    last.set_weights([last.get_weights()[0], rng.normal(size=10).astype(np.float32)])
    x = rng.integers(0, 256, (200, 28, 28)).astype(np.uint8)
    before = predict_proba(model, x)
    logits = logits_of(model, x)
    np.testing.assert_allclose(logits.proba(), before, atol=1e-5)  # the logits are the model's
    # labels drawn from the model's probabilities at temperature 3: it is overconfident, T > 1 softens it
    y = np.array([rng.choice(10, p=p / p.sum()) for p in logits.proba(3.0)])
    scaled = temperature_scale(model, x, y)
    after = predict_proba(model, x)
    assert 1.5 < scaled.temperature < 6 and scaled.val_loss_after < scaled.val_loss_before
    assert scaled.val_loss_after == pytest.approx(cross_entropy(y, after), rel=1e-4)
    np.testing.assert_allclose(after, logits.proba(scaled.temperature), atol=1e-5)
    if tta == "none":  # one view: the classes' order stays (with views, the mean of softened views may reorder)
        np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))


def test_a_model_without_the_classes_layer_is_refused():
    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, name="other")])
    with pytest.raises(ValueError, match="last Dense layer named 'classes'"):
        calibration.classes_layer(model)


@pytest.fixture(scope="module")
def scaled_run(synthetic, tmp_path_factory):
    config = TINY.replace(name="scaled", temperature_scale=True, label_smoothing=0.3)
    return train(config, tmp_path_factory.mktemp("scaled") / "run", data=synthetic, verbose=0)


def test_a_temperature_scaled_run_saves_the_scaled_model_and_records_before_and_after(scaled_run, synthetic):
    metrics = json.loads((scaled_run.run.path / "metrics.json").read_text())
    record = metrics["temperature"]
    assert record["temperature"] < 1  # label smoothing made it underconfident
    assert record["val_loss_after"] < record["val_loss_before"]
    splits = synthetic.splits(TINY.validation_size)
    saved = Run(scaled_run.run.path).load_model()
    valid = predict_proba(saved, splits.x_valid)
    assert cross_entropy(splits.y_valid, valid) == pytest.approx(record["val_loss_after"], rel=1e-3)
    test = predict_proba(saved, splits.x_test)
    assert metrics["test_ece"] == pytest.approx(reliability(splits.y_test, test)["ece"], abs=1e-6)
    assert metrics["test_loss"] == pytest.approx(cross_entropy(splits.y_test, test), rel=1e-4)
    assert metrics["test_loss"] < record["test_loss_before"]
    page = (scaled_run.run.path / "report.html").read_text()
    assert f"{record['temperature']:.3f}, fitted on the validation split" in page and "reliability diagram" in page


def test_the_exported_model_gives_the_scaled_probabilities(scaled_run, synthetic, tmp_path):
    from fashionlab.export import export
    from fashionlab.onnxrun import OnnxModel

    export(scaled_run.run.path, out=tmp_path / "scaled.onnx", data=synthetic)
    x = synthetic.test_images()[:50]
    scaled = predict_proba(Run(scaled_run.run.path).load_model(), x)
    np.testing.assert_allclose(OnnxModel(tmp_path / "scaled.onnx").predict(x), scaled, atol=1e-5)
