"""The results: the trials table, each trial an ordinary run; the test set seen once, for the chosen
trial only, when every trial has ended, and only through the folder the sweep made for it; the report."""

import json
import shutil
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from helpers import assert_self_contained
from sweeps_helpers import SEARCH, cli, space_file, started_sweep

from fashionlab.config import load_config
from fashionlab.rundir import Run
from fashionlab.sweeps import sweep
from fashionlab.sweeps.claims import Owner, Worker
from fashionlab.sweeps.results import SweepResult
from fashionlab.sweeps.space import load_space
from fashionlab.sweeps.storage import open_storage
from fashionlab.sweeps.trials import trial_dir_name
from fashionlab.training import train


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


def test_the_report_is_one_self_contained_page_and_best_toml_trains_the_chosen_trial_again(tiny_sweep, synthetic,
                                                                                        tmp_path):
    out, result, _ = tiny_sweep
    page = assert_self_contained(out / "report.html")
    assert page.headings[1:3] == ["What was run", "What the sweep found"] and len(page.images) >= 2
    setup = {row[0]: row[1] for row in page.tables[0]}
    assert setup["command"] == "not recorded" and setup["searched"] == ", ".join(load_space(setup["space"]).search)
    changes = setup["every trial changes"]
    assert changes.startswith("tutorial recipe: ") and "epochs 10 → 4" in changes
    assert setup["machine"].startswith(Run(out / result.best["run"]).metrics()["machine"]["cpu"])
    assert "[train]" in (out / "report.html").read_text()
    best = result.best
    config = load_config(out / "best.toml")
    again = train(config, tmp_path / "again", data=synthetic, verbose=0)
    trial = Run(out / best["run"]).history()
    pd.testing.assert_series_equal(again.history["val_accuracy"], trial["val_accuracy"])
    assert again.history["val_accuracy"].iloc[-1] == pytest.approx(best["val_accuracy"])


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


def test_the_test_set_is_seen_only_through_the_folder_the_sweep_made_for_the_chosen_trial(tmp_path, synthetic,
                                                                                          monkeypatch):
    space_path, out, space, study, journal = started_sweep(tmp_path)
    elsewhere = study.ask(space.search)  # trial 0, run by another live worker: the test set waits for it
    elsewhere.set_user_attr("owner", {**Owner().record(), "token": "another worker"})
    elsewhere.set_user_attr("heartbeat", time.time())
    done = Worker.done

    def misrecorded(worker, finished):  # the study's record of each trial's run, changed by whoever can
        worker.claims.held[finished.task.tags["trial"]].set_user_attr("run", "../elsewhere")
        done(worker, finished)

    monkeypatch.setattr(Worker, "done", misrecorded)
    best = sweep(space_path, out, trials=3, sampler="random", pruner="none", data=synthetic).best["trial"]
    other = 3 - best
    chosen, decoy, aside = out / trial_dir_name(best), tmp_path / "elsewhere", tmp_path / "aside"
    shutil.copytree(chosen, decoy)  # the chosen trial's run, where the study's record points
    assert study.trials[best].user_attrs["run"] == "../elsewhere"
    study.tell(elsewhere, state=optuna.trial.TrialState.FAIL)  # every trial has ended: the test set's turn

    def finished() -> SweepResult:
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


def test_a_sweep_where_no_trial_completes_exits_non_zero(tmp_path, synthetic):
    space = space_file(tmp_path, "dropout = [0.1, 0.3]\nalpha_dropout = [0.1, 0.3]\n")
    result = cli(str(space), "--trials", "2", "--out", str(tmp_path / "out"), "--data-dir", str(synthetic.data_dir),
                 "--no-verify")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"fashionlab: error: no trial completed; {tmp_path / 'out'}/trials.csv says why " \
                                    f"each failed"
    assert pd.read_csv(tmp_path / "out" / "trials.csv")["reason"].str.startswith("choose dropout or alpha").all()
