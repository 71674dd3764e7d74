"""Sweeps: the space file, a tiny sweep judged on validation alone, pruning, failures, resuming
after a kill, reproducibility, and two workers sharing one study in a real PostgreSQL server."""

import json
import multiprocessing.context
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from urllib.parse import quote, unquote

import optuna
import pandas as pd
import pytest
from helpers import assert_png, assert_self_contained, synthetic_arrays, write_dataset
from hypothesis import given, settings
from hypothesis import strategies as st

from fashionlab import sweeps
from fashionlab.config import TrainConfig, load_config
from fashionlab.data import DataSource
from fashionlab.errors import ConfigError, FashionlabError, RunError
from fashionlab.runner import run_task
from fashionlab.runs import Run
from fashionlab.sweeps import (
    Owner,
    _Sweep,
    check_storage_url,
    load_space,
    masked,
    open_storage,
    settings_differences,
    storage_label,
    sweep,
    trial_dir_name,
    trials_table,
    was_pruned,
)
from fashionlab.training import train

TINY_TRAIN = """[train]
name = "tiny"
depth = 2
epochs = {epochs}
validation_size = 60
seed = 7
"""


def space_file(folder: Path, search: str, epochs: int = 3, name: str = "space") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY_TRAIN.format(epochs=epochs) + "[search]\n" + search)
    return path


SEARCH = """learning_rate = { min = 0.001, max = 0.3, log = true }
width = { min = 8, max = 32, step = 8 }
dropout = [0.0, 0.4]
"""


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fashionlab", "sweep", *args], capture_output=True, text=True,
                          timeout=timeout)


# --- the space file ------------------------------------------------------------------------------

def test_a_space_reads_ranges_log_scales_steps_and_choices(tmp_path):
    space = load_space(space_file(tmp_path, SEARCH + 'optimizer = { choices = ["sgd", "adam"] }\n'
                                                     "augment_flip = { choices = [true, false] }\n"))
    lr, width, dropout = (space.search[k] for k in ("learning_rate", "width", "dropout"))
    assert (lr.low, lr.high, lr.log) == (0.001, 0.3, True)
    assert isinstance(width, optuna.distributions.IntDistribution) and (width.low, width.high, width.step) == (8, 32, 8)
    assert isinstance(dropout, optuna.distributions.FloatDistribution) and (dropout.low, dropout.high) == (0.0, 0.4)
    assert space.search["optimizer"].choices == ("sgd", "adam")
    assert space.search["augment_flip"].choices == (True, False)
    assert space.base.depth == 2 and space.base.epochs == 3 and space.name == "space"
    assert space.config({"width": 24, "dropout": 0.1}, "space-3").width == 24


