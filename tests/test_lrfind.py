"""The learning-rate finder (lrfind.py): the search, what it suggests, its files, the command, the notebook."""

import json
import math
import shlex
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, assert_png, synthetic_arrays, write_dataset
from serving import data_options

from fashionlab.data import DataSource
from fashionlab.errors import ConfigError
from fashionlab.lrfind import batch_plan, diverged, lr_find, smooth, smoothing, suggestions
from fashionlab.training import train

# no batch norm: plain SGD on it diverges at a high enough learning rate
FINDER = TINY.replace(name="finder", batch_norm="none", depth=1, width=32)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> DataSource:
    """3,000 synthetic images, 30 % of them labelled at random: a loss that cannot reach 0 within a search,
    so that a learning rate too high shows (on the clean synthetic images any rate memorizes them)."""
    arrays = synthetic_arrays(n_train=3000)
    labels, rng = arrays["train-labels-idx1-ubyte"], np.random.default_rng(1)
    relabel = rng.random(len(labels)) < 0.3
    labels[relabel] = rng.integers(0, 10, relabel.sum())
    return DataSource(write_dataset(tmp_path_factory.mktemp("noisy"), arrays), verify=False)


@pytest.fixture(scope="module")
def found(noisy, tmp_path_factory):
    return lr_find(FINDER, tmp_path_factory.mktemp("lr") / "search", data=noisy, start=1e-5, end=100.0,
                   steps=150)


def test_the_search_stops_where_the_loss_diverges_and_writes_what_it_found(found):
    assert found.diverged_at is not None and found.diverged_at == len(found.losses) < 150
    rates = found.learning_rates
    np.testing.assert_allclose(rates, np.geomspace(1e-5, 100.0, 150)[:len(rates)])
    assert found.suggestion == pytest.approx(found.minimum / 10, rel=0.05)  # written down to 2 digits
    assert found.suggestion == float(f"{found.suggestion:.2g}")
    assert found.minimum == pytest.approx(rates[int(np.nanargmin(found.smoothed[:-1]))])
    table = pd.read_csv(found.folder / "lr_find.csv")
    assert list(table.columns) == ["step", "learning_rate", "loss", "smoothed_loss"]
    np.testing.assert_allclose(table["learning_rate"], rates)
    np.testing.assert_allclose(table["loss"], found.losses)
    record = json.loads((found.folder / "lr_find.json").read_text())
    assert record["suggestion"] == pytest.approx(found.suggestion) and record["rule"] == "minimum / 10"
    assert record["config"] == FINDER.to_dict()
    assert (record["start"], record["end"], record["steps_asked"]) == (1e-5, 100.0, 150)
    assert record["last_learning_rate"] == pytest.approx(rates[-1]) and record["steps"] == len(rates)
    suggested = json.loads((found.folder / "config.json").read_text())
    # the schedule is the config's; the name says the rate
    assert suggested == FINDER.replace(learning_rate=found.suggestion, name=f"finder-learning_rate-{found.suggestion}"
                                       ).to_dict()
    assert_png(found.folder / "lr_find.png")


def test_the_suggestion_trains_and_the_rates_past_the_lowest_loss_do_not(found, noisy, tmp_path):
    """The suggestion lies where training converges; ten times the rate of the lowest loss is past it."""
    good = train(FINDER.replace(learning_rate=found.suggestion, epochs=3), tmp_path / "good", data=noisy,
                 verbose=0)
    history = good.history
    assert history["loss"].is_monotonic_decreasing and good.metrics["best_val_accuracy"] > 0.5  # 30 % are noise
    assert found.suggestion < found.minimum < found.learning_rates[-1]
    past = FINDER.replace(learning_rate=float(found.learning_rates[-1]), epochs=3)
    try:
        bad = train(past, tmp_path / "bad", data=noisy, verbose=0)
        assert bad.metrics["best_val_accuracy"] < good.metrics["best_val_accuracy"]
    except Exception as exc:  # the loss became NaN: training stopped, as it should
        assert "NaN or infinite" in str(exc)


def test_each_step_trains_at_its_own_rate_from_the_seeds_initial_weights(noisy, tmp_path):
    first = lr_find(FINDER, tmp_path / "a", data=noisy, start=1e-4, end=1e-1, steps=30)
    again = lr_find(FINDER, tmp_path / "b", data=noisy, start=1e-4, end=1e-1, steps=30)
    np.testing.assert_array_equal(first.losses, again.losses)  # the same seed: the same search
    other = lr_find(FINDER.replace(seed=8), tmp_path / "c", data=noisy, start=1e-4, end=1e-1, steps=30)
    assert not np.array_equal(first.losses, other.losses)
    slow = lr_find(FINDER, tmp_path / "d", data=noisy, start=1e-9, end=1e-8, steps=30)
    assert np.ptp(slow.losses[:5]) < np.ptp(first.losses)  # hardly a step at 1e-9: the loss hardly moves
    assert slow.notes() and "lower" not in slow.notes()[-1]


