import os
import shutil
from pathlib import Path

import pytest
from helpers import copy_run

from fashionlab import catalog
from fashionlab.catalog import listing, locate
from fashionlab.errors import RunError
from fashionlab.rundir import Run


def test_listing_is_newest_first_with_each_runs_own_figures(runs_folder, tiny_run):
    entries = listing(runs_folder)
    assert [e.name for e in entries] == ["20261205-100000-broken", "20261203-100000-fast-mlp",
                                         "compare/bn-after/seed-43", "compare/bn-after/seed-42",
                                         "20261201-100000-tutorial"]
    metrics = tiny_run.run.metrics()
    newest_complete = entries[1]
    assert (newest_complete.status, newest_complete.recipe, newest_complete.dataset) == \
        ("complete", "fast-mlp", "fashion-mnist")
    assert newest_complete.test_accuracy == metrics["test_accuracy"]
    assert newest_complete.best_val_accuracy == metrics["best_val_accuracy"]
    assert newest_complete.epochs_done == newest_complete.epochs == tiny_run.run.config().epochs
    assert entries[0].status == "failed" and entries[0].test_accuracy is None  # a failed run has no figures


def test_filters(runs_folder):
    assert [e.name for e in listing(runs_folder, status="failed")] == ["20261205-100000-broken"]
    assert [e.name for e in listing(runs_folder, recipe="fast-mlp")] == ["20261203-100000-fast-mlp"]
    assert listing(runs_folder, dataset="mnist") == []
    assert len(listing(runs_folder / "compare")) == 2


def test_a_run_left_running_by_a_dead_process_is_unfinished_and_one_held_is_running(runs_folder):
    folder = runs_folder / "20261201-100000-tutorial"
    Run(folder).set_status("running")
    assert next(e for e in listing(runs_folder) if e.path == str(folder)).status == "unfinished"
    with Run.acquire(folder):
        assert next(e for e in listing(runs_folder) if e.path == str(folder)).status == "running"


def test_a_damaged_run_is_listed_as_damaged_and_the_others_still_are(runs_folder):
    (runs_folder / "20261203-100000-fast-mlp" / "run.json").write_text("{not json")
    entries = {e.name: e for e in listing(runs_folder)}
    damaged = entries["20261203-100000-fast-mlp"]
    assert damaged.status == "damaged" and "run.json" in damaged.problem and "not valid JSON" in damaged.problem
    assert len(entries) == 5


def test_links_and_hidden_folders_are_not_followed(runs_folder, tmp_path):
    outside = tmp_path / "elsewhere"
    shutil.copytree(runs_folder / "20261201-100000-tutorial", outside / "linked-run")
    (runs_folder / "link").symlink_to(outside, target_is_directory=True)
    (runs_folder / "run-link").symlink_to(outside / "linked-run", target_is_directory=True)
    shutil.copytree(runs_folder / "20261201-100000-tutorial", runs_folder / ".hidden")
    assert not [e for e in listing(runs_folder) if "link" in e.name or "hidden" in e.name]


def test_latest_is_the_newest_complete_run(runs_folder):
    assert locate("latest") == Path("runs/20261203-100000-fast-mlp")  # the failed one is newer
    (runs_folder / "20261203-100000-fast-mlp" / "run.json").write_text("{not json")  # damaged: not complete
    assert locate("latest") == Path("runs/compare/bn-after/seed-43")


def test_a_unique_start_of_a_name_names_the_run(runs_folder):
    assert locate("20261203") == Path("runs/20261203-100000-fast-mlp")
    assert locate("runs/20261201") == Path("runs/20261201-100000-tutorial")  # runs/ as typed at the prompt
    assert locate("compare/bn-after/seed-43") == Path("runs/compare/bn-after/seed-43")
    with pytest.raises(RunError, match=r"20261 names 3 runs under runs/ \(20261201-100000-tutorial, "
                                       r"20261203-100000-fast-mlp, 20261205-100000-broken\); give more"):
        locate("20261")
    with pytest.raises(RunError, match="no run under runs/ has a name starting so; `fashionlab runs` lists"):
        locate("1999")


def test_a_whole_name_wins_over_the_longer_names_it_starts(runs_folder, tiny_run):
    copy_run(tiny_run, runs_folder / "20261203-100000-fast-mlp-2", "2026-12-04T10:00:00+00:00")
    assert locate("20261203-100000-fast-mlp") == Path("runs/20261203-100000-fast-mlp")


