import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from helpers import TINY, assert_png, assert_self_contained, copy_run, write_dataset

from fashionlab.comparison import (
    compare,
    compare_runs,
    conclusion,
    group_runs,
    load_comparison,
    plan,
    summarize,
    variant_config,
)
from fashionlab.config import TrainConfig, check_runnable, training_bytes
from fashionlab.errors import ConfigError, RunError
from fashionlab.training import train

BASE = TINY.replace(epochs=2)
TWO = ["scaled", "bn-after"]


@pytest.fixture(scope="module")
def comparison(tmp_path_factory, synthetic):
    """A finished two-variant, two-seed comparison; tests that change it work on a copy."""
    out = tmp_path_factory.mktemp("compare") / "cmp"
    lines = []
    result = compare(out, variants=TWO, seeds=2, base=BASE, jobs=2, data=synthetic, progress=lines.append)
    return out, result, lines


def test_plan_is_variants_times_seeds(tmp_path):
    tasks = plan(tmp_path, ["raw", "bn-before"], 2, TrainConfig(seed=5))
    assert [(t.label, t.config.seed, t.run_dir.relative_to(tmp_path).as_posix()) for t in tasks] == [
        ("raw seed 5", 5, "raw/seed-5"), ("raw seed 6", 6, "raw/seed-6"),
        ("bn-before seed 5", 5, "bn-before/seed-5"), ("bn-before seed 6", 6, "bn-before/seed-6")]
    assert tasks[0].config.scale_inputs is False and tasks[0].config.batch_norm == "none"
    assert tasks[2].config.batch_norm == "before" and tasks[2].config.name == "bn-before"
    assert dict(tasks[3].tags) == {"variant": "bn-before", "seed": 6}
    with pytest.raises(ConfigError, match="unknown variant"):
        plan(tmp_path, ["bn-sideways"], 1, TrainConfig())


def test_a_comparison_writes_results_summary_curves_and_report(comparison):
    out, result, lines = comparison
    assert (result.trained, result.reused) == (4, 0)
    results = pd.read_csv(out / "results.csv")
    assert len(results) == 4 and set(results["variant"]) == set(TWO)
    assert list(results.columns[:3]) == ["variant", "seed", "test_accuracy"]
    assert results["test_accuracy"].between(0, 1).all()
    ece = [json.loads((Path(d) / "metrics.json").read_text())["test_ece"] for d in results["run_dir"]]
    assert results["test_ece"].tolist() == pytest.approx(ece)
    summary = (out / "summary.md").read_text()
    assert "| scaled | 2 |" in summary and "| bn-after | 2 |" in summary and "±" in summary
    mean = results[results["variant"] == "scaled"]["test_ece"].mean()
    assert "test ECE (mean)" in summary and f"| {100 * mean:.2f} % |" in summary
    assert "highest mean test accuracy" in summary
    assert_png(out / "curves.png", 1000, 400)
    page = assert_self_contained(out / "report.html")
    assert len(page.images) == 1 + len(TWO)  # curves + one confusion matrix per variant
    assert page.headings[1:3] == ["What was run", "Conclusion"]
    assert lines[0].startswith("4 runs: 0 finished already, 4 to train with 2 job(s)")
    assert sum(line.startswith("[") for line in lines) == 4
    for task_dir in results["run_dir"]:
        assert_self_contained(Path(task_dir) / "report.html")


def test_a_compared_run_is_an_ordinary_run(comparison, tmp_path, synthetic):
    out, result, _ = comparison
    alone = train(BASE.replace(name="bn-after", seed=BASE.seed + 1), tmp_path / "alone", data=synthetic, verbose=0)
    in_comparison = pd.read_csv(out / "bn-after" / f"seed-{BASE.seed + 1}" / "history.csv")
    columns = ["loss", "accuracy", "val_loss", "val_accuracy"]
    pd.testing.assert_frame_equal(in_comparison[columns], alone.history[columns])


