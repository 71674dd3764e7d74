"""Images made to look like the data set's before a model sees them: a photo's subject is told from
its background by colour, becomes light on black, is trimmed and scaled to 28 x 28; an image already
in the data set's format (28 x 28, gray, dark background) is used as it is. Every image is bounded
before any pixel is decoded (`opened_image`: a format from a list, the pixel count from the header).

    prepared = read_image_file("shoe.jpg")   # Prepared(pixels (28, 28) uint8, as_is False)
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fashionlab.errors import ImageError, reason
from fashionlab.files import open_regular

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
# What every one of the data set's 70,000 images has, and noise or a bare texture lacks (`shapeless`):
# a background, its dark pixels (<= TRIM_LEVEL) mostly joined to the frame's edge (at least 33 % of them
# in every image; 10 % in pure noise, median); few pixels unlike all four neighbours, light in dark or
# dark in light (at most 5 % in all but 10 of the 70,000; 6 % in noise, median); one light shape of at
# least 7 pixels (1 % of the frame in every image).
# The data set's garments are trimmed to a box they fill upright: a photo's garment whose box shrinks by
# more than STRAIGHTEN_GAIN when turned by up to MAX_TILT degrees is straightened (`tilt`). Upright
# test images shrink by at most 1.1 % in 9 of 10 and by 5 % in 1.8 %; tilted 8-20 degrees, 90 % shrink
# by more, and are then straightened to within 3 degrees in 92 %.
MAX_TILT = 25
STRAIGHTEN_GAIN = 1.05
MIN_BACKGROUND_JOINED = 0.3
MAX_SPECKLE = 0.05
MIN_SHAPE = 0.008
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # more than 8 bits per pixel


class NotNumbers(Exception):
    """An image of floating-point pixels holds NaN or infinite ones."""


@dataclass(frozen=True)
class Prepared:
    """An image as the model sees it: 28 x 28 uint8, light garment on black."""

    pixels: np.ndarray
    as_is: bool  # already in the data set's format (or its inverse): used unchanged, not tried mirrored or turned
    missing: str | None = None  # why no garment was found: "blank" (of one colour), "shapeless" (noise, texture)


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


def shapeless(pixels: np.ndarray) -> bool:
    """Whether a 28 x 28 image lacks what every data-set image has (see MIN_BACKGROUND_JOINED):
    a dark background joined to the frame's edge, little speckle, and one light shape."""
    from scipy import ndimage  # a dependency of JAX's; imported here, as it is needed

    light = np.asarray(pixels) > TRIM_LEVEL
    shapes, count = ndimage.label(light, structure=np.ones((3, 3)))
    if not count or np.bincount(shapes.ravel())[1:].max() < MIN_SHAPE * light.size:
        return True
    around = np.pad(~light, 1, constant_values=True)  # a dark frame joins every edge's dark pixels
    regions = ndimage.label(around)[0]
    joined = (regions == regions[0, 0]).sum() - (around.size - light.size)
    if joined < MIN_BACKGROUND_JOINED * max(int((~light).sum()), 1):
        return True
    padded = np.pad(light, 1, mode="edge")
    alike = np.zeros_like(light)
    for rows, cols in ((slice(None, -2), slice(1, -1)), (slice(2, None), slice(1, -1)),
                       (slice(1, -1), slice(None, -2)), (slice(1, -1), slice(2, None))):
        alike |= padded[rows, cols] == light
    return bool((~alike).mean() > MAX_SPECKLE)


def tilt(mask: np.ndarray) -> float:
    """How many degrees anticlockwise (within MAX_TILT) a mask's pixels look turned: turning them back
    by it shrinks the box around them most, and by more than STRAIGHTEN_GAIN; else 0."""
    rows, cols = np.nonzero(mask)
    step = len(rows) // 4000 + 1  # a few thousand pixels place the box well enough
    rows, cols = rows[::step], cols[::step]
    if len(rows) < 2:
        return 0.0
    degrees = np.arange(-MAX_TILT, MAX_TILT + 0.25, 0.5)
    angles = np.radians(degrees)[:, None]
    across = cols * np.cos(angles) - rows * np.sin(angles)
    down = cols * np.sin(angles) + rows * np.cos(angles)
    areas = np.ptp(across, axis=1) * np.ptp(down, axis=1)
    best = int(np.argmin(areas))
    return float(degrees[best]) if areas[degrees == 0][0] > STRAIGHTEN_GAIN * areas[best] else 0.0


def prepare_image(image: Image.Image, invert: bool | None = None) -> np.ndarray:
    """A 28x28 uint8 array made the way Fashion-MNIST was: light garment on black, trimmed to
    the garment, longest side scaled to 28, centred (the aspect ratio is kept, never stretched).

    With invert=None the garment is told from the background by colour (`_garment_map`), and a
    28 x 28 gray image on a dark background passes unchanged; True or False decides by gray
    level alone: invert it, or take it as it is.
    """
    return prepare(image, invert).pixels


