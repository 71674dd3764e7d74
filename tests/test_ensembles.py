"""fashionlab ensemble: runs averaged into one model that the other commands take as a run."""

from __future__ import annotations

import json
import os
import shutil
import signal

import numpy as np
import pandas as pd
import pytest
from helpers import TINY, assert_self_contained, copy_run, synthetic_arrays, write_dataset, write_seven_class_dataset

from fashionlab import catalog, ensembles
from fashionlab.comparison import compare_runs
from fashionlab.data import DataSource
from fashionlab.errors import ConfigError, Interrupted, RunError
from fashionlab.evaluation import evaluate, metrics_from_proba, predict_proba
from fashionlab.export import export
from fashionlab.onnxrun import OnnxModel
from fashionlab.prediction import predict
from fashionlab.rundir import Run
from fashionlab.training import resume, train

# members unlike each other: the tutorial's network, one with mirrored views, a whitened CNN with six views
MEMBERS = {"plain": {}, "mirror": {"tta": "mirror", "seed": 8},
           "cnn": {"model": "cnn", "filters": 4, "whiten": True, "tta": "mirror-shift", "optimizer": "adam",
                   "seed": 9}}


@pytest.fixture(scope="module")
def members(tmp_path_factory, tiny_run, synthetic):
    folder = tmp_path_factory.mktemp("members")
    runs = [tiny_run.run.path]
    for name, changes in list(MEMBERS.items())[1:]:
        runs.append(train(TINY.replace(**changes), folder / name, data=synthetic, verbose=0).run.path)
    return runs


@pytest.fixture(scope="module")
def made(members, synthetic, tmp_path_factory):
    out = tmp_path_factory.mktemp("ensembles") / "three"
    return ensembles.ensemble(members, out, data=synthetic, command="fashionlab ensemble ...")


def member_probabilities(members, x) -> list[np.ndarray]:
    return [predict_proba(Run(path).load_model(), x) for path in members]


def test_the_ensemble_is_the_mean_of_its_members_probabilities(made, members, synthetic):
    x, y = synthetic.test_set()
    each = member_probabilities(members, x)
    model = made.run.load_model()  # read back from model.keras
    np.testing.assert_allclose(predict_proba(model, x), np.mean(each, axis=0), atol=1e-6)
    assert not any(np.allclose(p, np.mean(each, axis=0), atol=1e-3) for p in each)  # each member counts
    metrics = json.loads(made.run.file("metrics.json").read_text())
    expected = metrics_from_proba(y, np.mean(each, axis=0), synthetic.dataset.class_names)
    assert metrics["test_accuracy"] == pytest.approx(expected["test_accuracy"])
    assert metrics["test_loss"] == pytest.approx(expected["test_loss"], rel=1e-5)
    assert metrics["member_test_accuracy"] == pytest.approx([(p.argmax(axis=1) == y).mean() for p in each])
    frame = pd.read_csv(made.run.file("confusion_matrix.csv"), index_col=0)
    assert frame.to_numpy().tolist() == expected["confusion_matrix"]


def test_ensemble_json_says_what_it_averages(made, members, tiny_run):
    described = json.loads(made.run.file("ensemble.json").read_text())
    assert described["name"] == "ensemble-3-tiny"
    assert [m["run"] for m in described["members"]] == [str(path) for path in members]
    assert [m["config"]["seed"] for m in described["members"]] == [7, 8, 9]
    assert described["members"][2]["config"]["tta"] == "mirror-shift"
    assert described["members"][0]["test_accuracy"] == pytest.approx(tiny_run.metrics["test_accuracy"])
    for member in described["members"]:  # each with its own figure
        assert member["test_accuracy"] == pytest.approx(Run(member["run"]).metrics()["test_accuracy"])
    status = made.run.status()
    assert status["status"] == "complete" and status["command"] == "fashionlab ensemble ..."
    assert made.run.dataset().name == "fashion-mnist"
    page = assert_self_contained(made.run.file("report.html"))
    assert "Members" in page.headings and "Learning curves" not in page.headings
    members_table = next(t for t in page.tables if t[0][0] == "run")
    assert [row[0] for row in members_table[1:]] == [str(path) for path in members]
    assert [row[-1] for row in members_table[1:]] == [f"{m['test_accuracy']:.4f}" for m in described["members"]]
    made_rows = dict(page.tables[0])
    each = [m["test_accuracy"] for m in described["members"]]
    assert made_rows["against its members"].startswith(
        f"{100 * (made.metrics['test_accuracy'] - np.mean(each)):+.2f} points over the members' mean, "
        f"{100 * (made.metrics['test_accuracy'] - max(each)):+.2f} over the best member")