def test_a_second_call_reuses_finished_runs_and_finishes_the_others(comparison, tmp_path, synthetic, monkeypatch):
    source, first, _ = comparison
    monkeypatch.chdir(tmp_path)
    out = Path("=cmp")  # a folder name a spreadsheet would read as a formula, in results.csv's run_dir cells
    shutil.copytree(source, out)
    unfinished = out / "scaled" / f"seed-{BASE.seed}"
    (unfinished / "metrics.json").unlink()  # as if killed mid-run: no metrics, status still "running"
    status = json.loads((unfinished / "run.json").read_text())
    (unfinished / "run.json").write_text(json.dumps({**status, "status": "running"}))
    lines = []
    again = compare(out, variants=TWO, seeds=2, base=BASE, jobs=1, data=synthetic, progress=lines.append)
    assert (again.trained, again.reused) == (1, 3)
    assert any(line.endswith("s, resumed)") for line in lines)
    columns = ["variant", "seed", "test_accuracy"]
    pd.testing.assert_frame_equal(again.results[columns], first.results[columns])
    assert pd.read_csv(out / "results.csv")["run_dir"].str.startswith("'=cmp/").all()
    with pytest.raises(RunError, match="different settings \\(depth\\); the same settings would reuse it; use "
                                       "another `out`"):
        compare(out, variants=TWO, seeds=2, base=BASE.replace(depth=3), data=synthetic)


def test_interrupted_comparison_resumes(tmp_path, synthetic):
    out = tmp_path / "cmp"
    command = [sys.executable, "-m", "fashionlab", "compare", "--out", str(out), "--variants", "scaled",
               "bn-after", "--seeds", "1", "--jobs", "1", "--depth", "2", "--width", "16", "--epochs", "6",
               "--validation-size", "60", "--data-dir", str(synthetic.data_dir), "--no-verify"]
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


RESULTS = frame([("a", 1, 0.86, 0.87, 9, 2.0, 10), ("a", 2, 0.87, 0.88, 8, 2.0, 10),
                 ("b", 1, 0.80, 0.81, 9, 1.0, 10), ("b", 2, 0.81, 0.82, 9, 1.0, 10),
                 ("c", 1, 0.855, 0.86, 9, 1.5, 10), ("c", 2, 0.875, 0.88, 9, 1.5, 10)])


def test_summary_reports_mean_sample_std_and_extremes_per_variant():
    summary = summarize(RESULTS)
    assert list(summary.index) == ["a", "b", "c"]  # in the order given
    assert summary.loc["c", "test_accuracy_mean"] == pytest.approx(0.865)
    assert summary.loc["c", "test_accuracy_std"] == pytest.approx(0.01 * 2 ** 0.5)  # ddof=1: 0.0141, not 0.01
    assert (summary.loc["c", "test_accuracy_worst"], summary.loc["c", "test_accuracy_best"]) == (0.855, 0.875)
    assert summary.loc["a", "best_epoch"] == 8.5 and summary.loc["a", "seeds"] == 2
    assert summarize(RESULTS[RESULTS.seed == 1]).loc["a", "test_accuracy_std"] == 0.0  # one seed: no spread


def test_conclusion_states_only_what_the_numbers_show():
    text = " ".join(conclusion(summarize(RESULTS)))
    assert text.startswith("a has the highest mean test accuracy: 0.8650 ± 0.0071 over 2 seed(s).")
    assert "a beats b on every seed" in text
    assert "within the seed spread" in text and "a and c" in text
    assert "After the first epoch, mean validation accuracy ranged from 0.7150 (b) to 0.7750 (a)" in text
    assert "Training speed ranged from 1.00 s/epoch (b) to 2.00 s/epoch (a)" in text
    single = " ".join(conclusion(summarize(RESULTS[RESULTS.seed == 1])))
    assert "one seed per variant" in single


def test_a_lead_beyond_both_spreads_is_called_a_lead():
    # b's best seed ties a's worst, but b's mean is further below than the spreads reach
    results = frame([("a", seed, 0.88, 0.9, 9, 1.0, 10) for seed in (1, 2, 3)]
                    + [("b", seed, accuracy, 0.9, 9, 1.0, 10) for seed, accuracy in ((1, 0.80), (2, 0.80), (3, 0.88))])
    text = " ".join(conclusion(summarize(results)))
    assert "a leads b by 5.33 points, more than the two seed spreads together" in text