def prepare(image: Image.Image, invert: bool | None = None) -> Prepared:
    """`prepare_image`, saying whether the image was already in the data set's format (a 28 x 28
    gray image on a light background whose negative is not `shapeless` is taken as a data-set
    image inverted, and read as that negative), and why no garment
    was found when none was: of one colour, nothing standing out from the border, or the result
    lacking a data-set image's background and shape (`shapeless`)."""
    image = ImageOps.exif_transpose(image) or image
    flat = _flatten(image) if image.mode in WIDE_MODES else image  # Pillow scales 8-bit modes only
    if max(flat.size) > WORKING_SIZE:  # a phone's 12 MP photo becomes 28 x 28: the detail is not needed
        flat = flat.copy()
        flat.thumbnail((WORKING_SIZE, WORKING_SIZE), Image.Resampling.BOX)
    flat = _flatten(flat)
    if invert is None and flat.size == (28, 28) and _is_gray(flat):
        gray = np.asarray(flat.convert("L"))
        if _spread(flat) <= UNIFORM_SPREAD:
            return Prepared(gray.copy(), as_is=True, missing="blank")
        if _border(gray).mean() <= 127:
            return Prepared(gray.copy(), as_is=True, missing="shapeless" if shapeless(gray) else None)
        if not shapeless(255 - gray):  # dark on light, its negative a data-set image's like: read as that
            return Prepared(255 - gray, as_is=True)
    garment_map = _garment_map(flat) if invert is None else None
    if invert is None and _spread(flat) <= UNIFORM_SPREAD:
        return Prepared(np.zeros((28, 28), np.uint8), as_is=False, missing="blank")  # one colour all over
    missing = None
    if garment_map is not None and garment_map.max() > TRIM_LEVEL:
        garment = Image.fromarray(np.clip(garment_map + 0.5, 0, 255).astype(np.uint8), mode="L")
    else:  # chosen, or nothing stands out from the border more than the border varies: by gray level
        missing = "shapeless" if invert is None else None  # noise or texture all over
        garment = flat.convert("L")
        light = _border(np.asarray(garment)).mean() > 127
        garment = ImageOps.invert(garment) if (light if invert is None else invert) else garment
    turn = tilt(np.asarray(garment) > TRIM_LEVEL) if missing is None else 0.0
    if turn:  # a tilted garment, turned upright as the data set's are
        garment = garment.rotate(-turn, Image.Resampling.BICUBIC, expand=True)
    box = garment.point(lambda v: 255 if v > TRIM_LEVEL else 0).getbbox()
    if box:  # trim the background, as the data set's images were
        garment = garment.crop(box)
    boxed = np.asarray(ImageOps.pad(garment, (28, 28), method=Image.Resampling.LANCZOS, color=0), dtype=np.uint8)
    return Prepared(boxed, as_is=False, missing=missing or ("shapeless" if shapeless(boxed) else None))


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


def raw_pixels(values, *, most: int, floats: bool | None = None) -> np.ndarray:
    """Numbers given as images of the data set's kind (an array, nested lists, a table of 784 columns)
    as N x 28 x 28 float32 pixels, 1 <= N <= `most`, each a finite number from 0 to 255 (the data set's
    scale: a model's own first layer scales them); anything else refused with one line, booleans and
    floating-point images all within 0..1 (scaled for another model: they would read as black) too.
    `floats`: whether the numbers were given as floating-point ones (default: the array's type says)."""
    with contextlib.suppress(AttributeError, TypeError):  # a pandas table: its values
        values = values.to_numpy()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # NumPy's warnings on ragged lists are errors here
            array = np.asarray(values)
    except (ValueError, TypeError, OverflowError, RecursionError, Warning) as exc:
        raise ImageError(f"pixels must be numbers, N x 28 x 28 or N x 784 ({reason(exc, 120)})") from None
    if array.dtype.kind not in "iuf":
        raise ImageError(f"pixels must be numbers from 0 to 255, not {array.dtype.kind!r} values "
                         f"({array.dtype}); give N x 28 x 28 or N x 784 numbers")
    if array.ndim == 2 and array.shape[1] == 28 * 28:
        array = array.reshape(-1, 28, 28)
    if array.ndim != 3 or array.shape[1:] != (28, 28) or not 1 <= len(array) <= most:
        raise ImageError(f"pixels must be N x 28 x 28 or N x 784 with N from 1 to {most}, not "
                         f"{' x '.join(map(str, array.shape)) or 'a single number'}")
    floats = array.dtype.kind == "f" if floats is None else floats
    with np.errstate(over="ignore", invalid="ignore"):  # a number past float32's range becomes inf, refused below
        array = array.astype(np.float32)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 255:
        raise ImageError("pixels must be finite numbers from 0 to 255 (the data set's scale, light on black)")
    if floats and 0 < array.max() <= 1:
        raise ImageError("pixels are all within 0..1: give them on the data set's scale, 0 to 255 "
                         "(multiply by 255)")
    return array