def test_smoothing_debiases_and_divergence_is_four_times_the_lowest():
    assert smooth(np.array([2.0, 2.0, 2.0]), 0.9) == pytest.approx([2.0, 2.0, 2.0])
    assert smoothing(200) == pytest.approx(0.9)
    assert diverged(np.array([3.0, 2.0, 1.0, 3.9, 4.1])) == 4
    assert diverged(np.array([3.0, 2.0, math.nan])) == 2
    assert diverged(np.array([3.0, 2.0, 1.0])) is None
    rates = np.geomspace(1e-4, 1, 9)
    minimum, suggestion, steepest = suggestions(rates, np.array([5, 5, 4.9, 4, 2, 1, 0.9, 1.5, 3.0]))
    assert minimum == rates[6] and suggestion == pytest.approx(rates[6] / 10) and steepest == rates[4]


def test_the_batch_plan_takes_full_batches_and_reshuffles_each_pass():
    plan = batch_plan(10, 4, 5, seed=0, shuffle=True)
    assert plan.shape == (5, 4)
    assert len(set(plan[:2].ravel())) == 8 and len(set(plan[2:4].ravel())) == 8  # two full batches a pass
    assert not np.array_equal(plan[:2], plan[2:4])
    np.testing.assert_array_equal(batch_plan(10, 4, 3, seed=0, shuffle=False)[0], [0, 1, 2, 3])


def test_bad_ranges_and_folders_are_refused_before_any_work(noisy, tmp_path):
    with pytest.raises(ConfigError, match="`start` .* must be below `end`"):
        lr_find(FINDER, tmp_path / "x", data=noisy, start=1.0, end=0.1)
    with pytest.raises(ConfigError, match="`steps`"):
        lr_find(FINDER, tmp_path / "x", data=noisy, steps=5)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty; give another `out`"):
        lr_find(FINDER, tmp_path / "full", data=noisy)
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
    assert not (tmp_path / "x").exists()


def test_the_command_prints_the_suggestion_and_the_command_that_uses_it(noisy, tmp_path):
    said = subprocess.run([sys.executable, "-m", "fashionlab", "lr-find", "--batch-norm", "none", "--depth", "1",
                           "--width", "32", "--validation-size", "60", "--steps", "60", "--out", str(tmp_path / "o"),
                           *data_options(noisy)], capture_output=True, text=True)
    assert said.returncode == 0, said.stderr
    record = json.loads((tmp_path / "o" / "lr_find.json").read_text())
    assert f"suggested learning rate: {record['suggestion']:.3g}" in said.stdout
    assert f"fashionlab train --config {tmp_path / 'o' / 'config.json'}" in said.stdout
    line = next(line for line in said.stdout.splitlines() if line.startswith("train with it: "))
    command = shlex.split(line.removeprefix("train with it: "))
    assert command[:2] == ["fashionlab", "train"] and f"--learning-rate={record['suggestion']:g}" in "=".join(command)
    trained = subprocess.run([sys.executable, "-m", "fashionlab", *command[1:], "--epochs", "1", "--quiet",
                              "--run-dir", str(tmp_path / "run")], capture_output=True, text=True)
    assert trained.returncode == 0, trained.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["learning_rate"], config["batch_norm"], config["width"]) == (record["suggestion"], "none", 32)
    refused = subprocess.run([sys.executable, "-m", "fashionlab", "lr-find", "--start", "1", "--end", "0.5",
                              *data_options(noisy)], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1  # ConfigError: exit 1
    assert "--start (1) must be below --end (0.5)" in refused.stderr


def test_the_notebook_search_shows_a_card_and_gives_the_config(noisy, tmp_path):
    from fashionlab import notebook

    found = notebook.lr_find(out=tmp_path / "nb", data=noisy, steps=40, batch_norm="none", depth=1, width=32,
                             validation_size=60)
    assert "suggested learning rate" in found._repr_html_() and found._repr_html_().count("<img") == 1
    assert found.config.learning_rate == pytest.approx(found.suggestion)
    assert len(found.table) == len(found._found.losses)