def test_bad_comparison_arguments_are_refused_before_any_work(tmp_path, synthetic):
    (tmp_path / "file").write_text("")
    with pytest.raises(RunError, match="file exists and is not a folder; give `out` a new folder"):
        compare(tmp_path / "file", variants=TWO, seeds=1, base=BASE, data=synthetic)
    with pytest.raises(ConfigError, match="cannot write the comparison in /proc/fashionlab-cmp: nothing can be "
                                          "made in /proc .*; give `out` another folder"):
        compare("/proc/fashionlab-cmp", variants=TWO, seeds=1, base=BASE, data=synthetic)
    with pytest.raises(ConfigError, match=f"cannot write the comparison in {tmp_path}/file/cmp: {tmp_path}/file is "
                                          f"a file, not a folder"):
        compare(tmp_path / "file" / "cmp", variants=TWO, seeds=1, base=BASE, data=synthetic)
    (tmp_path / "cmp2").mkdir()
    (tmp_path / "cmp2" / "scaled").write_text("")  # where the variant's runs should go
    with pytest.raises(RunError, match="is a file where a folder of runs should be; use another `out`"):
        compare(tmp_path / "cmp2", variants=TWO, seeds=1, base=BASE, data=synthetic, force=True)
    with pytest.raises(ConfigError, match="`jobs` must be at least 1"):
        compare(tmp_path / "cmp", variants=TWO, seeds=1, base=BASE, jobs=0)
    with pytest.raises(ConfigError, match="the variants are trained on different data sets \\(\\./letters, "
                                          "fashion-mnist\\); compare variants on one data set"):
        compare(tmp_path / "cmp3", variants=["raw", "raw:dataset=./letters"], seeds=1, base=BASE, data=synthetic)
    assert not (tmp_path / "cmp3").exists()
    with pytest.raises(ConfigError, match="give each of the `variants` once"):
        plan(tmp_path, ["raw", "raw"], 1, BASE)
    with pytest.raises(ConfigError, match="`seeds` must be between 1 and 100, got 0"):
        plan(tmp_path, ["raw"], 0, BASE)
    for wrong, said in [({"variants": "scaled"}, "`variants` must be a list or tuple of str, got str 'scaled'"),
                        ({"seeds": 2.0}, "`seeds` must be int, got float 2.0"),
                        ({"seeds": 101}, "`seeds` must be between 1 and 100, got 101"),
                        ({"jobs": True}, "`jobs` must be int, got bool True"),
                        ({"overrides": {"epochs": 1, 2: 3}}, "`overrides` key must be str, got int 2"),
                        ({"base": BASE.to_dict()}, "`base` must be TrainConfig or None, got dict"),
                        ({"force": "yes"}, "`force` must be bool, got str 'yes'"),
                        ({"progress": "print"}, "`progress` must be callable, got str 'print'")]:
        with pytest.raises(ConfigError, match=re.escape(said)):
            compare(tmp_path / "cmp", **{"variants": TWO, "seeds": 1, "base": BASE, "data": synthetic, **wrong})
    with pytest.raises(ConfigError, match="`out` must be a path, got an empty string"):
        compare("", variants=TWO, seeds=1, base=BASE, data=synthetic)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp2", "file"]  # no comparison folder was made


def test_a_folder_compare_did_not_make_is_refused_unless_empty_or_forced(tmp_path, comparison, synthetic):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.html").write_text("my own page")
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(RunError, match=r"mine already holds files that fashionlab.s comparison did not write "
                                       r"\(notes.txt, report.html\); .*or pass `force=True`"):
        compare(mine, variants=TWO, seeds=1, base=BASE, data=synthetic)
    assert (mine / "report.html").read_text() == "my own page" and sorted(p.name for p in mine.iterdir()) == [
        "notes.txt", "report.html"]
    run = comparison[0] / "scaled" / "seed-7"
    with pytest.raises(RunError, match="is a training run's directory; give the comparison its own `out`"):
        compare(run, variants=TWO, seeds=1, base=BASE, data=synthetic, force=True)
    (tmp_path / "link").symlink_to(mine)
    with pytest.raises(RunError, match="link is a symbolic link; give `out` the folder itself"):
        compare(tmp_path / "link", variants=TWO, seeds=1, base=BASE, data=synthetic)
    cmp = tmp_path / "cmp"
    cmp.mkdir()
    (cmp / "scaled").symlink_to(mine)  # a variant's folder of runs, elsewhere
    with pytest.raises(RunError, match="cmp/scaled is a symbolic link; remove it"):
        compare(cmp, variants=TWO, seeds=1, base=BASE, data=synthetic, force=True)
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt", "report.html"]



def test_runs_trained_at_once_share_the_free_memory(tmp_path, synthetic, monkeypatch):
    import fashionlab.comparison

    need = training_bytes(BASE, 300)  # the synthetic set: 360 images, 60 of them validate
    monkeypatch.setattr(fashionlab.comparison, "available_memory", lambda: int(need / 0.8 * 1.5))
    check_runnable(BASE, train_images=360, free_memory=int(need / 0.8 * 1.5))  # one run alone fits
    with pytest.raises(ConfigError, match="needs about .* GiB to train, more than the .* GiB of memory free"):
        compare(tmp_path / "cmp", variants=TWO, seeds=1, base=BASE, jobs=2, data=synthetic)
    assert not (tmp_path / "cmp").exists()


