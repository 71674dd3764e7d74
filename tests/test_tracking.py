"""MLflow tracking against a real `mlflow server` (sqlite backend, artifacts proxied, loopback, a free
port): runs, a comparison and a sweep logged and read back through MLflow's client, the logged model
loaded by MLflow and compared with the run's own, the UI in headless Chromium; a server that is down
costs a warning, never the run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from helpers import TINY

from fashionlab import tracking
from fashionlab.cli import main
from fashionlab.errors import ConfigError
from fashionlab.modelfiles import load_model_file
from fashionlab.rundir import Run
from fashionlab.training import train

mlflow = pytest.importorskip("mlflow") if not os.environ.get("CI") else __import__("mlflow")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> str:
    """`mlflow server` in a folder of its own, one worker, on a free loopback port."""
    folder = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{folder}/mlflow.db",
               "--artifacts-destination", str(folder / "artifacts")]
    log = open(folder / "server.log", "wb")
    quiet = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runners (8 processes, 2 GB)
    process = subprocess.Popen(command, cwd=folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                               env=quiet)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail("mlflow server did not start: " + (folder / "server.log").read_text()[-2000:])
        time.sleep(0.5)
    yield url
    os.killpg(process.pid, 15)
    process.wait(timeout=30)
    log.close()


@pytest.fixture
def client(server):
    return mlflow.MlflowClient(server)


def runs_of(client, experiment: str = tracking.DEFAULT_EXPERIMENT) -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], max_results=100) if found else []


def only_run(client, folder: Path):
    found = [r for r in runs_of(client) if r.data.tags.get("fashionlab.folder") == str(folder.resolve())]
    assert len(found) == 1, [r.info.run_name for r in found]
    return found[0]


# --- one run ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def logged(server, tmp_path_factory, synthetic):
    """A tiny run trained with `mlflow` set to the server."""
    folder = tmp_path_factory.mktemp("logged") / "logged-run"
    train(TINY.replace(epochs=3), folder, data=synthetic, verbose=0, mlflow=server, recipe="tutorial")
    return folder


def test_a_run_is_logged_as_it_stands_in_its_folder(logged, client):
    found, run = only_run(client, logged), Run(logged)
    assert found.info.status == "FINISHED" and found.info.run_name == "logged-run"
    assert found.data.params == {key: tracking._text(value) for key, value in run.config().to_dict().items()}
    history = run.history()
    for column in history.columns.drop("epoch"):
        logged_values = {m.step: m.value for m in client.get_metric_history(found.info.run_id, column)}
        assert logged_values == pytest.approx(dict(zip(history["epoch"], history[column])), rel=1e-6)
    times = [m.timestamp for m in sorted(client.get_metric_history(found.info.run_id, "loss"), key=lambda m: m.step)]
    assert times == sorted(times) and times[-1] - times[0] < 120_000  # each epoch when it was recorded
    metrics = run.metrics()
    assert found.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert found.data.metrics["test_loss"] == pytest.approx(metrics["test_loss"])
    assert found.data.metrics["test_ece"] == pytest.approx(metrics["test_ece"])
    assert found.data.metrics["parameters"] == metrics["parameters"]["total"]
    tags = found.data.tags
    assert tags["fashionlab.recipe"] == "tutorial" and tags["fashionlab.engine"] == "compiled"
    assert tags["fashionlab.dataset"] == "fashion-mnist" and tags["version.keras"] == metrics["versions"]["keras"]
    assert tags["mlflow.source.name"] == "fashionlab" and tags["mlflow.source.type"] == "LOCAL"
    files = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"report.html", "learning_curves.png", "confusion_matrix.png", "metrics.json", "model"} <= files
    report = Path(client.download_artifacts(found.info.run_id, "report.html", str(logged.parent)))
    assert report.read_bytes() == run.file("report.html").read_bytes()


def test_the_logged_model_predicts_raw_pixels_as_the_run_does(logged, client, synthetic):
    found = only_run(client, logged)
    mlflow.set_tracking_uri(client.tracking_uri)
    model = mlflow.pyfunc.load_model(f"runs:/{found.info.run_id}/model")
    images = synthetic.test_images()[:7]  # uint8, as the data set's
    expected = load_model_file(Run(logged).file("model.keras")).predict(images.astype(np.float32), verbose=0)
    assert model.predict(images) == pytest.approx(expected, abs=1e-6)
    assert model.predict(images.reshape(7, 784).astype(float)) == pytest.approx(expected, abs=1e-6)
    assert model.predict(pd.DataFrame(images.reshape(7, 784))) == pytest.approx(expected, abs=1e-6)
    assert model.metadata.metadata["class_names"][0] == "T-shirt/top"
    for bad, said in ((images * 2.0, "from 0 to 255"), (images[:, :27], "N x 28 x 28"), ([["a"] * 784], "numbers"),
                      (np.full((1, 28, 28), np.nan), "finite")):
        with pytest.raises(mlflow.exceptions.MlflowException, match=said):
            model.predict(bad)


def test_a_run_logged_again_is_not_logged_twice(logged, client, server):
    tracker = tracking.Tracker(tracking.destination(server))
    tracking.sync(tracker, Run(logged), where=tracking.destination(server))
    found = only_run(client, logged)
    assert len(client.get_metric_history(found.info.run_id, "loss")) == 3
    assert not tracker.off


class StopAfterFirstEpoch(keras.callbacks.Callback):
    """A second Ctrl-C after epoch 1 was recorded: the run stops at once, resumable."""

    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt


def test_a_resumed_run_goes_on_in_the_same_mlflow_run(tmp_path, synthetic, server, client):
    from fashionlab.training import resume

    folder = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(TINY.replace(epochs=3), folder, data=synthetic, verbose=0, mlflow=server,
              callbacks=[StopAfterFirstEpoch()])
    stopped = only_run(client, folder)
    assert stopped.info.status == "KILLED" and Run(folder).status()["status"] == "interrupted"
    assert [m.step for m in client.get_metric_history(stopped.info.run_id, "loss")] == [1]
    seen = []

    class Status(keras.callbacks.Callback):  # what MLflow says of the run while it trains again
        def on_epoch_end(self, epoch, logs=None):
            seen.append(client.get_run(stopped.info.run_id).info.status)

    resume(folder, data=synthetic, verbose=0, mlflow=server, callbacks=[Status()])
    found = only_run(client, folder)
    assert found.info.run_id == stopped.info.run_id and found.info.status == "FINISHED" and seen == ["RUNNING"] * 2
    assert sorted(m.step for m in client.get_metric_history(found.info.run_id, "loss")) == [1, 2, 3]
    assert found.data.metrics["test_accuracy"] == pytest.approx(Run(folder).metrics()["test_accuracy"])


def test_a_folder_trained_anew_is_a_new_mlflow_run(tmp_path, synthetic, server, client):
    import shutil

    folder = tmp_path / "run"
    train(TINY.replace(epochs=1), folder, data=synthetic, verbose=0, mlflow=server)
    shutil.rmtree(folder)
    time.sleep(1.1)  # a start a second later
    train(TINY.replace(epochs=1), folder, data=synthetic, verbose=0, mlflow=server)
    found = [r for r in runs_of(client) if r.data.tags.get("fashionlab.folder") == str(folder.resolve())]
    assert len(found) == 2 and all(len(client.get_metric_history(r.info.run_id, "loss")) == 1 for r in found)


def test_a_failed_run_is_marked_failed(tmp_path, synthetic, server, client):
    from fashionlab.errors import Diverged

    folder = tmp_path / "run"
    with pytest.raises(Diverged):
        train(TINY.replace(epochs=2, learning_rate=1e30, batch_norm="none"), folder, data=synthetic, verbose=0,
              mlflow=server)
    assert only_run(client, folder).info.status == "FAILED"


# --- the server down, bad URIs --------------------------------------------------------------------

def test_a_server_that_is_down_costs_one_warning_line(tmp_path, synthetic, capsys):
    secret = "s3cr3t-pass"
    url = f"http://me:{secret}@127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = train(TINY, tmp_path / "run", data=synthetic, verbose=0, mlflow=url)
    err = capsys.readouterr().err
    assert result.run.status()["status"] == "complete"
    warnings = [line for line in err.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: MLflow at http://***@127.0.0.1:")
    assert "training goes on without it" in warnings[0] and secret not in err
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("uri, said", [("ftp://host/x", r"scheme MLflow does not track in \(ftp\)"),
                                       ("http://host /x", "without spaces"), ("", "tracking URI"),
                                       ("postgresql://me:pw@db/mlflow", "give the URL of the MLflow server"),
                                       ("sqlite:////nonexistent/dir/x.db", "/nonexistent/dir, which is not a folder"),
                                       ("/tmp/store", "MLFLOW_ALLOW_FILE_STORE=true")])
def test_a_bad_uri_is_refused_before_the_run_starts(tmp_path, synthetic, uri, said):
    with pytest.raises(ConfigError, match=said):
        train(TINY, tmp_path / "run", data=synthetic, verbose=0, mlflow=uri)
    assert not (tmp_path / "run").exists()


def test_the_environment_names_the_server(monkeypatch, server):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lab")
    assert tracking.destination(True) == tracking.Destination(server, "lab")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        tracking.destination(True)
    assert tracking.destination(None) is None and tracking.destination(False) is None


def test_the_cli_records_the_command_without_the_password(tmp_path, synthetic, capsys):
    code = main(["train", "--run-dir", str(tmp_path / "run"), "--data-dir", str(synthetic.data_dir), "--no-verify",
                 "--depth", "1", "--width", "4", "--epochs", "1", "--validation-size", "60", "--quiet",
                 "--mlflow", f"http://me:hunter22@127.0.0.1:{free_port()}"])
    assert code == 0
    assert "hunter22" not in capsys.readouterr().err
    assert "hunter22" not in (tmp_path / "run" / "run.json").read_text()


# --- a comparison and a sweep ----------------------------------------------------------------------

def test_a_comparison_is_a_parent_run_with_its_runs_as_children(tmp_path, synthetic, server, client):
    from fashionlab.comparison import compare

    out = tmp_path / "cmp"
    compare(out, variants=["scaled", "bn-after"], seeds=2, base=TINY.replace(epochs=1), data=synthetic,
            mlflow=server)
    parent = only_run(client, out)
    assert parent.info.status == "FINISHED" and parent.data.tags["fashionlab.kind"] == "comparison"
    children = [r for r in runs_of(client) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["bn-after/seed-7", "bn-after/seed-8", "scaled/seed-7",
                                                         "scaled/seed-8"]
    assert {r.data.tags["fashionlab.variant"] for r in children} == {"scaled", "bn-after"}
    results = pd.read_csv(out / "results.csv")
    for variant, group in results.groupby("variant"):
        assert parent.data.metrics[f"{variant}.test_accuracy_mean"] == pytest.approx(group["test_accuracy"].mean())
        assert parent.data.metrics[f"{variant}.test_accuracy_std"] == pytest.approx(group["test_accuracy"].std())
        assert parent.data.metrics[f"{variant}.test_accuracy_worst"] == pytest.approx(group["test_accuracy"].min())
    assert {"report.html", "results.csv", "summary.md", "curves.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)}
    # the same command again trains nothing and logs nothing twice
    compare(out, variants=["scaled", "bn-after"], seeds=2, base=TINY.replace(epochs=1), data=synthetic,
            mlflow=server)
    again = [r for r in runs_of(client) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(again) == 4 and all(len(client.get_metric_history(r.info.run_id, "loss")) == 1 for r in again)
    assert all(len(client.get_metric_history(r.info.run_id, "test_accuracy")) == 1 for r in again)
    # compared again without training: a new parent that lists the runs, already children of the first
    from fashionlab.comparison import compare_runs

    compare_runs(tmp_path / "again", [out / "scaled" / "seed-7", out / "bn-after" / "seed-7"], mlflow=server)
    listed = only_run(client, tmp_path / "again").data.tags["fashionlab.runs"].split()
    assert sorted(listed) == sorted(r.info.run_id for r in again if r.info.run_name.endswith("seed-7"))


def test_runs_logged_from_their_folders_keep_their_start_and_end(tmp_path, synthetic, server, client):
    from datetime import datetime

    from fashionlab.comparison import compare_runs

    folder = tmp_path / "quiet"
    train(TINY.replace(epochs=2), folder, data=synthetic, verbose=0)  # not logged while it trained
    compare_runs(tmp_path / "cmp", [folder], mlflow=server)
    found, status = only_run(client, folder), Run(folder).status()
    assert found.info.start_time == int(datetime.fromisoformat(status["started"]).timestamp() * 1000)
    assert found.info.end_time == int(datetime.fromisoformat(status["finished"]).timestamp() * 1000)
    assert found.info.run_name == "quiet" and found.info.status == "FINISHED"


def test_a_notebooks_active_mlflow_run_is_the_parent(tmp_path, synthetic, server, client, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # mlflow.set_experiment sets it: unset again afterwards
    mlflow.set_tracking_uri(server)
    experiment = mlflow.set_experiment("notebook-lab")
    import fashionlab as fl

    with mlflow.start_run() as outer:  # the notebook's own call, as a learner writes it
        fl.train(run_dir=tmp_path / "inner", data=synthetic, verbose=0, mlflow=True, depth=1, width=8, epochs=1,
                 validation_size=60)
    inner = client.search_runs([experiment.experiment_id], "tags.`mlflow.parentRunId` = '" + outer.info.run_id + "'")
    assert [r.info.run_name for r in inner] == ["inner"]
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", experiment.experiment_id)
    assert tracking.destination(server).experiment_id == experiment.experiment_id


def test_a_sweep_is_a_parent_run_with_its_trials_as_children(tmp_path, synthetic, server, client):
    from sweeps_helpers import SEARCH, space_file

    from fashionlab.sweeps import sweep

    out = tmp_path / "sweep"
    result = sweep(space_file(tmp_path, SEARCH, epochs=2), out, trials=2, sampler="random", data=synthetic,
                   mlflow=server)
    parent = only_run(client, out)
    assert parent.info.status == "FINISHED" and parent.data.tags["fashionlab.kind"] == "sweep"
    children = [r for r in runs_of(client) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2 and all("test_accuracy" not in r.data.metrics for r in children)  # trials never test
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(result.best["val_accuracy"])
    assert parent.data.metrics["test_accuracy"] == pytest.approx(result.tests[-1]["test_accuracy"])


# --- MLflow's own UI ----------------------------------------------------------------------------

def test_mlflow_ui_lists_the_run(logged, client, server, browser):
    experiment = client.get_experiment_by_name(tracking.DEFAULT_EXPERIMENT).experiment_id
    page = browser.new_page()
    try:
        page.goto(f"{server}/#/experiments/{experiment}/runs?workflowType=machine_learning", timeout=60_000)
        page.get_by_text("logged-run", exact=True).first.wait_for(timeout=60_000)
        found = only_run(client, logged)
        page.goto(f"{server}/#/experiments/{experiment}/runs/{found.info.run_id}", timeout=60_000)
        page.get_by_text("test_accuracy").first.wait_for(timeout=60_000)
    finally:
        page.close()


def test_mlflow_models_serve_answers_with_the_runs_probabilities(logged, client, synthetic, tmp_path):
    found = only_run(client, logged)
    port = free_port()
    bin_dir = str(Path(sys.executable).parent)
    environment = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ["PATH"],
                   "MLFLOW_TRACKING_URI": client.tracking_uri}
    process = subprocess.Popen([str(Path(bin_dir) / "mlflow"), "models", "serve", "-m",
                                f"runs:/{found.info.run_id}/model", "--env-manager", "local", "-h", "127.0.0.1",
                                "-p", str(port)], env=environment, cwd=tmp_path, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(url + "/ping", timeout=2).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "mlflow models serve did not start"
                time.sleep(0.5)
        images = synthetic.test_images()[:3]
        body = json.dumps({"inputs": images.tolist()}).encode()
        with urllib.request.urlopen(urllib.request.Request(url + "/invocations", body,
                                                           {"Content-Type": "application/json"})) as answer:
            predictions = np.array(json.loads(answer.read())["predictions"])
        expected = load_model_file(Run(logged).file("model.keras")).predict(images.astype(np.float32), verbose=0)
        assert predictions == pytest.approx(expected, abs=1e-6)
        bad = json.dumps({"inputs": [[[300] * 28] * 28]}).encode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url + "/invocations", bad,
                                                          {"Content-Type": "application/json"}))
        assert refused.value.code == 400 and b"from 0 to 255" in refused.value.read()
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=30)


def test_the_cli_says_where_the_run_is_without_the_password_or_mlflows_own_lines(tmp_path, synthetic, server,
                                                                                  capfd, client):
    secret_url = server.replace("http://", "http://me:hunter22@")
    folder = tmp_path / "it's \x1b[31mred"  # a quote and a terminal escape in the folder's name
    for _ in range(2):  # logged once, however often it is compared
        code = main(["compare", "--runs", str(folder), "--out", str(tmp_path / "cmp"), "--force", "--mlflow",
                     secret_url] if folder.exists() else
                    ["train", "--run-dir", str(folder), "--data-dir", str(synthetic.data_dir), "--no-verify",
                     "--depth", "1", "--width", "4", "--epochs", "1", "--validation-size", "60", "--quiet",
                     "--mlflow", secret_url])
        assert code == 0
    out, err = capfd.readouterr()
    assert "hunter22" not in out + err and "View run" not in out and "\x1b" not in out + err
    assert f"mlflow: http://***@{server.split('//')[1]}/#/experiments/" in err
    assert len([r for r in runs_of(client) if r.data.tags.get("fashionlab.folder") == str(folder.resolve())]) == 1


def test_a_server_that_is_down_is_tried_once_for_a_whole_comparison(tmp_path, synthetic, capsys):
    from fashionlab.comparison import compare

    compare(tmp_path / "cmp", variants=["scaled", "bn-after"], seeds=1, base=TINY.replace(epochs=1), data=synthetic,
            mlflow=f"http://127.0.0.1:{free_port()}")
    warnings = [line for line in capsys.readouterr().err.splitlines() if "MLflow" in line]
    assert len(warnings) == 1 and "the comparison goes on without it" in warnings[0]


def test_a_comparison_that_fails_ends_its_mlflow_run_as_failed(tmp_path, synthetic, server, client):
    from fashionlab.comparison import compare
    from fashionlab.errors import Diverged

    with pytest.raises(Diverged):
        compare(tmp_path / "cmp", variants=["scaled"], seeds=1, data=synthetic, mlflow=server,
                base=TINY.replace(epochs=2, learning_rate=1e30, batch_norm="none"))
    assert only_run(client, tmp_path / "cmp").info.status == "FAILED"
