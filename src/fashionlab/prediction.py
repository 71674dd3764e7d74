"""Prediction with a saved run: test-set images by index, or your own photos.

    results = predict("runs/20260101-120000-tutorial", indices=[0, 1, 2], images=["shoe.jpg"], top_k=3)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from fashionlab import CLASS_NAMES
from fashionlab.data import DataSource
from fashionlab.errors import ConfigError, ImageError, reason
from fashionlab.files import open_regular
from fashionlab.runs import Run

# Pillow warns at 89 MP and fails at twice that; a garment photo needs far fewer, and
# checking the header first stops a decompression bomb before any pixel is decoded.
MAX_IMAGE_PIXELS = 40_000_000
MAX_IMAGE_BYTES = 128 * 1024 * 1024
TRIM_LEVEL = 40  # of 255: darker pixels count as background when trimming


def _flatten_to_gray(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit grayscale; transparency is composited onto white, like a page."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("L")
    return image.convert("L")


def prepare_image(image: Image.Image, invert: bool | None = None) -> np.ndarray:
    """A 28x28 uint8 array made the way Fashion-MNIST was: light garment on black, trimmed to
    the garment, longest side scaled to 28, centred (the aspect ratio is kept, never stretched).

    With invert=None a light background, judged from the border pixels, is inverted.
    """
    gray = _flatten_to_gray(ImageOps.exif_transpose(image) or image)
    pixels = np.asarray(gray)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    if border.mean() > 127 if invert is None else invert:
        gray = ImageOps.invert(gray)
    # Trim the background (anything darker than TRIM_LEVEL), as the dataset's images were.
    garment = gray.point(lambda v: 255 if v > TRIM_LEVEL else 0).getbbox()
    if garment:
        gray = gray.crop(garment)
    boxed = ImageOps.pad(gray, (28, 28), method=Image.Resampling.LANCZOS, color=0)
    return np.asarray(boxed, dtype=np.uint8)


def load_image(path: str | Path, invert: bool | None = None) -> np.ndarray:
    """Read a PNG/JPEG/GIF/... file (first frame) and prepare it for the model."""
    path = Path(path)
    with open_regular(path, what="image", error=ImageError, limit=MAX_IMAGE_BYTES) as handle:
        try:
            with Image.open(handle) as image:
                width, height = image.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise ImageError(f"{path} is {width}x{height} pixels, over the {MAX_IMAGE_PIXELS:,} pixel "
                                     f"limit; downscale it first")
                image.seek(0)
                image.load()
                return prepare_image(image, invert)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise ImageError(f"{path} is not an image Pillow can read; pass a PNG or JPEG file") from None
        except Exception as exc:  # a decoder's failure on a damaged file can be of any type
            said = reason(exc) or type(exc).__name__
            raise ImageError(f"{path} cannot be decoded ({said}); the file is damaged or truncated") from None


def top_k(proba: np.ndarray, k: int) -> list[dict[str, Any]]:
    order = np.argsort(-proba, kind="stable")[:k]
    return [{"class_id": int(i), "class_name": CLASS_NAMES[i], "probability": float(proba[i])} for i in order]


def predict_arrays(model, pixels: np.ndarray, labels: Sequence[str], k: int = 3) -> list[dict[str, Any]]:
    """One result per image: the best class, its probability, and the top k."""
    from fashionlab.evaluation import predict_proba

    proba = predict_proba(model, pixels)
    results = []
    for label, row in zip(labels, proba):
        best = top_k(row, k)
        results.append({"input": label, "class_id": best[0]["class_id"], "class_name": best[0]["class_name"],
                        "probability": best[0]["probability"], "top_k": best})
    return results


def predict(run_dir: str | Path, *, indices: Sequence[int] = (), images: Sequence[str | Path] = (), top_k: int = 3,
            invert: bool | None = None, data: DataSource = DataSource(),
            allow_incomplete: bool = False) -> list[dict[str, Any]]:
    """Predict test images (by index) and image files with a run's saved model.

    `invert` None inverts only images with a light background; `data` is read only for `indices`.
    """
    if not 1 <= top_k <= len(CLASS_NAMES):
        raise ConfigError(f"`top_k` must be between 1 and {len(CLASS_NAMES)}, got {top_k}", terms=["top_k"])
    run = Run.open(run_dir, allow_incomplete=allow_incomplete)
    arrays, labels = [], []
    if indices:
        x_test = data.test_images()
        for index in indices:
            if not 0 <= index < len(x_test):
                raise ConfigError(f"`indices` {index} is outside the test set (0..{len(x_test) - 1})",
                                  terms=["indices"])
            arrays.append(x_test[index])
            labels.append(f"test[{index}]")
    for path in images:
        arrays.append(load_image(path, invert))
        labels.append(str(path))
    if not arrays:
        raise ConfigError("nothing to predict: give `indices` and/or image files", terms=["indices"])
    return predict_arrays(run.load_model(), np.stack(arrays), labels, top_k)