def test_variants_may_be_recipes_and_carry_changes(tmp_path):
    base = TrainConfig(learning_rate=0.05)
    assert variant_config("tutorial", base) == TrainConfig()  # a recipe ignores the base config
    changed = variant_config("bn-before:learning_rate=0.1,augment_flip=true", base, {"epochs": 3, "name": "x"})
    assert changed == base.replace(name="bn-before-learning_rate-0.1-augment_flip-true", batch_norm="before",
                                   learning_rate=0.1, augment_flip=True, epochs=3)
    named = variant_config("tutorial:optimizer=adamw, schedule = one_cycle,name=adamw-1cycle", base)
    assert (named.name, named.optimizer, named.schedule) == ("adamw-1cycle", "adamw", "one_cycle")
    tasks = plan(tmp_path, ["tutorial", "tutorial:epochs=2"], 2, base, {"seed": 9})
    assert [(t.config.name, t.config.seed, t.config.epochs) for t in tasks] == [
        ("tutorial", 9, 10), ("tutorial", 10, 10), ("tutorial-epochs-2", 9, 2), ("tutorial-epochs-2", 10, 2)]
    assert tasks[2].run_dir == tmp_path / "tutorial-epochs-2" / "seed-9"


@pytest.mark.parametrize("spec, message", [
    ("tutorial:depth", "cannot read 'depth' in variant changes"),
    ("tutorial:depth=2,depth=3", "each key once"),
    ("tutorial:depth=two", "depth must be int, got str 'two'"),
    ("tutorial:deep=2", "unknown config key"),
    ("tutorial:name=../up", "name '../up' cannot be used"),
    ("tutorials", "unknown variant 'tutorials' (did you mean 'tutorial'?); give a series variant (raw, "),
    ("zzz", "unknown variant 'zzz'; give a series variant (raw, "),
    ("best-cnn:", "cannot read '' in variant changes"),
    ("best-cnn:seed=7", "sets seed; the seeds come from --seed and --seeds"),
    ("fast-mlp:name=results.csv", "cannot be named results.csv: the comparison writes a file of that name"),
    ("raw:name=compare.json", "cannot be named compare.json"),
])
def test_bad_variant_specs_are_refused(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        plan(tmp_path, [spec], 1, TrainConfig())


def test_a_variant_keeps_the_name_it_is_given_even_its_starting_name(tmp_path):
    assert variant_config("fast-mlp:width=64,name=fast-mlp", TrainConfig()).name == "fast-mlp"
    assert variant_config("fast-mlp:width=64", TrainConfig()).name == "fast-mlp-width-64"


def test_the_comparison_folder_holds_its_files_and_one_folder_per_variant(comparison):
    from fashionlab.comparison import COMPARISON_FILES, MARKER

    out, _, _ = comparison
    assert {p.name for p in out.iterdir() if p.is_file()} - {".lock"} == {MARKER, *COMPARISON_FILES}
    assert {p.name for p in out.iterdir() if p.is_dir()} == set(TWO)


def test_two_variants_of_one_name_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="two variants are both named bn-after"):
        plan(tmp_path, ["bn-after", "tutorial:name=bn-after"], 1, TrainConfig())


# --- the written conclusion: statistics and their units (issue 20) -------------------------------

def judged(rows) -> list[str]:
    """The conclusion's lines about the other variants, for results given as (variant, test accuracy) rows."""
    results = frame([(variant, seed, accuracy, 0.9, 5, 1.0, 10) for seed, (variant, accuracy) in enumerate(rows)])
    return conclusion(summarize(results))


def test_a_gap_inside_the_seed_spread_is_not_called_a_win():
    # 1.50 points apart: more than either spread (1.41 points each), less than both together
    lines = judged([("a", 0.86), ("a", 0.88), ("b", 0.845), ("b", 0.865)])
    assert lines[0] == "a has the highest mean test accuracy: 0.8700 ± 0.0141 over 2 seed(s)."
    assert lines[1] == ("a and b differ by 1.50 points, within the seed spread (std 1.41 and 1.41 points): "
                        "these runs do not establish a difference.")
    # the mean, though not the worst seed, above the other's best: still within the spreads
    lines = judged([("a", 0.86), ("a", 0.90), ("b", 0.85), ("b", 0.87)])
    assert lines[1] == ("a and b differ by 2.00 points, within the seed spread (std 2.83 and 1.41 points): "
                        "these runs do not establish a difference.")
    # the leader's seeds agree, the other's do not: the other's spread counts too (3 seeds against 2)
    lines = judged([("a", 0.87), ("a", 0.87), ("a", 0.87), ("b", 0.85), ("b", 0.875)])
    assert lines[0] == "a has the highest mean test accuracy: 0.8700 ± 0.0000 over 3 seed(s)."
    assert lines[1] == ("a and b differ by 0.75 points, within the seed spread (std 0.00 and 1.77 points): "
                        "these runs do not establish a difference.")


