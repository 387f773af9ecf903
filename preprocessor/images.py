"""Image bytes -> validated header facts, or a decoded RGB array.

`inspect_image` is cheap enough for the HTTP front (JPEGs are decoded at 1/8
scale, which still reads the whole stream, so truncation is caught);
`decode_image` is what the workers use; `decode_bounded` what the web processes use to
recognise a photo: at most `fit_pixels` in memory (a larger JPEG decoded at a fraction of its
size in the DCT, `Image.draft`; any other format refused above it, since its decoder holds the
whole image), and at most `DECODE_SLOTS` photos of a process decoded at once.
"""
from __future__ import annotations

import contextlib
import io
import math
import threading
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from constants import ALLOWED_IMAGE_FORMATS
from preprocessor.errors import InputError

# We enforce our own pixel limit before decoding; PIL's own guard would only warn.
Image.MAX_IMAGE_PIXELS = None
DCT_FORMATS = ("JPEG", "MPO")  # decoded at 1/2, 1/4 or 1/8 of their size on request (Image.draft)
# Photos of one process fully decoded at once (the web's threads): what bounds a process's memory, with
# `fit_pixels`, however many requests come. Detection takes one photo at a time anyway (its lock).
DECODE_SLOTS = threading.BoundedSemaphore(2)


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


def inspect_image(data: bytes, max_pixels: int, fit_pixels: int | None = None) -> tuple[str, int, int]:
    """Validate image bytes without a full-size decode. Returns (format, width, height). With `fit_pixels`
    (a photo to recognise: `decode_bounded`'s limit), a photo that could not be decoded within it is refused
    here already. Other formats than JPEG are decoded whole: within DECODE_SLOTS."""
    im = _open(data, max_pixels)
    fmt, (w, h) = im.format or "", im.size
    if fit_pixels is not None:
        _check_fit(im, fit_pixels)
    if fmt in DCT_FORMATS:
        im.draft("L", (max(1, w // 8), max(1, h // 8)))  # DCT-domain downscale: fast, reads all data
        _load(im)
    else:
        with DECODE_SLOTS:
            _load(im)
    return fmt, w, h


def _check_fit(im: Image.Image, fit_pixels: int) -> None:
    w, h = im.size
    if w * h > fit_pixels and im.format not in DCT_FORMATS:
        raise InputError("IMAGE_TOO_LARGE", f"image is {w}x{h} = {w * h} pixels; a photo to recognise may have "
                         f"at most {fit_pixels} (FR_PREDICT_MAX_PIXELS) unless it is a JPEG: send it downscaled "
                         "or as a JPEG")


def decode_bounded(data: bytes, max_pixels: int, fit_pixels: int) -> tuple[np.ndarray, float]:
    """Decode a photo to recognise with at most about `fit_pixels` pixels in memory: a larger JPEG at the
    least DCT reduction (1/2, 1/4, 1/8) that fits, resized to fit when even 1/8 does not; another
    format over `fit_pixels` is refused (IMAGE_TOO_LARGE). Call it within DECODE_SLOTS. -> (RGB uint8 array
    (H, W, 3), EXIF orientation honoured; its scale to the photo: 1.0 when decoded at full size)."""
    im = _open(data, max_pixels)
    _check_fit(im, fit_pixels)
    w, h = im.size
    if w * h > fit_pixels:  # the least reduction that fits (draft picks the scale from the size asked for)
        r = next((r for r in (2, 4, 8) if (w // r) * (h // r) <= fit_pixels), 8)
        im.draft("RGB", (max(1, w // r), max(1, h // r)))
    _load(im)
    if im.size[0] * im.size[1] > fit_pixels:  # the DCT's scales are powers of 2: the rest by resampling
        k = math.sqrt(fit_pixels / (im.size[0] * im.size[1]))
        im = im.resize((max(1, int(im.size[0] * k)), max(1, int(im.size[1] * k))), Image.Resampling.LANCZOS)
    return _upright_rgb(im), im.size[0] / w


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Decode image bytes to an RGB uint8 array (H, W, 3), honouring EXIF orientation."""
    im = _open(data, max_pixels)
    _load(im)
    return _upright_rgb(im)


def _upright_rgb(im: Image.Image) -> np.ndarray:
    """A loaded image -> RGB uint8 array (H, W, 3), turned as its EXIF orientation says. What both decoders
    hand on, so that a photo reads the same whether a worker or a web process decodes it."""
    with contextlib.suppress(Exception):  # a broken EXIF block should not cost the photo
        im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16"):  # 16-bit greyscale: convert("RGB") would clip every value over 255 to white
        im = Image.fromarray((np.asarray(im).astype(np.uint32) >> 8).astype(np.uint8), "L")
    if im.mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)
