"""Properties that hold for any input, checked on inputs Hypothesis draws from the whole space:

- any config either is refused before anything is written, or trains into a complete run (or
  diverges, and the run says so);
- any damage to any file of a run gives one-line errors from every reader, never a traceback;
- any file-system object (FIFO, directory, device, link, empty or huge file) in any path
  argument of the CLI gives a one-line error, without hanging.
"""

import contextlib
import json
import os
import shutil
import signal
import typing
from pathlib import Path

import pytest
from helpers import synthetic_arrays, write_dataset
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from fashionlab import runner
from fashionlab.cli import main
from fashionlab.config import FIELDS, NAME_PATTERN, TYPES, TrainConfig, field_type
from fashionlab.data import DataSource
from fashionlab.errors import ConfigError, DataError, Diverged, FashionlabError
from fashionlab.evaluation import evaluate
from fashionlab.prediction import predict
from fashionlab.rundir import Run
from fashionlab.training import resume, train


def examples(count: int) -> settings:
    """`count` generated cases (FASHIONLAB_PROPERTY_EXAMPLES overrides it, for a longer hunt), no deadline."""
    return settings(max_examples=int(os.environ.get("FASHIONLAB_PROPERTY_EXAMPLES", count)), deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
TRAIN_IMAGES = 360  # the synthetic training file: validation and training images together


@contextlib.contextmanager
def no_hang(seconds: float):
    """Fail (rather than wait forever) if the block takes longer than `seconds`."""
    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def one_line(error: Exception) -> str:
    message = str(error)
    assert message and "\n" not in message and "Traceback" not in message, repr(message)
    return message


# --- any config -------------------------------------------------------------------------------

def edges(low: int, high: int) -> st.SearchStrategy[int]:
    """Small values that train quickly, and the values at and just past the field's bounds."""
    return st.one_of(st.integers(low, high), st.sampled_from([low - 1, 10**7, 10**7 + 1, 2**63, -(2**63)]))


def choice_of(name: str) -> st.SearchStrategy:
    return st.sampled_from(field_type(TYPES[name]).choices)


def value_of(name: str) -> st.SearchStrategy:
    """Any value for the key: valid ones, the edges just past its bounds, and values of the wrong type."""
    kind = field_type(TYPES[name])
    if kind.choices:
        valid = st.sampled_from(kind.choices)
    elif name == "name":
        valid = st.text(max_size=70)  # any characters: control, math text, separators, too long
    elif name == "learning_rate":
        valid = st.one_of(st.floats(1e-4, 0.05), st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 10**400]))
    elif name == "seed":
        valid = st.sampled_from([0, 1, 2**32 - 1, 2**32, -1])
    elif name == "validation_size":
        valid = st.sampled_from([0, 1, 60, TRAIN_IMAGES - 1, TRAIN_IMAGES, TRAIN_IMAGES + 1, 10**7 + 1])
    elif name == "train_samples":
        valid = st.sampled_from([0, 1, 299, 300, 301, 10**7 + 1])
    elif name == "batch_size":
        valid = edges(1, 320)
    elif name in ("depth", "width"):
        valid = st.one_of(st.integers(0, 3 if name == "depth" else 24), st.sampled_from([251, 65537, 2**63]))
    elif name == "epochs":
        valid = st.sampled_from([0, 1, 2, 100_001])
    else:
        valid = st.from_type(kind.base)
    wrong = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.floats(), st.lists(st.integers(), max_size=2))
    return st.one_of(valid, valid, valid, wrong)  # mostly values of the right type


@st.composite
def runnable(draw) -> dict:
    """A config that fits the data, with its sizes at their edges as often as not."""
    validation = draw(st.sampled_from([1, 60, TRAIN_IMAGES - 1]))
    left = TRAIN_IMAGES - validation
    samples = draw(st.sampled_from(sorted({0, 1, left})))
    used = samples or left
    return {
        "name": draw(st.from_regex(NAME_PATTERN, fullmatch=True)),
        "depth": draw(st.integers(1, 3)), "width": draw(st.integers(1, 24)),
        "activation": draw(choice_of("activation")), "batch_norm": draw(choice_of("batch_norm")),
        "kernel_initializer": draw(choice_of("kernel_initializer")), "optimizer": draw(choice_of("optimizer")),
        "scale_inputs": draw(st.booleans()), "shuffle": draw(st.booleans()), "engine": draw(choice_of("engine")),
        "learning_rate": draw(st.floats(1e-4, 0.05)),
        "batch_size": draw(st.sampled_from(sorted({1, min(32, used), used}))),
        "epochs": draw(st.integers(1, 2)), "seed": draw(st.sampled_from([0, 1, 2**32 - 1])),
        "validation_size": validation, "train_samples": samples,
    }