def test_identical_results_are_neither_a_win_nor_a_lead():
    lines = judged([("a", 0.87), ("a", 0.87), ("b", 0.87), ("b", 0.87)])
    assert lines[1] == ("a and b differ by 0.00 points, within the seed spread (std 0.00 and 0.00 points): "
                        "these runs do not establish a difference.")


def test_a_gap_outside_the_seed_spread_is_called_a_win_in_points():
    lines = conclusion(summarize(RESULTS))
    assert "a beats b on every seed: its worst seed (0.8600) is above b's best (0.8100); mean gap 6.00 points." in lines
    results = frame([("a", seed, 0.88, 0.9, 9, 1.0, 10) for seed in (1, 2, 3)]
                    + [("b", seed, accuracy, 0.9, 9, 1.0, 10) for seed, accuracy in ((1, 0.80), (2, 0.80), (3, 0.88))])
    assert conclusion(summarize(results))[1] == (
        "a leads b by 5.33 points, more than the two seed spreads together (std 0.00 + 4.62 points), though their "
        "seed ranges overlap.")


def test_with_one_seed_differences_are_reported_but_not_judged():
    lines = conclusion(summarize(RESULTS[RESULTS.seed == 1]))
    assert lines[:4] == [
        "a has the highest mean test accuracy: 0.8600 ± 0.0000 over 1 seed(s).",
        "With one seed per variant there is no spread to judge the differences against; run more seeds before "
        "drawing conclusions.",
        "c: 0.8550 (0.50 points lower).",
        "b: 0.8000 (6.00 points lower)."]
    # one variant with a single seed is enough: its spread is unknown, not zero
    lines = judged([("a", 0.86), ("a", 0.87), ("b", 0.80)])
    assert lines[0] == "a has the highest mean test accuracy: 0.8650 ± 0.0071 over 2 seed(s)."
    assert lines[1] == ("With one seed for b there is no spread to judge the differences against; run more "
                        "seeds before drawing conclusions.")
    assert lines[2] == "b: 0.8000 (6.50 points lower)."


def test_a_single_variant_gets_its_figures_and_nothing_compared():
    assert conclusion(summarize(RESULTS[RESULTS.variant == "a"])) == [
        "a has the highest mean test accuracy: 0.8650 ± 0.0071 over 2 seed(s)."]


def test_the_summary_keeps_the_given_order_and_averages_every_figure_over_seeds():
    results = frame([("z", 1, 0.80, 0.81, 3, 2.0, 500), ("z", 2, 0.82, 0.85, 6, 4.0, 500),
                     ("m", 1, 0.90, 0.91, 9, 1.0, 70)]).assign(wall_seconds=[10.0, 30.0, 5.0],
                                                               first_epoch_val_accuracy=[0.75, 0.77, 0.70],
                                                               test_ece=[0.02, 0.04, 0.01])
    summary = summarize(results)
    assert list(summary.index) == ["z", "m"]  # as given, not sorted by name
    assert summary.loc["z"].to_dict() == pytest.approx({
        "seeds": 2, "test_accuracy_mean": 0.81, "test_accuracy_std": 0.02 / 2 ** 0.5, "test_accuracy_worst": 0.80,
        "test_accuracy_best": 0.82, "test_ece_mean": 0.03, "first_epoch_val_accuracy": 0.76,
        "best_val_accuracy": 0.83, "best_epoch": 4.5,
        "seconds_per_epoch": 3.0, "wall_seconds": 20.0, "parameters": 500})
    assert conclusion(summary)[-2:] == [  # m is best at the end, z after the first epoch
        "After the first epoch, mean validation accuracy ranged from 0.7000 (m) to 0.7600 (z).",
        "Training speed ranged from 1.00 s/epoch (m) to 3.00 s/epoch (z)."]


def test_a_lead_is_judged_exactly_at_the_sum_of_the_spreads():
    # a's worst seed ties b's best, so no win on every seed; the gap is 1.003 times the two spreads
    # together (3 seeds against 2): a lead
    lines = judged([("a", 0.86), ("a", 0.87), ("b", 0.805), ("b", 0.825), ("b", 0.86)])
    assert lines[1] == ("a leads b by 3.50 points, more than the two seed spreads together (std 0.71 + 2.78 points), "
                        "though their seed ranges overlap.")
    # 0.992 times: within
    lines = judged([("a", 0.865), ("a", 0.88), ("b", 0.805), ("b", 0.825), ("b", 0.865)])
    assert lines[1] == ("a and b differ by 4.08 points, within the seed spread (std 1.06 and 3.06 points): "
                        "these runs do not establish a difference.")


