"""Fit the orientation check (fashionlab.orientation) on a built-in data set's training images and
write it into the package, where prediction reads it.

    .venv/bin/python scripts/fit_orientation.py [fashion-mnist]
"""

from __future__ import annotations

import sys

import numpy as np

from fashionlab.data import DataSource, load_file
from fashionlab.datasets import BUILT_IN
from fashionlab.orientation import FITTED_ON, fit, weights_path


def main() -> None:
    dataset = BUILT_IN[sys.argv[1] if len(sys.argv) > 1 else "fashion-mnist"]
    source = DataSource().of(dataset).located()
    images = load_file(source.locate(), "train-images-idx3-ubyte", source.verify)[:FITTED_ON]
    np.save(weights_path(dataset.name), fit(images))
    print(f"wrote {weights_path(dataset.name)}")


if __name__ == "__main__":
    main()
