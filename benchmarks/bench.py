"""Side-by-side timing of the tutorial recipe (20x100 BN MLP, SGD 0.01, batch 32, validation
every epoch) on this machine, in one run: each contender in its own fresh process.

    python benchmarks/bench.py [--epochs 10] [--tf-python .venv-bench/bin/python] [--out runs/bench]

Contenders: (a) the tutorial's code on Keras 3 + TensorFlow, (b) the same on Keras 3 + JAX,
(b') the same as an informed Keras user sets it, fit with steps_per_execution=64 and jit_compile,
(c) fashionlab's library call and (c') its CLI end to end, process start included, and (d) a
minimal hand-written JAX loop. Writes bench.json and bench.md; prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fashionlab.provenance import library_versions, machine_info

HERE = Path(__file__).resolve().parent
CONTENDERS = HERE / "contenders"


def contenders(args, scratch: Path) -> list[dict]:
    python = sys.executable
    env = {**os.environ, "BENCH_EPOCHS": str(args.epochs)}
    tf_python = args.tf_python if args.tf_python and Path(args.tf_python).exists() else None
    cli = str(Path(python).parent / "fashionlab")
    return [
        {"key": "a", "name": "tutorial code, Keras 3 + TensorFlow", "python": tf_python,
         "command": [tf_python or "", str(CONTENDERS / "tutorial_keras.py")],
         "env": {**env, "KERAS_BACKEND": "tensorflow"},
         "skip": None if tf_python else f"no TensorFlow venv at {args.tf_python} (make bench creates it)"},
        {"key": "b", "name": "tutorial code, Keras 3 + JAX", "command": [python, str(CONTENDERS / "tutorial_keras.py")],
         "env": {**env, "KERAS_BACKEND": "jax"}},
        {"key": "b'", "name": "tutorial code, Keras 3 + JAX, steps_per_execution=64, jit_compile",
         "command": [python, str(CONTENDERS / "tutorial_keras.py")],
         "env": {**env, "KERAS_BACKEND": "jax", "BENCH_STEPS_PER_EXECUTION": "64"}},
        {"key": "c", "name": "fashionlab train (library call)",
         "command": [python, str(CONTENDERS / "fashionlab_library.py"), str(scratch / "lib")], "env": env},
        {"key": "c'", "name": "fashionlab train (CLI, end to end)",
         "command": [cli, "train", "--quiet", "--epochs", str(args.epochs), "--run-dir", str(scratch / "cli")],
         "env": env, "run_dir": scratch / "cli"},
        {"key": "d", "name": "hand-written JAX loop (reference)",
         "command": [python, str(CONTENDERS / "jax_reference.py")], "env": env},
    ]


def measure(contender: dict, timeout: float) -> dict:
    if contender.get("skip"):
        return {"status": "skipped", "reason": contender["skip"]}
    # The contender runs as the only child of a small launcher, whose RUSAGE_CHILDREN is then
    # exactly the contender's peak RSS.
    launcher = [sys.executable, __file__, "--measure-one", json.dumps(contender["command"])]
    try:
        completed = subprocess.run(launcher, env=contender["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s"}
    code, output = completed.returncode, completed.stdout
    lines = [line for line in output.splitlines() if line.startswith(("RESULT ", "MEASURED "))]
    if code != 0 or not any(line.startswith("MEASURED ") for line in lines):
        tail = " | ".join(output.strip().splitlines()[-3:])
        return {"status": "failed", "reason": f"exit {code}: {tail[:300]}"}
    measured = json.loads(next(line for line in lines if line.startswith("MEASURED "))[9:])
    if "run_dir" in contender:  # the CLI is timed from outside: its epochs come from metrics.json
        metrics = json.loads((Path(contender["run_dir"]) / "metrics.json").read_text())
        result = {"epoch_seconds": metrics["seconds_per_epoch"], "test_accuracy": metrics["test_accuracy"],
                  "train_seconds": None}
    else:
        result = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    seconds = result["epoch_seconds"]
    return {"status": "ok", "first_epoch_s": seconds[0],
            "steady_epoch_s": statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0],
            "train_s": result["train_seconds"], "process_s": measured["wall"], "test_accuracy": result["test_accuracy"],
            "peak_rss_mb": measured["peak_rss_mb"], "epochs": len(seconds)}


def measure_one(command: list[str]) -> None:
    """Run one contender as this process's only child and report its wall time and peak RSS."""
    import resource

    started = time.perf_counter()
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - started
    sys.stdout.write(completed.stdout)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print("MEASURED " + json.dumps({"wall": wall, "peak_rss_mb": peak}))
    sys.exit(completed.returncode)


