"""What training's progress lines in logs and pipes cost: progress.LineProgress's check after each
batch (each compiled chunk), and a whole training with and without it.

    .venv/bin/python benchmarks/progress.py [--recipe fast-mlp] [--repeat 3]

First the callback alone: the mean time of one `on_train_batch_end` that prints nothing (the
interval has not passed), the cost the compiled engine pays once per chunk and Keras' fit once per
step. Then `train(recipe, epochs=1)` on the real data, alternating verbose=0 (no callback) and
verbose=2 (Keras' epoch line and LineProgress), `--repeat` times each after an untimed run that
fills XLA's compilation cache; the table gives the median and range of the whole train call.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import statistics
import tempfile
import time
from pathlib import Path


def callback_cost(calls: int = 200_000) -> float:
    """Seconds per on_train_batch_end that prints nothing."""
    from fashionlab.progress import LineProgress

    watch = LineProgress(epochs=1, steps=calls + 1, every=3600.0, write=lambda line: None)
    watch.on_epoch_begin(0)
    logs = {"loss": 0.5, "accuracy": 0.8}
    began = time.perf_counter()
    for batch in range(calls):
        watch.on_train_batch_end(batch, logs)
    return (time.perf_counter() - began) / calls


def train_seconds(recipe: str, verbose: int, folder: Path) -> float:
    from fashionlab import recipes
    from fashionlab.training import train

    config = recipes.get(recipe).config().replace(epochs=1)
    began = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # not a terminal, as a log or a pipe
        train(config, folder / f"{verbose}-{time.monotonic_ns()}", verbose=verbose, test=False)
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fast-mlp")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}")
    print(f"LineProgress.on_train_batch_end, nothing printed: {callback_cost() * 1e9:.0f} ns a call")
    times: dict[int, list[float]] = {0: [], 2: []}
    with tempfile.TemporaryDirectory() as folder:
        train_seconds(args.recipe, 0, Path(folder))  # untimed: compiles and caches
        for _ in range(args.repeat):
            for verbose in times:
                times[verbose].append(train_seconds(args.recipe, verbose, Path(folder)))
    for verbose, seconds in times.items():
        said = "no progress (verbose=0)" if verbose == 0 else "Keras' line + LineProgress (verbose=2)"
        print(f"train {args.recipe} 1 epoch, {said:40s} median {statistics.median(seconds):6.2f} s  "
              f"(range {min(seconds):.2f} to {max(seconds):.2f}, {len(seconds)} runs)")


if __name__ == "__main__":
    main()
