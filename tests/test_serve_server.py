"""`fashionlab serve` as a process (serve/server.py): where it listens, what it says when it cannot,
and how it stops."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from serving import data_options, said_so_far, start, stop

from fashionlab.serve.predictor import BATCH_SIZES


def test_another_host_is_served_with_a_warning(tiny_run, synthetic):
    process, url = start(str(tiny_run.run.path), "--host", "0.0.0.0", *data_options(synthetic))
    try:
        assert url.startswith("http://0.0.0.0:")
    finally:
        stop(process)
    warning = process.stderr.read()
    assert ("fashionlab: warning: serving on 0.0.0.0 without a token: anyone who can reach this machine can use the "
            "model" in warning)


def test_a_host_that_is_not_this_machines_is_one_line_without_the_warning():
    other = subprocess.run([sys.executable, "-m", "fashionlab", "serve", "--onnx", "x.onnx", "--host", "192.0.2.1",
                            "--port", "0"], capture_output=True, text=True, timeout=120)
    assert other.returncode == 1 and other.stderr == (
        "fashionlab: error: --host 192.0.2.1 is not an address of this machine; use 127.0.0.1 (this machine only) "
        "or 0.0.0.0 (every address)\n")


def test_a_port_in_use_or_a_missing_model_is_one_line_and_exit_1(keras_server, tmp_path):
    used = subprocess.run([sys.executable, "-m", "fashionlab", "serve", "--onnx", "x.onnx", "--port",
                           str(keras_server.port)], capture_output=True, text=True, timeout=120)
    assert used.returncode == 1
    assert used.stderr.startswith(f"fashionlab: error: cannot listen on 127.0.0.1:{keras_server.port} (")
    assert used.stderr.strip().endswith("choose another --port") and used.stderr.count("\n") == 1
    missing = subprocess.run([sys.executable, "-m", "fashionlab", "serve", str(tmp_path / "nothing"), "--port", "0"],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    both = subprocess.run([sys.executable, "-m", "fashionlab", "serve", "run", "--onnx", "x.onnx"],
                          capture_output=True, text=True, timeout=120)
    assert both.returncode == 1 and "not both" in both.stderr


def test_ctrl_c_stops_the_server_at_once(tiny_run, synthetic):
    process, url = start(str(tiny_run.run.path), *data_options(synthetic))
    began = time.monotonic()
    code = stop(process)
    assert code in (0, 130) and time.monotonic() - began < 10
    assert "Traceback" not in process.stderr.read()
    assert not os.path.exists(Path("/proc") / str(process.pid))


def test_the_server_says_what_it_does_while_it_starts(keras_server, tiny_run):
    """On stderr, before the line on stdout that says where it serves (the fixture waited for that)."""
    said = said_so_far(keras_server.process).splitlines()
    assert said[0] == f"fashionlab: loading the model of {tiny_run.run.path}"
    assert said[1].startswith("fashionlab: loaded the model in ") and said[1].endswith(" s (Keras)")
    said = said[1:]
    compiling = said[1:1 + len(BATCH_SIZES)]
    assert [line.split(" (")[0] for line in compiling] == [
        f"fashionlab: compiling the model for batch size {size}" for size in BATCH_SIZES]
    assert [line.split(" (")[1].split(",")[0] for line in compiling] == [
        f"{count} of {len(BATCH_SIZES)}" for count in range(1, len(BATCH_SIZES) + 1)]
    seconds = [float(line.split(", ")[1].split(" s ")[0]) for line in compiling]
    assert seconds == sorted(seconds) and seconds[0] < 1
    done = said[1 + len(BATCH_SIZES)]
    assert done.startswith("fashionlab: compiled for batch sizes 1 to 64 in ") and done.endswith(" s")
    assert float(done.split(" in ")[1].removesuffix(" s")) >= seconds[-1]
    assert said[2 + len(BATCH_SIZES)] == "fashionlab: starting the upload workers and the server"
    assert keras_server.url.startswith("http://127.0.0.1:")