def test_evaluate_predict_and_the_catalog_take_it_as_a_run(made, members, synthetic):
    x, y = synthetic.test_set()
    mean = np.mean(member_probabilities(members, x), axis=0)
    report = evaluate(made.run.path, data=synthetic)
    assert report["test_accuracy"] == pytest.approx(made.metrics["test_accuracy"])
    answers = predict(made.run.path, indices=[0, 1, 2, 3], data=synthetic)
    assert [a["class_id"] for a in answers] == mean[:4].argmax(axis=1).tolist()
    assert [a["probability"] for a in answers] == pytest.approx(mean[:4].max(axis=1).tolist(), abs=1e-6)
    listed = {e.path: e for e in catalog.listing(made.run.path.parent)}[str(made.run.path)]
    assert listed.status == "complete" and listed.test_accuracy == pytest.approx(made.metrics["test_accuracy"])


def test_the_onnx_export_averages_the_members_too(made, members, synthetic, tmp_path):
    result = export(made.run.path, out=tmp_path / "ensemble.onnx", data=synthetic)
    assert result["check"]["max_abs_difference"] <= 1e-5
    x = synthetic.test_images()
    model = OnnxModel(tmp_path / "ensemble.onnx")
    np.testing.assert_allclose(model.predict(x), np.mean(member_probabilities(members, x), axis=0), atol=1e-5)
    assert model.metadata["name"] == "ensemble-3-tiny"
    assert [c["seed"] for c in model.metadata["config"]["ensemble"]] == [7, 8, 9]


def test_a_folder_of_runs_gives_its_runs_of_one_group(tiny_run, tmp_path, synthetic):
    for seed in (1, 2):
        copy_run(tiny_run, tmp_path / "compare" / "tiny" / f"seed-{seed}", "2026-12-01T10:00:00+00:00")
    made = ensembles.ensemble([tmp_path / "compare" / "tiny"], tmp_path / "out", data=synthetic)
    assert [m["run"] for m in made.run.ensemble()["members"]] == [
        str(tmp_path / "compare" / "tiny" / f"seed-{seed}") for seed in (1, 2)]
    copy_run(tiny_run, tmp_path / "compare" / "other" / "seed-1", "2026-12-01T10:00:00+00:00")
    with pytest.raises(ConfigError, match=r"holds runs of 2 groups .*compare/other, .*compare/tiny\); give one"):
        ensembles.ensemble([tmp_path / "compare"], tmp_path / "out2", data=synthetic)
    assert not (tmp_path / "out2").exists()


def seven_class_dataset(folder):
    """A data set named and classed as write_seven_class_dataset's, of other images."""
    write_dataset(folder, {k: v % 7 if "labels" in k else v for k, v in synthetic_arrays(seed=1).items()})
    (folder / "classes.txt").write_text((folder.parent.parent / "seven" / "classes.txt").read_text())
    return folder


def refusals(tiny_run, made, tmp_path, synthetic):
    """Each: the runs given, what the refusal says."""
    copy_run(tiny_run, tmp_path / "failed", "2026-12-01T10:00:00+00:00", status="failed")
    os.symlink(tiny_run.run.path, tmp_path / "link")
    folders = write_seven_class_dataset(tmp_path / "seven"), seven_class_dataset(tmp_path / "other" / "seven")
    seven, other_files = (train(TINY.replace(dataset=f"{folder}/"), tmp_path / f"run-{i}",
                                data=DataSource(verify=False), verbose=0).run.path for i, folder in enumerate(folders))
    return {
        "one run": ([tiny_run.run.path], r"averages 2 to 32 runs, 1 given; give more runs, or a folder of runs"),
        "a run twice": ([tiny_run.run.path, tmp_path / "link"], r"link are the same run \(.*\); give each run once"),
        "an ensemble": ([made.run.path, tiny_run.run.path], r"is an ensemble; give the runs it averages"),
        "another data set": ([tiny_run.run.path, seven], r"was trained on .* an ensemble's runs share one data set"),
        "the same name, other files": ([seven, other_files], r"an ensemble's runs share one data set"),
        "a failed run": ([tiny_run.run.path, tmp_path / "failed"],
                         r"failed is failed; an ensemble averages complete runs: finish it with "
                         r"`resume\('.*failed'\)`, or leave it out"),
        "nothing there": ([tiny_run.run.path, tmp_path / "nowhere"], r"is not a run directory"),
    }


