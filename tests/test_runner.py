"""The runner: what a run directory holds, parallel work, and stopping it cleanly."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import TINY, synthetic_arrays, write_dataset

from fashionlab.config import load_config
from fashionlab.data import DataSource
from fashionlab.errors import ConfigError, Diverged
from fashionlab.rundir import Run
from fashionlab.runner import Task, execute, inspect, results
from fashionlab.training import train

# Big enough that an epoch takes a moment, so a stop lands inside a run.
SLOW = TINY.replace(depth=20, width=100, epochs=8, validation_size=500)
COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy"]


@pytest.fixture(scope="module")
def bigger_data(tmp_path_factory):
    directory = write_dataset(tmp_path_factory.mktemp("data"), synthetic_arrays(n_train=6500, n_test=200))
    return DataSource(directory, verify=False)


def task(run_dir, config=TINY, label="t"):
    return Task(label, config, run_dir, {"name": label})


def test_inspect_tells_what_a_run_directory_holds(tiny_run, tmp_path):
    assert inspect(task(tmp_path / "nothing")).state == "new"
    (tmp_path / "empty").mkdir()
    assert inspect(task(tmp_path / "empty")).state == "new"
    assert inspect(task(tiny_run.run.path)).state == "complete"

    unfinished = tmp_path / "unfinished"
    shutil.copytree(tiny_run.run.path, unfinished)
    status = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**status, "status": "interrupted"}))
    assert inspect(task(unfinished)).state == "unfinished"

    other = inspect(task(tiny_run.run.path, TINY.replace(width=17)))
    assert other.state == "conflict" and "different settings (width)" in other.reason
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    assert "not a fashionlab run" in inspect(task(tmp_path / "stranger")).reason
    (tmp_path / "file").write_text("")
    assert inspect(task(tmp_path / "file")).state == "conflict"
    blocked = inspect(task(tmp_path / "file" / "seed-1"))
    assert blocked.state == "conflict" and "is a file where a folder of runs should be" in blocked.reason
    older = shutil.copytree(tiny_run.run.path, tmp_path / "older")  # made before the dataset key existed
    config = json.loads((older / "config.json").read_text())
    del config["dataset"]
    (older / "config.json").write_text(json.dumps(config))
    assert inspect(task(older)).state == "complete"
    (older / "config.json").write_text(json.dumps({**config, "dataset": "./letters"}))
    assert "different settings (dataset)" in inspect(task(older)).reason
    (unfinished / "config.json").write_text("{damaged")
    assert "the run directory is damaged" in inspect(task(unfinished)).reason


def test_execute_trains_each_task_once_and_reports_it(tmp_path, synthetic):
    tasks = [task(tmp_path / name, TINY.replace(seed=seed), name) for name, seed in (("a", 1), ("b", 2), ("c", 3))]
    done = []
    execute(tasks, jobs=2, data=synthetic, on_done=done.append)
    assert sorted(d.task.label for d in done) == ["a", "b", "c"] and not any(d.resumed for d in done)
    assert all(inspect(t).state == "complete" for t in tasks)
    table = results(tasks)
    assert list(table["name"]) == ["a", "b", "c"]
    for d in done:
        assert d.metrics == json.loads((d.task.run_dir / "metrics.json").read_text())
        row = table[table["name"] == d.task.label].iloc[0]
        assert row["test_accuracy"] == d.metrics["test_accuracy"] and row["run_dir"] == str(d.task.run_dir)
    with pytest.raises(ConfigError, match="`jobs` must be at least 1, got 0"):
        execute(tasks, jobs=0, data=synthetic)


def test_a_failing_task_stops_the_others_and_raises_its_error(tmp_path, bigger_data):
    diverging = TINY.replace(scale_inputs=False, batch_norm="none", learning_rate=1e30)
    tasks = [task(tmp_path / "nan", diverging, "nan"), task(tmp_path / "slow", SLOW, "slow")]
    with pytest.raises(Diverged, match="NaN or infinite"):
        execute(tasks, jobs=2, data=bigger_data)
    assert Run(tmp_path / "nan").status()["status"] == "failed"
    # stopped at a safe point, or never started: neither left running nor trained to the end
    assert Run(tmp_path / "slow").status()["status"] in ("interrupted", "unknown")


@pytest.mark.parametrize("jobs", [1, 2])
def test_tasks_from_a_generator_each_taken_when_a_worker_is_free_and_failures_handed_on(tmp_path, synthetic, jobs):
    diverging = TINY.replace(scale_inputs=False, batch_norm="none", learning_rate=1e30)
    planned = [task(tmp_path / "a", TINY, "a"), task(tmp_path / "nan", diverging, "nan"),
               task(tmp_path / "b", TINY.replace(seed=3), "b"), task(tmp_path / "c", TINY.replace(seed=4), "c")]
    taken, done, failed = [], [], []

    def tasks():
        for t in planned:
            taken.append((t.label, sorted(d.task.label for d in done)))
            yield t

    execute(tasks(), jobs=jobs, data=synthetic, on_done=done.append,
            on_failed=lambda t, error: failed.append((t.label, type(error).__name__)))
    assert sorted(d.task.label for d in done) == ["a", "b", "c"] and failed == [("nan", "Diverged")]
    assert [label for label, _ in taken] == ["a", "nan", "b", "c"]
    assert taken[-1][1]  # the last task was made after an earlier one had finished, not all up front
    assert Run(tmp_path / "nan").status()["status"] == "failed"
    assert has_test_outputs(tmp_path / "a")


def has_test_outputs(run_dir: Path) -> bool:
    return (run_dir / "confusion_matrix.csv").exists() and "test_accuracy" in Run(run_dir).metrics()


def test_a_task_kept_from_the_test_set_never_reads_it(tmp_path, synthetic):
    from dataclasses import replace

    kept = replace(task(tmp_path / "kept"), test=False)
    execute([kept], jobs=1, data=synthetic)
    metrics = Run(tmp_path / "kept").metrics()
    assert "test_accuracy" not in metrics and metrics["data"]["test"] == 0
    assert not has_test_outputs(tmp_path / "kept") and (tmp_path / "kept" / "learning_curves.png").exists()
    assert Run(tmp_path / "kept").status()["test"] is False


def compare_command(out, data, epochs=5):
    return [sys.executable, "-m", "fashionlab", "compare", "--out", str(out), "--variants", "scaled", "bn-after",
            "--seeds", "1", "--jobs", "2", "--depth", "20", "--width", "100", "--epochs", str(epochs),
            "--validation-size", "500", "--data-dir", str(data.data_dir), "--no-verify"]


def wait_until_training(out, process, timeout=240):
    """The run.json of every run once all of them have finished an epoch."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        statuses = [json.loads(p.read_text()) for p in out.glob("*/seed-*/run.json")]
        if len(statuses) == 2 and all(s.get("epochs_done", 0) >= 1 for s in statuses):
            return statuses
        time.sleep(0.05)
    pytest.fail(f"the runs did not start: {process.communicate()}")


