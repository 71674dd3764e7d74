"""Prediction with a saved run: test-set images by index, or your own photos.

    results = predict("runs/20260101-120000-tutorial", indices=[0, 1, 2], images=["shoe.jpg"], top_k=3)

A photo is made to look like a Fashion-MNIST image before the model sees it (`prepare_image`):
the garment is told from its background by colour, becomes light on black, is trimmed and
scaled to 28 x 28. An image already in the data set's format (28 x 28, gray, dark background)
is used as it is. Photos are also tried mirrored left to right (the data set's shoes all point
left), and the more confident reading is kept.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fashionlab.arguments import checked
from fashionlab.data import DataSource
from fashionlab.datasets import BUILT_IN, FASHION_MNIST, MAX_CLASSES, Dataset
from fashionlab.deadlines import MODEL_TIMEOUT, check_timeout
from fashionlab.errors import ConfigError, ImageError, RunError, reason
from fashionlab.files import open_regular
from fashionlab.runs import Run

# Pillow warns at 89 MP and fails at twice that; a garment photo needs far fewer, and
# checking the header first stops a decompression bomb before any pixel is decoded.
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 128 * 1024 * 1024
# The formats read, by Pillow's names: their plugins read only the header when a file is opened,
# so the pixel count is known before any pixel is decoded; a multi-image file gives its first image
# (JPEG includes the multi-picture JPEGs of many phones, MPO).
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
FORMAT_NAMES = ("PNG", "JPEG", "GIF", "BMP", "WebP", "TIFF")
TRIM_LEVEL = 40  # of 255: fainter pixels count as background when trimming
WORKING_SIZE = 448  # a larger photo is first reduced to this many pixels on its longest side
UNIFORM_SPREAD = 8  # an image whose values span no more than this is of one colour: no garment
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # more than 8 bits per pixel
# Below this top-1 probability a result carries a hint on what photos the model reads well.
LOW_CONFIDENCE = 0.5
MIRRORED_SHARE = 0.42  # a photo whose right half holds less of the garment than this may be mirrored


def blank_hint(dataset: Dataset) -> str:
    return f"no {dataset.subject} found: the image is blank or of one colour"


def low_confidence_hint(dataset: Dataset) -> str:
    return (f"low confidence: the model knows one {dataset.subject}, upright, centred on a plain background"
            f"{', shoes pointing left' if dataset.mirror_turned else ''}; crop to the {dataset.subject} and try again")


BLANK_HINT, LOW_CONFIDENCE_HINT = blank_hint(FASHION_MNIST), low_confidence_hint(FASHION_MNIST)


class NotNumbers(Exception):
    """An image of floating-point pixels holds NaN or infinite ones."""


@dataclass(frozen=True)
class Prepared:
    """An image as the model sees it: 28 x 28 uint8, light garment on black."""

    pixels: np.ndarray
    as_is: bool  # already in the data set's format: used unchanged, and not tried mirrored


def _flatten(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB or grayscale; transparency is composited onto white, like a page."""
    if image.mode in WIDE_MODES:  # read on the scale of the fewest bits that hold its brightest value
        array = np.asarray(image, dtype=np.float64)
        if not np.isfinite(array).all():
            raise NotNumbers()
        brightest = max(float(array.max()), 0.0)
        top = max(1.0, 2.0 ** np.ceil(np.log2(brightest + 1)) - 1)  # 0..1, 255, 4095, 65535...
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("L" if image.mode in ("L", "1") else "RGB")


def _border(pixels: np.ndarray) -> np.ndarray:
    """The outermost rows and columns of an (H, W) or (H, W, C) array, as one list of pixels."""
    return np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])


def _is_gray(image: Image.Image) -> bool:
    if image.mode == "L":
        return True
    rgb = np.asarray(image)
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _spread(image: Image.Image) -> int:
    """The largest range of values any channel takes: 0 for an image of one colour."""
    values = np.asarray(image).reshape(-1, len(image.getbands()))
    return int(np.ptp(values, axis=0).max()) if values.size else 0


