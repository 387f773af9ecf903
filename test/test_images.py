"""`inspect_image` / `decode_image` on real photos and on hand-made bad input."""
from __future__ import annotations

import io
import struct
import tracemalloc
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile

from constants import ALLOWED_IMAGE_FORMATS
from preprocessor.errors import InputError
from preprocessor.images import decode_bounded, decode_image, inspect_image
from test.conftest import pick_people

LIMIT = 40_000_000


@pytest.fixture(scope="module")
def jpeg_path(faces_dir):
    (photos,) = pick_people(faces_dir, 1, 1).values()
    return photos[0]


@pytest.fixture(scope="module")
def jpeg_bytes(jpeg_path) -> bytes:
    return jpeg_path.read_bytes()


@pytest.fixture(scope="module")
def png_path(faces_dir):
    return faces_dir / "wild" / "alex-lacamoire.png"


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    if fmt == "MPO":  # a one-picture MPO reads back as plain JPEG: add a second picture
        kw = {"save_all": True, "append_images": [im], **kw}
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(width: int, height: int) -> bytes:
    """A ~60-byte PNG whose IHDR claims width x height RGB pixels."""
    return (b"\x89PNG\r\n\x1a\n"
            + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def _code(fn, *args) -> str:
    with pytest.raises(InputError) as e:
        fn(*args)
    return e.value.code


# --------------------------------------------------------------------------- real photos

def test_real_jpeg(jpeg_path, jpeg_bytes):
    with Image.open(jpeg_path) as ref:
        ref_size = ref.size
        ref_pixels = np.asarray(ref.convert("RGB"))
    assert ref_size == (250, 250)  # lfw62 is documented as 250x250
    assert inspect_image(jpeg_bytes, LIMIT) == ("JPEG", *ref_size)
    arr = decode_image(jpeg_bytes, LIMIT)
    assert arr.dtype == np.uint8 and arr.shape == (ref_size[1], ref_size[0], 3)
    assert np.array_equal(arr, ref_pixels)


def test_real_png(png_path):
    data = png_path.read_bytes()
    with Image.open(png_path) as ref:
        w, h = ref.size
        ref_rgb = np.asarray(ref.convert("RGB"))
    assert inspect_image(data, LIMIT) == ("PNG", w, h)
    arr = decode_image(data, LIMIT)
    assert arr.dtype == np.uint8 and arr.shape == (h, w, 3)
    assert np.array_equal(arr, ref_rgb)
    assert w != h  # so that the (h, w) order above is really checked


def test_pixel_limit_is_inclusive(jpeg_bytes):
    w, h = inspect_image(jpeg_bytes, LIMIT)[1:]
    assert inspect_image(jpeg_bytes, w * h)[0] == "JPEG"
    assert decode_image(jpeg_bytes, w * h).shape[:2] == (h, w)
    assert _code(inspect_image, jpeg_bytes, w * h - 1) == "IMAGE_TOO_LARGE"
    assert _code(decode_image, jpeg_bytes, w * h - 1) == "IMAGE_TOO_LARGE"


@pytest.mark.parametrize("fmt", ALLOWED_IMAGE_FORMATS)
def test_every_allowed_format(jpeg_path, fmt):
    with Image.open(jpeg_path) as im:
        crop = im.convert("RGB").crop((0, 0, 120, 90))
    data = _save(crop, fmt)
    assert inspect_image(data, LIMIT) == (fmt, 120, 90)
    arr = decode_image(data, LIMIT)
    assert arr.shape == (90, 120, 3) and arr.dtype == np.uint8


@pytest.mark.parametrize("mode, fmt", [("L", "PNG"), ("LA", "PNG"), ("RGBA", "PNG"), ("P", "PNG"), ("1", "PNG"),
                                       ("CMYK", "JPEG"), ("L", "JPEG"), ("I", "TIFF"), ("F", "TIFF")])
def test_other_modes_become_rgb(jpeg_path, mode, fmt):
    with Image.open(jpeg_path) as im:
        data = _save(im.convert(mode), fmt)
    arr = decode_image(data, LIMIT)
    assert arr.shape == (250, 250, 3) and arr.dtype == np.uint8


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_a_16_bit_greyscale_photo_keeps_its_tones(jpeg_path, fmt):
    """A 16-bit greyscale photo (scanners, some cameras' PNG/TIFF: PIL mode I;16) decodes to the same picture as
    its 8-bit copy, not to white: convert("RGB") clips every value over 255, and the face was lost."""
    with Image.open(jpeg_path) as im:
        grey = np.asarray(im.convert("L"))
    data = _save(Image.fromarray(grey.astype(np.uint16) * 257), fmt)  # 0..255 -> 0..65535
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    arr = decode_image(data, LIMIT)
    assert arr.shape == (250, 250, 3) and arr.dtype == np.uint8
    assert np.array_equal(arr[..., 0], grey) and np.array_equal(arr[..., 2], grey)
    # and so for a photo to recognise (predict, verify): the web processes decode it within bounds
    bounded, scale = decode_bounded(data, LIMIT, LIMIT)
    assert scale == 1.0 and np.array_equal(bounded, arr)


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("data", [b"", b"hello, I am a text file\n" * 20, b"\x89PNG\r\n\x1a\n", b"\xff\xd8",
                                  bytes(1000)])
def test_not_an_image(data):
    assert _code(inspect_image, data, LIMIT) == "NOT_AN_IMAGE"
    assert _code(decode_image, data, LIMIT) == "NOT_AN_IMAGE"


def test_text_file_named_jpg(tmp_path):
    fake = tmp_path / "alice" / "1.jpg"
    fake.parent.mkdir()
    fake.write_text("definitely not a JPEG\n")
    assert _code(inspect_image, fake.read_bytes(), LIMIT) == "NOT_AN_IMAGE"
    assert _code(decode_image, fake.read_bytes(), LIMIT) == "NOT_AN_IMAGE"


@pytest.mark.parametrize("keep", [0.3, 0.5, 0.8])
def test_truncated_jpeg_is_corrupt(jpeg_bytes, keep):
    cut = jpeg_bytes[: int(len(jpeg_bytes) * keep)]
    assert _code(inspect_image, cut, LIMIT) == "CORRUPT_IMAGE"
    assert _code(decode_image, cut, LIMIT) == "CORRUPT_IMAGE"


def test_truncated_png_is_corrupt(png_path):
    data = png_path.read_bytes()
    cut = data[: len(data) // 2]
    assert _code(inspect_image, cut, LIMIT) == "CORRUPT_IMAGE"
    assert _code(decode_image, cut, LIMIT) == "CORRUPT_IMAGE"


@settings(max_examples=60, deadline=None)
@given(frac=st.floats(0.0, 1.0))
def test_any_prefix_of_a_jpeg_is_an_image_or_an_input_error(jpeg_bytes, frac):
    cut = jpeg_bytes[: int(len(jpeg_bytes) * frac)]
    try:
        assert inspect_image(cut, LIMIT) == ("JPEG", 250, 250)
    except InputError as exc:
        assert exc.code in ("NOT_AN_IMAGE", "CORRUPT_IMAGE")
    try:
        assert decode_image(cut, LIMIT).shape == (250, 250, 3)
    except InputError as exc:
        assert exc.code in ("NOT_AN_IMAGE", "CORRUPT_IMAGE")


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=2000))
def test_random_bytes_never_crash(data):
    for fn in (inspect_image, decode_image):
        try:
            fn(data, LIMIT)
        except InputError as exc:
            assert exc.code in ("NOT_AN_IMAGE", "CORRUPT_IMAGE", "UNSUPPORTED_FORMAT", "IMAGE_TOO_LARGE")