def test_variant_changes_need_a_key_and_a_value_and_split_at_the_first_equals_sign(tmp_path):
    from fashionlab.comparison import parse_changes

    assert parse_changes("name = 'a=b', depth=3") == {"name": "a=b", "depth": 3}
    for spec, item in [("tutorial:depth=", "depth="), ("tutorial:=2", "=2")]:
        with pytest.raises(ConfigError, match=re.escape(f"cannot read '{item}' in variant changes")):
            plan(tmp_path, [spec], 1, TrainConfig())


def test_the_output_folder_check_names_what_it_found_and_the_arguments_to_change(tmp_path):
    from fashionlab.comparison import check_output_folder

    (tmp_path / "file").write_text("")
    (tmp_path / "link").symlink_to(tmp_path)
    for out, said in [(tmp_path / "file", "exists and is not a folder"), (tmp_path / "link", "is a symbolic link")]:
        with pytest.raises(RunError, match=said) as refused:
            check_output_folder(out, force=True)
        assert refused.value.terms == ("out",)  # what the CLI says as --out
    for name in ("run.json", "config.json"):  # either file makes a folder a training run's
        run = tmp_path / name.removesuffix(".json")
        run.mkdir()
        (run / name).write_text("{}")
        with pytest.raises(RunError, match="is a training run's directory; give the comparison its own `out`") \
                as refused:
            check_output_folder(run, force=True)
        assert refused.value.terms == ("out",)
    for count, shown in [(3, "a, b, c"), (4, "a, b, c and 1 more"), (6, "a, b, c and 3 more")]:
        mine = tmp_path / f"mine-{count}"
        mine.mkdir()
        for name in "abcdef"[:count]:
            (mine / name).write_text("")
        with pytest.raises(RunError, match=re.escape(f"did not write ({shown}); give `out` a new")) as refused:
            check_output_folder(mine, force=False)
        assert refused.value.terms == ("out", "force=True")
        check_output_folder(mine, force=True)


def test_an_output_folder_that_cannot_be_listed_is_refused_with_the_reason(tmp_path, monkeypatch):
    import os

    from fashionlab.comparison import check_output_folder

    def unreadable(path):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "scandir", unreadable)  # as root, permissions alone do not stop a listing
    with pytest.raises(RunError, match="^" + re.escape(f"cannot read {tmp_path} (Permission denied); give `out` "
                                                       f"another folder") + "$") as refused:
        check_output_folder(tmp_path, force=False)
    assert refused.value.terms == ("out",)


def test_a_lead_is_said_with_both_seed_spreads_in_points():
    lines = judged([("a", 0.88), ("a", 0.90), ("b", 0.80), ("b", 0.80), ("b", 0.80), ("b", 0.88)])
    assert lines[1] == ("a leads b by 7.00 points, more than the two seed spreads together (std 1.41 + 4.00 "
                        "points), though their seed ranges overlap.")


def test_every_variant_of_one_seed_is_named():
    assert judged([("a", 0.86), ("a", 0.87), ("b", 0.80), ("c", 0.79)])[1].startswith(
        "With one seed for b, c there is no spread")


def test_a_finished_comparison_is_read_back_from_its_results(tmp_path):
    frame([("a", 1, 0.86, 0.87, 9, 2.0, 10), ("a", 2, 0.87, 0.88, 8, 2.0, 10), ("010", 1, 0.80, 0.81, 9, 1.0, 10),
           ("010", 2, 0.81, 0.82, 9, 1.0, 10)]).to_csv(tmp_path / "results.csv", index=False)
    results, summary, lines = load_comparison(tmp_path)
    assert list(summary.index) == ["a", "010"] and len(results) == 4  # a variant named 010 stays text
    assert lines[0] == "a has the highest mean test accuracy: 0.8650 ± 0.0071 over 2 seed(s)."
    with pytest.raises(RunError, match="holds no finished comparison"):
        load_comparison(tmp_path / "none")