@st.composite
def hostile(draw) -> dict:
    """A runnable config with one to three keys set to anything from the whole space."""
    config = draw(runnable())
    for name in draw(st.lists(st.sampled_from(list(FIELDS)), min_size=1, max_size=3, unique=True)):
        config[name] = draw(value_of(name))
    return config


configs = st.one_of(runnable(), hostile())


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> DataSource:
    directory = write_dataset(tmp_path_factory.mktemp("data"), synthetic_arrays(n_train=TRAIN_IMAGES, n_test=50))
    return DataSource(directory, verify=False)


ARTIFACTS = {"config.json", "run.json", "history.csv", "summary.txt", "model.keras", "metrics.json", "report.html",
             "learning_curves.png", "confusion_matrix.csv", "confusion_matrix.png", "reliability.png"}


@examples(30)
@given(values=configs)
def test_any_config_is_refused_upfront_or_trained_into_a_complete_run(values, small_data, tmp_path_factory):
    note(f"config: {values}")
    run_dir = tmp_path_factory.mktemp("config") / "run"
    try:
        config = TrainConfig(**values)
        result = train(config, run_dir, data=small_data, verbose=0)
    except (ConfigError, DataError) as exc:
        event(f"refused upfront: {str(exc)[:50]}")
        one_line(exc)
        assert not run_dir.exists(), "a refused config wrote a run directory"
        return
    except Diverged as exc:  # a legitimate end: the run keeps its last good epoch and says why
        event("diverged")
        status = Run(run_dir).status()
        assert status["status"] == "failed" and one_line(exc) == status["message"]
        return
    event("trained")
    assert Run(run_dir).status()["status"] == "complete"
    assert ARTIFACTS <= {p.name for p in run_dir.iterdir()}
    assert len(Run(run_dir).history()) == config.epochs
    assert result.metrics["data"]["train"] == (config.train_samples or TRAIN_IMAGES - config.validation_size)


# --- any damage to a run's files ----------------------------------------------------------------

RUN_FILES = ["run.json", "config.json", "history.csv", "metrics.json", "confusion_matrix.csv", "model.keras"]
JSON_VALUES = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                                     st.text(max_size=10)),
                           lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(st.text(max_size=10), inner, max_size=3)),
                           max_leaves=8)


@st.composite
def damage(draw):
    """A way to damage one file: (file name, description, function of the file's path)."""
    name = draw(st.sampled_from(RUN_FILES))
    how = draw(st.sampled_from(["truncate", "overwrite bytes", "random text", "edit a field", "delete",
                                "directory", "fifo", "link to a device", "link outside", "empty"]))
    position, garbage = draw(st.integers(0, 10**7)), draw(st.binary(min_size=1, max_size=64))
    field, value = draw(st.text(max_size=12)), draw(JSON_VALUES)
    text = draw(st.text(max_size=200))

    def apply(path: Path) -> None:
        content = path.read_bytes()
        if how in ("delete", "directory", "fifo", "link to a device", "link outside"):
            path.unlink()
        if how == "truncate":
            path.write_bytes(content[:position % max(len(content), 1)])
        elif how == "overwrite bytes":
            at = position % max(len(content), 1)
            path.write_bytes(content[:at] + garbage + content[at + len(garbage):])
        elif how == "random text":
            path.write_text(text)
        elif how == "edit a field":
            try:
                table = json.loads(content)
            except ValueError:
                table = None
            if isinstance(table, dict):
                keys = sorted(table)
                table[keys[position % len(keys)] if keys and position % 3 else field] = value
                path.write_text(json.dumps(table))
            else:
                path.write_text(json.dumps(value))
        elif how == "directory":
            path.mkdir()
        elif how == "fifo":
            os.mkfifo(path)
        elif how == "link to a device":
            path.symlink_to("/dev/zero")
        elif how == "link outside":
            outside = path.parent.parent / f"outside-{name}"
            outside.write_bytes(content)
            path.symlink_to(outside)
        elif how == "empty":
            path.write_bytes(b"")

    return name, how, apply


def readers(run_dir: Path, data: DataSource):
    """Every way fashionlab reads a run directory back."""
    task = runner.Task("t", TrainConfig(), run_dir)
    yield "status", lambda: Run(run_dir).status()
    yield "open", lambda: Run.open(run_dir, allow_incomplete=True)
    yield "inspect", lambda: runner.inspect(task)
    yield "results", lambda: runner.results([task])
    yield "predict", lambda: predict(run_dir, indices=[0], data=data, allow_incomplete=True)
    yield "evaluate", lambda: evaluate(run_dir, data=data, allow_incomplete=True)
    yield "resume", lambda: resume(run_dir, data=data, verbose=0)


