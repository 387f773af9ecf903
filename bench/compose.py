"""Photos as phones and cameras take them, composed from LFW's real faces, with every face's true box.

Tests and benchmarks both use this module (tests compose a few photos at test time; nothing composed
is ever committed). Each photo is made from real LFW faces of `../shared/faces` (`FR_FACES_DIR`
overrides it):

- the source is a deep-funneled `lfw62`/`strangers*` crop (250x250): LFW's funneling puts every face at
  the same place, so the face's box in the crop is one constant, `SOURCE_BOX` (the median of dlib HOG's
  boxes over 300 `lfw62` crops, measured once: (67, 80)-(175, 187); the 10-90th percentiles are within
  10 px of it). The box is *not* measured on each photo, so a face that HOG misses in its crop is still
  a face the detector must find (no bias towards what today's detector sees);
- the crop is scaled so that its face box is `face_px` wide, optionally rotated in the image plane
  (roll), and pasted through a soft elliptical mask (no hard rectangle edge for a detector to latch on)
  onto a large canvas with clutter (gradients, shapes, stripes, noise);
- the whole photo is then optionally blurred, dimmed (with sensor noise), JPEG-compressed at a quality
  of 60-95 and stored with an EXIF orientation 1-8 (its pixels turned so that a viewer that honours the
  tag shows it upright: the true boxes are in upright coordinates, as `decode_image` returns them);
- face-less photos (walls, textures, the backs of heads and shoulders of a crowd drawn without any
  face) measure false faces.

`KINDS` names the kinds of photo the bench reports; `compose(kind, rng)` makes one.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
# The face box inside a deep-funneled 250x250 LFW crop (left, top, right, bottom): see the docstring.
SOURCE_BOX = (67, 80, 175, 187)
SOURCE_FACE_PX = SOURCE_BOX[2] - SOURCE_BOX[0]


def faces_dir() -> Path:
    """`../shared/faces` beside the checkout, or `FR_FACES_DIR`."""
    return Path(os.environ.get("FR_FACES_DIR") or ROOT.parent / "shared" / "faces")


@cache
def source_photos(folder: str = "lfw62") -> tuple[Path, ...]:
    """Every deep-funneled crop of a folder of `faces_dir()` (`lfw62`: one sub-folder per person;
    `strangers`, `strangers-more`: flat), sorted."""
    base = faces_dir() / folder
    return tuple(sorted(base.rglob("*.jpg")))


def load_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), np.uint8)


@dataclass
class Composed:
    """One composed photo: the bytes a client would send, and what is in it.

    `boxes`: the true face boxes (left, top, right, bottom) in the upright photo's pixels;
    `sources`: the LFW file of each face; `kind`, `size` (w, h upright), `orientation` (EXIF 1-8).
    """
    data: bytes
    boxes: list[tuple[int, int, int, int]]
    sources: list[str]
    kind: str
    size: tuple[int, int]
    orientation: int = 1
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Kind:
    """How to make one kind of photo: canvas (w, h), faces per photo, face width range in px, roll range in
    degrees, blur sigma range, dimming range (1: none), JPEG quality range, EXIF orientations to draw from."""
    size: tuple[int, int]
    faces: tuple[int, int]
    face_px: tuple[int, int]
    roll: float = 0.0
    blur: tuple[float, float] = (0.0, 0.0)
    dim: tuple[float, float] = (1.0, 1.0)
    quality: tuple[int, int] = (85, 95)
    orientations: tuple[int, ...] = (1,)
    turned: bool = False  # faces drawn from the most turned crops (see `turned_sources`)


PHONE, FRAME_1080, FRAME_720 = (4032, 3024), (1920, 1080), (1280, 720)
KINDS: dict[str, Kind] = {
    # a phone photo of one person; half of phones store it sideways (EXIF 6), the rest any orientation
    "phone_12mp": Kind(PHONE, (1, 1), (90, 260), quality=(75, 95), orientations=(6, 6, 6, 6, 1, 2, 3, 4, 5, 7, 8)),
    "phone_12mp_small": Kind(PHONE, (1, 2), (40, 90), quality=(75, 95), orientations=(1, 6, 3, 8)),
    "group_12mp": Kind(PHONE, (3, 30), (60, 160), roll=10, quality=(75, 95), orientations=(1, 6)),
    "frame_1080p": Kind(FRAME_1080, (1, 4), (36, 120), blur=(0.4, 1.2), quality=(60, 90)),
    "frame_720p": Kind(FRAME_720, (1, 3), (40, 100), blur=(0.4, 1.2), quality=(60, 90)),
    "dim_1080p": Kind(FRAME_1080, (1, 3), (50, 140), blur=(0.0, 0.8), dim=(0.2, 0.45), quality=(60, 85)),
    "roll_1080p": Kind(FRAME_1080, (1, 3), (60, 160), roll=30, quality=(70, 95)),
    "turned_1080p": Kind(FRAME_1080, (1, 3), (60, 160), quality=(70, 95), turned=True),
    "blurred_1080p": Kind(FRAME_1080, (1, 3), (50, 140), blur=(1.5, 3.0), quality=(60, 80)),
}
NO_FACE_KINDS = ("noface_12mp", "noface_1080p")


def clutter(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """A face-less background: a colour gradient, stripes or bricks, rectangles, ellipses, lines and noise.
    Drawn at a third of the size and enlarged (a 12 MP canvas drawn in full took seconds), then sensor
    noise at full size."""
    fw, fh = w, h
    w, h = max(1, w // 3), max(1, h // 3)
    base = rng.uniform(40, 220, 3).astype(np.float32)
    tint = rng.uniform(-60, 60, 3).astype(np.float32)
    gx = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    gy = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    ramp = gx * np.float32(rng.uniform(-1, 1)) + gy * np.float32(rng.uniform(-1, 1))
    img = np.clip(base + tint * ramp, 0, 255).astype(np.uint8)  # (h, w, 3), writable: shapes go on it
    scale = max(w, h) / 1000
    if rng.random() < 0.5:  # a brick wall or tiles
        bw, bh = int(rng.uniform(40, 160) * scale), int(rng.uniform(20, 80) * scale)
        mortar = tuple(int(v) for v in rng.uniform(80, 230, 3))
        for row, y in enumerate(range(0, h, bh)):
            cv2.line(img, (0, y), (w, y), mortar, max(1, int(3 * scale)))
            for x in range((bw // 2) * (row % 2), w, bw):
                cv2.line(img, (x, y), (x, y + bh), mortar, max(1, int(3 * scale)))
    for _ in range(int(rng.integers(10, 40))):
        colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        s = int(rng.uniform(10, 250) * scale)
        shape = rng.integers(0, 3)
        if shape == 0:
            cv2.rectangle(img, (x, y), (x + s, y + int(s * rng.uniform(0.3, 2))), colour, -1)
        elif shape == 1:
            cv2.ellipse(img, (x, y), (s, int(s * rng.uniform(0.3, 1))), float(rng.uniform(0, 180)), 0, 360, colour, -1)
        else:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour,
                     max(1, int(rng.uniform(1, 8) * scale)))
    img = cv2.resize(img, (fw, fh), interpolation=cv2.INTER_LINEAR)
    # sensor noise: a 512 px tile of signed noise repeated (numpy's ufuncs on 36 M values cost seconds)
    tile = np.clip(rng.normal(0, rng.uniform(2, 8), (512, 512, 3)), -127, 127).astype(np.int8)
    noise = cv2.repeat(tile, fh // 512 + 1, fw // 512 + 1)[:fh, :fw]
    return cv2.add(img, noise, dtype=cv2.CV_8U)


def crowd_backs(img: np.ndarray, rng: np.random.Generator) -> None:
    """Draw, in place, the backs of a crowd: shoulders and heads of hair, without any face."""
    h, w = img.shape[:2]
    for _ in range(int(rng.integers(5, 25))):
        head = int(rng.uniform(40, 260) * max(w, h) / 4032 * 2)
        x, y = int(rng.integers(0, w)), int(rng.integers(h // 4, h))
        coat = tuple(int(v) for v in rng.uniform(0, 200, 3))
        hair = tuple(int(v) for v in rng.uniform(10, 120, 3) * np.array([1.0, 0.8, 0.6]))
        cv2.ellipse(img, (x, y + int(1.6 * head)), (int(1.6 * head), int(1.1 * head)), 0, 180, 360, coat, -1)
        cv2.ellipse(img, (x, y), (int(head * 0.45), int(head * 0.58)), 0, 0, 360, hair, -1)
        cv2.ellipse(img, (x - int(head * 0.46), y), (int(head * 0.07), int(head * 0.12)), 0, 0, 360,
                    tuple(int(v) for v in rng.uniform(150, 230, 3)), -1)  # an ear seen from behind


def _mask(size: int) -> np.ndarray:
    """A soft ellipse over a square crop: the head and a little of the hair and shoulders."""
    m = np.zeros((size, size), np.float32)
    c = size // 2
    cv2.ellipse(m, (c, int(c * 1.05)), (int(size * 0.40), int(size * 0.48)), 0, 0, 360, 1.0, -1)
    k = max(3, (size // 12) | 1)
    return cv2.GaussianBlur(m, (k, k), 0)


def paste_face(canvas: np.ndarray, crop: np.ndarray, face_px: int, cx: float, cy: float,
               roll: float = 0.0) -> tuple[int, int, int, int]:
    """Paste an LFW crop onto `canvas` (in place) so that its face is `face_px` wide and centred at
    (cx, cy), turned by `roll` degrees in the image plane. Returns the face's true box."""
    s = face_px / SOURCE_FACE_PX
    size = max(8, int(round(crop.shape[1] * s)))
    scaled = cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC)
    mask = _mask(size)
    # where the face's centre sits in the scaled crop
    fx, fy = (SOURCE_BOX[0] + SOURCE_BOX[2]) / 2 * s, (SOURCE_BOX[1] + SOURCE_BOX[3]) / 2 * s
    if roll:
        m = cv2.getRotationMatrix2D((fx, fy), roll, 1.0)
        scaled = cv2.warpAffine(scaled, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        mask = cv2.warpAffine(mask, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
    x0, y0 = int(round(cx - fx)), int(round(cy - fy))
    h, w = canvas.shape[:2]
    ax0, ay0, ax1, ay1 = max(0, x0), max(0, y0), min(w, x0 + size), min(h, y0 + size)
    if ax1 > ax0 and ay1 > ay0:
        sub = scaled[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0].astype(np.float32)
        a = mask[ay0 - y0:ay1 - y0, ax0 - x0:ax1 - x0, None]
        region = canvas[ay0:ay1, ax0:ax1].astype(np.float32)
        canvas[ay0:ay1, ax0:ax1] = np.clip(sub * a + region * (1 - a), 0, 255).astype(np.uint8)
    half_w = face_px / 2
    half_h = (SOURCE_BOX[3] - SOURCE_BOX[1]) * s / 2
    return (int(round(cx - half_w)), int(round(cy - half_h)), int(round(cx + half_w)), int(round(cy + half_h)))


# The pixels stored for an upright photo under each EXIF orientation: the inverse of what
# ImageOps.exif_transpose does for that tag (2-5 and 7 are their own inverses; 6 and 8 swap).
_STORE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


def encode(img: np.ndarray, quality: int = 90, orientation: int = 1) -> bytes:
    """An upright RGB array -> JPEG bytes stored with `orientation` (EXIF 0x0112) and its pixels turned to match."""
    im = Image.fromarray(img)
    exif = Image.Exif()
    if orientation != 1:
        im = im.transpose(_STORE[orientation])
        exif[0x0112] = orientation
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=int(quality), exif=exif.tobytes() if orientation != 1 else b"")
    return buf.getvalue()


@cache
def turned_sources(folder: str = "lfw62", share: float = 0.15) -> tuple[Path, ...]:
    """The `share` most turned crops of a folder, by the yaw figure of preprocessor/quality.py measured
    on dlib's 5 landmarks inside `SOURCE_BOX` (the nose base's offset from the eyes' middle, in eye
    distances). Cached per process; `yaw_figures` gives the figures."""
    figures = yaw_figures(folder)
    order = sorted(figures, key=lambda p: -abs(figures[p]))
    return tuple(order[:max(1, int(len(order) * share))])


@cache
def yaw_figures(folder: str = "lfw62", limit: int = 1500) -> dict[Path, float]:
    """The landmark yaw figure of (up to `limit`, evenly spread) crops of a folder (see `turned_sources`)."""
    import dlib

    from preprocessor.faces import landmarks_model_path
    predictor = dlib.shape_predictor(landmarks_model_path())
    photos = source_photos(folder)
    step = max(1, len(photos) // limit)
    out = {}
    for p in photos[::step]:
        shape = predictor(load_rgb(p), dlib.rectangle(*SOURCE_BOX))
        pts = np.array([(shape.part(i).x, shape.part(i).y) for i in range(5)], np.float64)
        eye_a, eye_b, nose = pts[0:2].mean(0), pts[2:4].mean(0), pts[4]
        line = eye_a - eye_b
        d = float(np.hypot(*line)) or 1e-6
        out[p] = float(np.dot(nose - (eye_a + eye_b) / 2, line / d) / d)
    return out


def _place(n: int, w: int, h: int, sizes: list[int], rng: np.random.Generator) -> list[tuple[float, float]]:
    """Centres for `n` faces of `sizes` px that do not overlap (a few tries each; a face with no room is dropped)."""
    centres: list[tuple[float, float, int]] = []
    for s in sizes[:n]:
        for _ in range(60):
            margin = s * 0.8
            cx, cy = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
            if all(math.hypot(cx - x, cy - y) > 1.6 * (s + t) / 2 + 10 for x, y, t in centres):
                centres.append((cx, cy, s))
                break
    return [(x, y) for x, y, _ in centres]


def compose(kind: str, rng: np.random.Generator, folder: str = "lfw62") -> Composed:
    """One photo of `kind` (a key of `KINDS`, or one of `NO_FACE_KINDS`) drawn with `rng`, faces from `folder`."""
    if kind in NO_FACE_KINDS:
        w, h = PHONE if kind == "noface_12mp" else FRAME_1080
        img = clutter(w, h, rng)
        if rng.random() < 0.5:
            crowd_backs(img, rng)
        if rng.random() < 0.3:
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
        q = int(rng.integers(60, 96))
        return Composed(encode(img, q), [], [], kind, (w, h), details={"quality": q})
    k = KINDS[kind]
    w, h = k.size
    img = clutter(w, h, rng)
    n = int(rng.integers(k.faces[0], k.faces[1] + 1))
    sizes = sorted((int(rng.integers(k.face_px[0], k.face_px[1] + 1)) for _ in range(n)), reverse=True)
    pool = turned_sources(folder) if k.turned else source_photos(folder)
    boxes, sources = [], []
    for (cx, cy), s in zip(_place(n, w, h, sizes, rng), sizes):
        src = pool[int(rng.integers(0, len(pool)))]
        roll = float(rng.uniform(-k.roll, k.roll)) if k.roll else 0.0
        boxes.append(paste_face(img, load_rgb(src), s, cx, cy, roll))
        sources.append(str(src))
    sigma = float(rng.uniform(*k.blur)) if k.blur[1] else 0.0
    if sigma > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), sigma)
    gain = float(rng.uniform(*k.dim)) if k.dim != (1.0, 1.0) else 1.0
    if gain < 1.0:  # a dim frame: less light, more sensor noise
        noisy = img.astype(np.float32) * gain + rng.normal(0, 3.0, img.shape).astype(np.float32)
        img = np.clip(noisy, 0, 255).astype(np.uint8)
    q = int(rng.integers(k.quality[0], k.quality[1] + 1))
    orientation = int(k.orientations[int(rng.integers(0, len(k.orientations)))])
    return Composed(encode(img, q, orientation), boxes, sources, kind, (w, h), orientation,
                    {"blur": round(sigma, 2), "gain": round(gain, 2), "quality": q})


def iou(a, b) -> float:
    """Intersection over union of two boxes (left, top, right, bottom)."""
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(truth: list, found: list, min_iou: float = 0.3) -> tuple[int, int]:
    """Greedy one-to-one matching of found boxes to true boxes by IoU: (true faces found, false faces).
    0.3, not 0.5: detectors draw the box of the same face differently (dlib's HOG tight on the brows and
    chin, other detectors with the forehead); a box on another place or scale stays well under 0.3."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    used_t, used_f = set(), set()
    for v, i, j in pairs:
        if v < min_iou:
            break
        if i not in used_t and j not in used_f:
            used_t.add(i)
            used_f.add(j)
    return len(used_t), len(found) - len(used_f)