def test_what_cannot_be_averaged_is_refused_and_nothing_is_written(tiny_run, made, tmp_path, synthetic):
    for name, (runs, said) in refusals(tiny_run, made, tmp_path, synthetic).items():
        before = {p: p.stat().st_mtime_ns for run in runs if run.exists() for p in run.iterdir()}
        with pytest.raises((ConfigError, RunError), match=said):
            ensembles.ensemble(runs, tmp_path / "out" / name, data=synthetic)
        assert not (tmp_path / "out").exists(), name
        assert {p: p.stat().st_mtime_ns for run in runs if run.exists() for p in run.iterdir()} == before, name


@pytest.mark.parametrize("when", ["predicting", "writing"])
def test_a_stop_request_leaves_nothing(members, synthetic, tmp_path, monkeypatch, when):
    sent = []

    def interrupting(call):
        def interrupted(*args, **kwargs):
            if not sent:  # one Ctrl-C: a stop request (a second stops at once)
                sent.append(os.kill(os.getpid(), signal.SIGINT))
            return call(*args, **kwargs)
        return interrupted

    if when == "predicting":
        monkeypatch.setattr(ensembles, "predict_proba", interrupting(predict_proba))
    else:  # the last file but run.json
        monkeypatch.setattr(ensembles, "write_ensemble_outputs", interrupting(ensembles.write_ensemble_outputs))
    with pytest.raises(Interrupted, match="nothing was written"):
        ensembles.ensemble(members[:2], tmp_path / "a" / "b", data=synthetic)
    assert sent and list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_nothing(members, synthetic, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ensembles, "write_ensemble_outputs", broken)
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "a" / "b", tmp_path / "empty"):
        with pytest.raises(RunError, match=f"cannot write the ensemble in {out}: No space left on device; nothing"):
            ensembles.ensemble(members[:2], out, data=synthetic)
    assert [p.name for p in tmp_path.iterdir()] == ["empty"] and list((tmp_path / "empty").iterdir()) == []


