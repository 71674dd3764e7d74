"""A study that lost its trials (its damaged journal moved away) given them back from the trial folders."""

import re
import shutil
import subprocess

import pandas as pd
import pytest
from sweeps_helpers import SEARCH, space_file, untouched

from fashionlab.errors import RunError
from fashionlab.rundir import Run
from fashionlab.sweeps import sweep


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
