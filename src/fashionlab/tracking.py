"""Runs in an MLflow tracking server, for people who keep their experiments there.

    train(config, run_dir, mlflow="http://127.0.0.1:5000")   # mlflow=True: MLFLOW_TRACKING_URI

Each fashionlab run is one MLflow run: its resolved config as parameters, each recorded epoch's
figures (step = the epoch, at the time it was recorded), the test figures, its page, figures and
files as artifacts, tags for its recipe, data set, engine and versions, and its model as an
MLflow model that predicts raw pixels (`fashionlab.mlflowmodel`). A comparison or a sweep is a
parent run with its runs as children. The run directory stays the source of truth: MLflow gets a
view of it, and a server that is down or refuses costs one warning line, never the training
(tracking stops for the rest of that call). Runs are found again by their folder and start
(the tags `fashionlab.folder`, `fashionlab.started`), so a resumed run goes on in the same MLflow run
and a run logged once is not logged twice.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fashionlab.errors import ConfigError, Interrupted, reason
from fashionlab.rundir import Run
from fashionlab.urls import masked, url_label

DEFAULT_EXPERIMENT = "fashionlab"  # unless MLFLOW_EXPERIMENT_NAME names another
SCHEMES = ("http", "https", "file", "sqlite", "databricks")
# A database other than SQLite is reached through a tracking server: MLflow's own connection to one retries for
# minutes when it refuses, and a tracking server is a view, not worth that.
SERVER_ONLY = ("postgresql", "postgres", "mysql", "mssql")
MAX_URI = 2048
# The run's files MLflow keeps as artifacts (those it has), beside its model.
ARTIFACTS = ("report.html", "learning_curves.png", "confusion_matrix.png", "reliability.png", "config.json",
             "metrics.json", "history.csv", "run.json", "summary.txt", "ensemble.json")
# MLflow's client retries a refused request for minutes by default; a tracking server is a view, not worth that.
# Its own lines on stdout (a run's URL, password and all) are left out: fashionlab says where a run is itself.
CLIENT_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
                   "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
MAX_PARAM = 6000  # characters of a parameter's value MLflow keeps
BATCH = 500  # metrics per request


@dataclass(frozen=True)
class Destination:
    """Where runs go: the server, the experiment, and the run they are children of (a comparison's,
    a sweep's). Picklable: a comparison hands it to the processes that train its runs."""

    uri: str
    experiment: str = DEFAULT_EXPERIMENT
    parent: str | None = None
    experiment_id: str | None = None  # in place of the name: MLFLOW_EXPERIMENT_ID, or a notebook's active run's
    tags: tuple[tuple[str, str], ...] = ()  # what the run is within its parent (a comparison's variant)

    def label(self) -> str:
        return url_label(self.uri)


def destination(mlflow: str | bool | Destination | None) -> Destination | None:
    """`mlflow` as a destination, checked before any work: a URI, True for MLFLOW_TRACKING_URI (or the
    URI of MLflow's run active in this process), None or False for none. The experiment is
    MLFLOW_EXPERIMENT_ID or MLFLOW_EXPERIMENT_NAME, else DEFAULT_EXPERIMENT; in a process with an active
    MLflow run on the same server (`with mlflow.start_run():` in a notebook), that run's experiment, and
    the runs become its children. Refused: no MLflow installed, a URI MLflow cannot use, True with no
    URI set."""
    if mlflow is None or mlflow is False or isinstance(mlflow, Destination):
        return mlflow or None
    active = _active_run()
    if mlflow is True:
        mlflow = os.environ.get("MLFLOW_TRACKING_URI", "") or (active[0] if active else "")
        if not mlflow:
            raise ConfigError("`mlflow` needs the tracking server's URI, or MLFLOW_TRACKING_URI set", terms=["mlflow"])
    problem = uri_problem(mlflow)
    if problem:
        raise ConfigError(f"`mlflow` {problem}", terms=["mlflow"])
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("`mlflow` needs MLflow's client: pip install 'fashionlab[mlflow]'", terms=["mlflow"])
    if _scheme(mlflow) == "sqlite" and importlib.util.find_spec("sqlalchemy") is None:
        raise ConfigError("`mlflow` with a sqlite URI writes MLflow's database itself, which needs the full "
                          "mlflow package (pip install mlflow); or give the URL of an MLflow server", terms=["mlflow"])
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    where = Destination(mlflow, experiment[:500], experiment_id=os.environ.get("MLFLOW_EXPERIMENT_ID") or None)
    if active and active[0] == mlflow:
        where = dataclasses.replace(where, experiment_id=active[1], parent=active[2])
    return where


def _active_run() -> tuple[str, str, str] | None:
    """(tracking URI, experiment id, run id) of the MLflow run active in this process, if MLflow is
    imported and one is: a notebook's `with mlflow.start_run():`."""
    if "mlflow" not in sys.modules:
        return None
    import mlflow

    run = mlflow.active_run()
    return (mlflow.get_tracking_uri(), run.info.experiment_id, run.info.run_id) if run is not None else None


def uri_problem(uri: str) -> str | None:
    """What is wrong with a tracking URI, if anything: MLflow's schemes, or a folder (a file store)."""
    if not uri or len(uri) > MAX_URI or any(ord(c) < 33 or ord(c) == 127 for c in uri):
        return f"must be a tracking URI of at most {MAX_URI} characters without spaces or control characters"
    scheme = _scheme(uri)
    if scheme in SERVER_ONLY:
        return (f"names a {scheme} database: give the URL of the MLflow server that keeps it "
                f"(mlflow server --backend-store-uri {scheme}://...), http(s)://HOST:PORT")
    if "://" in uri and scheme not in SCHEMES:
        return (f"names a scheme MLflow does not track in ({url_label(uri).split('://')[0]}); "
                f"give http(s)://HOST:PORT, sqlite:///FILE.db, or a folder")
    if scheme == "sqlite" and uri.lower().startswith("sqlite:///"):  # 3 slashes, then a relative or absolute path
        folder = Path(uri[len("sqlite:///"):].split("?", 1)[0]).parent
        if not folder.is_dir():
            return f"names a database in {folder}, which is not a folder; make it first, or give another file"
    if scheme == "file" and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true"):
        return ("names a folder, which MLflow 3 keeps runs in only with MLFLOW_ALLOW_FILE_STORE=true set; "
                "or give sqlite:///mlflow.db, or an MLflow server's URL")
    return None


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].split("+", 1)[0].lower() if "://" in uri else "file"


