"""A sweep's speed on this machine, in one process run: --jobs N against --jobs 1 on the same
trials, and the epochs each pruner saves against the same trials unpruned.

    .venv/bin/python benchmarks/sweep.py [--trials 16] [--epochs 8] [--jobs 2]

The space starts from fast-mlp (full data) and searches its learning rate, width and dropout
with the random sampler: a seeded random sampler draws trial k's values from the seed and k
alone, so every sweep below trains the same trials whatever their order and parallelism. The
unpruned sweeps must agree trial for trial (same values, same validation accuracy); the pruned
ones train the same trials and stop some early.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from fashionlab.provenance import machine_info
from fashionlab.sweeps import sweep

SPACE = """description = "benchmark: fast-mlp's learning rate, width and dropout"
recipe = "fast-mlp"
[train]
epochs = {epochs}
[search]
learning_rate = {{ min = 0.0003, max = 0.03, log = true }}
width = {{ min = 64, max = 512, step = 64 }}
dropout = [0.0, 0.5]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args()
    print(f"machine: {machine_info()}")
    print(f"{args.trials} trials of fast-mlp for {args.epochs} epochs, random sampler (seed 0)")
    with tempfile.TemporaryDirectory(prefix="fashionlab-sweep-bench-") as folder:
        space = Path(folder, "bench.toml")
        space.write_text(SPACE.format(epochs=args.epochs))
        results = {}
        # The median sweep goes first: it compiles every trial's network into the persistent cache,
        # so the two timed sweeps after it both find them compiled.
        for label, jobs, pruner in (("median", 1, "median"), ("jobs 1", 1, "none"),
                                    (f"jobs {args.jobs}", args.jobs, "none"), ("halving", 1, "halving")):
            started = time.perf_counter()
            result = sweep(space, Path(folder, label.replace(" ", "-")), trials=args.trials, jobs=jobs,
                           sampler="random", pruner=pruner)
            wall = time.perf_counter() - started
            table = result.trials
            results[label] = (wall, table)
            best = result.best
            print(f"{label:>8} ({pruner} pruner): {wall:7.1f} s wall, {int(table['epochs'].sum()):4d} epochs, "
                  f"{int((table['state'] == 'pruned').sum()):2d} pruned; best trial {best['trial']} val "
                  f"{best['val_accuracy']:.4f}")
        one, many = results["jobs 1"], results[f"jobs {args.jobs}"]
        columns = ["trial", "learning_rate", "width", "dropout", "val_accuracy"]
        same = one[1][columns].equals(many[1][columns])
        print(f"\n--jobs {args.jobs} vs --jobs 1: {one[0] / many[0]:.2f}x faster; same trials and results: {same}")
        full = int(one[1]["epochs"].sum())
        for label in ("median", "halving"):
            wall, table = results[label]
            same_values = table[columns[:4]].equals(one[1][columns[:4]])
            saved = 1 - table["epochs"].sum() / full
            best = table.loc[table["val_accuracy"].astype(float).idxmax()]
            unpruned_best = int(one[1].loc[one[1]["val_accuracy"].idxmax(), "trial"])
            print(f"{label} pruner: {saved:.0%} of the {full} unpruned epochs saved; same trials: {same_values}; "
                  f"its best trial {int(best['trial'])} (unpruned best: {unpruned_best})")


if __name__ == "__main__":
    main()
