"""Run example notebooks top to bottom in a Jupyter kernel and save them with their outputs.

    .venv/bin/python scripts/run_notebooks.py examples/tutorial.ipynb [--cwd DIR] [--quick]

Each notebook runs in DIR (default: a new temporary folder, so its run directories stay out of
the repository) and is written back in place with the outputs, progress bars collapsed to their
final state. --quick sets FASHIONLAB_QUICK=1 (one epoch on 2,000 images per run), as the tests do.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--cwd", type=Path, help="where the notebooks run (default: a temporary folder)")
    parser.add_argument("--quick", action="store_true", help="FASHIONLAB_QUICK=1")
    args = parser.parse_args()
    if args.quick:
        os.environ["FASHIONLAB_QUICK"] = "1"
    cwd = args.cwd or Path(tempfile.mkdtemp(prefix="fashionlab-notebooks-"))
    for path in args.notebooks:
        notebook = nbformat.read(path, as_version=4)
        began = time.perf_counter()
        NotebookClient(notebook, timeout=1800, kernel_name="python3", coalesce_streams=True,
                       resources={"metadata": {"path": str(cwd)}}).execute()
        nbformat.write(notebook, path)
        print(f"{path}: ran in {time.perf_counter() - began:.0f} s (in {cwd}), saved with its outputs")


if __name__ == "__main__":
    main()
