"""The speedrun table: the airbench/DAWNBench triple for recipes on this machine.

    .venv/bin/python benchmarks/speedrun.py --recipes tutorial speed-90 --seeds 5 [--keras tutorial] [--out DIR]

Each seed is a fresh `fashionlab train` process (the one beside this Python).

For each recipe: test accuracy, mean +- std and worst over the seeds; the seconds of the whole
`train` command (process start, data, compilation, training, every artifact) and of the `train`
call alone (metrics.json's wall_seconds: data, compilation, training, test report; the recipes'
"seconds"), each with the compile cache cold (the first seed, given an empty cache folder) and
warm (the mean of the other seeds, sharing it); training and the compilation in it (the first
epoch's excess over the median epoch), over the warm seeds; the
floating-point operations of a run, counted from the network (`config.run_flops`), and the
GFLOP/s achieved over its training seconds; beside them, the machine's float32 matrix-product
rate measured in the same run (a 2048 x 2048 product, and a product of the shape a convolution
layer's im2col gives). `--keras RECIPE` adds Keras' own `fit` of the same network, with
`steps_per_execution=64` and `jit_compile=True` (`contenders/keras_recipe.py`), as a contender.
Prints a Markdown table and writes speedrun.json and speedrun.md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fashionlab import recipes
from fashionlab.config import run_flops
from fashionlab.provenance import library_versions, machine_info

HERE = Path(__file__).resolve().parent


def matmul_rates() -> dict[str, float]:
    """GFLOP/s of float32 matrix products on this machine, the best of several timed calls."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import jax
    import jax.numpy as jnp

    rates = {}
    for label, (m, k, n) in {"2048x2048": (2048, 2048, 2048), "im2col 25088x288 @ 288x64": (25088, 288, 64)}.items():
        a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
        product = jax.jit(jnp.matmul)
        product(a, b).block_until_ready()
        best = min(timed(lambda: product(a, b).block_until_ready()) for _ in range(7))
        rates[label] = 2 * m * k * n / best / 1e9
    return rates


def timed(call) -> float:
    began = time.perf_counter()
    call()
    return time.perf_counter() - began


def train_once(recipe: str, seed: int, run_dir: Path, cache: Path) -> dict:
    """One `fashionlab train` process: its wall time from outside and its metrics.json."""
    cli = str(Path(sys.executable).parent / "fashionlab")
    env = {**os.environ, "FASHIONLAB_COMPILE_CACHE": str(cache)}
    began = time.perf_counter()
    subprocess.run([cli, "train", "--recipe", recipe, "--seed", str(seed), "--quiet", "--run-dir", str(run_dir)],
                   env=env, check=True, stdout=subprocess.DEVNULL)
    process = time.perf_counter() - began
    metrics = json.loads((run_dir / "metrics.json").read_text())
    epochs = metrics["seconds_per_epoch"]
    steady = statistics.median(epochs[1:]) if len(epochs) > 1 else 0.0
    return {"seed": seed, "test_accuracy": metrics["test_accuracy"], "process_seconds": process,
            "call_seconds": metrics["wall_seconds"], "train_seconds": metrics["train_seconds"],
            "compile_seconds": max(epochs[0] - steady, 0.0), "data": metrics["data"]}