@examples(40)
@given(damaged=damage())
def test_any_damage_to_a_run_file_gives_one_line_errors(damaged, tiny_run, synthetic, tmp_path_factory):
    name, how, apply = damaged
    run_dir = tmp_path_factory.mktemp("damaged") / "run"
    shutil.copytree(tiny_run.run.path, run_dir, ignore=shutil.ignore_patterns(".lock"))
    apply(run_dir / name)
    for reader, read in readers(run_dir, synthetic):
        note(f"{how} {name}, then {reader}")
        try:
            with no_hang(60):
                read()
        except FashionlabError as exc:
            one_line(exc)
    outside = run_dir.parent / f"outside-{name}"
    if how == "link outside":  # nothing written through the link
        assert outside.read_bytes() == (tiny_run.run.path / name).read_bytes()


# --- any file-system object in any path argument ---------------------------------------------------

def file_system_objects(folder: Path) -> dict[str, Path]:
    folder.mkdir()
    objects = {name: folder / name for name in ("fifo", "directory", "device", "dangling", "empty", "huge",
                                               "loop")}
    os.mkfifo(objects["fifo"])
    objects["directory"].mkdir()
    objects["device"].symlink_to("/dev/zero")
    objects["dangling"].symlink_to(folder / "nowhere")
    objects["empty"].write_bytes(b"")
    with open(objects["huge"], "wb") as f:
        f.truncate(1 << 40)  # sparse: a terabyte that takes no space
    objects["loop"].symlink_to(objects["loop"])
    return objects


def path_arguments(run: str, data: str) -> dict[str, typing.Callable[[str], list[str]]]:
    """Every path argument of every command, with the rest of a command that would work."""
    source = ["--data-dir", data, "--no-verify"]
    return {
        "train --config": lambda p: ["train", "--config", p, *source],
        "train --run-dir": lambda p: ["train", "--run-dir", p, "--epochs", "1", "--validation-size", "60", *source],
        "train --resume": lambda p: ["train", "--resume", p, *source],
        "train --data-dir": lambda p: ["train", "--data-dir", p, "--no-verify"],
        "evaluate RUN": lambda p: ["evaluate", p, *source],
        "evaluate --data-dir": lambda p: ["evaluate", run, "--data-dir", p, "--no-verify"],
        "predict RUN": lambda p: ["predict", p, "--index", "0", *source],
        "predict IMAGE": lambda p: ["predict", run, p, *source],
        "compare --config": lambda p: ["compare", "--config", p, *source],
        "compare --out": lambda p: ["compare", "--out", p, "--epochs", "1", "--seeds", "1", "--variants", "raw",
                                    "--depth", "1", "--width", "4", "--validation-size", "60", "--jobs", "1", *source],
        "data info --data-dir": lambda p: ["data", "info", "--data-dir", p, "--no-verify"],
        "data path --data-dir": lambda p: ["data", "path", "--data-dir", p],
        "data download --dest": lambda p: ["data", "download", "--dest", p, "--url", "http://127.0.0.1:9/"],
    }


@pytest.fixture(scope="module")
def special(tmp_path_factory, tiny_run, synthetic):
    root = tmp_path_factory.mktemp("special")
    return file_system_objects(root / "objects"), path_arguments(str(tiny_run.run.path), str(synthetic.data_dir))


ARGUMENTS = list(path_arguments("RUN", "DATA"))
OBJECTS = ["fifo", "directory", "device", "dangling", "empty", "huge", "loop"]
# An empty directory is a fine place for a new run or comparison: not an error there.
USABLE = {("directory", "train --run-dir"), ("directory", "compare --out")}


@pytest.mark.parametrize("thing", OBJECTS)
@pytest.mark.parametrize("argument", ARGUMENTS)
def test_every_file_system_object_in_every_path_argument_gives_one_line(argument, thing, special, capsys):
    """Every pair, not a sample: 13 path arguments x 7 kinds of object."""
    if (thing, argument) in USABLE:
        pytest.skip("a usable target")
    objects, commands = special
    with no_hang(30):  # some commands load the run's model first: seconds, never minutes
        code = main(commands[argument](str(objects[thing])))
    err = capsys.readouterr().err
    assert code != 0, err
    assert err.startswith("fashionlab: error: ") and err.count("\n") == 1, err
    assert not (objects[thing].is_dir() and any(objects[thing].iterdir())), "wrote into the object"
