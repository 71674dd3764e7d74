"""The figures of the series' next chapters, on the real Fashion-MNIST test set: calibration before
and after temperature scaling, MC dropout's spread on right and wrong predictions, and lr-find's
suggestion against each recipe's learning rate.

    python benchmarks/chapters.py --runs runs/calib/*/seed-42 [--passes 30] [--lr-find fast-mlp best-mlp]

`--runs`: complete runs trained with `temperature_scale = true` (their metrics.json holds the
before and after); runs with dropout are also read with MC dropout. `--lr-find`: recipes searched
with `fashionlab lr-find`'s defaults (200 steps from 1e-7 to 10). Prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import fashionlab  # noqa: F401  (before keras: points JAX at the compilation cache)
from fashionlab import recipes
from fashionlab.calibration import reliability
from fashionlab.data import DataSource
from fashionlab.evaluation import predict_proba
from fashionlab.lrfind import lr_find
from fashionlab.rundir import Run
from fashionlab.uncertainty import DropoutSampler


def calibration_rows(runs: list[Path]) -> list[str]:
    rows = ["| run | temperature | test ECE before → after | test loss before → after | test accuracy |",
            "|---|---|---|---|---|"]
    for path in runs:
        metrics = json.loads((path / "metrics.json").read_text())
        t = metrics.get("temperature")
        if t is None:
            rows.append(f"| {Run(path).name()} | – | {100 * metrics['test_ece']:.2f} % | "
                        f"{metrics['test_loss']:.4f} | {metrics['test_accuracy']:.4f} |")
            continue
        rows.append(f"| {Run(path).name()} | {t['temperature']:.3f} | {100 * t['test_ece_before']:.2f} % → "
                    f"{100 * metrics['test_ece']:.2f} % | {t['test_loss_before']:.4f} → {metrics['test_loss']:.4f} | "
                    f"{metrics['test_accuracy']:.4f} |")
    return rows


def dropout_rows(runs: list[Path], passes: int, data: DataSource) -> list[str]:
    rows = [f"| run | test accuracy: one pass → mean of {passes} | spread of the top class: right / wrong "
            f"| wrong among the 10 % most spread / least spread | seconds |", "|---|---|---|---|---|"]
    for path in runs:
        run = Run(path)
        if not (run.config().dropout or run.config().alpha_dropout):
            continue
        x_test, y_test = data.of(run.dataset()).test_set()
        model = run.load_model()
        single = predict_proba(model, x_test).argmax(axis=1)
        began = time.perf_counter()
        samples = DropoutSampler(model).samples(x_test, passes)
        seconds = time.perf_counter() - began
        mean, spread = samples.mean(axis=0), samples.std(axis=0)
        best = mean.argmax(axis=1)
        top_spread = spread[np.arange(len(best)), best]
        right = best == y_test
        order = np.argsort(top_spread)
        tenth = len(order) // 10
        rows.append(f"| {run.name()} | {np.mean(single == y_test):.4f} → {np.mean(right):.4f} | "
                    f"{top_spread[right].mean():.3f} / {top_spread[~right].mean():.3f} | "
                    f"{100 * np.mean(~right[order[-tenth:]]):.1f} % / {100 * np.mean(~right[order[:tenth]]):.1f} % | "
                    f"{seconds:.1f} |")
        rows.append(f"|  ECE of the mean | {100 * reliability(y_test, mean)['ece']:.2f} % | | | |")
    return rows


def lr_find_rows(names: list[str], data: DataSource) -> list[str]:
    rows = ["| recipe | optimizer | its learning rate | lowest smoothed loss at | suggested (/ 10) | steps | seconds |",
            "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as scratch:
        for name in names:
            config = recipes.get(name).config()
            found = lr_find(config, Path(scratch) / name, data=data)
            rows.append(f"| {name} | {config.optimizer} | {config.learning_rate:g} | {found.minimum:.3g} | "
                        f"{found.suggestion:.3g} | {len(found.losses)} | {found.seconds:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", type=Path, default=[])
    parser.add_argument("--passes", type=int, default=30)
    parser.add_argument("--lr-find", nargs="*", default=[])
    args = parser.parse_args()
    data = DataSource()
    if args.runs:
        print("\n".join(calibration_rows(args.runs)), end="\n\n")
        print("\n".join(dropout_rows(args.runs, args.passes, data)), end="\n\n")
    if args.lr_find:
        print("\n".join(lr_find_rows(args.lr_find, data)))


if __name__ == "__main__":
    main()
