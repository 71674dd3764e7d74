"""What the tests share: tiny synthetic IDX datasets and configs, and readers for produced
files (PNG checks, an HTML parser for reports)."""

from __future__ import annotations

import base64
import gzip
import io
import json
import shutil
import struct
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
from PIL import Image

from fashionlab import data
from fashionlab.config import TrainConfig

TINY = TrainConfig(name="tiny", depth=2, width=16, epochs=2, batch_size=32, validation_size=60, seed=7)


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file's bytes for uint8 images (N, 28, 28) or labels (N,)."""
    if magic is None:
        magic = data.IMAGE_MAGIC if array.ndim == 3 else data.LABEL_MAGIC
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def synthetic_arrays(n_train: int = 360, n_test: int = 100, seed: int = 0) -> dict[str, np.ndarray]:
    """Learnable fake garments: each class is a bright bar at its own rows, plus noise."""
    rng = np.random.default_rng(seed)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images = rng.integers(0, 40, size=(n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 220
        return images.astype(np.uint8), labels.astype(np.uint8)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    return {"train-images-idx3-ubyte": x_train, "train-labels-idx1-ubyte": y_train,
            "t10k-images-idx3-ubyte": x_test, "t10k-labels-idx1-ubyte": y_test}


def write_dataset(directory: Path, arrays: dict[str, np.ndarray] | None = None, compress: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in (arrays or synthetic_arrays()).items():
        content = idx_bytes(array)
        if compress:
            (directory / f"{name}.gz").write_bytes(gzip.compress(content))
        else:
            (directory / name).write_bytes(content)
    return directory


SEVEN_NAMES = ("zero", "one", "two", "three", "four", "five", "six")


def write_seven_class_dataset(directory: Path, names: tuple[str, ...] = SEVEN_NAMES) -> Path:
    """A data set of your own: the synthetic images with 7 classes (labels modulo 7), named in classes.txt."""
    write_dataset(directory, {k: v % 7 if "labels" in k else v for k, v in synthetic_arrays().items()})
    (directory / "classes.txt").write_text("\n".join(names))
    return directory


def replace_file(directory: Path, filename: str, content: bytes) -> None:
    """Swap one of the four files, .gz or plain, for `filename` holding exactly `content`."""
    for old in directory.glob(f"{filename.removesuffix('.gz')}*"):
        old.unlink()
    (directory / filename).write_bytes(content)


def assert_png(source: Path | bytes, min_width: int = 300, min_height: int = 200) -> None:
    """A valid PNG of a sensible size, decoded in full."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(stream) as image:
        assert image.format == "PNG"
        image.load()
        assert image.size[0] >= min_width and image.size[1] >= min_height, image.size


class Page(HTMLParser):
    """Images, links, tables (as lists of rows of cell texts) and headings of an HTML page."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.headings: list[str] = []
        self.external: list[str] = []
        self._cell: list[str] | None = None
        self._heading: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        elif tag == "a" and "href" in attrs:
            self.links.append(attrs["href"])
        for key in ("href", "src"):
            if attrs.get(key, "").startswith(("http:", "https:", "//")):
                self.external.append(attrs[key])
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("h1", "h2"):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag in ("h1", "h2") and self._heading is not None:
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._heading is not None:
            self._heading.append(data)


def assert_self_contained(path: Path) -> Page:
    """Every image embedded as a decodable PNG, every table filled, nothing fetched from outside."""
    page = Page(path.read_text(encoding="utf-8"))
    assert page.images, "no images"
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        assert_png(base64.b64decode(src.split(",", 1)[1]), min_width=100, min_height=50)
    assert not page.external
    assert page.tables
    for table in page.tables:
        body = [row for row in table if row]
        assert len(body) >= 2, "a table without data rows"
        assert all(any(cell for cell in row) for row in body)
    return page


# Elements whose right or left edge leaves the viewport. Inside a box that scrolls sideways
# (a wide table's) only the box itself must fit: scrolling there is the design.
OUTSIDE = """() => {
  const width = window.innerWidth, found = [];
  const scrolls = (e) => ["auto", "scroll"].includes(getComputedStyle(e).overflowX);
  for (const e of document.body.querySelectorAll("*")) {
    let boxed = false;
    for (let p = e.parentElement; p && p !== document.body; p = p.parentElement) boxed ||= scrolls(p);
    const r = e.getBoundingClientRect();
    if (!boxed && r.width > 0 && (r.right > width + 0.5 || r.left < -0.5))
      found.push(`${e.tagName.toLowerCase()}.${e.className}: ${Math.round(r.left)}..${Math.round(r.right)}`);
  }
  return found;
}"""
BROKEN_IMAGES = "() => [...document.images].filter((i) => !i.complete || i.naturalWidth === 0).length"


# --- ONNX files an attacker could write: each a graph taking `pixels` and giving `probabilities` --

def onnx_model(nodes: list, initializers: list = (), *, output_shape: tuple = ("batch", 10), opsets: dict | None = None,
               **model_fields):
    """A model of `nodes` from `pixels` float32 (batch, 28, 28) to `probabilities` float32 (`output_shape`)."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "hostile", [helper.make_tensor_value_info("pixels", TensorProto.FLOAT,
                                                                               ["batch", 28, 28])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, list(output_shape))],
                              list(initializers))
    imports = [helper.make_opsetid(domain, version) for domain, version in (opsets or {"": 17}).items()]
    return helper.make_model(graph, opset_imports=imports, **model_fields)


def onnx_probabilities(extra: str | None = None, classes: int = 10) -> tuple[list, list]:
    """Nodes and initializers that turn `pixels` into valid probabilities (batch, classes), adding the
    scalar `extra` (a value computed elsewhere in the graph) so that its computation must run."""
    from onnx import helper, numpy_helper

    consts = [numpy_helper.from_array(np.array([0], np.int64), "zero"),
              numpy_helper.from_array(np.array([classes], np.int64), "ten"),
              numpy_helper.from_array(np.array([1], np.int64), "one"),
              numpy_helper.from_array(np.array(0.001, np.float32), "small")]
    nodes = [helper.make_node("Flatten", ["pixels"], ["flat"]),
             helper.make_node("Slice", ["flat", "zero", "ten", "one"], ["ten_pixels"]),
             helper.make_node("Mul", ["ten_pixels", "small"], ["logits"])]
    if extra is not None:
        nodes.append(helper.make_node("Add", ["logits", extra], ["mixed"]))
    nodes.append(helper.make_node("Softmax", ["mixed" if extra is not None else "logits"], ["probabilities"]))
    return nodes, consts


def slow_onnx(layers: int = 700):
    """A model of `layers` products of its (N, 784) pixels with a 784 x 784 matrix: within the
    bounds of what fashionlab runs (430 M multiply-adds per image), yet a tenth of a second or more
    for a few images, each product a small part of it (onnxruntime can stop between two)."""
    from onnx import helper, numpy_helper

    weights = numpy_helper.from_array(np.eye(784, dtype=np.float32), "w")
    nodes = [helper.make_node("Flatten", ["pixels"], ["m0"])]
    nodes += [helper.make_node("MatMul", [f"m{i}", "w"], [f"m{i + 1}"]) for i in range(layers)]
    nodes.append(helper.make_node("ReduceMean", [f"m{layers}"], ["total"], keepdims=0))
    tail, consts = onnx_probabilities("total")
    return onnx_model(nodes + tail, [weights, *consts])


def huge_product_onnx(side: int = 4096):
    """A model whose one operator, a (side, side) x (side, side) matrix product, would take seconds
    and cannot be stopped in the middle: 68 billion multiply-adds for side 4096."""
    from onnx import helper, numpy_helper

    shape = numpy_helper.from_array(np.array([side, side], np.int64), "square")
    nodes = [helper.make_node("ReduceMean", ["pixels"], ["mean"], keepdims=0),
             helper.make_node("Expand", ["mean", "square"], ["big"]),
             helper.make_node("MatMul", ["big", "big"], ["product"]),
             helper.make_node("ReduceMean", ["product"], ["total"], keepdims=0)]
    tail, consts = onnx_probabilities("total")
    return onnx_model(nodes + tail, [shape, *consts])


def garment(mode: str = "L", size=(56, 56), light_background: bool = False) -> Image.Image:
    """A bright rectangle on black (or the reverse), in the requested mode."""
    pixels = np.zeros(size[::-1], dtype=np.uint8)
    pixels[size[1] // 4: 3 * size[1] // 4, size[0] // 3: 2 * size[0] // 3] = 230
    if light_background:
        pixels = 255 - pixels
    return Image.fromarray(pixels, mode="L").convert(mode)


def left_right_model():
    """A Keras model that reads class 0 in an image's left half and, more strongly, class 9 (a shoe:
    Fashion-MNIST's Ankle boot) in its right half: a mirrored reading of a left-heavy image is always
    the more confident one."""
    import keras

    model = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, "softmax")])
    weights = np.zeros((28, 28, 10), np.float32)
    weights[:, :14, 0], weights[:, 14:, 9] = 0.0001, 0.0003
    model.layers[-1].set_weights([weights.reshape(784, 10), np.zeros(10, np.float32)])
    return model


def right_facing_boot() -> np.ndarray:
    """A photo of a boot facing right (its shaft on the left, its sole pointing right), as RGB pixels."""
    photo = np.full((56, 56, 3), 255, np.uint8)
    photo[8:46, 4:18] = photo[38:46, 4:44] = (90, 40, 20)
    return photo


def copy_run(tiny_run, target: Path, started: str, **status) -> Path:
    """A copy of a real trained run, its run.json saying when it started (and anything else given)."""
    shutil.copytree(tiny_run.run.path, target)
    path = target / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "started": started, **status}))
    return target
