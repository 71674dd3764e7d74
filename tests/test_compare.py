import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY
from helpers import assert_png, assert_self_contained

from fashionlab.compare import CompareError, compare, conclusion, plan, summarize
from fashionlab.config import TrainConfig
from fashionlab.training import train

BASE = TINY.replace(epochs=2)
TWO = ["scaled", "bn-after"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, session_synthetic_dir):
    out = tmp_path_factory.mktemp("compare") / "cmp"
    lines = []
    result = compare(out, TWO, seeds=2, base=BASE, jobs=2, data_dir=session_synthetic_dir, verify=False,
                     progress=lines.append)
    return out, result, lines


def test_plan_is_variants_times_seeds(tmp_path):
    tasks = plan(tmp_path, ["raw", "bn-before"], 2, TrainConfig(seed=5))
    assert [(t.variant, t.seed, t.run_dir.relative_to(tmp_path).as_posix()) for t in tasks] == [
        ("raw", 5, "raw/seed-5"), ("raw", 6, "raw/seed-6"),
        ("bn-before", 5, "bn-before/seed-5"), ("bn-before", 6, "bn-before/seed-6")]
    assert tasks[0].config.scale_inputs is False and tasks[0].config.batch_norm == "none"
    assert tasks[2].config.batch_norm == "before" and tasks[2].config.name == "bn-before"
    with pytest.raises(CompareError, match="unknown variant"):
        plan(tmp_path, ["bn-sideways"], 1, TrainConfig())


def test_comparison_outputs(comparison):
    out, result, lines = comparison
    assert (result.trained, result.reused) == (4, 0)
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and set(results["variant"]) == set(TWO)
    assert results["test_accuracy"].between(0, 1).all()
    summary = (out / "summary.md").read_text()
    assert "| scaled | 2 |" in summary and "| bn-after | 2 |" in summary and "±" in summary
    assert "highest mean test accuracy" in summary
    assert_png(out / "curves.png", 1000, 400)
    page = assert_self_contained(out / "report.html")
    assert len(page.images) == 1 + len(TWO)  # curves + one confusion matrix per variant
    assert page.headings[1] == "Conclusion"
    assert lines[0].startswith("4 runs: 0 finished already, 4 to train with 2 job(s)")
    for task_dir in results["run_dir"]:
        assert_self_contained(Path(task_dir) / "report.html")


def test_a_compared_run_is_an_ordinary_run(comparison, tmp_path, session_synthetic_dir):
    out, result, _ = comparison
    alone = train(BASE.replace(name="bn-after", seed=BASE.seed + 1), tmp_path / "alone", session_synthetic_dir,
                  verify=False, verbose=0)
    in_comparison = pd.read_csv(out / "bn-after" / f"seed-{BASE.seed + 1}" / "history.csv")
    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(in_comparison[columns], alone.history[columns])


def test_resume_reuses_finished_runs_and_redoes_unfinished(comparison, session_synthetic_dir):
    out, first, _ = comparison
    unfinished = out / "scaled" / f"seed-{BASE.seed}"
    (unfinished / "metrics.json").unlink()  # as if killed mid-run: no metrics, status still "running"
    status = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**status, "status": "running"}))
    again = compare(out, TWO, seeds=2, base=BASE, jobs=1, data_dir=session_synthetic_dir, verify=False)
    assert (again.trained, again.reused) == (1, 3)
    assert again.results[["variant", "seed", "test_accuracy"]].equals(first.results[["variant", "seed",
                                                                                     "test_accuracy"]])
    with pytest.raises(CompareError, match="different settings \\(depth\\)"):
        compare(out, TWO, seeds=2, base=BASE.replace(depth=3), data_dir=session_synthetic_dir, verify=False)


def test_interrupted_comparison_resumes(tmp_path, session_synthetic_dir):
    out = tmp_path / "cmp"
    command = [sys.executable, "-m", "fashionlab", "compare", "--out", str(out), "--variants", "scaled",
               "bn-after", "--seeds", "1", "--jobs", "1", "--depth", "2", "--width", "16", "--epochs", "6",
               "--validation-size", "60", "--data-dir", str(session_synthetic_dir), "--no-verify"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "scaled" / f"seed-{TrainConfig().seed}" / "metrics.json"
    deadline = time.monotonic() + 240
    while not first.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    assert first.exists(), process.communicate()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted; finished runs are kept" in err and "Traceback" not in err
    assert not (out / "results.csv").exists()

    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "2 runs: 1 finished already, 1 to train" in resumed.stdout
    assert len(pd.read_csv(out / "results.csv")) == 2


def frame(rows):
    table = pd.DataFrame(rows, columns=["variant", "seed", "test_accuracy", "best_val_accuracy", "best_epoch",
                                        "seconds_per_epoch", "parameters"])
    return table.assign(first_epoch_val_accuracy=table["best_val_accuracy"] - 0.1)


def test_conclusion_states_only_what_the_numbers_show():
    results = frame([("a", 1, 0.86, 0.87, 9, 2.0, 10), ("a", 2, 0.87, 0.88, 8, 2.0, 10),
                     ("b", 1, 0.80, 0.81, 9, 1.0, 10), ("b", 2, 0.81, 0.82, 9, 1.0, 10),
                     ("c", 1, 0.855, 0.86, 9, 1.5, 10), ("c", 2, 0.875, 0.88, 9, 1.5, 10)])
    text = " ".join(conclusion(summarize(results)))
    assert text.startswith("a has the highest mean test accuracy: 0.8650")
    assert "a beats b on every seed" in text
    assert "within the seed spread" in text and "a and c" in text
    assert "After the first epoch, mean validation accuracy ranged from 0.7150 (b) to 0.7750 (a)" in text
    single = " ".join(conclusion(summarize(results[results.seed == 1])))
    assert "one seed per variant" in single


def test_bad_comparison_arguments(tmp_path, session_synthetic_dir):
    (tmp_path / "file").write_text("")
    with pytest.raises(CompareError, match="give --out a folder"):
        compare(tmp_path / "file", TWO, seeds=1, base=BASE, data_dir=session_synthetic_dir, verify=False)
    with pytest.raises(CompareError, match="--jobs must be at least 1"):
        compare(tmp_path / "cmp", TWO, seeds=1, base=BASE, jobs=0)
    with pytest.raises(CompareError, match="give each variant once"):
        plan(tmp_path, ["raw", "raw"], 1, BASE)