def test_header_claimed_huge_png_is_refused_fast(monkeypatch):
    """Refused from the header alone: no pixel is decoded (PIL's load is never called) and the peak memory
    stays far below the 7.5 GB the pixels would take. Fast by construction, not by a stopwatch."""
    data = huge_png(50_000, 50_000)
    assert len(data) < 200
    with Image.open(io.BytesIO(data)) as im:  # the premise: PIL believes the header
        assert im.size == (50_000, 50_000)
    loads: list = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: loads.append(im.size) or real_load(im))
    tracemalloc.start()
    try:
        for fn in (inspect_image, decode_image):
            with pytest.raises(InputError) as e:
                fn(data, LIMIT)
            assert e.value.code == "IMAGE_TOO_LARGE"
            assert "50000x50000" in e.value.message
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert loads == [], "pixels were decoded before the size was judged"
    assert peak < 5_000_000
    # the spy sees a decode when there is one: a small PNG passes through it
    inspect_image(_save(Image.new("RGB", (4, 4)), "PNG"), LIMIT)
    assert loads, "the spy on PIL's load saw nothing: it proves nothing above"


def test_huge_png_just_over_limit_is_refused():
    assert _code(inspect_image, huge_png(1001, 1000), 1_000_000) == "IMAGE_TOO_LARGE"
    assert _code(inspect_image, huge_png(1, 1_000_001), 1_000_000) == "IMAGE_TOO_LARGE"


@pytest.mark.parametrize("fmt, kw", [("ICO", {}), ("PPM", {}), ("TGA", {}), ("PCX", {})])
def test_unsupported_formats(jpeg_path, fmt, kw):
    with Image.open(jpeg_path) as im:
        data = _save(im.convert("RGB").resize((32, 32)), fmt, **kw)
    with Image.open(io.BytesIO(data)) as check:
        assert check.format == fmt  # the premise: PIL can read it, the service must not take it
    for fn in (inspect_image, decode_image):
        with pytest.raises(InputError) as e:
            fn(data, LIMIT)
        assert e.value.code == "UNSUPPORTED_FORMAT"
        assert fmt in e.value.message


# --------------------------------------------------------------------------- EXIF orientation

@pytest.fixture(scope="module")
def landscape(jpeg_path) -> Image.Image:
    with Image.open(jpeg_path) as im:
        return im.convert("RGB").crop((0, 30, 250, 210))  # 250 x 180: not square


