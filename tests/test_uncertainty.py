"""MC dropout (uncertainty.py): the sampler, `predict --mc-dropout`, the notebook, the server's API and page."""

import subprocess
import sys

import keras
import numpy as np
import pytest
from helpers import TINY
from serving import data_options

from fashionlab.errors import ConfigError
from fashionlab.evaluation import predict_proba
from fashionlab.model import build_model
from fashionlab.prediction import predict
from fashionlab.uncertainty import DropoutSampler


def model_with(dropout: float, **changes) -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_model(TINY.replace(dropout=dropout, **changes), None)


def images(n: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 28, 28)).astype(np.uint8)


@pytest.mark.parametrize("tta", ["none", "mirror-shift"])
def test_with_the_drop_rate_at_zero_every_pass_is_the_models_inference(tta):
    """Dropout alone is in training mode: batch norm keeps its moving statistics, test-time views stay."""
    model = model_with(0.5, tta=tta)
    sampler = DropoutSampler(model)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    samples = DropoutSampler(model).samples(images(), 4)
    assert samples.shape == (4, 6, 10)
    np.testing.assert_allclose(samples, np.broadcast_to(predict_proba(model, images()), samples.shape), atol=1e-6)
    assert sampler is not None


def test_passes_differ_from_one_another_and_repeat_with_the_seed():
    sampler = DropoutSampler(model_with(0.3))
    first = sampler.samples(images(), 20)
    assert first.std(axis=0).mean() > 1e-3  # the passes drop different units
    assert not np.allclose(first[0], first[1])
    np.testing.assert_array_equal(first, sampler.samples(images(), 20))
    assert not np.allclose(first, sampler.samples(images(), 20, seed=1))
    np.testing.assert_allclose(first.sum(axis=2), 1, atol=1e-5)


def test_the_passes_are_split_into_calls_of_the_given_sizes_alike():
    model = model_with(0.3)
    whole = DropoutSampler(model, rows=4096).samples(images(), 30)
    calls = []
    split = DropoutSampler(model, sizes=(8, 32)).samples(
        images(), 30, bounded=lambda call, images: calls.append(images) or call())
    assert calls == [32, 32, 32, 32, 32, 20] and split.shape == whole.shape == (30, 6, 10)
    np.testing.assert_array_equal(split, DropoutSampler(model, sizes=(8, 32)).samples(images(), 30))
    # passes 0 and 16 sit at the same rows of calls 0 and 3: each call draws its own masks
    assert not np.allclose(split[0], split[16])
    np.testing.assert_allclose(split.sum(axis=2), 1, atol=1e-5)


def test_a_model_without_dropout_is_refused():
    with pytest.raises(ConfigError, match="has no dropout layer"):
        DropoutSampler(model_with(0.0))


def test_predict_gives_the_mean_of_the_passes_and_their_spread(dropout_run, synthetic):
    results = predict(dropout_run.run.path, indices=[0, 1, 2], data=synthetic, mc_dropout=25, top_k=3)
    sampler = DropoutSampler(dropout_run.run.load_model())
    samples = sampler.samples(synthetic.test_images()[[0, 1, 2]], 25)
    mean, spread = samples.mean(axis=0), samples.std(axis=0)
    for i, result in enumerate(results):
        best = int(mean[i].argmax())
        assert result["class_id"] == best
        assert result["probability"] == pytest.approx(float(mean[i, best]), abs=1e-6)
        assert result["spread"] == pytest.approx(float(spread[i, best]), abs=1e-6) and result["spread"] > 0
        assert [t["spread"] for t in result["top_k"]] == pytest.approx(
            [float(spread[i, t["class_id"]]) for t in result["top_k"]], abs=1e-6)
    plain = predict(dropout_run.run.path, indices=[0], data=synthetic)
    assert "spread" not in plain[0] and "spread" not in plain[0]["top_k"][0]


def test_mc_dropout_is_refused_where_it_cannot_be_read(tiny_run, dropout_run, synthetic, tmp_path):
    with pytest.raises(ConfigError, match="has no dropout layer"):
        predict(tiny_run.run.path, indices=[0], data=synthetic, mc_dropout=10)
    with pytest.raises(ConfigError, match="between 2 and 1000"):
        predict(dropout_run.run.path, indices=[0], data=synthetic, mc_dropout=1)
    with pytest.raises(ConfigError, match="dropout off"):
        predict(onnx=tmp_path / "any.onnx", indices=[0], data=synthetic, mc_dropout=10)


