"""Image bytes -> validated header facts, or a decoded RGB array.

`inspect_image` is cheap enough for the HTTP front (JPEGs are decoded at 1/8
scale, which still reads the whole stream, so truncation is caught);
`decode_image` is what the workers use.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from constants import ALLOWED_IMAGE_FORMATS
from preprocessor.errors import InputError

# We enforce our own pixel limit before decoding; PIL's own guard would only warn.
Image.MAX_IMAGE_PIXELS = None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InputError("NOT_AN_IMAGE", "not a recognised image file") from None
    except Exception as exc:  # PIL raises many types for garbage headers
        raise InputError("NOT_AN_IMAGE", f"not a readable image ({exc})") from None
    if im.format not in ALLOWED_IMAGE_FORMATS:
        raise InputError("UNSUPPORTED_FORMAT",
                         f"image format {im.format} is not supported "
                         f"(use one of {', '.join(ALLOWED_IMAGE_FORMATS)})")
    w, h = im.size
    if w <= 0 or h <= 0:
        raise InputError("CORRUPT_IMAGE", "image has no pixels")
    if w * h > max_pixels:
        raise InputError("IMAGE_TOO_LARGE",
                         f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
    return im


def _load(im: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            im.load()
    except Exception as exc:
        raise InputError("CORRUPT_IMAGE", f"image data is corrupt or truncated ({exc})") from None


def inspect_image(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Validate image bytes without a full-size decode. Returns (format, width, height)."""
    im = _open(data, max_pixels)
    fmt, (w, h) = im.format or "", im.size
    if fmt in ("JPEG", "MPO"):
        im.draft("L", (max(1, w // 8), max(1, h // 8)))  # DCT-domain downscale: fast, reads all data
    _load(im)
    return fmt, w, h


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array (H, W, 3), honouring EXIF orientation."""
    im = _open(data, max_pixels)
    _load(im)
    with contextlib.suppress(Exception):  # a broken EXIF block should not cost the photo
        im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16"):  # 16-bit greyscale: convert("RGB") would clip every value over 255 to white
        im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)