def _with_orientation(im: Image.Image, orientation: int | None) -> bytes:
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    return _save(im, "JPEG", quality=90, exif=exif.tobytes())


def test_exif_orientation_6_rotates(landscape):
    plain = decode_image(_with_orientation(landscape, None), LIMIT)
    assert plain.shape == (180, 250, 3)
    rotated_bytes = _with_orientation(landscape, 6)
    assert Image.open(io.BytesIO(rotated_bytes)).getexif()[0x0112] == 6
    rotated = decode_image(rotated_bytes, LIMIT)
    assert rotated.shape == (250, 180, 3)
    # orientation 6 = "rotate 90 degrees clockwise to display"
    assert np.array_equal(rotated, np.rot90(plain, k=-1))


@pytest.mark.parametrize("orientation, transform", [
    (1, lambda a: a),
    (3, lambda a: np.rot90(a, 2)),
    (8, lambda a: np.rot90(a, 1)),
    (2, lambda a: a[:, ::-1]),
])
def test_other_exif_orientations(landscape, orientation, transform):
    plain = decode_image(_with_orientation(landscape, None), LIMIT)
    out = decode_image(_with_orientation(landscape, orientation), LIMIT)
    assert np.array_equal(out, transform(plain))


def test_broken_exif_does_not_cost_the_photo(landscape):
    data = _save(landscape, "JPEG", exif=b"Exif\x00\x00" + b"\xde\xad\xbe\xef" * 8)
    arr = decode_image(data, LIMIT)
    assert arr.shape == (180, 250, 3)


# --------------------------------------------------------------------------- decode_bounded (issue #26, row 6)

FIT = 12_000_000


def jpeg_of(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def test_a_photo_within_the_bound_is_decoded_as_the_workers_decode_it(faces_dir):
    """Normal photos (every wild/ photo: up to 2.8 MP, a PNG among them) are decoded at full size, to the
    same pixels as `decode_image`: recognising them is unchanged."""
    from preprocessor.images import decode_bounded
    for path in sorted((faces_dir / "wild").iterdir()):
        data = path.read_bytes()
        pixels, scale = decode_bounded(data, LIMIT, FIT)
        assert scale == 1.0 and np.array_equal(pixels, decode_image(data, LIMIT)), path.name


def test_a_large_jpeg_is_decoded_at_a_fraction_and_its_face_found_where_it_is(faces_dir):
    """obama.jpg at 4x (16.5 MP): decoded at half its size in the DCT (4.1 MP in memory), and the face found
    there maps back onto the face found in the full-size decode."""
    from preprocessor.faces import detect_faces
    from preprocessor.images import decode_bounded
    big = Image.open(faces_dir / "wild" / "obama.jpg").convert("RGB")
    big = big.resize((big.width * 4, big.height * 4), Image.Resampling.BICUBIC)
    data = jpeg_of(big)
    pixels, scale = decode_bounded(data, LIMIT, FIT)
    assert pixels.shape[0] * pixels.shape[1] <= FIT and scale == 0.5
    full = decode_image(data, LIMIT)
    (small_box,) = detect_faces(pixels)
    (full_box,) = detect_faces(full)
    mapped = np.array(small_box.as_list()) / scale
    assert np.abs(mapped - np.array(full_box.as_list())).max() <= 0.05 * (full_box.right - full_box.left)


def test_a_photo_far_over_the_bound_stays_within_it_in_memory():
    """A 36 MP JPEG (a few hundred KB) needs 108 MB as an array at full size: decoded here within FIT."""
    from preprocessor.images import decode_bounded
    data = jpeg_of(Image.new("RGB", (6000, 6000), (120, 130, 140)))
    tracemalloc.start()
    try:
        pixels, scale = decode_bounded(data, LIMIT, FIT)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert pixels.shape == (3000, 3000, 3) and scale == 0.5
    # numpy's array and the bytes PIL hands it (traced; PIL's own buffer is not): 2 x 3 bytes a pixel, within
    # FIT pixels. The same photo decoded whole traces 216 MB.
    assert peak <= 2 * 3 * FIT


def test_another_format_over_the_bound_is_refused_before_it_is_decoded():
    """A 36 MP PNG is a few KB and 144 MB decoded: refused from its header (no DCT to decode it smaller)."""
    from preprocessor.images import decode_bounded
    buf = io.BytesIO()
    Image.new("RGB", (6000, 6000), (120, 130, 140)).save(buf, "PNG")
    tracemalloc.start()
    try:
        for call in (lambda: decode_bounded(buf.getvalue(), LIMIT, FIT),
                     lambda: inspect_image(buf.getvalue(), LIMIT, FIT)):
            with pytest.raises(InputError) as e:
                call()
            assert e.value.code == "IMAGE_TOO_LARGE" and "FR_PREDICT_MAX_PIXELS" in e.value.message
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000
    assert inspect_image(buf.getvalue(), LIMIT)[1:] == (6000, 6000)  # a build's photo: the workers' limit