def test_a_space_starts_from_a_recipe(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('recipe = "fast-mlp"\n[train]\nepochs = 5\n[search]\ndropout = [0.0, 0.5]\n')
    space = load_space(path)
    assert (space.base.name, space.base.width, space.base.epochs) == ("fast-mlp", 256, 5)


@pytest.mark.parametrize("search, message", [
    ("widht = [8, 32]\n", "unknown config key 'widht'"),
    ("seed = [1, 9]\n", "seed cannot be searched"),
    ("width = [32, 8]\n", "width's min \\(32\\) must be below its max \\(8\\)"),
    ("width = [8.5, 32]\n", "width must be int, got float 8.5"),
    ("dropout = [0.0, 2.0]\n", "dropout must be at most 0.9"),
    ("learning_rate = { min = 0, max = 0.1, log = true }\n", "greater than 0|log scale needs a min above 0"),
    ("learning_rate = { min = 0.001, max = 0.1, log = true, step = 0.01 }\n", "choose log or step"),
    ("width = { min = 8, max = 32, step = 64 }\n", "step must be above 0 and at most max - min"),
    ("optimizer = [\"sgd\", \"adam\"]\n", "optimizer must be one of|takes one of a set of values"),
    ("optimizer = { choices = [\"sgd\", \"lion\"] }\n", "optimizer must be one of"),
    ("width = { choices = [] }\n", "choices must be at least two different values"),
    ("width = { choices = [8, 8] }\n", "choices must be at least two different values"),
    ("dropout = { choices = [0, 0.0] }\n", "choices must be at least two different values"),
    ("width = { choices = [8] }\n", "a single value belongs in \\[train\\]"),
    ("dropout = { choices = [1979-05-27, 0.1] }\n", "dropout must be float, got date"),
    ("dropout = { min = 0.0, max = 0.5, step = 0.3 }\n", "step \\(0.3\\) must divide max - min"),
    ("validation_size = [100, 200]\n", "validation_size cannot be searched; every trial must be judged on the same"),
    ("engine = { choices = [\"keras\", \"compiled\"] }\n", "engine cannot be searched"),
    ("dataset = { choices = [\"fashion-mnist\", \"./mine\"] }\n", "dataset cannot be searched; every trial must be"),
    ("width = { min = 8 }\n", "needs both min and max"),
    ("width = { min = 8, max = 16, scale = 2 }\n", "width must be \\[min, max\\]"),
    ("width = 16\n", "width must be \\[min, max\\]"),
    ("epochs = [1, 4]\n", "epochs is both fixed in \\[train\\] and searched"),
    ("", "needs a \\[search\\] table"),
])
def test_a_wrong_space_is_refused_with_what_is_wrong(tmp_path, search, message):
    with pytest.raises(ConfigError, match=message):
        load_space(space_file(tmp_path, search))


def test_a_space_file_that_is_not_a_space_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, message in [("[search\n", "not valid TOML"), ("colour = 1\n[search]\nwidth = [8, 16]\n",
                                                             "unknown key\\(s\\) colour"),
                          ('recipe = "nope"\n[search]\nwidth = [8, 16]\n', "no recipe named 'nope'"),
                          ("[train]\ndepth = -1\n[search]\nwidth = [8, 16]\n",
                           "\\[train\\]: depth must be at least 0")]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_space(bad)
    with pytest.raises(ConfigError, match="cannot read|not found|no such|does not exist"):
        load_space(tmp_path / "missing.toml")


def test_a_space_file_nesting_too_deeply_is_refused_as_a_config_file_is(tmp_path):
    deep = tmp_path / "deep.toml"
    deep.write_text("[search]\nwidth = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match=f"sweep space {deep} nests too deeply; it is not a sweep space"):
        load_space(deep)


def test_a_space_file_may_start_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes("\ufeff[search]\ndropout = [0.0, 0.5]\n".encode())
    assert list(load_space(path).search) == ["dropout"]


def test_settings_differences_name_the_changed_keys():
    assert settings_differences({"a": 1, "s": {"x": 1, "y": 2}}, {"a": 1, "s": {"x": 3, "y": 2}, "b": 0}) == \
        ["b", "s.x"]
    assert settings_differences({"s": {"t": {"u": {"v": 1}}}}, {"s": {"t": {"u": {"v": 2}}}}) == ["s.t.u"]


def test_a_database_password_is_never_printed(tmp_path, synthetic):
    assert storage_label("postgresql://me:secret@db/fl") == "postgresql://***@db/fl"
    assert storage_label("postgresql+psycopg://me:secret@db:5432/fl") == "postgresql+psycopg://***@db:5432/fl"
    assert storage_label("postgresql://me@db/fl?password=secret") == "postgresql://***@db/fl?..."
    assert storage_label("postgresql://me:p@ss/w?rd#@db/fl") == "postgresql://***@db/fl"  # not what a parser sees
    for mistyped in ("postgresql:/me:secret@db/fl", "secret.journal", "/dev/null", "me:secret@db"):
        with pytest.raises(ConfigError, match="must be a database URL") as e:
            sweep(space_file(tmp_path, SEARCH), tmp_path / "out", storage=mistyped, data=synthetic)
        assert "secret" not in str(e.value) and "null" not in str(e.value)
    assert not (tmp_path / "out").exists()


# --- a sweep ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory, synthetic):
    folder = tmp_path_factory.mktemp("sweep")
    lines = []
    result = sweep(space_file(folder, SEARCH, epochs=4), folder / "out", trials=8, sampler="random", pruner="median",
                   data=synthetic, progress=lines.append)
    return folder / "out", result, lines


def test_a_sweep_writes_a_table_of_trials_each_an_ordinary_run(tiny_sweep):
    out, result, lines = tiny_sweep
    table = pd.read_csv(out / "trials.csv")
    assert list(table["trial"]) == list(range(8))
    assert set(table["state"]) <= {"complete", "pruned"}
    assert list(table.columns[:5]) == ["trial", "state", "learning_rate", "width", "dropout"]
    for row in table.itertuples():
        run = Run(out / row.run)
        history, config = run.history(), run.config()
        assert (config.learning_rate, config.width, config.dropout) == pytest.approx(
            (row.learning_rate, row.width, row.dropout))
        assert config.name == f"space-{row.trial}" and run.status()["status"] == "complete"
        assert len(history) == row.epochs and row.epochs_planned == 4
        assert row.best_val_accuracy == pytest.approx(history["val_accuracy"].max())
        if row.state == "complete":  # scored by the weights the run keeps: its last epoch's
            assert row.val_accuracy == pytest.approx(history["val_accuracy"].iloc[-1])
    assert sum(line.startswith("[") for line in lines) == 8


def test_only_the_chosen_trial_ever_sees_the_test_set(tiny_sweep):
    out, result, _ = tiny_sweep
    table = pd.read_csv(out / "trials.csv")
    complete = table[table["state"] == "complete"]
    best = complete.loc[complete["val_accuracy"].idxmax()]
    assert result.best["trial"] == best["trial"]
    for row in table.itertuples():
        metrics = Run(out / row.run).metrics()
        assert Run(out / row.run).status()["test"] is False
        assert "test_accuracy" not in metrics and metrics["data"]["test"] == 0
        chosen = row.trial == best["trial"]
        assert (out / row.run / "confusion_matrix.csv").exists() == chosen  # written by evaluating on the test set
        assert (out / row.run / "report.html").exists() == chosen
    assert [t["trial"] for t in result.tests] == [best["trial"]] and result.tests[0]["trials"] == 8
    summary = (out / "summary.md").read_text()
    assert f"Chosen on validation accuracy alone: trial {best['trial']} " in summary
    assert f"maximum over {len(complete)} complete trial(s)" in summary
    assert f"Test set, evaluated once, for trial {best['trial']} only: test accuracy " \
           f"{result.tests[0]['test_accuracy']:.4f}" in summary


def test_pruned_trials_stop_early_and_say_what_they_saved(tiny_sweep):
    out, result, lines = tiny_sweep
    table = pd.read_csv(out / "trials.csv")
    pruned = table[table["state"] == "pruned"]
    assert len(pruned) >= 1  # the median pruner after 5 trials, at epoch 2 or 3 of 4
    assert (pruned["epochs"] < 4).all() and (pruned["seconds_saved"] > 0).all()
    assert (table.loc[table["state"] == "complete", "epochs"] == 4).all()
    assert pruned["val_accuracy"].isna().all()  # a pruned trial is never chosen
    assert f"Pruning stopped {len(pruned)} trial(s) early: {int((4 - pruned['epochs']).sum())} of the 32 " \
           f"planned epochs" in (out / "summary.md").read_text()
    assert any("pruned after epoch" in line for line in lines)


def test_the_report_is_one_self_contained_page_and_best_toml_trains_the_chosen_trial_again(tiny_sweep, synthetic,
                                                                                        tmp_path):
    out, result, _ = tiny_sweep
    page = assert_self_contained(out / "report.html")
    assert page.headings[1] == "What the sweep found" and len(page.images) >= 2
    assert "[train]" in (out / "report.html").read_text()
    best = result.best
    config = load_config(out / "best.toml")
    again = train(config, tmp_path / "again", data=synthetic, verbose=0)
    trial = Run(out / best["run"]).history()
    pd.testing.assert_series_equal(again.history["val_accuracy"], trial["val_accuracy"])
    assert again.history["val_accuracy"].iloc[-1] == pytest.approx(best["val_accuracy"])


def spawned(monkeypatch) -> list[str]:
    """The names of the worker processes started from here on (the runner starts them with spawn)."""
    names, start = [], multiprocessing.context.SpawnProcess.start

    def counted(process):
        names.append(process.name)
        start(process)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", counted)
    return names


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


def test_a_changed_space_or_sampler_is_refused_with_the_keys_that_differ(tiny_sweep, synthetic):
    out, _, _ = tiny_sweep
    changed = space_file(out.parent, SEARCH.replace("max = 32", "max = 64"), epochs=4, name="space")
    try:
        with pytest.raises(ConfigError, match="changed since: space.search.width. "):
            sweep(changed, out, trials=8, sampler="random", data=synthetic)
    finally:
        space_file(out.parent, SEARCH, epochs=4, name="space")
    with pytest.raises(ConfigError, match="changed since: sampler, sampler_seed"):
        sweep(out.parent / "space.toml", out, trials=8, sampler="tpe", sampler_seed=1, data=synthetic)


def test_a_trial_is_scored_by_the_weights_its_run_keeps_not_by_its_best_epoch(tmp_path, synthetic):
    journal = str(tmp_path / "study.journal")
    space = load_space(space_file(tmp_path, SEARCH))
    study = optuna.create_study(study_name="space", direction="maximize", storage=open_storage(journal))
    worker = _Sweep(study, space, tmp_path, trials=1, storage=journal, sampler="random", sampler_seed=0,
                    pruner="none", train_images=300, free_memory=None, progress=lambda line: None)
    task = next(worker.tasks())
    done = run_task(task, synthetic)
    history = pd.read_csv(task.run_dir / "history.csv")
    history["val_accuracy"] = [0.5, 0.9, 0.123]  # the last epoch, whose weights the run keeps, is not the best
    history.to_csv(task.run_dir / "history.csv", index=False)
    worker.done(done)
    assert study.trials[0].value == pytest.approx(0.123)


def test_the_test_set_waits_while_another_worker_still_runs_a_trial(tmp_path, synthetic):
    space_path, out = space_file(tmp_path, SEARCH), tmp_path / "out"
    out.mkdir()
    journal = str((out / "study.journal").resolve())
    (out / "sweep.json").write_text(json.dumps({"study": "space", "storage": journal}))
    space = load_space(space_path)
    study = optuna.create_study(study_name="space", direction="maximize", storage=open_storage(journal))
    study.set_user_attr("fashionlab", {"space": space.settings(), "sampler": "random", "sampler_seed": 0,
                                       "pruner": "none"})
    elsewhere = study.ask(space.search)  # a trial another live worker is training
    elsewhere.set_user_attr("owner", {**Owner().record(), "token": "another worker"})
    elsewhere.set_user_attr("heartbeat", time.time())
    result = sweep(space_path, out, trials=3, sampler="random", pruner="none", data=synthetic)
    assert list(result.trials["state"]) == ["running", "complete", "complete"]
    assert result.tests == [] and not list(out.glob("trial-*/confusion_matrix.csv"))
    assert "the test set waits for them" in result.summary and result.best is not None and not result.ended


def test_failed_trials_are_recorded_with_their_reason_and_the_sweep_goes_on(tmp_path, synthetic):
    search = ('learning_rate = { choices = [0.01, 1e30] }\noptimizer = { choices = ["sgd", "adam"] }\n'
              "momentum = { choices = [0.0, 0.9] }\n")
    result = sweep(space_file(tmp_path, search), tmp_path / "out", trials=8, sampler="random", pruner="none",
                   data=synthetic)
    table = result.trials
    assert len(table) == 8
    clash = (table["optimizer"] == "adam") & (table["momentum"] == 0.9)
    diverges = ~clash & (table["learning_rate"] == 1e30)
    assert clash.any() and diverges.any() and (~clash & ~diverges).any()
    assert (table.loc[clash, "state"] == "failed").all()
    assert table.loc[clash, "reason"].str.startswith("momentum is for optimizer sgd").all()
    assert (table.loc[diverges, "state"] == "failed").all()
    assert table.loc[diverges, "reason"].str.contains("the loss became NaN or infinite").all()
    assert (table.loc[~clash & ~diverges, "state"] == "complete").all()
    assert result.best["learning_rate"] == 0.01 and result.best["optimizer"] == "sgd"


def test_one_job_or_two_the_same_seed_gives_the_same_trials_and_results(tmp_path, synthetic):
    space = space_file(tmp_path, SEARCH)
    one = sweep(space, tmp_path / "one", trials=4, jobs=1, sampler="tpe", pruner="none", data=synthetic)
    two = sweep(space, tmp_path / "two", trials=4, jobs=2, sampler="tpe", pruner="none", data=synthetic)
    columns = ["trial", "learning_rate", "width", "dropout", "val_accuracy"]
    pd.testing.assert_frame_equal(one.trials[columns], two.trials[columns])
    other = sweep(space, tmp_path / "other", trials=4, sampler="tpe", sampler_seed=1, pruner="none", data=synthetic)
    assert not other.trials["learning_rate"].equals(one.trials["learning_rate"])


def wait_for(condition, process, seconds=240):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert condition(), process.communicate()


def test_a_sweep_killed_mid_trial_resumes_it_and_retrains_nothing_finished(tmp_path, synthetic):
    space = space_file(tmp_path, SEARCH, epochs=60)
    out = tmp_path / "out"
    args = [str(space), "--trials", "3", "--out", str(out), "--pruner", "none", "--data-dir",
            str(synthetic.data_dir), "--no-verify"]
    process = subprocess.Popen([sys.executable, "-m", "fashionlab", "sweep", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    second = out / "trial-0001" / "history.csv"
    wait_for(lambda: second.exists() and len(pd.read_csv(second)) >= 3, process)
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    first_model = (out / "trial-0000" / "model.keras").stat().st_mtime_ns
    killed_at = len(pd.read_csv(second))
    assert killed_at < 60 and Run(out / "trial-0001").status()["status"] == "running"  # as the kill left it

    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert "0 of 3 trials ended already" not in resumed.stdout and "1 stopped one(s) to resume" in resumed.stdout
    assert "trial 1: val accuracy" in resumed.stdout and "resumed)" in resumed.stdout
    assert "trial 0: val accuracy" not in resumed.stdout  # finished before the kill: not trained again
    assert (out / "trial-0000" / "model.keras").stat().st_mtime_ns == first_model
    table = pd.read_csv(out / "trials.csv")
    assert list(table["trial"]) == [0, 1, 2] and set(table["state"]) == {"complete"}
    history = Run(out / "trial-0001").history()
    assert list(history["epoch"]) == list(range(1, 61))  # resumed from its checkpoint, not restarted
    assert len(optuna.load_study(study_name="space", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))).trials) == 3


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


def test_an_unreachable_database_is_one_line_without_the_password(tmp_path, synthetic):
    with pytest.raises(RunError, match="cannot use the study storage postgresql://\\*\\*\\*@127.0.0.1:9/x") as e:
        sweep(space_file(tmp_path, SEARCH), tmp_path / "out", trials=2, storage="postgresql://me:pw@127.0.0.1:9/x",
              data=synthetic)
    assert "pw" not in str(e.value).replace("psycopg", "")
    assert not (tmp_path / "out").exists()  # refused: the folder made for it is gone


def test_a_journal_line_cut_short_by_a_crash_is_dropped_and_the_sweep_goes_on(tmp_path, synthetic):
    space = space_file(tmp_path, SEARCH)
    out = tmp_path / "out"
    sweep(space, out, trials=2, sampler="random", pruner="none", data=synthetic)
    journal = out / "study.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial_id": 0, "user_at')  # a write cut short
    again = sweep(space, out, trials=3, sampler="random", pruner="none", data=synthetic)
    assert list(again.trials["state"]) == ["complete"] * 3
    assert journal.read_bytes().startswith(whole) and journal.read_bytes().endswith(b"\n")


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


def test_a_trial_folder_that_is_a_link_is_never_trained_through(tmp_path, synthetic):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"study": "space", "storage": str((out / "study.journal").resolve())}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "trial-0001").symlink_to(elsewhere)
    result = sweep(space_file(tmp_path, SEARCH), out, trials=3, sampler="random", pruner="none", data=synthetic)
    assert list(result.trials["state"]) == ["complete", "failed", "complete"]
    assert "is a symbolic link" in result.trials["reason"][1] and not any(elsewhere.iterdir())


