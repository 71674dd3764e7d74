"""A trial: an ordinary run trained without the test set, scored by the weights it keeps, pruned (never
at its last epoch), failed with its reason, never trained through a link, recorded from its files."""

import json
import os
import statistics

import optuna
import pandas as pd
import pytest
from helpers import assert_png
from sweeps_helpers import SEARCH, PruneAt, killed_owner, space_file, started_sweep, untouched, worker_of

from fashionlab.config import TrainConfig
from fashionlab.rundir import Run
from fashionlab.runner import run_task
from fashionlab.sweeps import claims, sweep, trials
from fashionlab.sweeps.claims import Owner, Worker
from fashionlab.sweeps.space import load_space
from fashionlab.sweeps.storage import open_storage
from fashionlab.sweeps.trials import trial_dir_name, was_pruned


def test_a_trial_is_scored_by_the_weights_its_run_keeps_not_by_its_best_epoch(tmp_path, synthetic):
    journal = str(tmp_path / "study.journal")
    space = load_space(space_file(tmp_path, SEARCH))
    backend = open_storage(journal)
    study = optuna.create_study(study_name="space", direction="maximize", storage=backend)
    worker = Worker(study, backend, space, tmp_path, trials=1, storage=journal, sampler="random", sampler_seed=0,
                    pruner="none", train_images=300, free_memory=None, progress=lambda line: None)
    task = next(worker.tasks())
    done = run_task(task, synthetic)
    assert Run(task.run_dir).status()["test"] is False  # a trial's run never reads the test set
    assert "test_accuracy" not in Run(task.run_dir).metrics()
    history = pd.read_csv(task.run_dir / "history.csv")
    history["val_accuracy"] = [0.5, 0.9, 0.123]  # the last epoch, whose weights the run keeps, is not the best
    history.to_csv(task.run_dir / "history.csv", index=False)
    worker.done(done)
    assert study.trials[0].value == pytest.approx(0.123)


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


def test_a_trial_is_never_pruned_at_its_last_epoch_and_a_pruned_one_says_what_it_saved(tmp_path, synthetic,
                                                                                      monkeypatch):
    monkeypatch.setattr(trials, "make_pruner", lambda kind, epochs: PruneAt({0: 2, 1: 3}))
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


def test_a_trial_whose_run_completed_but_was_never_told_is_recorded_from_its_files(tmp_path, synthetic,
                                                                                   monkeypatch):
    """Its worker was killed between the run's last write and telling the study: the next start records
    the run as it is (a pruned one as pruned), never trains it again, never fails it."""
    monkeypatch.setattr(trials, "make_pruner", lambda kind, epochs: PruneAt({1: 2}))
    monkeypatch.setattr(claims, "CLAIM_SECONDS", 0.05)
    space_path, out, space, study, journal = started_sweep(tmp_path)
    worker = worker_of(space, out, journal, trials=2)
    tasks = worker.tasks()
    for task in (next(tasks), next(tasks)):
        run_task(task, synthetic)  # complete on disk, never told
    for trial in study.get_trials():
        worker.backend.set_trial_user_attr(worker.trial_id(trial.number), "owner", killed_owner())
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