def test_the_command_prints_each_probability_with_its_spread(dropout_run, synthetic):
    said = subprocess.run([sys.executable, "-m", "fashionlab", "predict", str(dropout_run.run.path), "--index", "0",
                           "--mc-dropout", "20", *data_options(synthetic)], capture_output=True, text=True)
    assert said.returncode == 0, said.stderr
    expected = predict(dropout_run.run.path, indices=[0], data=synthetic, mc_dropout=20)[0]
    assert f"({expected['probability']:.3f} ± {expected['spread']:.3f})" in said.stdout
    refused = subprocess.run([sys.executable, "-m", "fashionlab", "predict", str(dropout_run.run.path), "--index",
                              "0", "--mc-dropout", "0", *data_options(synthetic)], capture_output=True, text=True)
    assert refused.returncode == 2 and "--mc-dropout" in refused.stderr and "Traceback" not in refused.stderr


def test_the_notebook_adds_a_spread_column(dropout_run, synthetic):
    from fashionlab.notebook import Run

    table = Run(dropout_run.run.path).predict([0, 1], data=synthetic, mc_dropout=10)
    assert list(table.columns[:3]) == ["class", "probability", "spread"] and (table["spread"] > 0).all()
    assert "spread" not in Run(dropout_run.run.path).predict([0], data=synthetic).columns


def test_the_server_answers_mc_dropout_as_predict_does(dropout_server, dropout_run, synthetic, test_pngs):
    status, _, model = dropout_server.request("GET", "/api/model")
    assert status == 200 and model["mc_dropout"] is True and model["limits"]["mc_dropout"] == [2, 100]
    status, _, answer = dropout_server.post_files([("a.png", test_pngs[0]), ("b.png", test_pngs[1])],
                                                  "?mc_dropout=30")
    assert status == 200, answer
    assert all(r["spread"] > 0 and all("spread" in t for t in r["top_k"]) for r in answer)
    again = dropout_server.post_files([("a.png", test_pngs[0]), ("b.png", test_pngs[1])], "?mc_dropout=30")[2]
    assert again == answer  # its own batch, its own draws: the same request, the same answer
    plain = dropout_server.post_files([("a.png", test_pngs[0])])[2]
    assert "spread" not in plain[0]
    for query, message in (("?mc_dropout=1", "between 2 and 100"), ("?mc_dropout=101", "between 2 and 100"),
                           ("?mc_dropout=x", "mc_dropout")):
        status, _, refused = dropout_server.post_files([("a.png", test_pngs[0])], query)
        assert status == 422 and message in refused["error"], refused


def test_servers_without_dropout_refuse_mc_dropout_saying_why(keras_server, onnx_server, test_pngs):
    for server, why in ((keras_server, "has no dropout layer"), (onnx_server, "ONNX file")):
        assert server.request("GET", "/api/model")[2]["mc_dropout"] is False
        status, _, refused = server.post_files([("a.png", test_pngs[0])], "?mc_dropout=10")
        assert status == 422 and why in refused["error"]


def test_the_page_offers_mc_dropout_and_shows_the_spread(dropout_server, keras_server, browser, test_pngs, tmp_path):
    (tmp_path / "garment.png").write_bytes(test_pngs[2])
    expected = dropout_server.post_files([("garment.png", test_pngs[2])], "?mc_dropout=30")[2][0]
    page = browser.new_page()
    page.goto(dropout_server.url)
    page.check("#mc")
    page.set_input_files("#files", str(tmp_path / "garment.png"))
    result = page.locator(".result").first
    result.locator(".bar-row").first.wait_for(timeout=15_000)
    assert f"± {100 * expected['spread']:.1f}" in result.locator(".probability").inner_text()
    assert "30 passes with dropout on" in result.locator(".spread").inner_text()
    page.close()
    plain = browser.new_page()
    plain.goto(keras_server.url)
    assert not plain.locator("#uncertainty").is_visible()  # a model without dropout: not offered
    plain.close()

