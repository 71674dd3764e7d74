"""The served model (serve/predictor.py): a run's Keras model jitted per batch size, reading the
model's current weights; which model to load, said in one line when it is not clear."""

from __future__ import annotations

import numpy as np
import pytest

from fashionlab.errors import ConfigError
from fashionlab.evaluation import predict_proba
from fashionlab.serve.predictor import BATCH_SIZES, MAX_BATCH, load_predictor


def test_the_predictor_answers_as_the_model_at_every_size_and_after_keras_predicts(tiny_run, synthetic):
    said: list[str] = []
    predictor = load_predictor(tiny_run.run.path, progress=said.append)
    assert predictor.engine == "keras" and predictor.info["name"] == "tiny" and predictor._compiled is not None
    assert said[0].startswith("loaded the model in ") and said[0].endswith(" s (Keras)")
    assert [line.split(" (")[0] for line in said[1:-1]] == [
        f"compiling the model for batch size {size}" for size in BATCH_SIZES]  # each before its (long) compile
    assert said[-1].startswith(f"compiled for batch sizes 1 to {MAX_BATCH} in ")
    x = synthetic.test_images()[:5]
    predictor.model.predict(x.astype("float32"), verbose=0)  # Keras may hand its weight arrays to XLA
    np.testing.assert_allclose(predictor.predict(x), predict_proba(tiny_run.model, x), atol=1e-6)
    many = synthetic.test_images()[:MAX_BATCH + 3]  # two batches, the second padded to the next of BATCH_SIZES
    assert BATCH_SIZES[-1] == MAX_BATCH
    np.testing.assert_allclose(predictor.predict(many), predict_proba(tiny_run.model, many), atol=1e-6)
    assert predictor.predict(many[:0]).shape == (0, 10)


@pytest.mark.parametrize("given", [{}, {"run_dir": "run", "onnx": "model.onnx"}])
def test_a_predictor_is_of_a_run_or_of_an_onnx_file(given):
    with pytest.raises(ConfigError, match="give a run directory or `onnx`, one of the two"):
        load_predictor(**given)


def test_an_onnx_file_is_served_with_the_classes_it_names(tmp_path):
    import json

    import onnx
    from helpers import onnx_model, onnx_probabilities

    graph = onnx_model(*onnx_probabilities(classes=7), output_shape=("batch", 7))
    graph.metadata_props.add(key="fashionlab", value=json.dumps({"name": "seven", "dataset": "seven",
                                                                 "class_names": [f"kind {i}" for i in range(7)]}))
    onnx.save(graph, tmp_path / "seven.onnx")
    predictor = load_predictor(onnx=tmp_path / "seven.onnx")
    assert predictor.engine == "onnx" and predictor.dataset.class_names == tuple(f"kind {i}" for i in range(7))
    assert predictor.predict(np.zeros((3, 28, 28), np.uint8)).shape == (3, 7)
    assert predictor.predict(np.zeros((0, 28, 28), np.uint8)).shape == (0, 7)
