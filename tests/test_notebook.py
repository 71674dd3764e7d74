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
from fashionlab.errors import ConfigError, RunError
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
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    many = run.mistakes(12, data=synthetic)  # two rows: no title over the images of the row above
    renderer = FigureCanvasAgg(many).get_renderer()
    many.draw(renderer)
    images = [ax for ax in many.axes if ax.images]
    assert len(images) > 6
    for upper in images[:6]:
        for lower in images[6:]:
            assert not lower.title.get_window_extent(renderer).overlaps(upper.get_window_extent(renderer))


def test_predict_gives_a_table_of_what_fashionlab_predict_says(run, synthetic):
    table = run.predict([0, 1, 2], data=synthetic)
    assert isinstance(table, pd.DataFrame) and list(table.index) == ["test[0]", "test[1]", "test[2]"]
    said = predict(run.path, indices=[0, 1, 2], data=synthetic)
    assert list(table["class"]) == [r["class_name"] for r in said]
    assert list(table["probability"]) == [r["probability"] for r in said]


def test_predict_notes_a_photo_with_no_garment_and_why(run, tmp_path):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)).save(tmp_path / "noise.png")
    row = run.predict([str(tmp_path / "noise.png")]).iloc[0]
    assert row["class"] is None and row["next"] == ""
    assert row["note"].startswith("no garment found: nothing stands out")


def test_a_run_shows_itself_as_a_card_in_a_notebook_and_one_line_elsewhere(run):
    card = run._repr_html_()
    assert card.count("<img") == 2 and "test accuracy" in card and f"{100 * run.metrics['test_accuracy']:.2f} %" in card
    assert f"ECE <b>{100 * run.metrics['test_ece']:.2f} %</b>" in card and 'alt="reliability diagram"' in card
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
    made = [str(run.path) for run in result.runs()]
    compared = fl.compare(runs=made, out=tmp_path / "again")  # the same runs, already trained
    pd.testing.assert_frame_equal(compared.table, result.table)
    assert [str(run.path) for run in compared.runs()] == made
    with pytest.raises(ConfigError, match=r"`runs` compares runs already trained; drop `seeds`, `epochs`"):
        fl.compare(runs=made, seeds=2, epochs=3)


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
    again = fl.Sweep(tmp_path / "sweep")  # a sweep folder opened, as fl.Run and fl.Comparison open theirs
    assert repr(again) == repr(result) and again.best == result.best and again.summary == result.summary
    pd.testing.assert_frame_equal(again.trials, result.trials)
    with pytest.raises(RunError, match=f"{tmp_path} holds no sweep's results"):
        fl.Sweep(tmp_path)
    table = (tmp_path / "sweep" / "trials.csv").read_text().replace(",complete,", ",done,", 1)
    (tmp_path / "sweep" / "trials.csv").write_text(table)
    with pytest.raises(RunError, match="trials.csv: `row 1.state` must be one of .*, not 'done'; run the sweep's "
                                       "command again"):
        fl.Sweep(tmp_path / "sweep")


class NotAPath:
    def __fspath__(self):
        return 12


def listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# Each public call with one wrong argument: a str where a list goes, a float or True where an int
# goes, None where nothing is optional, an int or '' as a path, a wrong keyword-only argument.
WRONG_CALLS = [
    (lambda t, d: fl.train(3, run_dir=t / "r", data=d), "recipe", "must be str or None, got int 3"),
    (lambda t, d: fl.train(run_dir=42, data=d), "run_dir", "must be a path (str or Path), or None, got int 42"),
    (lambda t, d: fl.train(run_dir="", data=d), "run_dir", "must be a path, got an empty string"),
    (lambda t, d: fl.train(run_dir=t / "r", data=str(d.data_dir)), "data", "must be DataSource, got str"),
    (lambda t, d: fl.train(run_dir=t / "r", data=d, verbose=True), "verbose", "must be int or None, got bool True"),
    (lambda t, d: fl.train(run_dir=t / "r", data=d, verbose=1.0), "verbose", "got float 1.0"),
    (lambda t, d: fl.compare("bn-after", out=t / "cmp", data=d), "variants", "got str 'bn-after'"),
    (lambda t, d: fl.compare(["bn-after", 2], out=t / "cmp", data=d), "variants", "item 1 must be str, got int 2"),
    (lambda t, d: fl.compare(["bn-after"], seeds=2.0, out=t / "cmp", data=d), "seeds", "must be int, got float"),
    (lambda t, d: fl.compare(["bn-after"], seeds=True, out=t / "cmp", data=d), "seeds", "got bool True"),
    (lambda t, d: fl.compare(["bn-after"], seeds=None, out=t / "cmp", data=d), "seeds", "must be int, got None"),
    (lambda t, d: fl.compare(["bn-after"], seeds=0, out=t / "cmp", data=d), "seeds", "between 1 and 100, got 0"),
    (lambda t, d: fl.compare(["bn-after"], jobs=None, out=t / "cmp", data=d), "jobs", "must be int, got None"),
    (lambda t, d: fl.compare(["bn-after"], out=42, data=d), "out", "got int 42"),
    (lambda t, d: fl.compare(["bn-after"], out="", data=d), "out", "empty string"),
    (lambda t, d: fl.sweep(42, out=t / "sweep", data=d), "space", "must be a path (str or Path), got int 42"),
    (lambda t, d: fl.sweep("", out=t / "sweep", data=d), "space", "empty string"),
    (lambda t, d: fl.sweep(t / "space.toml", trials="3", out=t / "sweep", data=d), "trials", "got str '3'"),
    (lambda t, d: fl.sweep(t / "space.toml", jobs=2.5, out=t / "sweep", data=d), "jobs", "got float 2.5"),
    (lambda t, d: fl.sweep(t / "space.toml", out=42, data=d), "out", "got int 42"),
    (lambda t, d: fl.sweep(t / "space.toml", jobs=10**9, out=t / "sweep", data=d), "jobs",
     "must be between 1 and 256, got 1000000000"),
    (lambda t, d: fl.sweep(NotAPath(), out=t / "sweep", data=d), "space", "its __fspath__ failed (TypeError"),
    (lambda t, d: fl.Sweep(42), "out", "got int 42"),
    (lambda t, d: fl.Sweep(""), "out", "empty string"),
    (lambda t, d: fl.Run(42), "path", "got int 42"),
    (lambda t, d: fl.Run.open(42), "path", "got int 42"),
    (lambda t, d: fl.Run.open(""), "path", "empty string"),
    (lambda t, d: fl.Run.open(None), "path", "got None"),
    (lambda t, d: fl.Comparison(42), "out", "got int 42"),
    (lambda t, d: fl.Comparison(""), "out", "empty string"),
]


@pytest.mark.parametrize("call, name, said", WRONG_CALLS)
def test_a_wrong_argument_is_refused_by_name_before_anything_is_written(tmp_path, synthetic, monkeypatch, call,
                                                                         name, said):
    monkeypatch.chdir(tmp_path)  # where a default run directory or comparison folder would go
    with pytest.raises(ConfigError) as caught:
        call(tmp_path, synthetic)
    message = str(caught.value)
    assert message.startswith(f"`{name}` ") and said in message and "\n" not in message
    assert caught.value.terms == (name,)
    assert listing(tmp_path) == []  # no run directory, no comparison or sweep folder


def test_a_runs_methods_refuse_wrong_arguments_by_name(run, synthetic):
    before = {p.name: p.stat().st_mtime_ns for p in run.path.iterdir()}
    for call, name, said in [
        (lambda: fl.Run.open(run.path, allow_incomplete="yes"), "allow_incomplete", "must be bool, got str"),
        (lambda: run.mistakes("5"), "n", "must be int, got str '5'"),
        (lambda: run.mistakes(5.0), "n", "must be int, got float 5.0"),
        (lambda: run.mistakes(True), "n", "must be int, got bool True"),
        (lambda: run.mistakes(0), "n", "must be between 1 and 100, got 0"),
        (lambda: run.mistakes(101), "n", "must be between 1 and 100, got 101"),
        (lambda: run.mistakes(3, data=None), "data", "must be DataSource, got None"),
        (lambda: run.predict(3), "inputs", "got int 3"),
        (lambda: run.predict("0"), "inputs", "got str '0'"),
        (lambda: run.predict([0, 1.5]), "inputs", "item 1 must be int, or a path (str or Path), got float 1.5"),
        (lambda: run.predict([True]), "inputs", "item 0 must be int, or a path"),
        (lambda: run.predict([""]), "inputs", "item 0 must be a path, got an empty string"),
        (lambda: run.predict([0], top_k=None), "top_k", "must be int, got None"),
        (lambda: run.predict([0], top_k=11), "top_k", "between 1 and 10, got 11"),
        (lambda: run.confusion(normalize=1), "normalize", "must be bool, got int 1"),
    ]:
        with pytest.raises(ConfigError) as caught:
            call()
        assert str(caught.value).startswith(f"`{name}` ") and said in str(caught.value), str(caught.value)
        assert caught.value.terms == (name,)
    assert {p.name: p.stat().st_mtime_ns for p in run.path.iterdir()} == before
    assert list(run.predict([np.int64(0)], data=synthetic).index) == ["test[0]"]  # a NumPy integer is an index