def _background(pixels: np.ndarray) -> np.ndarray:
    """The background's colour at every pixel of an (H, W, C) photo, as seen on its border: a
    plane per channel (a lit backdrop darkens towards a side or a corner), fitted robustly, by
    least squares on the border pixels nearest the median fit."""
    height, width, channels = pixels.shape
    rows, cols = np.linspace(0, 1, height, dtype=np.float32), np.linspace(0, 1, width, dtype=np.float32)
    # each border pixel's (1, row, column), in _border's order: top, bottom, left, right
    border_rows = np.concatenate([np.zeros(width), np.ones(width), rows, rows])
    border_cols = np.concatenate([cols, cols, np.zeros(height), np.ones(height)])
    border_terms = np.stack([np.ones_like(border_rows), border_rows, border_cols], axis=1).astype(np.float32)
    border_pixels = _border(pixels)
    plane = np.zeros((3, channels), dtype=np.float32)
    plane[0] = np.median(border_pixels, axis=0)
    for _ in range(2):  # refit on the border pixels the last fit explains best (not the garment's)
        residual = np.abs(border_pixels - border_terms @ plane).max(axis=1)
        near = residual <= np.percentile(residual, 60)
        plane = np.linalg.lstsq(border_terms[near], border_pixels[near], rcond=None)[0]
    return (plane[0] + rows[:, None] * plane[1])[:, None, :] + (cols[:, None] * plane[2])[None, :, :]


def _garment_map(image: Image.Image) -> np.ndarray:
    """How far each pixel is from the background colour (`_background`), 0..255 as float: the
    garment light on black. Gray photos give what inverting a light background gave (255 -
    gray on white, gray itself on black); colour keeps a red shirt on a green wall apart even
    where both have the same gray level. The border's own spread (texture, noise) counts as
    background, and a faint garment is stretched to the full range, as the data set's are."""
    pixels = np.asarray(image, dtype=np.float32)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    difference = np.abs(pixels - _background(pixels))
    distance = difference[..., 0]
    for channel in range(1, difference.shape[2]):  # the largest difference of any channel
        np.maximum(distance, difference[..., channel], out=distance)
    floor = float(np.percentile(_border(distance), 95))
    garment = np.clip(distance - floor, 0, None)
    top = float(garment.max())
    if TRIM_LEVEL < top < 255:
        garment *= 255.0 / top
    return garment


def prepare_image(image: Image.Image, invert: bool | None = None) -> np.ndarray:
    """A 28x28 uint8 array made the way Fashion-MNIST was: light garment on black, trimmed to
    the garment, longest side scaled to 28, centred (the aspect ratio is kept, never stretched).

    With invert=None the garment is told from the background by colour (`_garment_map`), and a
    28 x 28 gray image on a dark background passes unchanged; True or False decides by gray
    level alone: invert it, or take it as it is.
    """
    return prepare(image, invert).pixels


def prepare(image: Image.Image, invert: bool | None = None) -> Prepared:
    """`prepare_image`, saying whether the image was already in the data set's format."""
    image = ImageOps.exif_transpose(image) or image
    flat = _flatten(image) if image.mode in WIDE_MODES else image  # Pillow scales 8-bit modes only
    if max(flat.size) > WORKING_SIZE:  # a phone's 12 MP photo becomes 28 x 28: the detail is not needed
        flat = flat.copy()
        flat.thumbnail((WORKING_SIZE, WORKING_SIZE), Image.Resampling.BOX)
    flat = _flatten(flat)
    if invert is None and flat.size == (28, 28) and _is_gray(flat):
        gray = np.asarray(flat.convert("L"))
        if _border(gray).mean() <= 127:
            return Prepared(gray.copy(), as_is=True)
    garment_map = _garment_map(flat) if invert is None else None
    if garment_map is not None and garment_map.max() <= TRIM_LEVEL and _spread(flat) <= UNIFORM_SPREAD:
        return Prepared(np.zeros((28, 28), np.uint8), as_is=False)  # one colour all over: nothing to see
    if garment_map is not None and garment_map.max() > TRIM_LEVEL:
        garment = Image.fromarray(np.clip(garment_map + 0.5, 0, 255).astype(np.uint8), mode="L")
    else:  # chosen, or nothing stands out from the border (a garment filling the frame): by gray level
        garment = flat.convert("L")
        light = _border(np.asarray(garment)).mean() > 127
        garment = ImageOps.invert(garment) if (light if invert is None else invert) else garment
    box = garment.point(lambda v: 255 if v > TRIM_LEVEL else 0).getbbox()
    if box:  # trim the background, as the data set's images were
        garment = garment.crop(box)
    boxed = ImageOps.pad(garment, (28, 28), method=Image.Resampling.LANCZOS, color=0)
    return Prepared(np.asarray(boxed, dtype=np.uint8), as_is=False)


