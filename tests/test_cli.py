import argparse
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from helpers import idx_bytes, replace_file, synthetic_arrays, write_dataset

from fashionlab.cli import _config_from, build_parser, flags_of, in_cli_terms, main
from fashionlab.config import TrainConfig
from fashionlab.errors import ConfigError


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fashionlab", *args], capture_output=True, text=True,
                          env={**os.environ, "FASHIONLAB_DATA": ""}, timeout=300)


def test_every_command_prints_its_help(capsys):
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    data = next(a for a in commands["data"]._actions if isinstance(a, argparse._SubParsersAction)).choices
    for argv in [[], *([name] for name in commands), *(["data", name] for name in data)]:
        with pytest.raises(SystemExit) as exit:
            main([*argv, "--help"])
        assert exit.value.code == 0, argv
        assert capsys.readouterr().out.startswith("usage: fashionlab"), argv
    assert len(commands) >= 7 and data


def test_train_evaluate_predict_end_to_end(tmp_path, synthetic, capsys):
    run = tmp_path / "run"
    data = ["--data-dir", str(synthetic.data_dir), "--no-verify"]
    (tmp_path / "run.toml").write_text("depth = 2\nwidth = 8\nepochs = 1\nvalidation_size = 60\n")
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--epochs", "2", "--run-dir", str(run),
                 "--no-scale-inputs", *data]) == 0
    out = capsys.readouterr().out
    assert f"run directory: {run}" in out and "test accuracy" in out
    assert "Epoch 2/2" in out  # one line per epoch when not on a terminal
    config = json.loads((run / "config.json").read_text())
    assert (config["depth"], config["epochs"], config["scale_inputs"]) == (2, 2, False)

    assert main(["evaluate", str(run), "--json", *data]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_accuracy"] == json.loads((run / "metrics.json").read_text())["test_accuracy"]

    assert main(["predict", str(run), "--index", "0", "1", "--top-k", "2", "--json", *data]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["input"] for r in results] == ["test[0]", "test[1]"]
    assert all(len(r["top_k"]) == 2 for r in results)


def test_summary_prints_the_tutorial_totals(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 279,410" in out and "Trainable params: 275,410" in out
    assert "Non-trainable params: 4,000" in out


def test_config_options_are_typed_by_the_config_fields():
    args = build_parser().parse_args(["train", "--learning-rate", "1", "--batch-norm", "before", "--no-scale-inputs",
                                      "--depth", "3"])
    config = _config_from(args)
    assert (config.learning_rate, config.batch_norm, config.scale_inputs, config.depth) == (1.0, "before", False, 3)
    assert type(config.learning_rate) is float
    assert _config_from(build_parser().parse_args(["train"])) == TrainConfig()


@pytest.mark.parametrize("args, message", [
    (["train", "--depth", "-1"], "depth must be at least 0"),
    (["train", "--recipe", "tutorial", "--dropout", "0.2", "--alpha-dropout", "0.2"], "choose dropout or alpha"),
    (["compare", "--variants", "tutorial:depth=x"], "depth must be int"),
    (["train", "--learning-rate", "nan"], "learning_rate must be a finite number"),
    (["train", "--config", "/nonexistent/run.toml"], "does not exist"),
    (["train", "--data-dir", "/nonexistent"], "--data-dir /nonexistent lacks train-images-idx3-ubyte"),
    (["evaluate", "/nonexistent"], "is not a run directory"),
    (["predict", "/nonexistent", "--index", "0"], "is not a run directory"),
    (["data", "info", "--data-dir", "/nonexistent"], "lacks"),
    (["data", "download", "--url", "file:///nonexistent", "--dest", "/tmp/fashionlab-nowhere"],
     "check the network and --url"),
])
def test_user_errors_are_one_line_without_traceback(args, message, capsys):
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("fashionlab: error: ") and message in err
    assert err.count("\n") == 1


def test_library_terms_become_this_commands_flags_and_nothing_else_changes():
    predict = flags_of(build_parser().parse_args(["predict", "RUN", "--index", "0"]).command_parser)
    assert (predict["top_k"], predict["indices"], predict["verify=False"]) == ("--top-k", "--index", "--no-verify")
    assert "run_dir" not in predict  # evaluate and predict have no --run-dir to suggest

    def said(message, *terms, flags=predict):
        return in_cli_terms(ConfigError(message, terms=terms), flags)

    assert said("`top_k` must be between 1 and 10, got 11", "top_k") == "--top-k must be between 1 and 10, got 11"
    assert said("/tmp/`top_k`/x: bad; pass `verify=False`", "verify=False") == "/tmp/`top_k`/x: bad; pass --no-verify"
    assert said("choose another `run_dir`", "run_dir") == "choose another `run_dir`"
    assert said("resume with `resume('runs/my run')`", "resume('runs/my run')") == \
        "resume with fashionlab train --resume 'runs/my run'"
    assert said("odd `resume({[]: 0})`", "resume({[]: 0})") == "odd `resume({[]: 0})`"  # never raises


@pytest.mark.parametrize("args, message", [
    (["train", "--batch-norm", "sideways"], "invalid choice"),
    (["predict", "run", "--index", "0", "--top-k", "257"], "must be between 1 and 256, got 257"),
    (["compare", "--jobs", "0"], "must be at least 1, got 0"),
    (["train", "--resume", ""], "argument --resume: an empty path; give a file or folder name; see fashionlab train"),
    (["evaluate", ""], "argument RUN: an empty path"),
])
def test_bad_option_values_exit_2(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("args, said", [
    (["trian"], "argument COMMAND: invalid choice: 'trian' (did you mean 'train'?); see fashionlab --help"),
    (["train", "--epohcs", "3"], "unrecognized arguments: --epohcs 3 (did you mean --epochs?); see fashionlab train "
                                 "--help"),
    (["sweep", "s.toml", "--trails=5"], "unrecognized arguments: --trails=5 (did you mean --trials?); see "
                                        "fashionlab sweep --help"),
    (["train", "--model", "cnnn"], "argument --model: invalid choice: 'cnnn' (did you mean 'cnn'?); see fashionlab "
                                   "train --help"),
    (["data", "inffo"], "argument ACTION: invalid choice: 'inffo' (did you mean 'info'?); see fashionlab data --help"),
    # nothing close
    (["xyzzy"], "argument COMMAND: invalid choice: 'xyzzy' (choose from 'train', 'lr-find', 'evaluate', "),
    (["train", "--zzz"], "unrecognized arguments: --zzz; see fashionlab train --help"),
])
def test_a_misspelled_command_option_or_choice_is_one_line_with_the_closest_one(args, said, capsys):
    with pytest.raises(SystemExit) as info:
        main(args)
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith("fashionlab: error: " + said) and err.count("\n") == 1


def test_a_misspelled_recipe_variant_or_config_key_is_one_line_with_the_closest_one(tmp_path, capsys):
    (tmp_path / "c.toml").write_text("epchs = 2\n")
    for args, said in [
        (["train", "--recipe", "fast-cn"], "no recipe named 'fast-cn' (did you mean 'fast-cnn'?); choose from "),
        (["train", "--config", str(tmp_path / "c.toml")], "unknown config key(s): epchs (did you mean epochs?); "),
        (["compare", "--variants", "fast-cnn:epchs=10", "--out", str(tmp_path / "c")],
         "unknown config key(s): epchs (did you mean epochs?); "),
        (["compare", "--variants", "bn-afer", "--out", str(tmp_path / "c")],
         "unknown variant 'bn-afer' (did you mean 'bn-after'?); "),
    ]:
        assert main(args) == 1
        err = capsys.readouterr().err
        assert err.startswith("fashionlab: error: " + said) and err.count("\n") == 1
    assert not (tmp_path / "c").exists()


def test_process_exit_code_and_no_traceback(tmp_path):
    result = run_cli("train", "--epochs", "0", "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 1
    assert result.stderr.strip() == "fashionlab: error: epochs must be at least 1, got 0"
    assert not (tmp_path / "r").exists()
    result = run_cli("predict", str(tmp_path), "--index", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr


@pytest.mark.realdata
def test_data_info_on_the_real_files(real_data):
    result = run_cli("data", "info", "--data-dir", str(real_data.data_dir))
    assert result.returncode == 0
    assert "train images (55000, 28, 28)" in result.stdout and "pixels 0..255" in result.stdout


# --- bad input through the command line: one line, non-zero exit, no traceback, nothing written ---

IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"
DATASET_CASES = {
    "truncated gzip": (IMAGES + ".gz", lambda a: gzip.compress(idx_bytes(a[IMAGES]))[:300], "damaged gzip"),
    "wrong magic": (IMAGES, lambda a: idx_bytes(a[IMAGES], magic=2050), "IDX magic 2050"),
    "mismatched counts": (LABELS, lambda a: idx_bytes(a[LABELS][:10]), "360 images but 10 labels"),
    "label out of range": (LABELS, lambda a: idx_bytes(a[LABELS] + 10), "outside 0..9"),
    "wrong dimensions": (IMAGES, lambda a: idx_bytes(a[IMAGES].reshape(-1, 56, 14)), "56x14 images"),
    "truncated body": (IMAGES, lambda a: idx_bytes(a[IMAGES])[:-1], "truncated or padded"),
}


@pytest.mark.parametrize("case", DATASET_CASES)
def test_bad_dataset_files_through_train(tmp_path, synthetic_dir, case, capsys):
    filename, make, message = DATASET_CASES[case]
    replace_file(synthetic_dir, filename, make(synthetic_arrays()))
    assert main(["train", "--data-dir", str(synthetic_dir), "--no-verify", "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_hash_mismatch_through_train_names_the_flag(tmp_path, synthetic_dir, capsys):
    assert main(["train", "--data-dir", str(synthetic_dir), "--run-dir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert "SHA-256 mismatch" in err and "pass --no-verify for your own IDX data" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(b""), "not an image"),
    (lambda p: p.write_text("GIF89a? no, just text"), "not an image"),
    (lambda p: p.mkdir(), "is a directory"),
])
def test_bad_images_through_predict(tiny_run, tmp_path, make, message):
    path = tmp_path / "input.png"
    make(path)
    result = run_cli("predict", str(tiny_run.run.path), str(path))
    assert result.returncode == 1 and result.stdout == ""
    assert message in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_damaged_model_in_a_run_directory_is_refused_in_one_line(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run.path, run)
    (run / "model.keras").write_bytes(b"PK\x03\x04 not really a zip")
    result = run_cli("predict", str(run), "--index", "0", "--no-verify")
    assert result.returncode == 1 and "not a valid .keras archive" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unfinished_run_names_the_resume_command_and_the_flag(tiny_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run.run.path, run)
    status = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**status, "status": "interrupted"}))
    assert main(["evaluate", str(run)]) == 1
    err = capsys.readouterr().err
    assert f"finish it with fashionlab train --resume {run}, or pass --allow-incomplete" in err


def test_an_unexpected_exception_is_one_line_and_marks_the_run_failed(tmp_path, synthetic, monkeypatch, capsys):
    """The last line of defence: a bug (here a plot that fails) is an internal error, and the run says so."""
    import fashionlab.training

    def broken(*args, **kwargs):
        raise ZeroDivisionError("division by zero\nsecond line")

    monkeypatch.setattr(fashionlab.training, "write_test_outputs", broken)
    args = ["train", "--run-dir", str(tmp_path / "run"), "--epochs", "1", "--depth", "1", "--width", "4",
            "--validation-size", "60", "--quiet", "--data-dir", str(synthetic.data_dir), "--no-verify"]
    assert main(args) == 70
    err = capsys.readouterr().err
    assert err == ("fashionlab: internal error: ZeroDivisionError: division by zero second line; rerun with --debug "
                   "for the traceback\n")
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "failed"
    assert status["message"] == "internal error: ZeroDivisionError: division by zero second line"

    args[2] = str(tmp_path / "run2")
    with pytest.raises(ZeroDivisionError):
        main(["--debug", *args])


NOISY = """
import sys, warnings
import fashionlab.model
def noisy(model):
    warnings.warn("a library's warning", UserWarning)
    return "the summary"
fashionlab.model.summary_text = noisy
from fashionlab.cli import main
raise SystemExit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("debug", [False, True])
def test_library_warnings_reach_the_terminal_only_with_debug(debug):
    args = ["summary", "--depth", "1"] + (["--debug"] if debug else [])
    result = subprocess.run([sys.executable, "-c", NOISY, *args], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout == "the summary\n"
    assert ("a library's warning" in result.stderr) is debug, result.stderr


def test_control_characters_in_messages_are_shown_escaped(tmp_path, capsys):
    name = tmp_path / "evil\x1b[2Jname\nnext"
    assert main(["evaluate", str(name)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "\x1b" not in err and "evil\\x1b[2Jname\\nnext" in err


def test_sigterm_before_any_run_is_written_ends_quietly(tmp_path):
    process = subprocess.Popen([sys.executable, "-m", "fashionlab", "train", "--run-dir", str(tmp_path / "r"),
                                "--data-dir", str(tmp_path / "no-data")], stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # importing: before any run directory exists
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    if process.returncode == -signal.SIGTERM:  # a loaded machine: the signal came before Python set its handler
        assert err == ""
    else:
        assert process.returncode in (1, 130, 143) and "Traceback" not in err and err.count("\n") == 1, err
    assert not (tmp_path / "r").exists()


def test_the_environment_is_named_not_called_a_bug(monkeypatch, capsys):
    monkeypatch.setenv("KERAS_BACKEND", "bogus")
    assert main(["summary", "--depth", "1"]) == 1
    assert capsys.readouterr().err == ("fashionlab: error: KERAS_BACKEND 'bogus' is not a Keras backend; use one of "
                                       "jax, tensorflow, torch, numpy, openvino (jax is the default)\n")
    monkeypatch.delenv("KERAS_BACKEND")
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "fashionlab", "summary", "--depth", "1"], stdout=full,
                                stderr=subprocess.PIPE, text=True, timeout=120)
    assert result.returncode == 1 and result.stderr == "fashionlab: error: No space left on device\n"


def test_data_commands_take_a_data_set(tmp_path):
    folder = write_dataset(tmp_path / "letters")
    (folder / "classes.txt").write_text("\n".join(f"letter {c}" for c in "abcdefghij"))
    result = run_cli("data", "info", "--dataset", str(folder), "--validation-size", "10")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("data set: the data set in ") and "9 letter j" in result.stdout
    assert run_cli("data", "path", "--dataset", str(folder)).stdout.strip() == str(folder)
    result = run_cli("data", "download", "--dataset", "kmnist", "--url", folder.as_uri(), "--dest", str(tmp_path / "k"))
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "is not the official Kuzushiji-MNIST" in result.stderr
    assert not (tmp_path / "k").exists()
    result = run_cli("data", "info", "--dataset", "letters")
    assert result.returncode == 2 and "expected a built-in data set (fashion-mnist, mnist, kmnist)" in result.stderr


def test_paths_the_data_commands_print_have_their_control_characters_escaped(tmp_path):
    folder = write_dataset(tmp_path / "e\x1b]0;PWNED\x07\x1b[31m\u200f")
    (folder / "classes.txt").write_text("\n".join(f"k{i}" for i in range(10)))
    for command in (["data", "path"], ["data", "info", "--validation-size", "10"]):
        result = run_cli(*command, "--dataset", str(folder))
        assert result.returncode == 0 and "\x1b" not in result.stdout and "\u200f" not in result.stdout
        assert "\\x1b]0;PWNED\\x07\\x1b[31m\\u200f" in result.stdout


def test_runs_lists_filters_and_prints_json(runs_folder, capsys):
    from fashionlab.catalog import listing

    assert main(["runs"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["name", "recipe", "data", "set"]
    assert [line.split()[0] for line in lines[1:]] == [e.name for e in listing(runs_folder)]
    assert main(["runs", "--json", "--status", "complete"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [e["name"] for e in shown] == [e.name for e in listing(runs_folder, status="complete")]
    assert main(["runs", "--recipe", "best-cnn"]) == 0
    assert "no runs under runs matching recipe best-cnn" in capsys.readouterr().out


def test_commands_take_latest_and_the_start_of_a_name_and_say_which_run_it_is(runs_folder, tiny_run, capsys):
    data = ["--data-dir", json.loads((tiny_run.run.path / "metrics.json").read_text())["data"]["dir"], "--no-verify"]
    assert main(["evaluate", "latest", "--json", *data]) == 0
    captured = capsys.readouterr()
    assert "latest: runs/20261203-100000-fast-mlp" in captured.err
    assert json.loads(captured.out)["test_accuracy"] == tiny_run.run.metrics()["test_accuracy"]
    assert main(["predict", "20261201", "--index", "0", "--json", *data]) == 0
    assert "20261201: runs/20261201-100000-tutorial" in capsys.readouterr().err
    assert main(["predict", "2026120", "--index", "0", *data]) == 1
    assert "2026120 names 3 runs" in capsys.readouterr().err
    assert main(["train", "--resume", "20261203"]) == 1  # located, then refused: it is complete
    assert "runs/20261203-100000-fast-mlp" in capsys.readouterr().err
    assert main(["train", "--resume", "latest", "--data-dir", "no-such-folder"]) == 1  # located, then no data
    assert "latest: runs/20261205-100000-broken" in capsys.readouterr().err  # the newest unfinished run


def test_compare_runs_compares_runs_already_trained_and_refuses_what_would_train(runs_folder, capsys):
    config = runs_folder / "20261201-100000-tutorial" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "seed": 99}))
    assert main(["compare", "--runs", "20261201", "latest"]) == 0
    out = capsys.readouterr().out
    folder = out.split("comparison: ")[1].split("/report.html")[0]
    assert folder.startswith("runs/") and folder.endswith("-comparison")
    assert json.loads(open(f"{folder}/compare.json").read())["runs"] == [
        "runs/20261201-100000-tutorial", "runs/20261203-100000-fast-mlp"]
    assert "| 2 |" in open(f"{folder}/summary.md").read()  # one group, two seeds
    for extra in (["--seeds", "2"], ["--epochs", "3"], ["--variants", "raw"], ["--recipe", "fast-mlp"]):
        assert main(["compare", "--runs", "latest", *extra]) == 1
        assert f"--runs compares runs already trained; drop {extra[0]}" in capsys.readouterr().err


def test_the_recorded_command_never_holds_a_database_password():
    from fashionlab.cli import command_line

    said = command_line(["sweep", "space.toml", "--storage", "postgresql://me:s3cr3t-pw@db/lab?sslpassword=k3y-v4lue"])
    assert said.startswith("fashionlab sweep space.toml --storage ") and "s3cr3t" not in said and "k3y" not in said
    quoted = command_line(["sweep", "s.toml", "--storage", "postgresql://u:ab'cdS3cr@h/db"])  # quoting splits it
    assert "ab" not in quoted.split("u:")[1] and "S3cr" not in quoted
    twice = command_line(["sweep", "s.toml", "--storage=postgresql://u:Pw0rdOne@h/db", "--storage",
                          "postgresql://u:Pw0rdTwo@h/db"])
    assert "Pw0rd" not in twice and "--storage=postgresql://" in twice
    assert command_line(["train", "--name", "it's mine"]) == "fashionlab train --name 'it'\"'\"'s mine'"


def test_predict_says_no_class_and_why_for_noise_and_how_a_photo_was_read(tiny_run, synthetic, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28)).astype(np.uint8)).save(tmp_path / "noise.png")
    Image.fromarray(synthetic.test_images()[0]).save(tmp_path / "garment.png")
    assert main(["predict", str(tiny_run.run.path), str(tmp_path / "noise.png"), str(tmp_path / "garment.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{tmp_path / 'noise.png'}: no class"
    assert lines[1].startswith("  no garment found: nothing stands out from the background as one shape")
    assert lines[2].startswith(f"{tmp_path / 'garment.png'}: ") and "no class" not in lines[2]
