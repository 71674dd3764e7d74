"""The notebook API: fl.train / fl.Run / fl.compare return objects that show themselves."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import fashionlab as fl
from fashionlab import CLASS_NAMES, notebook
from fashionlab.errors import RunError
from fashionlab.prediction import predict

TINY_KEYS = {"depth": 2, "width": 16, "epochs": 2, "batch_size": 32, "validation_size": 60, "seed": 7}


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic):
    return fl.train(run_dir=tmp_path_factory.mktemp("nb") / "run", data=synthetic, verbose=0, **TINY_KEYS)


def test_train_returns_a_run_that_reads_its_directory(run, synthetic):
    assert isinstance(run, fl.Run) and run.status == "complete" and run.config.width == 16
    assert run.name.startswith("tutorial-") and "width" in run.name  # named after what the changes are
    assert list(run.history["epoch"]) == [1, 2] and {"val_accuracy", "loss"} <= set(run.history.columns)
    assert 0 <= run.metrics["test_accuracy"] <= 1
    assert fl.Run.open(run.path).metrics == run.metrics


def test_the_figures_and_tables(run, synthetic):
    curves = run.plot()
    assert isinstance(curves, Figure) and len(curves.axes) >= 2
    counts = run.confusion()
    assert list(counts.index) == list(CLASS_NAMES) and counts.to_numpy().sum() == len(synthetic.test_images())
    np.testing.assert_allclose(run.confusion(normalize=True).sum(axis=1)[counts.sum(axis=1) > 0], 1.0)
    wrong = run.mistakes(4, data=synthetic)
    titles = [ax.get_title() for ax in wrong.axes if ax.get_title()]
    assert 1 <= len(titles) <= 4 and all("true: " in t for t in titles)
    said = [(t.split("\n")[0].rsplit(" ", 1), t.split("true: ")[1]) for t in titles]
    assert all(predicted != true for (predicted, _), true in said)  # mistakes only
    confidence = [int(p.rstrip("%")) for (_, p), _ in said]
    assert confidence == sorted(confidence, reverse=True)  # the most confident first


def test_predict_gives_a_table_of_what_fashionlab_predict_says(run, synthetic):
    table = run.predict([0, 1, 2], data=synthetic)
    assert isinstance(table, pd.DataFrame) and list(table.index) == ["test[0]", "test[1]", "test[2]"]
    said = predict(run.path, indices=[0, 1, 2], data=synthetic)
    assert list(table["class"]) == [r["class_name"] for r in said]
    assert list(table["probability"]) == [r["probability"] for r in said]


def test_a_run_shows_itself_as_a_card_in_a_notebook_and_one_line_elsewhere(run):
    card = run._repr_html_()
    assert card.count("<img") == 1 and "test accuracy" in card and f"{100 * run.metrics['test_accuracy']:.2f} %" in card
    line = repr(run)
    assert "\n" not in line and line.startswith(f"Run({str(run.path)!r}")
    assert "complete, 2 epochs, test accuracy" in line


def test_an_unfinished_run_opens_only_when_allowed(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run.path, copy)
    (copy / "metrics.json").unlink()
    status = (copy / "run.json").read_text().replace('"complete"', '"interrupted"')
    (copy / "run.json").write_text(status)
    with pytest.raises(RunError):
        fl.Run.open(copy)
    unfinished = fl.Run.open(copy, allow_incomplete=True)
    assert unfinished.metrics == {} and "val accuracy" in unfinished._repr_html_()


def test_compare_returns_the_table_and_the_curves(tmp_path, synthetic):
    result = fl.compare(["bn-after", "bn-before"], seeds=1, out=tmp_path / "cmp", data=synthetic,
                        **{k: v for k, v in TINY_KEYS.items() if k != "seed"})
    assert isinstance(result, fl.Comparison) and list(result.table.index) == ["bn-after", "bn-before"]
    assert len(result.runs()) == 2 and all(r.status == "complete" for r in result.runs())
    assert isinstance(result.plot(), Figure)
    card = result._repr_html_()
    assert "<table" in card and "bn-before" in card and card.count("<img") == 1
    assert repr(result).startswith(f"Comparison({str(tmp_path / 'cmp')!r}, 2 variants, 2 runs, best ")
    again = fl.Comparison(tmp_path / "cmp")
    pd.testing.assert_frame_equal(again.table, result.table)


def test_importing_fashionlab_imports_neither_keras_nor_the_notebook_module():
    code = "import fashionlab, sys; print('keras' in sys.modules, 'fashionlab.notebook' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.split() == [
        "False", "False"]
    assert fl.train is notebook.train and fl.Run is notebook.Run
    with pytest.raises(AttributeError, match="has no attribute 'trian'"):
        fl.trian  # noqa: B018


def test_train_starts_from_a_recipe_and_records_it(tmp_path, synthetic):
    from fashionlab import recipes

    run = fl.train("fast-mlp", run_dir=tmp_path / "r", data=synthetic, verbose=0, **TINY_KEYS)
    recipe = recipes.get("fast-mlp").config()
    assert run.config.optimizer == recipe.optimizer and run.config.width == 16 and run.name.startswith("fast-mlp-")
    assert run._run.status()["recipe"] == "fast-mlp"


def test_sweep_returns_its_trials_and_shows_them(tmp_path, synthetic):
    space = tmp_path / "space.toml"
    space.write_text('[train]\ndepth = 2\nepochs = 2\nvalidation_size = 60\n[search]\nwidth = [8, 16]\n')
    result = fl.sweep(space, trials=2, out=tmp_path / "sweep", data=synthetic, sampler="random")
    assert isinstance(result, fl.Sweep) and len(result.trials) == 2 and result.ended
    assert result.best is not None and result.best["trial"] in (0, 1)
    assert isinstance(result.plot(), Figure) and result._repr_html_().count("<img") == 1
    assert repr(result).startswith(f"Sweep({str(tmp_path / 'sweep')!r}, trials 2, ended yes, best trial ")
