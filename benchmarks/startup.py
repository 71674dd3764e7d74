"""How long the quick commands take end to end, as a person typing them waits.

    .venv/bin/python benchmarks/startup.py RUN [--repeat 5] [--json FILE]

RUN is a finished run directory; the script exports it to a temporary ONNX file first. Each
command runs --repeat times in a fresh process (after one untimed run that fills XLA's compilation
cache, as any earlier use of fashionlab does); the table gives the median and the range, and the
same commands with the compilation cache off (FASHIONLAB_COMPILE_CACHE=off), as a first start on a
new machine sees them. Targets: --help <= 0.3 s, summary <= 2 s, predict --index 0 1 2 <= 2.5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FASHIONLAB = str(Path(sys.executable).with_name("fashionlab"))
TARGETS = {"--help": 0.3, "summary": 2.0, "predict (Keras)": 2.5}


def timed(command: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - began


def measure(command: list[str], repeat: int, cache: bool) -> list[float]:
    env = dict(os.environ)
    if not cache:
        env["FASHIONLAB_COMPILE_CACHE"] = "off"
    timed(command, env)  # untimed: fills the cache, warms the file system cache
    return [timed(command, env) for _ in range(repeat)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a finished run directory")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per command (default: 5)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    print(f"command: {shlex.join(sys.argv)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")

    with tempfile.TemporaryDirectory(prefix="fashionlab-startup-") as scratch:
        onnx = Path(scratch) / "model.onnx"
        subprocess.run([FASHIONLAB, "export", str(args.run), "--out", str(onnx)], check=True,
                       stdout=subprocess.DEVNULL)
        commands = {
            "--help": [FASHIONLAB, "--help"],
            "summary": [FASHIONLAB, "summary"],
            "predict (Keras)": [FASHIONLAB, "predict", str(args.run), "--index", "0", "1", "2"],
            "predict --onnx": [FASHIONLAB, "predict", "--onnx", str(onnx), "--index", "0", "1", "2"],
            "python -c pass": [sys.executable, "-c", "pass"],
        }
        rows = {}
        for name, command in commands.items():
            warm = measure(command, args.repeat, cache=True)
            cold = measure(command, max(1, args.repeat // 2), cache=False)
            rows[name] = {"median": statistics.median(warm), "min": min(warm), "max": max(warm),
                          "cache_off_median": statistics.median(cold), "command": shlex.join(command)}

    print(f"\n{'command':<18}{'median s':>10}{'range s':>14}{'cache off s':>13}   target")
    for name, row in rows.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"<= {target} s: {'met' if row['median'] <= target else 'missed'}"
        print(f"{name:<18}{row['median']:>10.2f}{row['min']:>8.2f}-{row['max']:<5.2f}"
              f"{row['cache_off_median']:>13.2f}   {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"command": shlex.join(sys.argv), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
