"""What the sweep tests share: tiny space files, the command, a sweep folder and its study as `sweep`
starts them, workers acting on it, and watching processes."""

import json
import multiprocessing.context
import subprocess
import sys
import time
from pathlib import Path

import optuna

from fashionlab.sweeps.claims import Owner, Worker
from fashionlab.sweeps.space import Space, load_space
from fashionlab.sweeps.storage import open_storage

TINY_TRAIN = """[train]
name = "tiny"
depth = 2
epochs = {epochs}
validation_size = 60
seed = 7
"""


def space_file(folder: Path, search: str, epochs: int = 3, name: str = "space") -> Path:
    path = folder / f"{name}.toml"
    path.write_text(TINY_TRAIN.format(epochs=epochs) + "[search]\n" + search)
    return path


SEARCH = """learning_rate = { min = 0.001, max = 0.3, log = true }
width = { min = 8, max = 32, step = 8 }
dropout = [0.0, 0.4]
"""
GOOD = {"learning_rate": 0.01, "width": 16, "dropout": 0.1}  # values inside SEARCH


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fashionlab", "sweep", *args], capture_output=True, text=True,
                          timeout=timeout)


def spawned(monkeypatch) -> list[str]:
    """The names of the worker processes started from here on (the runner starts them with spawn)."""
    names, start = [], multiprocessing.context.SpawnProcess.start

    def counted(process):
        names.append(process.name)
        start(process)

    monkeypatch.setattr(multiprocessing.context.SpawnProcess, "start", counted)
    return names


def wait_for(condition, process, seconds=240):
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    assert condition(), process.communicate()


def started_sweep(tmp_path: Path, search: str = SEARCH, epochs: int = 3):
    """A sweep folder and its study as `sweep` starts them, for tests that act as its workers."""
    space_path, out = space_file(tmp_path, search, epochs), tmp_path / "out"
    out.mkdir()
    journal = str(out / "study.journal")
    (out / "sweep.json").write_text(json.dumps({"study": "space", "storage": "study.journal"}))
    space = load_space(space_path)
    study = optuna.create_study(study_name="space", direction="maximize", storage=open_storage(journal))
    study.set_user_attr("fashionlab", {"space": space.settings(), "sampler": "random", "sampler_seed": 0,
                                       "pruner": "none"})
    return space_path, out, space, study, journal


def worker_of(space: Space, out: Path, journal: str, trials: int) -> Worker:
    """A worker of the sweep `started_sweep` made, with a connection of its own to the study, as each
    worker process has."""
    backend = open_storage(journal)
    study = optuna.load_study(study_name="space", storage=backend)
    return Worker(study, backend, space, out, trials=trials, storage=journal, sampler="random", sampler_seed=0,
                  pruner="none", train_images=300, free_memory=None, progress=lambda line: None)


def killed_owner() -> dict:
    """The owner record of a worker killed with SIGKILL, on this machine."""
    process = subprocess.Popen(["sleep", "60"])
    process.kill()
    process.wait()
    return {**Owner().record(), "pid": process.pid, "token": "killed"}


class PruneAt(optuna.pruners.BasePruner):
    """Prunes trial N from epoch `at[N]` on, whenever it is asked; never the other trials."""

    def __init__(self, at: dict[int, int]):
        self.at = at

    def prune(self, study, trial) -> bool:
        return trial.last_step is not None and trial.last_step >= self.at.get(trial.number, 10**9)


def untouched(paths: list[Path]) -> list[tuple[int, bytes]]:
    return [(path.stat().st_mtime_ns, path.read_bytes()) for path in paths]