def test_a_comparison_on_a_data_set_of_its_own_reports_its_classes(tmp_path):
    folder = write_dataset(tmp_path / "twelve")  # labels 0..9 of twelve classes: two never seen
    (folder / "classes.txt").write_text("\n".join(f"kind {i}" for i in range(12)))
    result = compare(tmp_path / "cmp", variants=["scaled"], seeds=1, base=BASE.replace(epochs=1, dataset=str(folder)))
    assert result.results["test_accuracy"].between(0, 1).all()
    page = (tmp_path / "cmp" / "report.html").read_text()
    assert page.count('alt="confusion matrix scaled"') == 1
    run = json.loads(Path(result.results["run_dir"][0], "run.json").read_text())
    assert run["dataset"]["class_names"][-1] == "kind 11"


# --- runs already trained ----------------------------------------------------------------------

def test_runs_already_trained_compare_exactly_as_the_training_comparison_did(comparison, tmp_path):
    out, result, _ = comparison
    trained = pd.read_csv(out / "results.csv")
    given = list(reversed(trained["run_dir"]))  # the order given decides the groups' order
    again = compare_runs(tmp_path / "again", given)
    assert (again.trained, again.reused) == (0, 4)
    results = pd.read_csv(tmp_path / "again" / "results.csv")
    key = ["variant", "seed"]
    pd.testing.assert_frame_equal(results.drop(columns="run_dir").sort_values(key).reset_index(drop=True),
                                  trained.drop(columns="run_dir").sort_values(key).reset_index(drop=True))
    assert list(again.summary.index) == list(reversed(TWO))
    pd.testing.assert_frame_equal(again.summary.loc[TWO], result.summary.loc[TWO])
    expected = conclusion(result.summary.loc[list(reversed(TWO))])
    assert again.conclusion == expected[:1] + [result.conclusion[1]] + expected[1:]  # the runs are short
    assert json.loads((tmp_path / "again" / "compare.json").read_text())["runs"] == given
    page = assert_self_contained(tmp_path / "again" / "report.html")
    links = [link for link in page.links if link.endswith("report.html")]
    assert sorted((tmp_path / "again" / link).resolve() for link in links) == \
        sorted((Path(d) / "report.html").resolve() for d in given)
    assert load_comparison(tmp_path / "again")[1].index.tolist() == list(reversed(TWO))


def _renamed(folder: Path, **config) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    return folder


def test_runs_are_grouped_by_all_their_settings_but_seed_and_name(tiny_run, tmp_path):
    a = _renamed(copy_run(tiny_run, tmp_path / "a", "2026-12-01T10:00:00+00:00"), name="tutorial", seed=1)
    b = _renamed(copy_run(tiny_run, tmp_path / "b", "2026-12-01T10:00:00+00:00"), name="mine", seed=2)
    c = _renamed(copy_run(tiny_run, tmp_path / "c", "2026-12-01T10:00:00+00:00"), name="tutorial", seed=1,
                 epochs=7)
    d = _renamed(copy_run(tiny_run, tmp_path / "d", "2026-12-01T10:00:00+00:00"), name="other", seed=1,
                 learning_rate=0.5)
    tasks = group_runs([a, b, c, d])
    epochs = TINY.epochs
    assert [t.tags for t in tasks] == [{"variant": f"tutorial (epochs={epochs})", "seed": 1},
                                       {"variant": f"tutorial (epochs={epochs})", "seed": 2},
                                       {"variant": "tutorial (epochs=7)", "seed": 1},
                                       {"variant": "other", "seed": 1}]


def test_runs_that_cannot_be_compared_are_refused_naming_them(tiny_run, tmp_path):
    a = copy_run(tiny_run, tmp_path / "a", "2026-12-01T10:00:00+00:00")
    with pytest.raises(ConfigError, match="give the `runs` to compare, at least one"):
        group_runs([])
    with pytest.raises(ConfigError, match=f"{a} is given twice; give each run once"):
        group_runs([a, a])
    with pytest.raises(ConfigError, match=f"{a} and {a}/. are the same run"):
        group_runs([a, f"{a}/."])
    twin = copy_run(tiny_run, tmp_path / "twin", "2026-12-01T10:00:00+00:00")
    with pytest.raises(ConfigError, match=f"{a} and {twin} have the same settings and seed"):
        group_runs([a, twin])
    untested = copy_run(tiny_run, tmp_path / "untested", "2026-12-01T10:00:00+00:00")
    metrics = json.loads((untested / "metrics.json").read_text())
    (untested / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if not k.startswith("test")}))
    with pytest.raises(RunError, match="untested has no test figures"):
        group_runs([a, untested])
    running = copy_run(tiny_run, tmp_path / "running", "2026-12-01T10:00:00+00:00", status="running")
    with pytest.raises(RunError, match="running is unfinished"):
        group_runs([a, running])
    digits = _renamed(copy_run(tiny_run, tmp_path / "digits", "2026-12-01T10:00:00+00:00"), seed=5)
    status = json.loads((digits / "run.json").read_text())
    status["dataset"] = {"name": "mnist", "class_names": [str(i) for i in range(10)]}
    (digits / "run.json").write_text(json.dumps(status))
    with pytest.raises(ConfigError, match=r"different data sets \(fashion-mnist, mnist\)"):
        group_runs([a, digits])


