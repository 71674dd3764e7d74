"""The page of `fashionlab serve`: page.html with its script page.js inline and the served model's
state as JSON in it, nothing fetched from anywhere else; and the gallery of test images it offers.

    page, script_hash = serve_page({"model": info, "gallery": gallery(DataSource(), dataset), "top_k": 3})
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from importlib import resources
from typing import Any

import numpy as np

from fashionlab.data import DataSource, load_file
from fashionlab.datasets import Dataset
from fashionlab.errors import FashionlabError
from fashionlab.images import png_bytes

GALLERY_PER_CLASS = 2
GALLERY_IMAGES = 20  # at most: a data set of many classes shows its first classes


def serve_page(state: dict[str, Any]) -> tuple[str, str]:
    """The page (page.html, its script page.js inline, `state` as JSON in it) and the script's
    digest for the Content-Security-Policy: nothing is fetched from anywhere else."""
    here = resources.files("fashionlab.serve")
    template = (here / "page.html").read_text(encoding="utf-8")
    script = (here / "page.js").read_text(encoding="utf-8")
    data = json.dumps(state).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    title = html.escape(str(state["model"]["name"]))
    values = {"TITLE": title, "STATE": data, "SCRIPT": script}  # in one pass: a value may hold "__SCRIPT__"
    page = re.sub(r"__(TITLE|STATE|SCRIPT)__", lambda found: values[found[1]], template)
    return page, "sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()


def gallery(data: DataSource, dataset: Dataset, per_class: int = GALLERY_PER_CLASS,
            seed: int = 0) -> list[dict[str, Any]]:
    """`dataset`'s test images to try, `per_class` of each class (at most GALLERY_IMAGES), with their
    true labels; [] without its files."""
    try:
        source = data.of(dataset).located()
        images = source.test_images()
        labels = load_file(source.locate(), "t10k-labels-idx1-ubyte", source.verify, dataset)
    except FashionlabError:
        return []
    order = np.random.default_rng(seed).permutation(len(images))
    chosen: list[int] = []
    for label in range(dataset.classes):
        chosen += [int(i) for i in order[labels[order] == label][:per_class]][:GALLERY_IMAGES - len(chosen)]
    return [{"index": i, "label": dataset.class_names[int(labels[i])], "png": data_url(png_bytes(images[i]))}
            for i in sorted(chosen)]


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