def test_the_folder_is_written_whole_under_a_hidden_name_then_renamed(members, synthetic, tmp_path, monkeypatch):
    seen = []
    original = ensembles.Run.set_status

    def watching(run, status, **fields):
        seen.append((run.path.name, sorted(p.name for p in tmp_path.iterdir())))
        return original(run, status, **fields)

    monkeypatch.setattr(ensembles.Run, "set_status", watching)
    (tmp_path / "out").mkdir()  # an empty folder is replaced
    ensembles.ensemble(members[:2], tmp_path / "out", data=synthetic)
    (name, listed), = seen  # run.json written once, last, in the hidden folder, while out was still empty
    assert name.startswith(".out.") and listed == [name, "out"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and Run.open(tmp_path / "out").is_ensemble()


def test_out_must_be_new_or_empty_and_outside_any_run(members, made, synthetic, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("kept")
    for out, said in ((tmp_path / "full", r"`out` .*full already exists and is not empty; give a new folder"),
                      (members[0] / "inside", r"`out` .*inside is inside the run .*tiny; give a folder outside"),
                      (made.run.path / "a" / "b", r"is inside the run .*three; give a folder outside any run")):
        with pytest.raises(ConfigError, match=said):
            ensembles.ensemble(members[:2], out, data=synthetic)
    assert (tmp_path / "full" / "mine.txt").read_text() == "kept" and not (members[0] / "inside").exists()


def test_an_ensemble_in_a_folder_of_runs_is_left_out_of_it(tiny_run, synthetic, tmp_path):
    for seed in (1, 2):
        copy_run(tiny_run, tmp_path / "variant" / f"seed-{seed}", "2026-12-01T10:00:00+00:00")
    ensembles.ensemble([tmp_path / "variant"], tmp_path / "variant" / "ensemble", data=synthetic)
    again = ensembles.ensemble([tmp_path / "variant"], tmp_path / "again", data=synthetic)
    assert len(again.run.ensemble()["members"]) == 2


def test_what_only_a_training_has_is_refused_in_one_line(made, tmp_path):
    said = r"is an ensemble of runs: it was not trained, so it has no config, history or checkpoints"
    for call in (made.run.config, made.run.history, lambda: resume(made.run.path),
                 lambda: compare_runs(tmp_path / "cmp", [made.run.path, made.run.path])):
        with pytest.raises(RunError, match=said):
            call()
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("damage, said", [
    (lambda d: d.update(members=d["members"][:1]), "must list 2 to 32 members, not 1"),
    (lambda d: d.update(members=d["members"] * 11), "must list 2 to 32 members, not 33"),
    (lambda d: d.update(name="bad name\n"), "cannot be used"),
    (lambda d: d["members"][0].update(test_accuracy=2),
     r"members\[0\].test_accuracy` must be at least 0.0 and at most 1.0, not 2"),
    (lambda d: d.pop("members"), "lacks `members`"),
])
def test_a_damaged_ensemble_json_is_said_to_be_damaged(made, tmp_path, damage, said):
    copy = shutil.copytree(made.run.path, tmp_path / "copy")
    described = json.loads((copy / "ensemble.json").read_text())
    damage(described)
    (copy / "ensemble.json").write_text(json.dumps(described))
    with pytest.raises(RunError, match=f"ensemble.json: .*{said}.*restore the file or make the ensemble again"):
        Run.open(copy).name()
    assert catalog.with_figures(catalog.entry(copy, tmp_path)).status == "damaged"


def test_the_notebook_makes_and_shows_an_ensemble(members, synthetic, tmp_path):
    import fashionlab as fl

    run = fl.ensemble([fl.Run.open(members[0]), str(members[1])], out=tmp_path / "nb", data=synthetic)
    assert run.members["seed"].tolist() == [7, 8]
    assert repr(run).startswith(f"Run({str(tmp_path / 'nb')!r}, ensemble-2-tiny, complete, 2 members, test accuracy")
    assert "members&#x27; mean <b>" in run._repr_html_()
    assert run.status == "complete" and run.metrics["member_test_accuracy"]
    assert run.mistakes(4, data=synthetic) is not None
    assert run.status and Run(tmp_path / "nb").status()["command"].startswith("fl.ensemble([")


def test_the_command_lists_what_it_averaged_and_how_the_ensemble_compares(members, synthetic, tmp_path, capsys):
    from fashionlab.cli import main

    data = ["--data-dir", str(synthetic.data_dir), "--no-verify"]
    assert main(["ensemble", *map(str, members[:2]), "--out", str(tmp_path / "ens"), *data]) == 0
    said = capsys.readouterr().out.splitlines()
    described = Run(tmp_path / "ens").ensemble()["members"]
    listed_members = [f"  {m['run']}  test accuracy {m['test_accuracy']:.4f}" for m in described]
    assert said[:3] == ["averaged 2 runs:", *listed_members]
    accuracy, best = Run(tmp_path / "ens").metrics()["test_accuracy"], max(m["test_accuracy"] for m in described)
    assert f"{100 * (accuracy - best):+.2f} over the best member" in said[4]
    assert ("worse than its best member" in said[4]) == (accuracy < best)
    assert (tmp_path / "ens").stat().st_mode & 0o777 == 0o777 & ~ensembles.UMASK  # not mkdtemp's 0700
    listed = catalog.listing(tmp_path)[0]
    assert listed.recipe == "ensemble of 2" and listed.epochs is None
    assert main(["ensemble", str(tmp_path / "ens"), str(members[0]), *data]) == 1  # refused in one line
    assert capsys.readouterr().err.strip().count("\n") == 0
