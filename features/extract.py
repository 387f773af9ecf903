"""Photo bytes -> what the photo gives a classifier: an embedding, or why not.

Results are cached on disk by sha256(photo bytes) + pipeline settings, so a
rebuild with the same photos skips decoding, detection and embedding.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from constants import Settings
from features.embeddings import embed_chips, resnet_model_path
from preprocessor.errors import InputError
from preprocessor.faces import Box, detect_faces, face_chip, file_sha256, landmarks, landmarks_model_path
from preprocessor.images import decode_image

PIPELINE_VERSION = 2  # 2: every face of a photo is embedded (up to max_faces_per_photo)

# Why a photo gave no embedding.
NO_FACE, CORRUPT = "no_face", "corrupt_image"


@dataclass
class PhotoFeatures:
    """What one photo gave: `embedding` (128 floats) or a `skipped` reason.

    `box`/`embedding` are the largest face; with several faces, `others` holds the
    next ones ({"box", "embedding"}, by size) so that the build can take the face
    that looks like the person (features/select.py), which is not always the largest.
    """
    faces: int = 0
    box: list[int] | None = None
    embedding: list[float] | None = None
    skipped: str | None = None
    detail: str | None = None
    others: list[dict] | None = None

    @property
    def usable(self) -> bool:
        return self.embedding is not None


def pipeline_settings(settings: Settings) -> dict:
    """Everything that changes an embedding; part of the cache key and of the manifest."""
    return {
        "pipeline_version": PIPELINE_VERSION,
        "detector": "dlib HOG frontal_face_detector",
        "detect_max_side": settings.detect_max_side,
        "upsample_max_side": settings.upsample_max_side,
        "upsample_policy": "0, then 1 if no face and the photo fits upsample_max_side",
        "chip_size": settings.chip_size,
        "chip_padding": settings.chip_padding,
        "max_faces_per_photo": settings.max_faces_per_photo,
        "max_image_pixels": settings.max_image_pixels,
        # The two embedders agree within 1e-4, not to the bit: the cache keeps their features apart,
        # so a build's features all come from the embedder its manifest names.
        "embedder": settings.embedder,
        "models": {
            "shape_predictor_5_face_landmarks.dat": file_sha256(landmarks_model_path()),
            "dlib_face_recognition_resnet_model_v1.dat": file_sha256(resnet_model_path()),
        },
    }


class FeatureCache:
    """One small JSON file per (photo, settings) key under `root/<2 hex>/<key>.json`."""

    def __init__(self, root: Path, settings: Settings):
        self.root = Path(root)
        self.salt = hashlib.sha256(json.dumps(pipeline_settings(settings), sort_keys=True).encode()).hexdigest()

    def key(self, data: bytes) -> str:
        return hashlib.sha256(self.salt.encode() + hashlib.sha256(data).digest()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> PhotoFeatures | None:
        try:
            return PhotoFeatures(**json.loads(self._path(key).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def put(self, key: str, value: PhotoFeatures) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(value), fh)
        os.replace(tmp, path)  # atomic: readers never see half a file


@dataclass
class FoundFaces:
    """One photo decoded, its faces found and cut out: what embedding needs.

    `result` is final for a photo without a usable face (`skipped`); `with_embeddings` fills
    in the rest. `steps`: seconds spent on each step (decode, detect, landmarks, chips).
    """
    result: PhotoFeatures
    boxes: list[Box] = field(default_factory=list)
    chips: list[np.ndarray] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)


class _Clock:
    def __init__(self):
        self.steps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, step: str) -> dict[str, float]:
        now = time.perf_counter()
        self.steps[step], self._t = now - self._t, now
        return self.steps


def find_faces(data: bytes, settings: Settings) -> FoundFaces:
    """Decode, detect, and align one photo: every face, largest first (up to a cap), as chips."""
    clock = _Clock()
    try:
        image = decode_image(data, settings.max_image_pixels)
    except InputError as exc:
        return FoundFaces(PhotoFeatures(skipped=CORRUPT, detail=exc.message), steps=clock.lap("decode"))
    clock.lap("decode")
    boxes = detect_faces(image, settings.detect_max_side, settings.upsample_max_side)
    clock.lap("detect")
    if not boxes:
        return FoundFaces(PhotoFeatures(skipped=NO_FACE, detail="no face found"), steps=clock.steps)
    found = len(boxes)
    boxes = sorted(boxes, key=lambda b: -b.area)[:max(1, settings.max_faces_per_photo)]
    shapes = [landmarks(image, box) for box in boxes]
    clock.lap("landmarks")
    chips = [face_chip(image, shape, settings.chip_size, settings.chip_padding) for shape in shapes]
    return FoundFaces(PhotoFeatures(faces=found), boxes, chips, clock.lap("chips"))


def with_embeddings(found: FoundFaces, vectors: np.ndarray) -> PhotoFeatures:
    """The photo's features once its chips are embedded (`vectors`: one row per chip, in order)."""
    if not found.chips:
        return found.result
    rows = np.asarray(vectors, np.float32).tolist()
    others = [{"box": b.as_list(), "embedding": v} for b, v in zip(found.boxes[1:], rows[1:])] or None
    return PhotoFeatures(faces=found.result.faces, box=found.boxes[0].as_list(), embedding=rows[0], others=others)


def photos_features(photos: list[bytes], settings: Settings) -> list[tuple[PhotoFeatures, float]]:
    """Decode, detect and align each training photo, then embed every face of them all in one batch.

    Returns (features, seconds spent on the photo) per photo: its own decode, detection and
    alignment, plus its faces' share of the batch's embedding time.
    """
    found = [find_faces(data, settings) for data in photos]
    t0 = time.perf_counter()
    vectors = embed_chips([chip for f in found for chip in f.chips], settings=settings)
    per_chip = (time.perf_counter() - t0) / max(1, len(vectors))
    out, i = [], 0
    for f in found:
        out.append((with_embeddings(f, vectors[i:i + len(f.chips)]), sum(f.steps.values()) + per_chip * len(f.chips)))
        i += len(f.chips)
    return out


def photo_features(data: bytes, settings: Settings) -> PhotoFeatures:
    """Decode, detect, align and embed one training photo: every face, largest first (up to a cap)."""
    return photos_features([data], settings)[0][0]


def cached_photos_features(photos: list[bytes], settings: Settings,
                           cache: FeatureCache | None) -> list[tuple[PhotoFeatures, bool, float]]:
    """`photos_features` through the cache, the photos it misses embedded in one batch.

    Returns (features, was_cached, seconds) per photo.
    """
    if cache is None:
        return [(f, False, t) for f, t in photos_features(photos, settings)]
    out: list[tuple[PhotoFeatures, bool, float] | None] = []
    misses = []
    for i, data in enumerate(photos):
        t0 = time.perf_counter()
        hit = cache.get(cache.key(data))
        out.append(None if hit is None else (hit, True, time.perf_counter() - t0))
        if hit is None:
            misses.append(i)
    for i, (result, seconds) in zip(misses, photos_features([photos[i] for i in misses], settings) if misses else []):
        cache.put(cache.key(photos[i]), result)
        out[i] = (result, False, seconds)
    return [o for o in out if o is not None]


def cached_photo_features(data: bytes, settings: Settings, cache: FeatureCache | None) -> tuple[PhotoFeatures, bool]:
    """`photo_features` through the cache. Returns (features, was_cached)."""
    result, cached, _ = cached_photos_features([data], settings, cache)[0]
    return result, cached