def test_a_sweep_where_no_trial_completes_exits_non_zero(tmp_path, synthetic):
    space = space_file(tmp_path, "dropout = [0.1, 0.3]\nalpha_dropout = [0.1, 0.3]\n")
    result = cli(str(space), "--trials", "2", "--out", str(tmp_path / "out"), "--data-dir", str(synthetic.data_dir),
                 "--no-verify")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"fashionlab: error: no trial completed; {tmp_path / 'out'}/trials.csv says why " \
                                    f"each failed"
    assert pd.read_csv(tmp_path / "out" / "trials.csv")["reason"].str.startswith("choose dropout or alpha").all()


def test_a_damaged_journal_is_named_in_one_line(tmp_path, synthetic):
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep.json").write_text(json.dumps({"study": "space", "storage": str((out / "study.journal").resolve())}))
    (out / "study.journal").write_text('{"op_code": 0, "worker_id": "x", "study_name": "space", "directions": [1]}\n'
                                       '{"op_code": 4, "worker_id": "x"\n')
    with pytest.raises(RunError, match=r"study.journal.*damaged.*move.* away"):
        sweep(space_file(tmp_path, SEARCH), out, trials=2, data=synthetic)


def test_a_journal_that_is_a_link_is_never_written_through(tmp_path, synthetic):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("victim content\n")
    (out / "study.journal").symlink_to(victim)
    with pytest.raises(RunError, match="study.journal is a symbolic link, not a regular file; .* move it away"):
        sweep(space_file(tmp_path, SEARCH), out, trials=1, force=True, data=synthetic)
    assert victim.read_text() == "victim content\n" and sorted(p.name for p in out.iterdir()) == ["study.journal"]


