"""What sharing a comparison through a study costs: the study's work per run, and a comparison
trained by two worker processes (one core each) against one process with --jobs 1, on this machine.

    python benchmarks/compare_shared.py [--seeds 4] [--epochs 10] [--variants fast-mlp]

The study is an SQLite file in a temporary folder (PostgreSQL on another machine adds its network
round trips). Prints the open-and-plan time, the per-run time of the study's work (take the run,
mark it, put its figures, tell it), and the wall times of the two ways to train the same plan.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import fashionlab  # noqa: F401  (before keras: points JAX at the compilation cache)
from fashionlab.config import TrainConfig
from fashionlab.data import DataSource
from fashionlab.sweeps import sharing

FIGURES = {"metrics.json": "x" * 4000, "history.csv": "x" * 1000}  # about a run's size in the study


def study_work(folder: Path, runs: int) -> tuple[float, list[float]]:
    """Seconds to open the study and plan `runs` runs; then each run's take, mark, figures and tell."""
    out = folder / "work"
    tasks = sharing.plan(out, ["fast-mlp"], runs, TrainConfig(), {"validation_size": 60})
    began = time.perf_counter()
    shared = sharing.Shared(f"sqlite:///{folder / 'work.db'}", "work", tasks, out, DataSource())
    opened = time.perf_counter() - began
    taken, times = shared.tasks(), []
    for _ in range(runs):
        began = time.perf_counter()
        number = next(taken).tags["trial"]
        shared.backend.set_trial_user_attr(shared.claims.trial_id(number), sharing.FILES, FIGURES)
        shared._tell(number, 0.5)
        shared.claims.release(number)
        times.append(time.perf_counter() - began)
    return opened, times


def wall(commands: list[list[str]]) -> float:
    """Seconds until every command, started together, has ended (each must succeed)."""
    began = time.perf_counter()
    processes = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for c in commands]
    for process in processes:
        _, err = process.communicate()
        if process.returncode:
            sys.exit(f"a command failed: {err.strip().splitlines()[-1] if err.strip() else process.returncode}")
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--variants", nargs="+", default=["fast-mlp"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        opened, times = study_work(folder, 20)
        print(f"open the study and plan 20 runs: {opened:.2f} s (2 s of it: the planning claim's wait)")
        print(f"the study's work per run: median {1000 * statistics.median(times):.0f} ms, "
              f"max {1000 * max(times):.0f} ms")
        compare = [sys.executable, "-m", "fashionlab", "compare", "--variants", *args.variants, "--seeds",
                   str(args.seeds), "--epochs", str(args.epochs), "--jobs", "1"]
        alone = wall([["taskset", "-c", "0", *compare, "--out", str(folder / "alone")]])
        shared = [*compare, "--out", str(folder / "shared"), "--storage", f"sqlite:///{folder / 'shared.db'}"]
        two = wall([["taskset", "-c", str(core), *shared] for core in (0, 1)])
        print(f"one process, --jobs 1: {alone:.1f} s; two workers, one core each: {two:.1f} s ({two / alone:.2f}x)")


if __name__ == "__main__":
    main()
