"""Which trial each worker trains: the same trials whatever the jobs, a killed or interrupted trial
taken over and resumed, never a trial twice (two workers on a real PostgreSQL server), never one past
the last."""

import signal
import subprocess
import sys
import time
import types

import optuna
import pandas as pd
from sweeps_helpers import GOOD, SEARCH, cli, killed_owner, space_file, started_sweep, wait_for, worker_of

from fashionlab.rundir import Run
from fashionlab.sweeps import claims, sweep
from fashionlab.sweeps.claims import Claims, Worker
from fashionlab.sweeps.results import trials_table
from fashionlab.sweeps.trials import trial_dir_name


def test_one_job_or_two_the_same_seed_gives_the_same_trials_and_results(tmp_path, synthetic):
    space = space_file(tmp_path, SEARCH)
    one = sweep(space, tmp_path / "one", trials=4, jobs=1, sampler="tpe", pruner="none", data=synthetic)
    two = sweep(space, tmp_path / "two", trials=4, jobs=2, sampler="tpe", pruner="none", data=synthetic)
    columns = ["trial", "learning_rate", "width", "dropout", "val_accuracy"]
    pd.testing.assert_frame_equal(one.trials[columns], two.trials[columns])
    other = sweep(space, tmp_path / "other", trials=4, sampler="tpe", sampler_seed=1, pruner="none", data=synthetic)
    assert not other.trials["learning_rate"].equals(one.trials["learning_rate"])


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


def test_a_stopped_trial_whose_values_were_never_all_drawn_is_failed_not_trained(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "CLAIM_SECONDS", 0.01)
    space_path, out, space, study, journal = started_sweep(tmp_path)
    worker = worker_of(space, out, journal, trials=2)
    backend = worker.backend
    trial_id = backend.create_new_trial(worker.study_id)  # its worker killed while asking for its values
    backend.set_trial_param(trial_id, "width", 16.0, space.search["width"])
    backend.set_trial_user_attr(trial_id, "owner", killed_owner())
    task = next(worker.tasks())
    assert task.tags["trial"] == 1 and set(task.config.to_dict()) >= set(GOOD)
    stopped = study.trials[0]
    assert stopped.state.name == "FAIL" and stopped.user_attrs["reason"].startswith("its values were never all drawn")
    assert not (out / trial_dir_name(0)).exists()


def test_the_sweep_asks_for_exactly_its_trials_and_never_trains_a_surplus_one(tmp_path, monkeypatch):
    space_path, out, space, study, journal = started_sweep(tmp_path)
    first, second = (worker_of(space, out, journal, trials=2) for _ in range(2))
    mine = first.tasks()
    assert next(mine).tags["trial"] == 0
    asked = []

    def counted(worker: Worker, race: bool = False) -> None:
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
    a, b = (worker_of(space, out, journal, trials=2) for _ in range(2))
    [seen_by_a], [seen_by_b] = a.stopped_trials(), b.stopped_trials()
    monkeypatch.setattr(claims, "CLAIM_SECONDS", 0.01)
    won = {}

    def meanwhile(seconds):  # while one waits after writing its claim, the other claims the trial too
        if "b" not in won:
            won["b"] = None
            won["b"] = b.take_over(seen_by_b)
        time.sleep(seconds)

    monkeypatch.setattr(claims, "time", types.SimpleNamespace(time=time.time, sleep=meanwhile))
    won["a"] = a.take_over(seen_by_a)
    if "b" not in won:  # a take-over that never waited for the others' claims
        won["b"] = b.take_over(seen_by_b)
    assert sorted(won.values()) == [False, True]
    winner, loser = (a, b) if won["a"] else (b, a)
    assert study.trials[0].user_attrs["owner"]["token"] == winner.owner.token
    assert loser.stopped_trials() == []  # the winner's now: the loser leaves it


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


def test_two_workers_popping_one_waiting_run_leave_it_to_one(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(storage=storage, study_name="race")
    study.enqueue_trial({}, user_attrs={"run": 0})
    a, b = Claims(storage, study._study_id), Claims(storage, study._study_id)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    seen_by_b = list(waiting)  # both read the waiting run before either takes it
    assert a.pop_waiting(waiting).number == 0
    assert b.pop_waiting(seen_by_b) is None  # the storage moved it to running for one of them only
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.RUNNING and trial.user_attrs["owner"]["token"] == a.owner.token
    assert b.stopped(study.get_trials(states=(optuna.trial.TrialState.RUNNING,))) == []  # a lives: not stopped
