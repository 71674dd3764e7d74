"""Wall time of `compare` with 1 job vs N jobs, on the same runs, in one process run.

    .venv/bin/python benchmarks/compare_jobs.py [--jobs 2] [--epochs 3] [--seeds 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from fashionlab.comparison import compare
from fashionlab.config import TrainConfig
from fashionlab.provenance import machine_info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--variants", nargs="+", default=["scaled", "bn-after"])
    args = parser.parse_args()
    base = TrainConfig(epochs=args.epochs)
    runs = len(args.variants) * args.seeds
    print(f"machine: {machine_info()}")
    print(f"{runs} runs ({' '.join(args.variants)} x {args.seeds} seeds, {args.epochs} epochs, tutorial recipe)")
    walls = {}
    for jobs in (1, args.jobs):
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            result = compare(out, variants=args.variants, seeds=args.seeds, base=base, jobs=jobs)
            walls[jobs] = time.perf_counter() - started
            print(f"jobs={jobs}: {walls[jobs]:.1f} s wall, mean test accuracy "
                  f"{result.results['test_accuracy'].mean():.4f}")
    print(f"speed-up with {args.jobs} jobs: {walls[1] / walls[args.jobs]:.2f}x "
          f"(wall time {walls[args.jobs] / walls[1]:.0%} of 1 job)")


if __name__ == "__main__":
    main()
