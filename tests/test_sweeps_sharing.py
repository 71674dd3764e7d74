"""A comparison shared through a study (sweeps/sharing.py): two workers on a real PostgreSQL server train
each run once and write what one machine writes; a changed plan is refused; a killed worker's run is
resumed by another; the claims on a waiting run, on the plan and on the files go to one worker each."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

from fashionlab.comparison import compare
from fashionlab.errors import ConfigError, RunError
from fashionlab.rundir import Run
from fashionlab.sweeps import claims, sharing
from fashionlab.sweeps.sharing import Shared, compare_shared

VARIANTS = ["tutorial:depth=1,width=16", "fast-mlp:width=16"]
OPTIONS = ["--variants", *VARIANTS, "--seeds", "2", "--epochs", "3", "--validation-size", "60", "--jobs", "1"]


def command(out: Path, storage: str, synthetic, *extra: str, study: str = "shared-compare") -> list[str]:
    return [sys.executable, "-m", "fashionlab", "compare", *OPTIONS, "--out", str(out), "--storage", storage,
            "--study", study, "--data-dir", str(synthetic.data_dir), "--no-verify", *extra]


def shared_study(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage.replace("postgresql://", "postgresql+psycopg://"))


def test_two_workers_on_postgresql_train_each_run_once_and_write_what_one_machine_writes(tmp_path, synthetic,
                                                                                          postgres):
    out = tmp_path / "shared-folder"
    secret = postgres.replace("fashionlab@", "fashionlab:s3cret-pw@")  # the server trusts: any password opens it
    workers = [subprocess.Popen(command(out, secret, synthetic), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    said = [worker.communicate(timeout=400) for worker in workers]
    for worker, (_, err) in zip(workers, said):
        assert worker.returncode == 0, err
    study = shared_study(postgres, "shared-compare")
    assert len(study.trials) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    results = pd.read_csv(out / "results.csv")
    runs = {f"{v} seed {s}": d for v, s, d in zip(results["variant"], results["seed"], results["run_dir"])}
    assert sorted(t.user_attrs["run"] for t in study.trials) == sorted(runs)  # planned once, though both began
    assert {t.user_attrs["owner"]["pid"] for t in study.trials} == {w.pid for w in workers}  # both trained
    for trial in study.trials:  # trained once, start to end, by the worker that holds its trial
        run = Run(runs[trial.user_attrs["run"]])
        assert "resumed" not in run.status() and run.status()["pid"] == trial.user_attrs["owner"]["pid"]
        assert trial.value == pytest.approx(run.metrics()["test_accuracy"])
    assert sum("comparison: " in out for out, _ in said) == 1  # one worker wrote the files
    alone = compare(tmp_path / "alone", variants=VARIANTS, seeds=2, overrides={"epochs": 3, "validation_size": 60},
                    jobs=1, data=synthetic)
    columns = ["variant", "seed", "test_accuracy", "test_loss", "best_val_accuracy", "parameters"]
    pd.testing.assert_frame_equal(results[columns], alone.results[columns])
    assert (out / "report.html").is_file()
    written = [p.read_text(errors="replace") for p in out.rglob("*") if p.suffix in (".json", ".html", ".md", ".csv")]
    assert not any("s3cret-pw" in text for text in written + [text for pair in said for text in pair])
    assert any("fashionlab:***@" in text for text in written)  # the command each run records, masked


def test_a_changed_plan_or_other_data_is_refused_naming_what_changed(tmp_path, synthetic):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "out"
    tasks = sharing.plan(out, VARIANTS, 2, sharing.TrainConfig(), {"epochs": 3, "validation_size": 60})
    Shared(storage, "plan", tasks, out, synthetic)
    Shared(storage, "plan", tasks, out, synthetic)  # the same plan: opened again
    more = sharing.plan(out, VARIANTS, 3, sharing.TrainConfig(), {"epochs": 3, "validation_size": 60})
    with pytest.raises(ConfigError, match="changed since: tutorial-depth-1-width-16 seed 44 added"):
        Shared(storage, "plan", more, out, synthetic)
    longer = sharing.plan(out, VARIANTS, 2, sharing.TrainConfig(), {"epochs": 4, "validation_size": 60})
    with pytest.raises(ConfigError, match="seed 42: epochs"):
        Shared(storage, "plan", longer, out, synthetic)
    assert len(shared_study(storage, "plan").trials) == 4  # nothing enqueued by the refused ones


def test_a_worker_killed_mid_run_leaves_it_to_another_which_resumes_it(tmp_path, synthetic):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "out"
    slow = command(out, storage, synthetic, study="killed")
    slow[slow.index("3")] = "200"  # --epochs 200: long enough to be killed in the middle
    first = subprocess.Popen(slow, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = None
    deadline = time.monotonic() + 240
    while checkpoint is None and time.monotonic() < deadline and first.poll() is None:
        checkpoint = next((p for p in out.glob("*/seed-*/checkpoint-epoch*.keras")
                           if int(p.stem.removeprefix("checkpoint-epoch")) >= 2), None)
        time.sleep(0.05)
    assert checkpoint is not None, first.stderr.read() if first.poll() is not None else "no checkpoint"
    os.kill(first.pid, signal.SIGKILL)  # one job: it trains in the command's own process, killed outright
    first.wait(timeout=30)
    assert Run(checkpoint.parent).status()["status"] == "running"  # as a lost machine leaves it
    second = subprocess.run(slow, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    run = Run(checkpoint.parent)
    assert run.status()["status"] == "complete" and "resumed" in run.status()  # from its checkpoint
    study = shared_study(storage, "killed")
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) and len(study.trials) == 4
    assert (out / "results.csv").is_file()


def test_of_two_workers_seeing_every_run_complete_at_once_one_writes_the_files(tmp_path, synthetic, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "out"
    options = {"variants": VARIANTS[:1], "seeds": 1, "overrides": {"epochs": 1, "validation_size": 60},
               "data": synthetic}
    compare_shared(out, storage=storage, study="trained", **options)  # the run, trained and complete
    tasks = sharing.plan(out, VARIANTS[:1], 1, sharing.TrainConfig(), options["overrides"])
    a, b = Shared(storage, "files", tasks, out, synthetic), Shared(storage, "files", tasks, out, synthetic)
    a._tell(0, 0.5)  # the study of a worker that trained it: every run complete
    monkeypatch.setattr(claims, "CLAIM_SECONDS", 0.5)
    with ThreadPoolExecutor(2) as pool:  # both finish their last run at once, and both see every run complete
        written = list(pool.map(lambda worker: worker._finish(1, lambda line: None, None), (a, b)))
    assert sum(result is not None for result in written) == 1
    assert sharing.FINISHER in a._attrs()
    again = Shared(storage, "files", tasks, out, synthetic)._finish(0, lambda line: None, None)
    assert again is not None and len(again.results) == 1  # run again after the end: the files again


def test_the_last_run_taken_leaves_the_others_nothing_and_they_say_so(tmp_path, synthetic):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "out"
    options = {"variants": VARIANTS[:1], "seeds": 1, "overrides": {"epochs": 1, "validation_size": 60},
               "data": synthetic}
    tasks = sharing.plan(out, VARIANTS[:1], 1, sharing.TrainConfig(), options["overrides"])
    holder = Shared(storage, "last", tasks, out, synthetic)
    assert next(holder.tasks()).label == tasks[0].label  # the one run, held by a live worker (this process)
    lines = []
    assert compare_shared(out, storage=storage, study="last", progress=lines.append, **options) is None
    assert "1 still with other workers" in lines[-1] and not (out / "results.csv").exists()


def test_of_two_workers_starting_at_once_one_enqueues_the_plan(tmp_path, synthetic, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "out"
    tasks = sharing.plan(out, VARIANTS, 2, sharing.TrainConfig(), {"epochs": 1, "validation_size": 60})
    monkeypatch.setattr(claims, "CLAIM_SECONDS", 0.5)
    with ThreadPoolExecutor(2) as pool:  # both find the study without a plan, and both claim it
        workers = list(pool.map(lambda _: Shared(storage, "race", tasks, out, synthetic), range(2)))
    study = shared_study(storage, "race")
    assert sorted(t.user_attrs["run"] for t in study.trials) == sorted(t.label for t in tasks)  # each once
    assert study.user_attrs[sharing.PLANNER] in {w.claims.owner.token for w in workers}


def test_without_a_shared_folder_the_last_worker_gathers_the_others_figures_from_the_study(tmp_path, synthetic):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    outs = [tmp_path / "machine-a", tmp_path / "machine-b"]
    workers = [subprocess.Popen(command(out, storage, synthetic, study="apart"), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for out in outs]
    said = [worker.communicate(timeout=400) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), said
    study = shared_study(storage, "apart")
    assert {t.user_attrs["owner"]["pid"] for t in study.trials} == {w.pid for w in workers}  # both trained
    [writer] = [out for out in outs if (out / "results.csv").is_file()]
    results = pd.read_csv(writer / "results.csv")
    alone = compare(tmp_path / "alone", variants=VARIANTS, seeds=2, overrides={"epochs": 3, "validation_size": 60},
                    jobs=1, data=synthetic)
    columns = ["variant", "seed", "test_accuracy", "test_loss", "best_val_accuracy", "parameters"]
    pd.testing.assert_frame_equal(results[columns], alone.results[columns])
    gathered = [Path(d) for d in results["run_dir"] if not (Path(d) / "model.keras").is_file()]
    assert gathered and all((d / "metrics.json").is_file() for d in gathered)  # figures, not models
    assert f"gathered {len(gathered)} run(s) trained elsewhere" in said[outs.index(writer)][0]


def test_a_worker_listing_the_variants_in_another_order_trains_the_runs_the_study_names(tmp_path, synthetic):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "out"
    overrides = {"epochs": 1, "validation_size": 60}
    Shared(storage, "order", sharing.plan(out, VARIANTS, 1, sharing.TrainConfig(), overrides), out, synthetic)
    reversed_ = Shared(storage, "order", sharing.plan(out, VARIANTS[::-1], 1, sharing.TrainConfig(), overrides), out,
                       synthetic)
    taken = next(reversed_.tasks())
    trial = shared_study(storage, "order").trials[taken.tags["trial"]]
    assert taken.label == trial.user_attrs["run"] and taken.config.name in taken.label


def test_a_damaged_plan_a_planner_that_died_and_a_minimizing_study_are_said_in_one_line(tmp_path, synthetic,
                                                                                      monkeypatch):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "out"
    tasks = sharing.plan(out, VARIANTS, 2, sharing.TrainConfig(), {"epochs": 1, "validation_size": 60})
    monkeypatch.setattr(claims, "CLAIM_SECONDS", 0.01)
    died = optuna.create_study(storage=storage, study_name="died", direction="maximize")
    died.set_user_attr(sharing.PLANNER, "a worker killed while it planned")
    died.enqueue_trial({}, user_attrs={sharing.RUN: tasks[1].label})  # one of the runs, before it died
    Shared(storage, "died", tasks, out, synthetic)
    assert sorted(t.user_attrs["run"] for t in shared_study(storage, "died").trials) == sorted(t.label for t in tasks)
    damaged = optuna.create_study(storage=storage, study_name="damaged", direction="maximize")
    damaged.set_user_attr(sharing.PLAN, {"runs": [{"label": tasks[0].label, "config": "x"}]})
    with pytest.raises(ConfigError, match="another comparison's plan"):
        Shared(storage, "damaged", tasks, out, synthetic)
    optuna.create_study(storage=storage, study_name="minimizes", direction="minimize")
    with pytest.raises(RunError, match="it minimizes"):
        Shared(storage, "minimizes", tasks, out, synthetic)


def test_a_comparison_of_its_own_is_refused_in_a_shared_comparisons_folder(tmp_path, synthetic):
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    out = tmp_path / "out"
    options = {"variants": VARIANTS[:1], "seeds": 1, "overrides": {"epochs": 1, "validation_size": 60},
               "data": synthetic}
    compare_shared(out, storage=storage, study="its-own", **options)
    with pytest.raises(ConfigError, match="holds a comparison shared through the study 'its-own'"):
        compare(out, **options)


def test_a_password_in_the_command_is_recorded_masked_by_the_library_too(tmp_path, synthetic, postgres):
    secret = postgres.replace("fashionlab@", "fashionlab:s3cret-pw@")
    out = tmp_path / "out"
    compare_shared(out, storage=secret, study="masked", variants=VARIANTS[:1], seeds=1,
                   overrides={"epochs": 1, "validation_size": 60}, data=synthetic,
                   command=f"my_script.py --storage {secret}")
    recorded = [(out / "compare.json").read_text(), *(p.read_text() for p in out.glob("*/seed-*/run.json"))]
    assert len(recorded) == 2 and all("s3cret-pw" not in text and "fashionlab:***@" in text for text in recorded)