def keras_once(recipe: str, seed: int) -> dict:
    """Keras' own fit of the recipe's network, steps_per_execution=64 and jit_compile, in a fresh process."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, str(HERE / "contenders" / "keras_recipe.py"), recipe, str(seed)],
                          env={**os.environ, "KERAS_BACKEND": "jax"}, check=True, capture_output=True, text=True)
    process = time.perf_counter() - began
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    epochs = result["epoch_seconds"]
    steady = statistics.median(epochs[1:]) if len(epochs) > 1 else 0.0
    return {"seed": seed, "test_accuracy": result["test_accuracy"], "process_seconds": process,
            "call_seconds": result["train_seconds"], "train_seconds": result["train_seconds"],
            "compile_seconds": max(epochs[0] - steady, 0.0)}


def summarize(name: str, recipe: str, runs: list[dict], flops: int) -> dict:
    accuracies = [r["test_accuracy"] for r in runs]
    warm = runs[1:] or runs
    train = statistics.mean(r["train_seconds"] for r in warm)
    compile_seconds = statistics.mean(r["compile_seconds"] for r in warm)
    return {"contender": name, "recipe": recipe, "seeds": [r["seed"] for r in runs],
            "accuracy_mean": statistics.mean(accuracies),
            "accuracy_std": statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0,
            "accuracy_worst": min(accuracies), "cold_seconds": runs[0]["process_seconds"],
            "cold_call_seconds": runs[0]["call_seconds"],
            "warm_seconds": statistics.mean(r["process_seconds"] for r in warm),
            "call_seconds": statistics.mean(r["call_seconds"] for r in warm),
            "train_seconds": train, "compile_seconds": compile_seconds,
            "flops": flops, "gflops_per_second": flops / max(train - compile_seconds, 1e-9) / 1e9, "runs": runs}


def table(rows: list[dict], rates: dict[str, float]) -> str:
    lines = ["| contender | test accuracy (mean ± std, worst) | process, cold cache (s) | process, warm (s) | "
             "train call, cold (s) | train call, warm (s) | training, warm (s) | of which compiling (s) | "
             "TFLOP per run | GFLOP/s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['contender']} | {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} % "
                     f"({100 * r['accuracy_worst']:.2f}), {len(r['seeds'])} seeds | {r['cold_seconds']:.1f} | "
                     f"{r['warm_seconds']:.1f} | {r['cold_call_seconds']:.1f} | {r['call_seconds']:.1f} | "
                     f"{r['train_seconds']:.1f} | "
                     f"{r['compile_seconds']:.1f} | "
                     f"{r['flops'] / 1e12:.3f} | {r['gflops_per_second']:.0f} |")
    peak = ", ".join(f"{label}: {rate:.0f} GFLOP/s" for label, rate in rates.items())
    return "\n".join(lines) + f"\n\nThis machine's float32 matrix products, measured in the same run: {peak}.\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["tutorial"], metavar="RECIPE",
                        help="recipes to time with `fashionlab train` (default: tutorial)")
    parser.add_argument("--keras", nargs="*", default=[], metavar="RECIPE",
                        help="recipes to train with Keras' fit (steps_per_execution=64, jit_compile) as well")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per recipe (default: 5)")
    parser.add_argument("--first-seed", type=int, default=42, help="the first seed (default: 42)")
    parser.add_argument("--out", type=Path, default=Path("runs/speedrun"),
                        help="where speedrun.json and speedrun.md go (default: runs/speedrun)")
    args = parser.parse_args(argv)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    rates = matmul_rates()
    rows = []
    with tempfile.TemporaryDirectory(prefix="fashionlab-speedrun-") as scratch:
        for recipe in args.recipes:
            cache = Path(scratch) / f"xla-{recipe}"  # empty: the first seed compiles everything
            runs = [train_once(recipe, seed, Path(scratch) / f"{recipe}-{seed}", cache) for seed in seeds]
            print(f"{recipe}: {[round(r['test_accuracy'], 4) for r in runs]}", file=sys.stderr)
            data = runs[0]["data"]
            flops = run_flops(recipes.get(recipe).config(), data["train"], data["valid"], data["test"])
            rows.append(summarize(f"fashionlab train --recipe {recipe}", recipe, runs, flops))
        for recipe in args.keras:
            runs = [keras_once(recipe, seed) for seed in seeds]
            config = recipes.get(recipe).config()
            data = rows[0]["runs"][0]["data"] if rows else {"train": 55000, "valid": 5000, "test": 10000}
            flops = run_flops(config, data["train"], data["valid"], data["test"])
            rows.append(summarize(f"Keras fit, steps_per_execution=64, jit_compile: {recipe}", recipe, runs, flops))
    text = table(rows, rates)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speedrun.json").write_text(json.dumps({"rows": rows, "matmul_gflops": rates,
                                                        "machine": machine_info(), "versions": library_versions(),
                                                        "command": " ".join(sys.argv)}, indent=2))
    (args.out / "speedrun.md").write_text(text)


if __name__ == "__main__":
    main()