def test_an_existing_path_always_wins(runs_folder, tiny_run, tmp_path):
    copy_run(tiny_run, tmp_path / "latest", "2020-01-01T00:00:00+00:00")
    assert locate("latest") == Path("latest")
    assert locate(str(runs_folder / "20261201-100000-tutorial")) == runs_folder / "20261201-100000-tutorial"


def test_without_runs_or_a_runs_folder_the_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RunError, match="no runs/ folder"):
        locate("latest")
    (tmp_path / "runs").mkdir()
    with pytest.raises(RunError, match="no complete run under runs/ for `latest`; `fashionlab runs` lists"):
        locate("latest")
    with pytest.raises(RunError, match="does not exist"):
        listing(tmp_path / "nowhere")


def test_the_notebook_lists_runs_as_a_table_and_opens_latest(runs_folder):
    import fashionlab as fl

    table = fl.runs()
    assert list(table["name"]) == [e.name for e in listing(runs_folder)]
    assert list(table.columns[:4]) == ["name", "path", "status", "recipe"]
    assert fl.Run.open("latest").path == Path("runs/20261203-100000-fast-mlp")
    assert fl.runs(status="interrupted").empty and "test_accuracy" in fl.runs(status="interrupted").columns


def test_the_folder_walk_is_bounded_in_depth(tmp_path, tiny_run):
    deep = tmp_path / "a" / "b" / "c" / "d" / "e"
    copy_run(tiny_run, deep, "2026-12-01T10:00:00+00:00")
    assert catalog.MAX_DEPTH == 4 and listing(tmp_path) == []
    assert len(listing(tmp_path / "a")) == 1
    assert os.path.isdir(deep)


def _edit(path: Path, **fields) -> None:
    import json

    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_whatever_is_wrong_with_one_run_the_others_are_listed(runs_folder):
    _edit(runs_folder / "20261201-100000-tutorial" / "run.json", dataset={"name": "x", "class_names": ["a"]})
    _edit(runs_folder / "20261203-100000-fast-mlp" / "metrics.json", machine="<b>m</b>")
    (runs_folder / "compare" / "bn-after" / "seed-42" / "config.json").write_text("[]")
    entries = {e.name: e for e in listing(runs_folder)}
    assert len(entries) == 5
    assert {n for n, e in entries.items() if e.status == "damaged"} == {
        "20261201-100000-tutorial", "20261203-100000-fast-mlp", "compare/bn-after/seed-42"}
    assert "class_names" in entries["20261201-100000-tutorial"].problem
    assert "machine" in entries["20261203-100000-fast-mlp"].problem
    assert locate("latest") == Path("runs/20261203-100000-fast-mlp")  # by its run.json: the files are read later


def test_runs_are_ordered_by_time_whatever_their_recorded_text(runs_folder):
    _edit(runs_folder / "20261201-100000-tutorial" / "run.json", started="<b>zz not a time")
    _edit(runs_folder / "compare" / "bn-after" / "seed-42" / "run.json", started="9999-12-31T23:59:59-12:00")
    _edit(runs_folder / "compare" / "bn-after" / "seed-43" / "run.json", started="2026-12-03T12:00:00+05:00")
    names = [e.name for e in listing(runs_folder)]
    assert names[0] == "compare/bn-after/seed-42" and names[-1] == "20261201-100000-tutorial"
    assert names.index("20261203-100000-fast-mlp") < names.index("compare/bn-after/seed-43")  # 07:00 UTC: earlier
    assert "9999-12-31" in catalog.table(listing(runs_folder))


def test_latest_to_resume_is_the_newest_unfinished_run(runs_folder):
    assert locate("latest", latest=catalog.UNFINISHED) == Path("runs/20261205-100000-broken")
    with pytest.raises(RunError, match="no interrupted or failed or unfinished run under .*compare/ for `latest`"):
        locate("latest", runs_folder / "compare", latest=catalog.UNFINISHED)


def test_a_start_of_a_name_may_end_in_a_slash(runs_folder):
    assert locate("20261203-100000-fast-mlp/") == Path("runs/20261203-100000-fast-mlp")


def test_too_many_folders_to_look_through_are_refused_not_cut_short(runs_folder, monkeypatch):
    monkeypatch.setattr(catalog, "MAX_FOLDERS", 4)
    with pytest.raises(RunError, match="runs holds more than 4 folders; give the folder of the runs you mean"):
        listing(runs_folder)