def test_a_journal_operation_optuna_cannot_replay_is_named(tmp_path, synthetic):
    space_path, out, space, study, journal = started_sweep(tmp_path)
    with open(journal, "a") as file:  # a trial attribute operation with two attributes: an AssertionError
        file.write('{"op_code":4,"worker_id":"x","study_id":0,"datetime_start":"2026-12-07T05:05:20.000000+00:00"}\n'
                   '{"op_code":8,"worker_id":"x","trial_id":0,"user_attr":{"a":1,"b":2}}\n')
    with pytest.raises(RunError, match=r"is damaged \(an operation Optuna cannot replay: AssertionError\); move it"):
        sweep(space_path, out, trials=1, sampler="random", pruner="none", data=synthetic)


def nested(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def forged_trial(study: optuna.Study, params: dict, value: float | None = 0.5, **attrs) -> None:
    """A trial written into the study by someone else: any values, any ranges."""
    from optuna.distributions import FloatDistribution, IntDistribution

    storage = study._storage
    trial_id = storage.create_new_trial(study._study_id)
    for key, v in params.items():
        distribution = IntDistribution(0, 10**9) if isinstance(v, int) else FloatDistribution(-1e12, 1e12)
        storage.set_trial_param(trial_id, key, distribution.to_internal_repr(v), distribution)
    for key, v in attrs.items():
        storage.set_trial_user_attr(trial_id, key, v)
    storage.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, None if value is None else [value])


GOOD = {"learning_rate": 0.01, "width": 16, "dropout": 0.1}


@pytest.mark.parametrize("forge, said", [
    (lambda s: forged_trial(s, GOOD, 2.0), "trial 0: `value\\[0\\]` must be at least 0.0 and at most 1.0, not 2.0"),
    (lambda s: forged_trial(s, GOOD, float("inf")), "trial 0: `value\\[0\\]` must be a finite number, not inf"),
    (lambda s: forged_trial(s, GOOD, None), "trial 0: complete without a value"),
    (lambda s: forged_trial(s, {**GOOD, "learning_rate": 1e9}),
     "trial 0: its learning_rate 1000000000.0 is not in the space \\(0.001 to 0.3, log scale\\)"),
    (lambda s: forged_trial(s, {**GOOD, "width": 12}), "trial 0: its width 12 is not in the space"),
    (lambda s: forged_trial(s, {"width": 16}), "trial 0: it ended without a value for learning_rate, dropout"),
    (lambda s: forged_trial(s, {**GOOD, "depth": 3}), "trial 0: 'depth' is not searched by this sweep"),
    (lambda s: forged_trial(s, GOOD, epochs="two"), "trial 0: `epochs` must be a whole number, not 'two'"),
    (lambda s: forged_trial(s, GOOD, owner={"pid": "1"}), "trial 0: `owner` lacks `boot`, `host`, `token`"),
    (lambda s: s.set_user_attr("test:0", {"trial": "zero"}), "`test:0` lacks `run`, .*`when`"),
    (lambda s: s.set_user_attr("fashionlab", "not a dict"), "`fashionlab` must be a table of keys and values"),
    (lambda s: s.set_user_attr("deep", nested(600)), "an attribute nests too deeply"),
])
def test_what_the_study_holds_is_checked_and_a_forged_trial_never_chosen(tmp_path, synthetic, forge, said):
    """Anyone who can write to the journal (or the database) can write any trial or attribute: the sweep
    refuses, in one line with the way out, what it never writes itself."""
    space_path, out, space, study, journal = started_sweep(tmp_path)
    forge(study)
    with pytest.raises(RunError) as refused:
        sweep(space_path, out, trials=1, sampler="random", pruner="none", data=synthetic)
    message = str(refused.value)
    assert re.search(f"^the study journal {re.escape(journal)} is damaged \\(.*{said}.*\\); move it away \\(mv ",
                     message), message
    assert "\n" not in message and not (out / "best.toml").exists() and not (out / "trials.csv").exists()