class Tracker:
    """One tracking server for the length of a call; after its first failure, silent and idle."""

    def __init__(self, where: Destination, *, doing: str = "training"):
        self.where, self.doing, self.off = where, doing, False
        self.client: Any = None
        self.experiment_id: str | None = None
        for key, value in CLIENT_DEFAULTS.items():
            os.environ.setdefault(key, value)
        self.call(self._connect)

    def _connect(self) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=self.where.uri)
        if self.where.experiment_id is not None:
            self.experiment_id = self.client.get_experiment(self.where.experiment_id).experiment_id
            return
        found = self.client.get_experiment_by_name(self.where.experiment)
        self.experiment_id = (found.experiment_id if found is not None
                              else self.client.create_experiment(self.where.experiment))

    def call(self, work, *args, **kwargs) -> Any:
        """`work(...)`, unless tracking is off; a failure turns it off with one warning line."""
        if self.off:
            return None
        try:
            return work(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 (any failure of the server or the client is only a warning)
            self.off = True
            said = masked(f"{type(exc).__name__}: {reason(exc, 200)}", self.where.uri)
            print(f"warning: MLflow at {self.where.label()} failed ({said}); {self.doing} goes on without it",
                  file=sys.stderr, flush=True)
            return None

    # --- runs -------------------------------------------------------------------------------

    def run_of(self, name: str, tags: Mapping[str, str], *, parent: str | None = None,
               started: int | None = None) -> Any:
        """The MLflow run (its RunInfo) whose tags include `tags` in this experiment, else a new one with
        them, started at `started` (ms; now when None)."""
        return self.call(self._run_of, name, tags, parent, started)

    def _run_of(self, name: str, tags: Mapping[str, str], parent: str | None, started: int | None) -> Any:
        key = key_of(tags)
        found = self.client.search_runs([self.experiment_id], f"tags.`fashionlab.key` = '{key}'", max_results=1)
        if found:
            return found[0].info
        tags = {**tags, "fashionlab.key": key, **({"mlflow.parentRunId": parent} if parent else {})}
        return self.client.create_run(self.experiment_id, start_time=started, tags=dict(tags),
                                      run_name=name[:250]).info

    def tags(self, run_id: str, values: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        self.call(self.client.log_batch, run_id, tags=[RunTag(key, value[:MAX_PARAM]) for key, value in values.items()])

    def params(self, run_id: str, values: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        params = [Param(_key(key), _text(value)) for key, value in values.items()]
        for i in range(0, len(params), 100):  # MLflow's limit per request
            self.call(self.client.log_batch, run_id, params=params[i:i + 100])

    def metrics(self, run_id: str, rows: list[tuple[str, float, int, int]]) -> None:
        """(key, value, step, time in ms) rows; values that are not finite are left out (MLflow refuses them)."""
        from mlflow.entities import Metric

        kept = [Metric(_key(k), float(v), ms, step) for k, v, step, ms in rows if math.isfinite(float(v))]
        for i in range(0, len(kept), BATCH):
            self.call(self.client.log_batch, run_id, metrics=kept[i:i + BATCH])

    def logged_steps(self, run_id: str, key: str = "loss") -> set[int]:
        return {m.step for m in self.call(self.client.get_metric_history, run_id, key) or []}

    def artifacts(self, run_id: str, files: list[Path], folder: str | None = None) -> None:
        for path in files:
            self.call(self.client.log_artifact, run_id, str(path), folder)

    def end(self, run_id: str, status: str, ended: int | None = None) -> None:
        self.call(self.client.set_terminated, run_id, status, ended)

    def say_where(self, run_id: str) -> None:
        """One line on stderr: where MLflow's UI shows the run (its server's URL shown without its secrets)."""
        if not self.off and _scheme(self.where.uri) in ("http", "https"):
            print(f"mlflow: {self.where.label().rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}",
                  file=sys.stderr, flush=True)


def _key(key: str) -> str:
    """A name MLflow takes for a metric or parameter: letters, digits and _-. /: others become _."""
    return re.sub(r"[^\w\-. /]", "_", str(key))[:250] or "_"


def _text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:MAX_PARAM]


def identity(run: Run) -> dict[str, str]:
    """What finds a run's MLflow run again: its folder, and when it started (a folder trained anew is a new run)."""
    return {"fashionlab.folder": str(run.path.resolve()), "fashionlab.started": run.status().get("started") or ""}


def key_of(tags: Mapping[str, str]) -> str:
    """What an MLflow run is searched by: a digest of the tags that identify it (a folder's name may hold
    a quote, which MLflow's search filter cannot)."""
    import hashlib

    return hashlib.sha256(json.dumps(dict(sorted(tags.items()))).encode()).hexdigest()[:32]


def run_tags(run: Run, *, engine: str, kind: str = "run") -> dict[str, str]:
    """What a run's MLflow run is tagged with: what it is, its recipe, data set, engine and versions."""
    status = run.status()
    tags = {"fashionlab.kind": kind, "fashionlab.recipe": status.get("recipe") or "",
            "fashionlab.dataset": run.dataset().name, "fashionlab.engine": engine,
            "fashionlab.command": (status.get("command") or "")[:MAX_PARAM], **source_tags()}
    return {key: value for key, value in tags.items() if value}


def source_tags() -> dict[str, str]:
    """MLflow's own tags of where a run comes from (fashionlab, on this machine, by this user), and the
    versions of the libraries that made it (`version.keras`, ...)."""
    import getpass

    from fashionlab.provenance import library_versions

    tags = {"mlflow.source.name": "fashionlab", "mlflow.source.type": "LOCAL",
            **{f"version.{name}": version for name, version in library_versions().items()}}
    with contextlib.suppress(Exception):  # no user name (a container's uid without an entry)
        tags["mlflow.user"] = getpass.getuser()
    return tags


def run_name(run: Run) -> str:
    """A run's name in MLflow: its folder's, with its variant's before a comparison's seed-N."""
    name = run.path.name
    return f"{run.path.parent.name}/{name}" if name.startswith("seed-") else name


# --- one run ------------------------------------------------------------------------------------

class RunLog:
    """A fashionlab run as one MLflow run: opened with its config, then fed epochs as they are
    recorded, then finished with its test figures, files and model (or ended as failed or killed)."""

    def __init__(self, tracker: Tracker, run: Run, *, engine: str, where: Destination):
        self.tracker, self.run, self.top = tracker, run, where.parent is None
        info = tracker.run_of(run_name(run), identity(run), parent=where.parent,
                              started=_epoch_ms(run.status().get("started")))
        self.run_id = info.run_id if info is not None else None
        self.finished_before = info is not None and info.status == "FINISHED"  # logged whole already
        self.logged = tracker.logged_steps(self.run_id) if self.run_id else set()
        if self.run_id and not self.finished_before:
            if info.status != "RUNNING":  # a stopped run resumed: running again
                tracker.call(tracker.client.update_run, self.run_id, "RUNNING")
            tracker.tags(self.run_id, {**run_tags(run, engine=engine), **dict(where.tags)})
            tracker.params(self.run_id, run.config().to_dict())

    def epochs(self, rows: list[dict[str, float]], *, times: list[int] | None = None) -> None:
        """The rows (history.csv's) not logged yet, each at its time (ms; now when not given)."""
        now = int(time.time() * 1000)
        new = [(i, row) for i, row in enumerate(rows) if int(row["epoch"]) not in self.logged]
        if not self.run_id or not new:
            return
        self.tracker.metrics(self.run_id, [(key, value, int(row["epoch"]), times[i] if times else now)
                                           for i, row in new for key, value in row.items() if key != "epoch"])
        self.logged |= {int(row["epoch"]) for _, row in new}

    def callback(self, rows: list[dict[str, float]]):
        """A Keras callback logging the recorder's `rows` as each epoch is recorded."""
        import keras

        log = self

        class Epochs(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                log.epochs(rows)

        return Epochs()

    def finish(self, ended: int | None = None) -> None:
        """The test figures, the files and the model, and the MLflow run marked finished (at `ended`, ms;
        now when None)."""
        if not self.run_id:
            return
        metrics, now = self.run.metrics(), int(time.time() * 1000)
        figures = {key: metrics[key] for key in ("test_loss", "test_accuracy", "test_ece", "best_val_accuracy",
                                                 "final_val_accuracy", "train_seconds", "wall_seconds",
                                                 "median_seconds_per_epoch") if key in metrics}
        figures["parameters"] = metrics["parameters"]["total"]
        if "temperature" in metrics:  # temperature scaling: T, and the test figures from before it
            figures |= {key: value for key, value in metrics["temperature"].items()
                        if key in ("temperature", "test_ece_before", "test_loss_before")}
        self.tracker.metrics(self.run_id, [(key, value, 0, now) for key, value in figures.items()])
        self.tracker.artifacts(self.run_id, [self.run.file(n) for n in ARTIFACTS if self.run.file(n).is_file()])
        self.tracker.call(log_model, self.tracker, self.run_id, self.run)
        self.tracker.end(self.run_id, "FINISHED", ended)
        if self.top:
            self.tracker.say_where(self.run_id)

    def failed(self, exc: BaseException) -> None:
        """The MLflow run ended as killed (a stop: resumable) or failed, with the files the run has."""
        if self.run_id:
            self.tracker.artifacts(self.run_id, [self.run.file(n) for n in ARTIFACTS if self.run.file(n).is_file()])
            self.tracker.end(self.run_id, ended_as(exc))


def ended_as(exc: BaseException) -> str:
    """An MLflow run's status when its work stops early: KILLED by a stop (resumable), else FAILED."""
    return "KILLED" if isinstance(exc, (Interrupted, KeyboardInterrupt)) else "FAILED"


def log_model(tracker: Tracker, run_id: str, run: Run) -> None:
    """The run's model.keras as an MLflow model ("model" in the run's artifacts) whose predict takes
    raw pixels, N x 28 x 28 (0..255), and answers N x classes probabilities."""
    from fashionlab.mlflowmodel import save

    with tempfile.TemporaryDirectory(prefix="fashionlab-mlflow-") as scratch:
        saved = save(run, Path(scratch) / "model")
        tracker.client.log_artifacts(run_id, str(saved), "model")


@contextlib.contextmanager
def run_logged(where: Destination | None, run: Run, *, engine: str) -> Iterator[RunLog | None]:
    """The block's run logged to `where` (nothing when None); a failure or a stop in the block ends
    the MLflow run as failed or killed, and the error goes on."""
    if where is None:
        yield None
        return
    log = RunLog(Tracker(where), run, engine=engine, where=where)
    try:
        yield log
    except BaseException as exc:
        log.failed(exc)
        raise


def sync(tracker: Tracker, run: Run, *, where: Destination) -> str | None:
    """A complete run already on disk logged as it stands (unless it was, whole): its epochs at the
    times history.csv's seconds put them after its start, its test figures, files and model, its start
    and end as run.json records them. Its MLflow run's id."""
    log = RunLog(tracker, run, engine=run.config().engine, where=where)
    if log.finished_before:
        return log.run_id
    history = run.history()
    started = _epoch_ms(run.status().get("started"))
    times = None
    if started is not None:
        times = [started + int(1000 * s) for s in history["seconds"].cumsum()]
    log.epochs(history.to_dict("records"), times=times)
    log.finish(ended=_epoch_ms(run.status().get("finished")))
    return log.run_id


def _epoch_ms(stamp: str | None) -> int | None:
    from datetime import datetime

    with contextlib.suppress(TypeError, ValueError):
        return int(datetime.fromisoformat(stamp).timestamp() * 1000)
    return None


# --- a comparison or a sweep ---------------------------------------------------------------------

def parent(where: Destination | None, folder: Path, *, kind: str, params: Mapping[str, Any],
           doing: str) -> tuple[Tracker | None, Destination | None]:
    """The tracker and the MLflow run of a comparison's or a sweep's folder (found again by it), and
    the destination its runs are logged to, as its children."""
    if where is None:
        return None, None
    tracker = Tracker(where, doing=doing)
    if tracker.off:  # the server failed once: its runs are not logged either (one warning for the whole call)
        return None, None
    key = str(folder.resolve())
    info = tracker.run_of(Path(key).name, {"fashionlab.folder": key, "fashionlab.kind": kind}, parent=where.parent)
    if info is None:  # the server failed: nothing of the call is logged, and it is not asked again
        return None, None
    run_id = info.run_id
    if run_id:
        tracker.tags(run_id, source_tags())
        tracker.params(run_id, params)
    return tracker, dataclasses.replace(where, parent=run_id)


@contextlib.contextmanager
def parent_stops(tracker: Tracker | None, where: Destination | None) -> Iterator[None]:
    """A comparison's or a sweep's MLflow run ended as killed (a stop: the same command resumes it) or
    failed when its work stops early, and the error goes on."""
    try:
        yield
    except BaseException as exc:
        if tracker is not None and where is not None and where.parent is not None:
            tracker.end(where.parent, ended_as(exc))
        raise


def end_parent(tracker: Tracker | None, where: Destination | None, folder: Path, files: list[str],
               figures: Mapping[str, float]) -> None:
    """A comparison's or a sweep's MLflow run given its files and figures, and marked finished."""
    if tracker is None or where is None or where.parent is None:
        return
    now = int(time.time() * 1000)
    tracker.metrics(where.parent, [(key, value, 0, now) for key, value in figures.items()])
    tracker.artifacts(where.parent, [folder / name for name in files if (folder / name).is_file()])
    tracker.end(where.parent, "FINISHED")
    tracker.say_where(where.parent)
