import json
import os
import subprocess
import sys

import pytest
from helpers import copy_run

from fashionlab.errors import RunError
from fashionlab.rundir import Run, atomic_path


def test_atomic_write_leaves_no_partial_file(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_run_file_that_fails_mid_write_keeps_its_old_content(tmp_path):
    with Run.create(tmp_path / "run") as run:
        run.write_text("history.csv", "epoch\n1\n")

        def half_then_crash(tmp):
            tmp.write_text("epoch\n1\n2")
            raise OSError(28, "No space left on device")

        with pytest.raises(RunError, match="history.csv: the disk is full; earlier artifacts are intact"):
            run.write_with("history.csv", half_then_crash)
    assert (tmp_path / "run" / "history.csv").read_text() == "epoch\n1\n"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "history.csv"]


def test_create_locks_and_refuses_a_second_writer(tmp_path):
    with Run.create(tmp_path / "run") as run:
        run.set_status("running", epochs=3, epochs_done=0)
        with pytest.raises(RunError, match=f"in use by another fashionlab process \\(pid {os.getpid()}\\)"):
            Run.acquire(tmp_path / "run")
        other = subprocess.run([sys.executable, "-c", "from fashionlab.rundir import Run; "
                                f"Run.acquire({str(tmp_path / 'run')!r})"], capture_output=True, text=True)
        assert other.returncode != 0 and "in use by another fashionlab process" in other.stderr
    Run.acquire(tmp_path / "run").release()  # free again once released
    with pytest.raises(RunError, match="already exists and is not empty"):
        Run.create(tmp_path / "run")


def test_status_is_kept_in_run_json(tmp_path):
    with Run.create(tmp_path / "run") as run:
        run.set_status("running", epochs=5, epochs_done=2)
        run.set_status("interrupted", message="stopped")
        status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "interrupted" and status["epochs_done"] == 2 and status["message"] == "stopped"


def test_incomplete_runs_are_refused_unless_allowed(tmp_path):
    with Run.create(tmp_path / "run") as run:
        run.write_json("config.json", {})
        run.set_status("interrupted", epochs=5, epochs_done=2)
        (tmp_path / "run" / "checkpoint-epoch2.keras").write_bytes(b"")
    with pytest.raises(RunError, match="is interrupted after 2 of 5 epochs; finish it with `resume\\(.*`, or pass "
                                       "`allow_incomplete=True`"):
        Run.open(tmp_path / "run")
    assert Run.open(tmp_path / "run", allow_incomplete=True).model_file().name == "checkpoint-epoch2.keras"


def test_a_running_run_whose_process_died_says_so(tmp_path):
    with Run.create(tmp_path / "run") as run:
        run.write_json("config.json", {})
        run.set_status("running", epochs=5, epochs_done=1)
        with pytest.raises(RunError, match="is running after 1 of 5 epochs"):  # its process holds the lock
            Run.open(tmp_path / "run")
    with pytest.raises(RunError, match="is unfinished \\(its process died\\) after 1 of 5 epochs"):
        Run.open(tmp_path / "run")


def test_an_unwritable_run_directory_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match="cannot create run directory"):
        Run.create(tmp_path / "file" / "run")
    with pytest.raises(RunError, match="exists and is not a directory"):
        Run.create(tmp_path / "file")


def test_an_unfinished_or_damaged_ensemble_is_said_to_be_so(tiny_run, synthetic, tmp_path):
    from fashionlab import catalog
    from fashionlab.ensembles import ensemble
    from fashionlab.evaluation import evaluate

    twin = copy_run(tiny_run, tmp_path / "twin", "2026-12-01T10:00:00+00:00")
    copy = ensemble([tiny_run.run.path, twin], tmp_path / "copy", data=synthetic).run.path
    status = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps(status | {"status": "running"}))
    with pytest.raises(RunError, match="is an ensemble that was not finished \\(running\\); make it again with "
                                       "`fashionlab ensemble`"):
        evaluate(copy)
    (copy / "run.json").write_text(json.dumps(status))
    metrics = json.loads((copy / "metrics.json").read_text())
    (copy / "metrics.json").write_text(json.dumps(metrics | {"member_test_accuracy": [0.5]}))
    with pytest.raises(RunError, match="must hold one figure for each of the 2 members, not 1; .*make the ensemble"):
        Run(copy).metrics()
    (copy / "metrics.json").unlink()
    with pytest.raises(RunError, match="metrics.json: it is missing; .*make the ensemble again"):
        evaluate(copy)
    (copy / "run.json").unlink()  # an ensemble is never one of the runs made before run.json was written
    with pytest.raises(RunError, match="run.json: it is missing; .*make the ensemble again"):
        Run.open(copy)
    assert catalog.entry(copy, tmp_path).status == "damaged"
