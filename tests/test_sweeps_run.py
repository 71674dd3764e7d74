"""The sweep as a whole: bad input refused in one line before anything is written, a finished sweep
run again trains nothing, a folder holds one study and one data set, a moved or copied folder goes on."""

import json
import shutil

import pandas as pd
import pytest
from helpers import synthetic_arrays, write_dataset
from sweeps_helpers import SEARCH, cli, space_file, spawned, untouched

from fashionlab.data import DataSource
from fashionlab.errors import ConfigError
from fashionlab.sweeps import sweep
from fashionlab.sweeps.trials import trial_dir_name


def test_the_command_refuses_bad_input_in_one_line(tmp_path, synthetic):
    space = space_file(tmp_path, "width = [32, 8]\n")
    result = cli(str(space), "--out", str(tmp_path / "out"), "--data-dir", str(synthetic.data_dir), "--no-verify")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"fashionlab: error: sweep space {space} [search]: width's min (32) must be below its max (8)"]
    assert not (tmp_path / "out").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    result = cli(str(space_file(tmp_path, SEARCH)), "--out", str(tmp_path / "taken"), "--data-dir",
                 str(synthetic.data_dir), "--no-verify")
    assert result.returncode != 0 and "already holds files that fashionlab's sweep did not write" in result.stderr
    result = cli(str(space_file(tmp_path, SEARCH)), "--trials", "0")
    assert result.returncode == 2 and "--trials: must be between 1 and" in result.stderr
    for option, value, said in [("--study", "", "--study: an empty name"), ("--trials", "abc", "invalid int value"),
                                ("--jobs", "999999", "--jobs: must be between 1 and 256")]:
        result = cli(str(space_file(tmp_path, SEARCH)), option, value)
        assert result.returncode == 2 and said in result.stderr, result.stderr
    long_name = tmp_path / ("s" * 60 + ".toml")
    long_name.write_text(space_file(tmp_path, SEARCH).read_text())
    result = cli(str(long_name), "--out", str(tmp_path / "long"))
    assert result.returncode == 1 and "(from the space file's name; pass --study NAME)" in result.stderr


def test_running_the_finished_sweep_again_trains_nothing_and_evaluates_nothing_again(tiny_sweep, synthetic,
                                                                                     monkeypatch):
    out, first, _ = tiny_sweep
    lines, workers = [], spawned(monkeypatch)
    mtime = (out / first.best["run"] / "confusion_matrix.csv").stat().st_mtime_ns
    again = sweep(out.parent / "space.toml", out, trials=8, jobs=4, sampler="random", data=synthetic,
                  progress=lines.append)
    assert lines[0].endswith("8 of 8 trials ended already; 0 job(s) here")
    assert workers == []  # nothing left: no worker process is started
    assert not any(line.startswith("[") or "evaluating" in line for line in lines)
    assert again.tests == first.tests
    assert (out / first.best["run"] / "confusion_matrix.csv").stat().st_mtime_ns == mtime


def test_a_sweep_folder_holds_one_study_and_one_dataset(tmp_path, synthetic, synthetic_dir):
    space = space_file(tmp_path, SEARCH)
    out = tmp_path / "out"
    sweep(space, out, trials=2, sampler="random", pruner="none", data=synthetic)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(ConfigError, match="out holds the sweep 'space' \\(.*study.journal\\), not 'other'"):
        sweep(space, out, trials=2, study="other", sampler="random", pruner="none", data=synthetic)
    renamed = tmp_path / "renamed.toml"
    renamed.write_text(space.read_text())
    with pytest.raises(ConfigError, match="holds the sweep 'space'"):
        sweep(renamed, out, trials=2, sampler="random", pruner="none", data=synthetic)
    other_data = DataSource(synthetic_dir, verify=False)
    (synthetic_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    write_dataset(synthetic_dir, synthetic_arrays(seed=5))
    with pytest.raises(ConfigError, match="trained on other data"):
        sweep(space, out, trials=3, sampler="random", pruner="none", data=other_data)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # nothing written


def test_a_moved_or_copied_sweep_folder_goes_on_where_it_is(tmp_path, synthetic, monkeypatch):
    space = space_file(tmp_path, SEARCH)
    sweep(space, tmp_path / "here" / "out", trials=2, sampler="random", pruner="none", data=synthetic)
    moved = tmp_path / "there" / "sweep"
    moved.parent.mkdir()
    shutil.move(tmp_path / "here" / "out", moved)
    models = [moved / trial_dir_name(n) / "model.keras" for n in (0, 1)]
    before = untouched(models)
    lines, workers = [], spawned(monkeypatch)
    result = sweep(space, moved, trials=3, jobs=4, sampler="random", pruner="none", data=synthetic,
                   progress=lines.append)
    assert lines[0].endswith("2 of 3 trials ended already; 1 job(s) here")
    assert [line.split(":")[0] for line in lines if line.startswith("[")] == ["[3/3] trial 2"]
    assert untouched(models) == before and list(result.trials["state"]) == ["complete"] * 3
    assert workers == []  # one trial left: trained here, not by four workers
    copied = shutil.copytree(moved, tmp_path / "copy")
    lines = []
    again = sweep(space, copied, trials=3, jobs=4, sampler="random", pruner="none", data=synthetic,
                  progress=lines.append)
    assert lines[0].endswith("3 of 3 trials ended already; 0 job(s) here") and workers == []
    pd.testing.assert_frame_equal(again.trials, result.trials)


def test_the_command_takes_compares_training_options_for_every_trial(tmp_path, synthetic):
    space, out = space_file(tmp_path, SEARCH, epochs=3), tmp_path / "out"
    data = ["--data-dir", str(synthetic.data_dir), "--no-verify"]
    refused = cli(str(space), "--out", str(out), "--width", "16", *data)
    assert refused.returncode == 1 and refused.stderr == (
        f"fashionlab: error: --width is searched by sweep space {space} ([search] width): change its range there, "
        f"or leave --width out\n")
    assert not out.exists()
    done = cli(str(space), "--out", str(out), "--trials", "2", "--epochs", "1", "--train-samples", "100",
               "--batch-size", "16", "--pruner", "none", *data)
    assert done.returncode == 0, done.stderr
    for number in (0, 1):
        config = json.loads((out / trial_dir_name(number) / "config.json").read_text())
        assert (config["epochs"], config["train_samples"], config["batch_size"], config["depth"]) == (1, 100, 16, 2)
        assert len(pd.read_csv(out / trial_dir_name(number) / "history.csv")) == 1