def test_a_comparison_page_says_what_was_run_and_that_its_runs_are_short(comparison):
    from helpers import Page

    out, result, _ = comparison
    page = Page((out / "report.html").read_text())
    setup = {row[0]: row[1] for row in page.tables[0]}
    assert setup["command"] == "not recorded"  # compare() called without one
    assert setup["runs"] == f"4: 2 variant(s) × 2 seed(s) ({BASE.seed}, {BASE.seed + 1})"
    assert f"epochs 10 → {BASE.epochs}" in setup["every run changes"]
    assert "batch_norm" not in setup["every run changes"]  # the variants differ in it
    assert page.tables[1] == [["variant", "what it changes"], ["scaled", "tutorial recipe: batch_norm after → none"],
                              ["bn-after", "tutorial recipe, as it is"]]
    short = (f"These runs are short: {BASE.epochs} epoch(s) on {BASE.train_samples or 300:,} training images, "
             f"where the tutorial recipe trains 10 epochs on all.")
    assert result.conclusion[1].startswith(short)
    assert short in (out / "summary.md").read_text()
    assert load_comparison(out)[2] == result.conclusion  # read back, the runs still say so


def test_runs_are_short_when_they_train_less_than_their_recipe():
    from fashionlab.comparison import _is_short

    tutorial = TrainConfig()
    assert not _is_short(tutorial, tutorial) and not _is_short(tutorial.replace(epochs=20), tutorial)
    assert _is_short(tutorial.replace(epochs=9), tutorial)
    assert _is_short(tutorial.replace(train_samples=5000), tutorial)
    assert not _is_short(tutorial.replace(train_samples=5000), tutorial.replace(train_samples=5000))
    assert _is_short(tutorial.replace(train_samples=4000), tutorial.replace(train_samples=5000))


def test_runs_with_damaged_files_are_refused_before_anything_is_written(tiny_run, tmp_path):
    a = _renamed(copy_run(tiny_run, tmp_path / "a", "2026-12-01T10:00:00+00:00"), seed=1)
    bad = _renamed(copy_run(tiny_run, tmp_path / "bad", "2026-12-01T10:00:00+00:00"), seed=2)
    metrics = json.loads((bad / "metrics.json").read_text())
    for damage, file in ((lambda: (bad / "metrics.json").write_text(json.dumps({**metrics, "machine": "m"})),
                          "metrics.json"),
                         (lambda: (bad / "metrics.json").write_text(json.dumps({**metrics, "data": {"train": "9"}})),
                          "metrics.json"),
                         (lambda: (bad / "history.csv").write_text("garbage\n"), "history.csv"),
                         (lambda: (bad / "confusion_matrix.csv").unlink(), "confusion_matrix.csv")):
        damage()
        with pytest.raises(RunError, match=f"bad/{file}"):
            compare_runs(tmp_path / "out", [a, bad])
        assert not (tmp_path / "out").exists()
        shutil.rmtree(bad)
        copy_run(tiny_run, bad, "2026-12-01T10:00:00+00:00")
        _renamed(bad, seed=2)


def test_a_comparison_is_not_written_over_the_other_kind_nor_inside_a_run(comparison, tiny_run, tmp_path):
    out, _, _ = comparison
    trained = shutil.copytree(out, tmp_path / "trained")
    run = copy_run(tiny_run, tmp_path / "a", "2026-12-01T10:00:00+00:00")
    with pytest.raises(RunError, match="trained holds a comparison of variants it trained; give `out` another"):
        compare_runs(trained, [run])
    compare_runs(tmp_path / "of-runs", [run])
    with pytest.raises(RunError, match="of-runs holds a comparison of runs already trained"):
        compare(tmp_path / "of-runs", variants=TWO, seeds=1, base=BASE)
    compare_runs(trained, [run], force=True)
    assert json.loads((trained / "compare.json").read_text())["runs"] == [str(run)]
    with pytest.raises(RunError, match=f"a/sub is inside the training run {run}"):
        compare_runs(run / "sub", [run])
    assert not (run / "sub").exists()