@contextlib.contextmanager
def opened_image(source: IO[bytes], name: str) -> Iterator[Image.Image]:
    """An image file opened with its header read and checked, nothing decoded yet: one of
    IMAGE_FORMATS (whose plugins read only the header on opening) and at most MAX_IMAGE_PIXELS
    pixels. Pillow's and the decoders' errors, inside the block too, become one-line ImageErrors."""
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning (over 89 MP) would come before our refusal
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(source, formats=IMAGE_FORMATS)
        with opened as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(f"{name} is {width}x{height} pixels, over the {MAX_IMAGE_PIXELS:,} pixel "
                                 f"limit; downscale it first")
            yield image
    except (ImageError, MemoryError):  # running out of memory is not the file's damage
        raise
    except NotNumbers:
        raise ImageError(f"{name} holds pixels that are not numbers (NaN or infinite); save it as an 8-bit PNG or "
                         f"a JPEG") from None
    except Image.DecompressionBombError:  # Pillow's own check, at twice its limit, comes before ours
        raise ImageError(f"{name} is over the {MAX_IMAGE_PIXELS:,} pixel limit; downscale it first") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name} is not an image fashionlab reads ({', '.join(FORMAT_NAMES[:-1])} or "
                         f"{FORMAT_NAMES[-1]}); convert it to PNG or JPEG") from None
    except Exception as exc:  # a decoder's failure on a damaged file can be of any type
        said = reason(exc) or type(exc).__name__
        raise ImageError(f"{name} cannot be decoded ({said}); the file is damaged or truncated") from None


def image_pixels(content: bytes, name: str) -> int:
    """How many pixels an image file's header declares (checked as `opened_image` does), decoding none."""
    with opened_image(io.BytesIO(content), name) as image:
        return image.size[0] * image.size[1]


def read_image(source: IO[bytes], name: str, invert: bool | None = None) -> Prepared:
    """Decode an image file's bytes (its first frame) and prepare it; the format and the pixel
    count are checked from the header, before anything is decoded (`opened_image`)."""
    with opened_image(source, name) as image:
        image.seek(0)
        image.load()
        return prepare(image, invert)


def read_image_file(path: str | Path, invert: bool | None = None) -> Prepared:
    with open_regular(path, what="image", error=ImageError, limit=MAX_IMAGE_BYTES) as handle:
        return read_image(handle, str(path), invert)


def load_image(path: str | Path, invert: bool | None = None) -> np.ndarray:
    """Read a PNG/JPEG/GIF/... file (first frame) and prepare it for the model."""
    return read_image_file(path, invert).pixels


def png_bytes(pixels: np.ndarray) -> bytes:
    """A 28 x 28 array as a PNG file's bytes: what the model saw, to show or save."""
    out = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), mode="L").save(out, format="PNG")
    return out.getvalue()


def top_k(proba: np.ndarray, k: int, class_names: Sequence[str]) -> list[dict[str, Any]]:
    order = np.argsort(-proba, kind="stable")[:k]
    return [{"class_id": int(i), "class_name": class_names[i], "probability": float(proba[i])} for i in order]


def facing_right(pixels: np.ndarray) -> np.ndarray:
    """Which images look turned the other way: the data set's shoes all point left, so their
    right half holds more of the garment (63-72 % on average, under 42 % in 1 test image of
    1,000); other garments are about even."""
    pixels = np.asarray(pixels, dtype=np.float64)
    right, total = pixels[:, :, 14:].sum(axis=(1, 2)), pixels.sum(axis=(1, 2))
    return right < MIRRORED_SHARE * np.maximum(total, 1)


