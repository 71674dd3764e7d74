"""How well a trained model classifies photo-like image files made from the test set, kind by kind.

    .venv/bin/python benchmarks/photos.py RUN [--count 300] [--seed 0] [--random] [--out DIR] [--keep]
                                              [--json FILE] [--classes]

Each of the first COUNT test images (or COUNT picked at random with --random) is drawn once per kind
below as an image file, the way a user might photograph or download a garment; every file then goes
through fashionlab.images.read_image_file and prediction.predict_arrays, as `fashionlab predict FILE...`
does (the garment told from its background, straightened, trimmed, padded to 28x28; turned upright and
tried mirrored too; no class when no garment is found), with the
run's model, loaded once. The "direct" row is the
same test images given to the model as the raw uint8 arrays, for reference. The garment's
Fashion-MNIST intensity is used as its alpha (shading): pixel = background*(1-a) + colour*a.

  exact             the 28x28 test image as a grayscale PNG, unchanged
  catalogue         a dark or coloured garment on a white or near-white background, ~300 px, JPEG
  colour-on-colour  a saturated garment on a background of another hue but a gray level within 30
                    of the garment's, so that no gray-level threshold separates them; ~300 px, JPEG
  textured          a light or coloured garment on a gradient with grain, stripes or wood-like
                    bands; ~300 px, JPEG
  padded            the garment 3x (84 px), off-centre on a plain 400x300 background, JPEG
  mirrored          flipped left-right (shoes point right), otherwise like catalogue
  rotated           turned 90 degrees either way, otherwise like catalogue
  tilted            turned 8 to 20 degrees either way, otherwise like catalogue
  inverted          the 28x28 test image inverted (255 - x: a dark garment on white), as a PNG
  noise             no garment at all: random pixels (gray or coloured, 28x28 PNG or ~300 px JPEG) or
                    a textured surface like textured's with nothing on it; the right answer is
                    "no garment found", and its accuracy column is that rate

Every image is drawn with a generator seeded by (--seed, test index, kind), so the set is the same
on every run. Files go to --out DIR, else to a temporary folder removed at the end (--keep keeps it).
"""

from __future__ import annotations

import argparse
import colorsys
import json
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import fashionlab  # noqa: F401  (before keras: it picks the JAX backend)
from fashionlab import CLASS_NAMES
from fashionlab.data import DataSource, load_file
from fashionlab.datasets import FASHION_MNIST
from fashionlab.images import read_image_file
from fashionlab.prediction import predict_arrays
from fashionlab.rundir import Run

JPEG_QUALITY = 85
Draw = Callable[[np.ndarray, np.random.Generator], Image.Image]


def gray_level(rgb: np.ndarray) -> float:
    """The gray level Pillow's convert("L") gives this colour (ITU-R 601-2 luma)."""
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def random_colour(rng: np.random.Generator, saturation: tuple[float, float], value: tuple[float, float],
                  gray: tuple[float, float] = (0, 255), hue: float | None = None) -> np.ndarray:
    """An RGB colour (0..255 floats) of random hue whose gray level lies in `gray`; with `hue`, one at
    least a quarter turn of the colour wheel away from it."""
    while True:
        h = rng.random()
        if hue is not None and min(abs(h - hue), 1 - abs(h - hue)) < 0.25:
            continue
        rgb = 255 * np.array(colorsys.hsv_to_rgb(h, rng.uniform(*saturation), rng.uniform(*value)))
        if gray[0] <= gray_level(rgb) <= gray[1]:
            return rgb


def hue_of(rgb: np.ndarray) -> float:
    return colorsys.rgb_to_hsv(*(rgb / 255))[0]