def test_a_stopped_parallel_comparison_stops_its_workers_then_resumes_exactly(tmp_path, bigger_data):
    out = tmp_path / "cmp"
    process = subprocess.Popen(compare_command(out, bigger_data), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    wait_until_training(out, process)
    process.send_signal(signal.SIGTERM)  # to the parent alone (as `kill` does): it must stop its workers itself
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and err.startswith("fashionlab: error: interrupted; finished runs are kept")
    assert err.count("\n") == 1, err
    statuses = {p.parent.parent.name: json.loads(p.read_text())["status"] for p in out.glob("*/seed-*/run.json")}
    assert set(statuses.values()) <= {"interrupted", "complete"} and "interrupted" in statuses.values(), statuses

    resumed = subprocess.run(compare_command(out, bigger_data), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed)" in resumed.stdout
    variant = next(v for v, s in statuses.items() if s == "interrupted")
    run_dir = next(out.glob(f"{variant}/seed-*"))
    alone = train(load_config(run_dir / "config.json"), tmp_path / "alone", data=bigger_data, verbose=0)
    history = pd.read_csv(run_dir / "history.csv")
    pd.testing.assert_frame_equal(history[COLUMNS], alone.history[COLUMNS], rtol=1e-6)


def test_a_worker_killed_outright_is_named_in_one_line_and_the_other_stops_cleanly(tmp_path, bigger_data):
    out = tmp_path / "cmp"
    process = subprocess.Popen(compare_command(out, bigger_data, epochs=50), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_until_training(out, process)
    killed, other = sorted(out.glob("*/seed-*"))  # bn-after, scaled
    os.kill(json.loads((killed / "run.json").read_text())["pid"], signal.SIGKILL)  # run.json names its process
    _, err = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in err, err
    assert err.startswith(f"fashionlab: error: the process training {killed.parent.name} seed ") and \
        "was killed by SIGKILL (out of memory?)" in err and err.count("\n") == 1
    assert json.loads((killed / "run.json").read_text())["status"] == "running"  # it died: never marked
    assert json.loads((other / "run.json").read_text())["status"] == "interrupted"


def test_ctrl_c_while_the_workers_start_is_an_interruption_not_a_crash(tmp_path, bigger_data):
    out = tmp_path / "cmp"
    process = subprocess.Popen(compare_command(out, bigger_data), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while len(spawned_workers(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(spawned_workers(process.pid)) == 2, process.communicate()
    os.killpg(process.pid, signal.SIGINT)  # while they import, as a terminal's Ctrl-C reaches the whole group
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and err.startswith("fashionlab: error: interrupted"), err
    assert "Traceback" not in err and err.count("\n") == 1, err


def test_ctrl_c_to_one_worker_stops_its_training_at_a_safe_point(tmp_path, bigger_data):
    out = tmp_path / "cmp"
    process = subprocess.Popen(compare_command(out, bigger_data, epochs=200), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    wait_until_training(out, process)
    run_dir = sorted(out.glob("*/seed-*"))[0]
    os.kill(json.loads((run_dir / "run.json").read_text())["pid"], signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.startswith("fashionlab: error: interrupted; finished runs are kept")
    assert err.count("\n") == 1, err
    assert [json.loads(p.read_text())["status"] for p in out.glob("*/seed-*/run.json")] == ["interrupted"] * 2


def test_a_second_ctrl_c_ends_everything_at_once(tmp_path, bigger_data):
    out = tmp_path / "cmp"
    process = subprocess.Popen(compare_command(out, bigger_data, epochs=200), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    workers = [status["pid"] for status in wait_until_training(out, process)]
    os.killpg(process.pid, signal.SIGINT)
    time.sleep(0.1)
    os.killpg(process.pid, signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.startswith("fashionlab: error: interrupted"), err
    assert err.count("\n") == 1, err
    time.sleep(0.5)
    assert not any(alive(pid) for pid in workers)


def spawned_workers(pid: int) -> list[int]:
    """The worker processes `pid` has started so far (not its resource tracker)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        children += [int(c) for c in task.read_text().split()]
    workers = []
    for child in children:
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes():
                workers.append(child)
    return workers


def test_workers_whose_parent_is_killed_stop_at_a_safe_point_and_exit(tmp_path, bigger_data):
    out = tmp_path / "cmp"
    process = subprocess.Popen(compare_command(out, bigger_data, epochs=200), stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    workers = [status["pid"] for status in wait_until_training(out, process)]
    process.kill()
    process.wait()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), "workers outlived their parent"
    statuses = [json.loads(p.read_text())["status"] for p in out.glob("*/seed-*/run.json")]
    assert statuses == ["interrupted", "interrupted"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