def test_a_journal_whose_last_line_nests_too_deeply_is_damaged(tmp_path, synthetic):
    space_path, out, space, study, journal = started_sweep(tmp_path)
    with open(journal, "a") as file:
        file.write('{"op_code":2,"worker_id":"e","study_id":0,"user_attr":{"j":' + "[" * 100_000 + "]" * 100_000
                   + "}}\n")
    with pytest.raises(RunError, match="is damaged \\(its last line: maximum recursion depth exceeded"):
        sweep(space_path, out, trials=1, sampler="random", pruner="none", data=synthetic)


def test_a_stopped_trial_whose_values_were_never_all_drawn_is_failed_not_trained(tmp_path, monkeypatch):
    monkeypatch.setattr(sweeps, "CLAIM_SECONDS", 0.01)
    space_path, out, space, study, journal = started_sweep(tmp_path)
    storage = study._storage
    trial_id = storage.create_new_trial(study._study_id)  # its worker killed while asking for its values
    storage.set_trial_param(trial_id, "width", 16.0, space.search["width"])
    storage.set_trial_user_attr(trial_id, "owner", killed_owner())
    task = next(worker_of(study, space, out, journal, trials=2).tasks())
    assert task.tags["trial"] == 1 and set(task.config.to_dict()) >= set(GOOD)
    stopped = study.trials[0]
    assert stopped.state.name == "FAIL" and stopped.user_attrs["reason"].startswith("its values were never all drawn")
    assert not (out / trial_dir_name(0)).exists()


# --- many machines: a real PostgreSQL server ---------------------------------------------------------

def test_two_workers_on_postgresql_share_one_study_and_never_run_a_trial_twice(tmp_path, synthetic, postgres):
    """Two machines sharing a folder (NFS, say) and the database, each running the same command."""
    space = space_file(tmp_path, SEARCH, epochs=8)
    out = tmp_path / "shared-folder"
    command = [sys.executable, "-m", "fashionlab", "sweep", str(space), "--trials", "6", "--storage", postgres,
               "--study", "shared", "--sampler", "random", "--pruner", "none", "--out", str(out), "--data-dir",
               str(synthetic.data_dir), "--no-verify"]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    for worker in workers:
        _, err = worker.communicate(timeout=400)
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=postgres.replace("postgresql://", "postgresql+psycopg://"))
    assert len(study.trials) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    workers_seen = {t.user_attrs["owner"]["pid"] for t in study.trials}
    assert workers_seen == {w.pid for w in workers}  # both contributed
    assert sorted(t.user_attrs["run"] for t in study.trials) == [f"trial-{n:04d}" for n in range(6)]
    for trial in study.trials:  # each trained once, start to end, by the worker that holds it
        run = Run(out / trial.user_attrs["run"])
        assert "resumed" not in run.status() and list(run.history()["epoch"]) == list(range(1, 9))
        assert run.status()["pid"] == trial.user_attrs["owner"]["pid"]
    assert len(pd.read_csv(out / "trials.csv")) == 6
    tests = [key for key in study.user_attrs if key.startswith("test:")]
    assert tests == [f"test:{study.best_trial.number}"]  # the test set seen once, for the best trial


def test_a_study_made_by_something_else_is_not_touched(tmp_path, synthetic, postgres):
    url = postgres.replace("postgresql://", "postgresql+psycopg://")
    foreign = optuna.create_study(study_name="someone-elses", storage=url, direction="maximize")
    foreign.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    with pytest.raises(ConfigError, match="already has trials that fashionlab did not make"):
        sweep(space_file(tmp_path, SEARCH), tmp_path / "out", trials=2, storage=postgres, study="someone-elses",
              data=synthetic)
    assert len(optuna.load_study(study_name="someone-elses", storage=url).trials) == 1
    optuna.create_study(study_name="a-minimizer", storage=url)
    with pytest.raises(RunError, match="cannot open study a-minimizer in postgresql://.* \\(it minimizes\\)"):
        sweep(space_file(tmp_path, SEARCH), tmp_path / "out", trials=2, storage=postgres, study="a-minimizer",
              data=synthetic)
    assert not (tmp_path / "out").exists()