def read_probabilities(model, pixels: np.ndarray, mirror: Sequence[bool] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Each image's class probabilities, and whether they come from its mirror image: an image
    flagged in `mirror` that looks turned the other way (`facing_right`) is also read flipped left
    to right, and the more confident reading kept."""
    from fashionlab.evaluation import predict_proba

    flags = np.zeros(len(pixels), dtype=bool)
    flags[:len(mirror)] = mirror
    flags &= facing_right(pixels)
    batch = np.concatenate([pixels, pixels[flags][:, :, ::-1]])
    proba = predict_proba(model, batch)
    if not np.isfinite(proba).all():
        raise RunError("the model gives probabilities that are not numbers (NaN or infinite); it is damaged, "
                       "train or export it again")
    proba, flipped = proba[:len(pixels)].copy(), proba[len(pixels):]
    mirrored = np.zeros(len(pixels), dtype=bool)
    where = np.flatnonzero(flags)
    better = flipped.max(axis=1) > proba[where].max(axis=1)
    proba[where[better]] = flipped[better]
    mirrored[where[better]] = True
    return proba, mirrored


def results_of(proba: np.ndarray, labels: Sequence[str], dataset: Dataset, k: int, mirrored: Sequence[bool] = (),
               pixels: np.ndarray | None = None) -> list[dict[str, Any]]:
    """One result per image: the best class of `dataset`'s, its probability, the top k, and notes:
    read mirrored; a hint when the model is unsure, or when `pixels` (what it saw) hold nothing."""
    results = []
    for i, (label, row) in enumerate(zip(labels, proba)):
        best = top_k(row, k, dataset.class_names)
        result = {"input": label, "class_id": best[0]["class_id"], "class_name": best[0]["class_name"],
                  "probability": best[0]["probability"], "top_k": best}
        if i < len(mirrored) and mirrored[i]:
            result["mirrored"] = True
        if pixels is not None and pixels[i].max() <= TRIM_LEVEL:
            result["hint"] = blank_hint(dataset)
        elif best[0]["probability"] < LOW_CONFIDENCE:
            result["hint"] = low_confidence_hint(dataset)
        results.append(result)
    return results


def predict_arrays(model, pixels: np.ndarray, labels: Sequence[str], dataset: Dataset, k: int = 3,
                   mirror: Sequence[bool] = ()) -> list[dict[str, Any]]:
    """One result per image: the best class of `dataset`'s, its probability, and the top k (`read_probabilities`)."""
    proba, mirrored = read_probabilities(model, pixels, mirror)
    return results_of(proba, labels, dataset, k, mirrored, pixels)


@checked(top_k=(1, MAX_CLASSES))
def predict(run_dir: str | Path | None = None, *, indices: Sequence[int] = (), images: Sequence[str | Path] = (),
            top_k: int = 3, invert: bool | None = None, data: DataSource = DataSource(),
            allow_incomplete: bool = False, onnx: str | Path | None = None,
            model_timeout: float = MODEL_TIMEOUT) -> list[dict[str, Any]]:
    """Predict test images (by index) and image files with a run's saved model, or with an
    exported ONNX file (`onnx`, run by onnxruntime alone; then no `run_dir`; each of its calls is
    stopped after `model_timeout` seconds).

    `invert` None tells garment from background by colour; `data` is read only for `indices`.
    """
    if (run_dir is None) == (onnx is None):
        raise ConfigError("give a run directory or `onnx`, one of the two", terms=["onnx"])
    check_timeout(model_timeout)
    if onnx is not None:
        from fashionlab.onnxrun import OnnxModel

        model = OnnxModel(onnx, timeout=model_timeout)
        dataset = model.dataset()
        if indices and dataset.name not in BUILT_IN and data.data_dir is None:
            raise ConfigError(f"{onnx} was trained on a data set that is not built in: give `data_dir`, the folder "
                              f"of its test files, to predict by index", terms=["data_dir"])
    else:
        run = Run.open(run_dir, allow_incomplete=allow_incomplete)
        dataset = run.dataset()
    if top_k > dataset.classes:
        raise ConfigError(f"`top_k` must be between 1 and {dataset.classes}, got {top_k}", terms=["top_k"])
    arrays, labels, mirror = [], [], []
    if indices:
        x_test = data.of(dataset).test_images()
        for index in indices:
            if not 0 <= index < len(x_test):
                raise ConfigError(f"`indices` {index} is outside the test set (0..{len(x_test) - 1})",
                                  terms=["indices"])
            arrays.append(x_test[index])
            labels.append(f"test[{index}]")
            mirror.append(False)
    for path in images:
        prepared = read_image_file(path, invert)
        arrays.append(prepared.pixels)
        labels.append(str(path))
        mirror.append(dataset.mirror_turned and not prepared.as_is)
    if not arrays:
        raise ConfigError("nothing to predict: give `indices` and/or image files", terms=["indices"])
    if onnx is None:
        model = run.load_model()
    return predict_arrays(model, np.stack(arrays), labels, dataset, top_k, mirror)