def machine() -> dict:
    """The machine and versions, without importing JAX here: the contenders need the accelerator."""
    gpu = None
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                               text=True)
        gpu = query.stdout.strip() or None
    info = machine_info(with_device=False)
    return {"cpu": info["cpu"], "cores": info["cores"], "gpu": gpu, "platform": info["platform"],
            "python": platform.python_version(), "versions": library_versions()}


def markdown(results: dict, info: dict, epochs: int) -> str:
    base = results.get("a", {})
    lines = [f"Tutorial recipe, {epochs} epochs with validation. Machine: {info['cpu']}, {info['cores']} cores"
             + (f", GPU {info['gpu']}" if info["gpu"] else ", no GPU") + ".", "",
             "| contender | first epoch (s) | steady s/epoch | training (s) | process (s) | test acc | peak RSS (MB) "
             "| training speed-up vs (a) | process speed-up vs (a) |", "|---|---|---|---|---|---|---|---|---|"]

    def ratio(key: str, r: dict) -> str:
        ok = base.get("status") == "ok" and r.get(key)
        return f"{base[key] / r[key]:.2f}x" if ok else "–"

    for key, r in results.items():
        if r["status"] != "ok":
            lines.append(f"| ({key}) {r['name']} | {r['status']}: {r['reason']} | | | | | | | |")
            continue
        training = f"{r['train_s']:.1f}" if r["train_s"] else "–"
        lines.append(f"| ({key}) {r['name']} | {r['first_epoch_s']:.2f} | {r['steady_epoch_s']:.2f} | "
                     f"{training} | {r['process_s']:.1f} | {r['test_accuracy']:.4f} | {r['peak_rss_mb']:.0f} | "
                     f"{ratio('train_s', r)} | {ratio('process_s', r)} |")
    lines += ["", "first epoch: compilation included. steady: median of epochs 2..N. training: inside the process, "
              "from the start of preprocessing (for (c), the `train()` call) to the end of the last epoch; (c) "
              "also includes loading the data and writing every artifact. process: the whole command from "
              "outside, interpreter start, imports and data loading included. Peak RSS: the contender "
              "process's maximum resident memory."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--tf-python", default=".venv-bench/bin/python",
                        help="Python of a venv with tensorflow-cpu and scikit-learn, for contender (a)")
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--only", nargs="+", help="contender keys to run, e.g. a b")
    parser.add_argument("--timeout", type=float, default=1200)
    parser.add_argument("--measure-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure_one:
        measure_one(json.loads(args.measure_one))
        return
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, GPU: {info['gpu'] or 'none'}; {info['versions']}")
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for contender in contenders(args, Path(scratch)):
            if args.only and contender["key"] not in args.only:
                continue
            print(f"({contender['key']}) {contender['name']} ...", flush=True)
            results[contender["key"]] = {"name": contender["name"], **measure(contender, args.timeout)}
            print(f"    {json.dumps(results[contender['key']])}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown(results, info, args.epochs)
    (out / "bench.json").write_text(json.dumps({"machine": info, "epochs": args.epochs, "results": results},
                                               indent=2) + "\n")
    (out / "bench.md").write_text(table)
    print()
    print(table)
    print(f"written: {out / 'bench.json'}, {out / 'bench.md'}")


if __name__ == "__main__":
    main()
