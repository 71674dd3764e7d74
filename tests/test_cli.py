import json
import os
import subprocess
import sys

import pytest

from fashionlab.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fashionlab", *args], capture_output=True, text=True,
                          env={**os.environ, "FASHIONLAB_DATA": ""}, timeout=300)


def test_train_evaluate_predict_end_to_end(tmp_path, session_synthetic_dir, capsys):
    run = tmp_path / "run"
    (tmp_path / "run.toml").write_text("depth = 2\nwidth = 8\nepochs = 1\nvalidation_size = 60\n")
    assert main(["train", "--config", str(tmp_path / "run.toml"), "--epochs", "2", "--run-dir", str(run),
                 "--data-dir", str(session_synthetic_dir), "--no-verify", "--no-scale-inputs"]) == 0
    out = capsys.readouterr().out
    assert f"run directory: {run}" in out and "test accuracy" in out
    assert "Epoch 2/2" in out  # one line per epoch when not on a terminal
    config = json.loads((run / "config.json").read_text())
    assert (config["depth"], config["epochs"], config["scale_inputs"]) == (2, 2, False)

    assert main(["evaluate", str(run), "--json", "--data-dir", str(session_synthetic_dir), "--no-verify"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["test_accuracy"] == json.loads((run / "metrics.json").read_text())["test_accuracy"]

    assert main(["predict", str(run), "--index", "0", "1", "--top-k", "2", "--json",
                 "--data-dir", str(session_synthetic_dir), "--no-verify"]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["input"] for r in results] == ["test[0]", "test[1]"]
    assert all(len(r["top_k"]) == 2 for r in results)


def test_summary_prints_the_tutorial_totals(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 279,410" in out and "Trainable params: 275,410" in out
    assert "Non-trainable params: 4,000" in out


@pytest.mark.parametrize("args, message", [
    (["train", "--depth", "0"], "depth must be at least 1"),
    (["train", "--learning-rate", "nan"], "learning_rate must be a positive finite number"),
    (["train", "--config", "/nonexistent/run.toml"], "does not exist"),
    (["train", "--data-dir", "/nonexistent"], "lacks train-images-idx3-ubyte"),
    (["evaluate", "/nonexistent"], "is not a run directory"),
    (["predict", "/nonexistent", "--index", "0"], "is not a run directory"),
    (["data", "info", "--data-dir", "/nonexistent"], "lacks"),
])
def test_user_errors_are_one_line_without_traceback(tmp_path, args, message, capsys):
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("fashionlab: error: ") and message in err
    assert err.count("\n") == 1


def test_bad_option_values_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--batch-norm", "sideways"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_process_exit_code_and_no_traceback(tmp_path):
    result = run_cli("train", "--epochs", "0", "--run-dir", str(tmp_path / "r"))
    assert result.returncode == 1
    assert result.stderr.strip() == "fashionlab: error: epochs must be at least 1, got 0"
    assert not (tmp_path / "r").exists()
    result = run_cli("predict", str(tmp_path), "--index", "0")
    assert result.returncode == 1 and "Traceback" not in result.stderr


@pytest.mark.realdata
def test_data_info_on_the_real_files(real_data_dir):
    result = run_cli("data", "info", "--data-dir", str(real_data_dir))
    assert result.returncode == 0
    assert "train images (55000, 28, 28)" in result.stdout and "pixels 0..255" in result.stdout
