"""RGB array -> face boxes -> aligned face chips (dlib 5-point landmarks).

Two detectors (`detector`, FR_DETECTOR; docs/detector.md says why the default is the default):
- "blazeface" (the default): MediaPipe's full-range BlazeFace over tiles of the full-size photo
  (preprocessor/blazeface.py), every face of `min_face_px` or more anywhere in the photo, turned
  faces included; its boxes are mapped to HOG's convention for the landmark model;
- "hog": dlib's frontal HOG, the detector before issue #25. Photos larger than `max_side` are detected on a
  downscaled copy and the boxes mapped back; it runs without upsampling first (upsampling costs ~4x) and retries
  with one upsampling only when nothing was found on a photo of at most `upsample_max_side`.
Landmarks and chips always come from the full-size photo.
"""
from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from functools import cache, lru_cache

import cv2
import dlib
import face_recognition_models
import numpy as np


@dataclass(frozen=True)
class Box:
    """A face box in photo pixels: left, top, right, bottom (right/bottom exclusive)."""
    left: int
    top: int
    right: int
    bottom: int

    @property
    def area(self) -> int:
        return max(0, self.right - self.left) * max(0, self.bottom - self.top)

    def as_list(self) -> list[int]:
        return [self.left, self.top, self.right, self.bottom]


def landmarks_model_path() -> str:
    """Path of dlib's 5-point landmark model, shipped by `face_recognition_models`."""
    return face_recognition_models.pose_predictor_five_point_model_location()


@cache
def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# dlib's models keep scratch buffers inside the object: two threads of one process running a model at
# once corrupt the heap (seen in the soak: web processes with 16 threads died of SIGSEGV and "corrupted
# size vs. prev_size" under concurrent predictions). One lock per model: threads take turns on each.
DETECTOR_LOCK, LANDMARKS_LOCK = threading.Lock(), threading.Lock()


@lru_cache(maxsize=1)
def _detector():
    return dlib.get_frontal_face_detector()


@lru_cache(maxsize=1)
def _shape_predictor():
    return dlib.shape_predictor(landmarks_model_path())


def load_models(detector: str = "hog") -> None:
    """Load `detector` and the landmark model now rather than on the first photo (HOG costs nothing to
    load, BlazeFace's LiteRT interpreter well under a second). BlazeFace is loaded only when it is the
    detector in use: a process set to HOG never holds its interpreter."""
    if detector == "blazeface":
        from preprocessor import blazeface
        blazeface.load_model()
    _detector()
    _shape_predictor()


DETECTORS = ("hog", "blazeface")


def detect_faces(image: np.ndarray, max_side: int = 1600, upsample_max_side: int = 1000,
                 detector: str = "hog", min_face_px: float = 40.0) -> list[Box]:
    """Find faces in an RGB image; returns boxes in the image's own pixel coordinates (HOG's box convention).
    `max_side`/`upsample_max_side` steer "hog", `min_face_px` steers "blazeface"."""
    if detector == "blazeface":
        return _blazeface_boxes(image, min_face_px)
    if detector != "hog":
        raise ValueError(f"unknown detector {detector!r} (one of {', '.join(DETECTORS)})")
    h, w = image.shape[:2]
    scale = 1.0
    small = image
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                           interpolation=cv2.INTER_AREA)
    with DETECTOR_LOCK:
        rects = _detector()(small, 0)
        if len(rects) == 0 and max(small.shape[:2]) <= upsample_max_side:
            rects = _detector()(small, 1)
    return _clipped([(r.left() / scale, r.top() / scale, r.right() / scale, r.bottom() / scale) for r in rects], w, h)


def _clipped(boxes: list[tuple[float, float, float, float]], w: int, h: int) -> list[Box]:
    out = []
    for x0, y0, x1, y1 in boxes:
        box = Box(max(0, int(x0)), max(0, int(y0)), min(w, int(x1)), min(h, int(y1)))
        if box.area > 0:
            out.append(box)
    return out


def _blazeface_boxes(image: np.ndarray, min_face_px: float) -> list[Box]:
    from preprocessor import blazeface  # TensorFlow Lite only once this detector is asked for
    h, w = image.shape[:2]
    found = blazeface.detect(image, min_face_px)
    return _clipped([blazeface.to_hog_box(*d[:4]) for d in found], w, h)


def largest(boxes: list[Box]) -> Box:
    """The biggest box (the face nearest the camera)."""
    return max(boxes, key=lambda b: b.area)


def landmarks(image: np.ndarray, box: Box):
    """dlib's 5 landmarks of the face in `box` (a `full_object_detection`): the two corners of
    each eye (0-1: the eye on the photo's right, outer then inner; 2-3: the other) and the nose base (4)."""
    with LANDMARKS_LOCK:
        return _shape_predictor()(image, dlib.rectangle(box.left, box.top, box.right, box.bottom))


def points(shape) -> np.ndarray:
    """(5, 2) float array of a landmark detection's points (x, y)."""
    return np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)], np.float64)


def chip_from(image: np.ndarray, shape, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """The face of a landmark detection, aligned: (size, size, 3) uint8."""
    return dlib.get_face_chip(image, shape, size=size, padding=padding)


def align_face(image: np.ndarray, box: Box, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Cut the face in `box` out of `image`, aligned on its 5 landmarks: (size, size, 3) uint8."""
    return chip_from(image, landmarks(image, box), size, padding)


@dataclass
class Face:
    """One face of a photo: its box, its 5 landmark points (5, 2) and its aligned chip; once measured
    (features.extract.find_faces), its quality figures and `reason` ("too_small", "too_blurred": not to
    be named; None: recognisable)."""
    box: Box
    points: np.ndarray
    chip: np.ndarray
    quality: dict | None = None
    reason: str | None = None


def face_at(image: np.ndarray, box: Box, size: int = 150, padding: float = 0.25) -> Face:
    """The face in `box`: landmarks found once, for the chip and for the quality figures."""
    shape = landmarks(image, box)
    return Face(box, points(shape), chip_from(image, shape, size, padding))