def test_reading_a_pruned_trials_record_back(tiny_sweep):
    out, _, _ = tiny_sweep
    study = optuna.load_study(study_name="space", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal"))))
    for trial in study.trials:
        history = Run(out / trial.user_attrs["run"]).history()
        assert trial.intermediate_values == pytest.approx(dict(zip(history["epoch"], history["val_accuracy"])))
        assert json.loads(json.dumps(trial.user_attrs))["owner"]["pid"] > 0
    assert os.path.exists(out / "sweep.json")
    assert_png((out / "trial-0000" / "learning_curves.png"))


def test_ctrl_c_stops_every_job_cleanly_and_the_same_command_finishes_the_sweep(tmp_path, synthetic):
    space = space_file(tmp_path, SEARCH, epochs=40)
    out = tmp_path / "out"
    args = [str(space), "--trials", "3", "--jobs", "2", "--out", str(out), "--pruner", "none", "--data-dir",
            str(synthetic.data_dir), "--no-verify"]
    process = subprocess.Popen([sys.executable, "-m", "fashionlab", "sweep", *args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    histories = [out / "trial-0000" / "history.csv", out / "trial-0001" / "history.csv"]
    wait_for(lambda: all(h.exists() for h in histories), process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == ("fashionlab: error: interrupted; finished trials are kept in the study, "
                                            "and running the same command again resumes the stopped ones")
    assert {Run(out / f"trial-000{n}").status()["status"] for n in (0, 1)} == {"interrupted"}
    assert not (out / "trials.csv").exists()
    again = cli(*args)
    assert again.returncode == 0, again.stderr
    assert "2 stopped one(s) to resume" in again.stdout
    assert list(pd.read_csv(out / "trials.csv")["state"]) == ["complete"] * 3


# --- nothing lost, nothing trusted that the sweep did not write ----------------------------------------

def started_sweep(tmp_path: Path, search: str = SEARCH, epochs: int = 3):
    """A sweep folder and its study as `sweep` starts them, for tests that act as its workers."""
    space_path, out = space_file(tmp_path, search, epochs), tmp_path / "out"
    out.mkdir()
    journal = str(out / "study.journal")
    (out / "sweep.json").write_text(json.dumps({"study": "space", "storage": "study.journal"}))
    space = load_space(space_path)
    study = optuna.create_study(study_name="space", direction="maximize", storage=open_storage(journal))
    study.set_user_attr("fashionlab", {"space": space.settings(), "sampler": "random", "sampler_seed": 0,
                                       "pruner": "none"})
    return space_path, out, space, study, journal


def worker_of(study: optuna.Study, space, out: Path, journal: str, trials: int) -> _Sweep:
    return _Sweep(study, space, out, trials=trials, storage=journal, sampler="random", sampler_seed=0,
                  pruner="none", train_images=300, free_memory=None, progress=lambda line: None)


def killed_owner() -> dict:
    """The owner record of a worker killed with SIGKILL, on this machine."""
    process = subprocess.Popen(["sleep", "60"])
    process.kill()
    process.wait()
    return {**Owner().record(), "pid": process.pid, "token": "killed"}


class PruneAt(optuna.pruners.BasePruner):
    """Prunes trial N from epoch `at[N]` on, whenever it is asked; never the other trials."""

    def __init__(self, at: dict[int, int]):
        self.at = at

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.at.get(trial.number, 10**9)


def untouched(paths: list[Path]) -> list[tuple[int, bytes]]:
    return [(path.stat().st_mtime_ns, path.read_bytes()) for path in paths]


def test_a_trial_whose_run_completed_but_was_never_told_is_recorded_from_its_files(tmp_path, synthetic,
                                                                                   monkeypatch):
    """Its worker was killed between the run's last write and telling the study: the next start records
    the run as it is (a pruned one as pruned), never trains it again, never fails it."""
    monkeypatch.setattr(sweeps, "make_pruner", lambda kind, epochs: PruneAt({1: 2}))
    monkeypatch.setattr(sweeps, "CLAIM_SECONDS", 0.05)
    space_path, out, space, study, journal = started_sweep(tmp_path)
    tasks = worker_of(study, space, out, journal, trials=2).tasks()
    for task in (next(tasks), next(tasks)):
        run_task(task, synthetic)  # complete on disk, never told
    for trial in study.get_trials():
        study._storage.set_trial_user_attr(trial._trial_id, "owner", killed_owner())
    models = [out / trial_dir_name(n) / "model.keras" for n in (0, 1)]
    before = untouched(models)
    lines = []
    result = sweep(space_path, out, trials=2, sampler="random", pruner="none", data=synthetic, progress=lines.append)
    assert untouched(models) == before
    assert "2 stopped one(s) to resume" in lines[0]
    assert sum(line.endswith(", recorded from its complete run)") for line in lines) == 2
    assert not any("failed" in line for line in lines)
    complete, pruned = (result.trials.iloc[n] for n in (0, 1))
    runs = [Run(out / trial_dir_name(n)) for n in (0, 1)]
    history, metrics = runs[0].history(), runs[0].metrics()
    assert complete.state == "complete" and complete.val_accuracy == pytest.approx(history["val_accuracy"].iloc[-1])
    assert (complete.epochs, complete.epochs_planned, complete.seconds_saved) == (3, 3, 0)
    assert (complete.seconds, complete.best_val_accuracy) == pytest.approx((metrics["train_seconds"],
                                                                           metrics["best_val_accuracy"]))
    history = runs[1].history()
    assert pruned.state == "pruned" and pd.isna(pruned.val_accuracy)
    assert (pruned.epochs, pruned.epochs_planned) == (2, 3) and len(history) == 2
    assert pruned.seconds_saved == pytest.approx(statistics.median(history["seconds"]))
    assert complete.host == pruned.host == Owner().host
    assert [t["trial"] for t in result.tests] == [0] and result.ended


def test_a_damaged_journal_is_refused_with_the_way_out_and_rebuilt_from_the_trial_folders(tmp_path, synthetic):
    space = space_file(tmp_path, SEARCH)
    out = tmp_path / "out"
    first = sweep(space, out, trials=3, sampler="random", pruner="none", data=synthetic).trials.set_index("trial")
    shutil.rmtree(out / "trial-0000")  # a number whose run is gone: skipped, its folder never used again
    unfinished = Run(out / "trial-0002")  # as a kill leaves a run (its checkpoints gone: resumed from the start)
    unfinished.set_status("running")
    for name in ("metrics.json", "model.keras"):
        unfinished.file(name).unlink()
    kept = [out / "trial-0001" / name for name in ("model.keras", "history.csv", "run.json")]
    before = untouched(kept)
    journal = out / "study.journal"
    operations = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(b"".join(operations[:5] + [b"{not an operation\n"] + operations[5:]))

    with pytest.raises(RunError) as refused:
        sweep(space, out, trials=3, sampler="random", pruner="none", data=synthetic)
    said = str(refused.value)
    assert "\n" not in said and f"the study journal {journal} is damaged" in said
    assert "the trials whose runs are in the sweep folder are recorded again from their files" in said
    subprocess.run(re.search(r"\((mv [^)]+)\)", said)[1], shell=True, check=True)  # the way out, as said
    assert not journal.exists() and (out / "study.journal.damaged").is_file()

    lines = []
    again = sweep(space, out, trials=3, sampler="random", pruner="none", data=synthetic, progress=lines.append)
    table = again.trials.set_index("trial")
    assert list(table.index) == [1, 2, 3] and set(table["state"]) == {"complete"}
    assert list(table["run"]) == ["trial-0001", "trial-0002", "trial-0003"]  # each trial in its own folder
    assert untouched(kept) == before  # the complete trial: recorded again, never retrained
    columns = ["learning_rate", "width", "dropout", "val_accuracy", "epochs", "seconds", "best_val_accuracy"]
    pd.testing.assert_series_equal(table.loc[1, columns], first.loc[1, columns])
    assert table.loc[2, "val_accuracy"] == pytest.approx(first.loc[2, "val_accuracy"])  # resumed: the same run
    assert lines[1].endswith("1 of 3 trials ended already, 1 stopped one(s) to resume; 1 job(s) here")
    assert [line.split(": val")[0] for line in lines if line.startswith("[")] == \
        ["[1/3] trial 1", "[2/3] trial 2", "[3/3] trial 3"]
    assert lines[0].endswith("recorded again from trial-0001)") and lines[2].endswith("resumed)")
    assert not (out / "trial-0000").exists()


def test_the_test_set_is_seen_only_through_the_folder_the_sweep_made_for_the_chosen_trial(tmp_path, synthetic,
                                                                                          monkeypatch):
    space_path, out, space, study, journal = started_sweep(tmp_path)
    elsewhere = study.ask(space.search)  # trial 0, run by another live worker: the test set waits for it
    elsewhere.set_user_attr("owner", {**Owner().record(), "token": "another worker"})
    elsewhere.set_user_attr("heartbeat", time.time())
    done = _Sweep.done

    def misrecorded(worker, finished):  # the study's record of each trial's run, changed by whoever can
        worker.held[finished.task.tags["trial"]].set_user_attr("run", "../elsewhere")
        done(worker, finished)

    monkeypatch.setattr(_Sweep, "done", misrecorded)
    best = sweep(space_path, out, trials=3, sampler="random", pruner="none", data=synthetic).best["trial"]
    other = 3 - best
    chosen, decoy, aside = out / trial_dir_name(best), tmp_path / "elsewhere", tmp_path / "aside"
    shutil.copytree(chosen, decoy)  # the chosen trial's run, where the study's record points
    assert study.trials[best].user_attrs["run"] == "../elsewhere"
    study.tell(elsewhere, state=optuna.trial.TrialState.FAIL)  # every trial has ended: the test set's turn

    def finished() -> sweeps.SweepResult:
        return sweep(space_path, out, trials=3, sampler="random", pruner="none", data=synthetic)

    def evaluated() -> list[Path]:
        return sorted(p.parent for p in tmp_path.rglob("confusion_matrix.csv"))

    chosen.rename(aside)  # the chosen trial's folder, a link to a copy of itself
    chosen.symlink_to(aside)
    result = finished()
    assert result.tests == [] and f"{chosen} is a symbolic link" in result.summary and evaluated() == []
    chosen.unlink()
    (out / trial_dir_name(other)).rename(chosen)  # another trial's run in the chosen trial's folder
    result = finished()
    assert result.tests == [] and "was trained with different settings" in result.summary and evaluated() == []
    chosen.rename(out / trial_dir_name(other))
    aside.rename(chosen)
    (chosen / "model.keras").rename(aside)  # its model a link to the model itself
    (chosen / "model.keras").symlink_to(aside)
    result = finished()
    assert result.tests == [] and "model.keras is a symbolic link" in result.summary and evaluated() == []
    (chosen / "model.keras").unlink()
    aside.rename(chosen / "model.keras")

    result = finished()
    assert evaluated() == [chosen]  # never the folder the study's record names
    assert [(t["trial"], t["run"]) for t in result.tests] == [(best, trial_dir_name(best))]
    assert result.trials.loc[result.trials["trial"] == best, "run"].item() == trial_dir_name(best)


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


def test_the_sweep_asks_for_exactly_its_trials_and_never_trains_a_surplus_one(tmp_path, monkeypatch):
    space_path, out, space, study, journal = started_sweep(tmp_path)
    first = worker_of(study, space, out, journal, trials=2)
    second = worker_of(optuna.load_study(study_name="space", storage=open_storage(journal)), space, out, journal,
                       trials=2)
    mine = first.tasks()
    assert next(mine).tags["trial"] == 0
    asked = []

    def counted(worker: _Sweep, race: bool = False) -> None:
        ask = worker.study.ask

        def asking(*args, **kwargs):
            asked.append(worker)
            assert len(asked) <= 2, "a worker goes on asking for trials past the last one"
            if race:  # the first worker asks for the last trial between the second's count and its ask
                assert next(mine).tags["trial"] == 1
            return ask(*args, **kwargs)

        monkeypatch.setattr(worker.study, "ask", asking)

    counted(first)
    counted(second, race=True)
    assert list(second.tasks()) == []  # what it asked for is trial 2, one too many: never trained
    assert list(mine) == []  # the first has its two
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["RUNNING", "RUNNING", "FAIL"] and trials[2].user_attrs["surplus"]
    assert [t.number for t in first.sweep_trials()] == [0, 1] and not first._surplus(1)
    assert list(trials_table(study.get_trials(), space)["trial"]) == [0, 1]


def test_two_workers_taking_over_one_stopped_trial_leave_it_to_one(tmp_path, monkeypatch):
    space_path, out, space, study, journal = started_sweep(tmp_path)
    stopped = study.ask(space.search)
    stopped.set_user_attr("owner", killed_owner())
    stopped.set_user_attr("heartbeat", time.time())
    a = worker_of(study, space, out, journal, trials=2)
    b = worker_of(optuna.load_study(study_name="space", storage=open_storage(journal)), space, out, journal, trials=2)
    [seen_by_a], [seen_by_b] = a.stopped_trials(), b.stopped_trials()
    monkeypatch.setattr(sweeps, "CLAIM_SECONDS", 0.01)
    won = {}

    def meanwhile(seconds):  # while one waits after writing its claim, the other claims the trial too
        if "b" not in won:
            won["b"] = None
            won["b"] = b.take_over(seen_by_b)
        time.sleep(seconds)

    monkeypatch.setattr(sweeps, "time", types.SimpleNamespace(time=time.time, sleep=meanwhile))
    won["a"] = a.take_over(seen_by_a)
    if "b" not in won:  # a take-over that never waited for the others' claims
        won["b"] = b.take_over(seen_by_b)
    assert sorted(won.values()) == [False, True]
    winner, loser = (a, b) if won["a"] else (b, a)
    assert study.trials[0].user_attrs["owner"]["token"] == winner.owner.token
    assert loser.stopped_trials() == []  # the winner's now: the loser leaves it


def test_a_trial_is_never_pruned_at_its_last_epoch_and_a_pruned_one_says_what_it_saved(tmp_path, synthetic,
                                                                                      monkeypatch):
    monkeypatch.setattr(sweeps, "make_pruner", lambda kind, epochs: PruneAt({0: 2, 1: 3}))
    out = tmp_path / "out"
    table = sweep(space_file(tmp_path, SEARCH), out, trials=2, sampler="random", pruner="none",
                  data=synthetic).trials
    pruned, last = table.iloc[0], table.iloc[1]
    history = Run(out / "trial-0000").history()
    assert pruned.state == "pruned" and (pruned.epochs, pruned.epochs_planned) == (2, 3) and len(history) == 2
    assert pruned.seconds_saved == pytest.approx(statistics.median(history["seconds"]))  # one epoch at its pace
    history = Run(out / "trial-0001").history()
    assert last.state == "complete" and (last.epochs, last.epochs_planned, last.seconds_saved) == (3, 3, 0)
    assert last.val_accuracy == pytest.approx(history["val_accuracy"].iloc[-1])


def test_whether_a_run_was_pruned_is_told_from_its_files():
    def ran(epochs: int, best: int) -> dict:
        return {"seconds_per_epoch": [1.0] * epochs, "best_epoch": best}

    plain, patient = TrainConfig(epochs=5), TrainConfig(epochs=5, early_stopping=2)
    assert not was_pruned(plain, ran(5, 2)) and not was_pruned(patient, ran(5, 5))  # every planned epoch
    assert was_pruned(plain, ran(3, 3))
    assert not was_pruned(patient, ran(4, 2))  # two epochs without a better one: early stopping's
    assert was_pruned(patient, ran(3, 2))  # its patience had not run out: the pruner's


# Passwords a URL parser misreads (the last one's end becomes the host the driver names), the first one's
# every four characters holding one that no report or base64 image does.
NASTY = ["a@b/c?d#e:f%g h€i", "x:y@z%40w#v?u/t s", "ü@ß/€?é#ñ:ø%2Få@", "qx7@zv9kq2"]


def pieces(secret: str) -> set[str]:
    """The password and every piece of it four characters long (longer pieces hold one)."""
    return {secret[i:i + 4] for i in range(len(secret) - 3)} | {secret}


def assert_unsaid(text: str, password: str) -> None:
    shown = [p for secret in {password, unquote(password)} for p in pieces(secret) if p in text]
    assert not shown, (shown, text)


@settings(max_examples=300, deadline=None)
@given(password=st.text(st.sampled_from("@/?#:%&=+; ") | st.characters(exclude_characters="*",
                                                                         exclude_categories=["Cs"]),
                        min_size=4, max_size=30),
       encoded=st.booleans(), query=st.booleans())
def test_no_piece_of_a_password_is_ever_shown_whatever_it_holds(password, encoded, query):
    written = quote(password, safe="") if encoded else password
    url = (f"postgresql+psycopg://me:{written}@db-host:5432/fl" if not query else
           f"postgresql://me@db-host/fl?sslmode=require&password={written}")
    message = f"connection to {url} failed: password {written} for {password} ({password[1:-1]}) was refused"
    for said in (storage_label(url), masked(message, url)):
        assert_unsaid(said, password)
        assert_unsaid(said, written)


def test_only_the_secrets_of_a_query_are_masked_not_the_host_or_port_it_names():
    url = "postgresql://me@db-host/fl?password=s3cr&t;x&host=db-host&port=5432&sslmode=require"
    message = 'connection to server at "db-host", port 5432 failed: password s3cr&t;x refused (sslmode require)'
    assert masked(message, url) == 'connection to server at "db-host", port 5432 failed: password *** refused ' \
                                   '(sslmode require)'


def test_an_error_leaving_the_sweep_says_nothing_of_the_password():
    url = "postgresql://me:qx7@zv9kq2@db/fl"
    with pytest.raises(RuntimeError) as e, sweeps.secrets_kept(url):  # a bug, or a driver's error, quoting it
        raise ValueError(f"could not use {url} (host 'zv9kq2@db')")
    assert str(e.value) == "ValueError: could not use postgresql://me:***@db/fl (host '***@db')"
    with pytest.raises(RunError) as e, sweeps.secrets_kept(url):
        raise RunError("`storage` qx7@zv9kq2 failed", terms=["storage"])
    assert str(e.value) == "`storage` *** failed" and e.value.terms == ("storage",)
    with pytest.raises(ValueError, match="nothing secret"), sweeps.secrets_kept(url):
        raise ValueError("nothing secret")


def test_a_password_is_never_shown_nor_written_whatever_it_holds(tmp_path, synthetic, postgres, monkeypatch):
    monkeypatch.setattr(sweeps, "STORAGE_ATTEMPTS", 1)
    space = space_file(tmp_path, SEARCH, epochs=2)
    for password in NASTY:  # a server that is not there: what the driver says, of the URL as it read it
        for written in (password, quote(password, safe="")):
            url = f"postgresql://me:{written}@127.0.0.1:9/x"
            with pytest.raises(FashionlabError) as refused:
                sweep(space, tmp_path / "refused", trials=1, storage=url, data=synthetic)
            assert_unsaid(str(refused.value), password)
            assert not (tmp_path / "refused").exists()
            with pytest.raises(RunError) as refused:  # as a worker opens it
                open_storage(url)
            assert_unsaid(str(refused.value), password)
    password, lines = NASTY[0], []  # a server that lets anyone in: every line and file of a whole sweep
    url = postgres.replace("postgresql://fashionlab@", f"postgresql://fashionlab:{quote(password, safe='')}@")
    result = sweep(space, tmp_path / "out", trials=1, storage=url, study="nasty", sampler="random", pruner="none",
                   data=synthetic, progress=lines.append)
    assert result.best is not None and result.tests
    assert_unsaid("\n".join(lines) + result.summary, password)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.suffix not in (".keras", ".png")]
    assert {"sweep.json", "trials.csv", "summary.md", "report.html", "run.json", "metrics.json"} <= \
        {p.name for p in written}
    for path in written:
        assert_unsaid(path.read_bytes().decode("utf-8", "replace"), password)


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite:///file::memory:?cache=shared",
                                 "sqlite:///study.db?mode=memory&cache=shared", "sqlite://host/study.db",
                                 "mongodb://me:secret@host/db", "redis://host:6379/0"])
def test_a_storage_the_workers_cannot_share_is_refused_before_anything_is_written(tmp_path, url):
    result = cli(str(space_file(tmp_path, SEARCH)), "--storage", url, "--out", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("fashionlab: error: --storage ") and "secret" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_database_every_worker_can_open_is_accepted(tmp_path, synthetic):
    for url in ("postgresql://me@db/fl", "postgres://db/fl", "postgresql+psycopg://me:pw@db:5432/fl",
                "mysql://me@db/fl", "mysql+pymysql://me:pw@db/fl", "sqlite:///study.db", "sqlite:////srv/study.db"):
        check_storage_url(url)
    result = sweep(space_file(tmp_path, SEARCH, epochs=2), tmp_path / "out", trials=1, sampler="random",
                   pruner="none", storage=f"sqlite:///{tmp_path / 'study.db'}", data=synthetic)
    assert list(result.trials["state"]) == ["complete"] and (tmp_path / "study.db").is_file()


def test_a_study_started_before_a_config_key_existed_reads_it_as_its_default():
    from fashionlab.sweeps import _with_defaults

    settings = {"space": {"base": TrainConfig().to_dict(), "search": {}}, "sampler": "tpe", "sampler_seed": 0,
                "pruner": "median"}
    older = {**settings, "space": {**settings["space"], "base": {k: v for k, v in TrainConfig().to_dict().items()
                                                                 if k != "dataset"}}}
    assert older != settings and _with_defaults(older) == settings
    changed = {**settings, "space": {**settings["space"], "base": {**settings["space"]["base"], "width": 7}}}
    assert _with_defaults(changed) != settings