def scaled_alpha(pixels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """The garment's intensity as an alpha in 0..1, upscaled from 28 px to `size` px."""
    method = Image.Resampling.LANCZOS if rng.random() < 0.5 else Image.Resampling.BICUBIC
    big = Image.fromarray(pixels, mode="L").resize((size, size), method)
    return np.asarray(big, dtype=np.float64)[..., None] / 255


def compose(background: np.ndarray, colour: np.ndarray, alpha: np.ndarray, top: int, left: int,
            rng: np.random.Generator) -> Image.Image:
    """The garment (alpha, in `colour`) laid on `background` (H, W, 3) at (top, left), with sensor grain."""
    canvas = background.astype(np.float64).copy()
    height, width = alpha.shape[:2]
    patch = canvas[top:top + height, left:left + width]
    canvas[top:top + height, left:left + width] = patch * (1 - alpha) + colour * alpha
    canvas += rng.normal(0, rng.uniform(1, 3), canvas.shape)
    return Image.fromarray(np.clip(canvas + 0.5, 0, 255).astype(np.uint8), mode="RGB")


def place(rng: np.random.Generator, smallest: int = 200, largest: int = 300) -> tuple[int, int, int, int, int]:
    """A garment size and a canvas (height, width) up to 400 px around it, and where the garment goes."""
    size = int(rng.integers(smallest, largest + 1))
    height, width = size + int(rng.integers(20, 101)), size + int(rng.integers(20, 101))
    top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    return size, height, width, top, left


def plain(height: int, width: int, colour: np.ndarray) -> np.ndarray:
    return np.broadcast_to(colour, (height, width, 3))


def exact(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(pixels, mode="L")


def catalogue(pixels: np.ndarray, rng: np.random.Generator, degrees: float = 0.0) -> Image.Image:
    """A dark or coloured garment on near-white; with `degrees`, turned that much anticlockwise."""
    size, height, width, top, left = place(rng)
    if rng.random() < 0.4:  # black, navy, charcoal...
        colour = random_colour(rng, (0.0, 0.4), (0.05, 0.4))
    else:
        colour = random_colour(rng, (0.5, 1.0), (0.3, 0.9), gray=(0, 140))
    alpha = scaled_alpha(pixels, size, rng)
    if degrees:  # the turned garment's box is larger: the canvas grows around it
        turned = Image.fromarray(alpha[..., 0].astype(np.float32), mode="F")
        alpha = np.asarray(turned.rotate(degrees, Image.Resampling.BICUBIC, expand=True), dtype=np.float64)
        alpha = np.clip(alpha, 0, 1)[..., None]
        height, width = height - size + alpha.shape[0], width - size + alpha.shape[1]
        top, left = min(top, height - alpha.shape[0]), min(left, width - alpha.shape[1])
    background = plain(height, width, np.full(3, rng.uniform(238, 255)))
    return compose(background, colour, alpha, top, left, rng)


def colour_on_colour(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    size, height, width, top, left = place(rng)
    colour = random_colour(rng, (0.7, 1.0), (0.6, 1.0))
    near = gray_level(colour)
    ground = random_colour(rng, (0.6, 1.0), (0.4, 1.0), gray=(near - 30, near + 30), hue=hue_of(colour))
    return compose(plain(height, width, ground), colour, scaled_alpha(pixels, size, rng), top, left, rng)


def texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A gradient between two colours, with blotches and one of grain, stripes or wood-like bands."""
    first = random_colour(rng, (0.0, 0.6), (0.2, 0.9))
    second = random_colour(rng, (0.0, 0.6), (0.2, 0.9))
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0:height, 0:width]
    along = x * np.cos(angle) + y * np.sin(angle)
    t = ((along - along.min()) / np.ptp(along))[..., None]
    surface = first * (1 - t) + second * t
    blotches = np.asarray(Image.fromarray(rng.normal(0, 1, (6, 6)).astype(np.float32), mode="F")
                          .resize((width, height), Image.Resampling.BICUBIC))
    surface += 12 * blotches[..., None]
    pattern = rng.integers(3)
    if pattern == 1:  # stripes
        period = rng.uniform(12, 40)
        surface += rng.uniform(15, 30) * np.sign(np.sin(2 * np.pi * along / period))[..., None]
    elif pattern == 2:  # wood: bands bent by the blotches, along one axis
        period = rng.uniform(8, 20)
        bands = np.sin(2 * np.pi * (y / period + 0.6 * blotches))
        surface *= (1 + 0.15 * bands)[..., None]
    surface += rng.normal(0, 6, surface.shape)  # grain
    return np.clip(surface, 0, 255)


def textured(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    size, height, width, top, left = place(rng)
    if rng.random() < 0.5:
        colour = np.full(3, rng.uniform(215, 255))
    else:
        colour = random_colour(rng, (0.5, 1.0), (0.5, 1.0))
    return compose(texture(height, width, rng), colour, scaled_alpha(pixels, size, rng), top, left, rng)


def padded(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    height, width, size = 300, 400, 84
    top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
    background = plain(height, width, random_colour(rng, (0.0, 0.2), (0.85, 1.0)))
    colour = random_colour(rng, (0.0, 1.0), (0.1, 0.8), gray=(0, 120))
    return compose(background, colour, scaled_alpha(pixels, size, rng), top, left, rng)


def mirrored(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return catalogue(np.ascontiguousarray(pixels[:, ::-1]), rng)


def rotated(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return catalogue(np.ascontiguousarray(np.rot90(pixels, 1 if rng.random() < 0.5 else -1)), rng)


def tilted(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return catalogue(pixels, rng, degrees=float(rng.uniform(8, 20) * rng.choice([-1, 1])))


def inverted(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(255 - pixels, mode="L")


def noise(pixels: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """No garment: random pixels, gray or coloured, 28 x 28 or larger; or a bare textured surface."""
    pick = rng.integers(4)
    if pick == 3:
        return Image.fromarray(texture(*place(rng)[1:3], rng).astype(np.uint8), mode="RGB")
    side = 28 if pick == 0 else int(rng.integers(200, 401))
    shape = (side, side) if pick < 2 else (side, side, 3)
    if rng.random() < 0.5:
        values = rng.integers(0, 256, shape)
    else:
        values = rng.normal(rng.uniform(60, 200), rng.uniform(20, 70), shape)
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L" if pick < 2 else "RGB")


KINDS: dict[str, Draw] = {
    "exact": exact,
    "catalogue": catalogue,
    "colour-on-colour": colour_on_colour,
    "textured": textured,
    "padded": padded,
    "mirrored": mirrored,
    "rotated": rotated,
    "tilted": tilted,
    "inverted": inverted,
    "noise": noise,
}
PNG_KINDS = ("exact", "inverted")
NO_GARMENT = ("noise",)  # kinds whose right answer is "no garment found"


def write_kind(kind: str, images: np.ndarray, indices: np.ndarray, labels: np.ndarray, seed: int,
               folder: Path) -> list[Path]:
    """One file per test image, drawn by the kind's function; PNG for PNG_KINDS and 28 x 28 images, JPEG otherwise."""
    folder.mkdir(parents=True, exist_ok=True)
    number = list(KINDS).index(kind)
    paths = []
    for index, label in zip(indices, labels):
        rng = np.random.default_rng((seed, int(index), number))
        picture = KINDS[kind](images[index], rng)
        path = folder / f"{int(index):05d}-{CLASS_NAMES[label].replace('/', '-').replace(' ', '-')}"
        if kind in PNG_KINDS or picture.size == (28, 28):
            path = path.with_suffix(".png")
            picture.save(path)
        else:
            path = path.with_suffix(".jpg")
            picture.save(path, quality=JPEG_QUALITY)
        paths.append(path)
    return paths


def score(results: list[dict[str, Any]], labels: np.ndarray, garment: bool = True) -> dict[str, Any]:
    """Accuracy (for a kind with no garment: the share answered "no garment found"), the mean top
    probability of the answers with a class, and the shares with no class and flagged not upright."""
    predicted = np.array([-1 if r["class_id"] is None else r["class_id"] for r in results])
    probability = np.array([r["probability"] for r in results if r["class_id"] is not None])
    right = predicted == labels if garment else predicted == -1
    flagged = np.array([r.get("upright") is False for r in results])
    per_class = {name: float(right[labels == c].mean()) for c, name in enumerate(CLASS_NAMES) if (labels == c).any()}
    return {"images": len(labels), "accuracy": float(right.mean()),
            "mean_probability": float(probability.mean()) if probability.size else float("nan"),
            "no_garment": float((predicted == -1).mean()), "flagged": float(flagged.mean()),
            "right_or_flagged": float((right | flagged).mean()), "per_class": per_class,
            "predicted": predicted.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory holding model.keras")
    parser.add_argument("--count", type=int, default=300, help="test images to draw (default 300)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the drawing (and --random's choice)")
    parser.add_argument("--random", action="store_true", help="pick COUNT test images at random, not the first")
    parser.add_argument("--out", type=Path, help="folder for the image files (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--classes", action="store_true", help="also print accuracy per class and kind")
    args = parser.parse_args()
    print(f"command: {shlex.join(sys.argv)}")
    print(f"run: {args.run}")

    started = time.perf_counter()
    source = DataSource().located()
    images = source.test_images()
    all_labels = load_file(source.locate(), "t10k-labels-idx1-ubyte", source.verify).astype(np.int64)
    if not 1 <= args.count <= len(images):
        parser.error(f"--count must be between 1 and {len(images)}")
    if args.random:
        indices = np.sort(np.random.default_rng(args.seed).choice(len(images), args.count, replace=False))
    else:
        indices = np.arange(args.count)
    labels = all_labels[indices]
    print(f"count: {args.count} test images ({'random, seed ' + str(args.seed) if args.random else 'the first'}), "
          f"{len(KINDS)} kinds, drawing seed {args.seed}")

    model = Run.open(args.run).load_model()
    direct = predict_arrays(model, images[indices], [str(i) for i in indices], FASHION_MNIST, 1)
    figures = {"direct": score(direct, labels)}
    temporary = None if args.out else tempfile.TemporaryDirectory(prefix="fashionlab-photos-")
    out = args.out or Path(temporary.name)
    drawing = classifying = 0.0
    try:
        for kind in KINDS:
            mark = time.perf_counter()
            paths = write_kind(kind, images, indices, labels, args.seed, out / kind)
            drawing += time.perf_counter() - mark
            mark = time.perf_counter()
            prepared = [read_image_file(path) for path in paths]  # what `fashionlab predict FILE...` does
            pixels, mirror = np.stack([p.pixels for p in prepared]), [not p.as_is for p in prepared]
            results = predict_arrays(model, pixels, [str(p) for p in paths], FASHION_MNIST, 1, mirror,
                                     [p.missing for p in prepared])
            figures[kind] = score(results, labels, garment=kind not in NO_GARMENT)
            classifying += time.perf_counter() - mark
    finally:
        if temporary is not None and not args.keep:
            temporary.cleanup()
    if args.out or args.keep:
        print(f"image files: {out}")

    direct = figures["direct"]["accuracy"]
    print(f"\n{'kind':<18}{'images':>7}{'accuracy':>10}{'mean p':>8}{'vs direct':>11}{'no garment':>12}"
          f"{'flagged':>9}{'right or flagged':>18}")
    for kind, row in figures.items():
        versus = "" if kind in NO_GARMENT else f"{row['accuracy'] - direct:+.3f}"
        print(f"{kind:<18}{row['images']:>7}{row['accuracy']:>10.3f}{row['mean_probability']:>8.3f}{versus:>11}"
              f"{row['no_garment']:>12.3f}{row['flagged']:>9.3f}{row['right_or_flagged']:>18.3f}")
    if args.classes:
        print(f"\n{'class':<12}" + "".join(f"{kind[:9]:>10}" for kind in figures))
        for name in CLASS_NAMES:
            print(f"{name:<12}" + "".join(f"{row['per_class'].get(name, float('nan')):>10.2f}"
                                          for row in figures.values()))
    wall = time.perf_counter() - started
    print(f"\n{wall:.1f} s ({drawing:.1f} s drawing files, {classifying:.1f} s loading and classifying them)")
    if args.json:  # with each image's predicted class, to compare two runs of this script image by image
        report = {"command": shlex.join(sys.argv), "run": str(args.run), "count": args.count, "seed": args.seed,
                  "random": args.random, "seconds": wall, "indices": indices.tolist(), "labels": labels.tolist(),
                  "kinds": figures}
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
