"""Photo bytes -> what the photo gives a classifier: an embedding, or why not.

Results are cached on disk by sha256(photo bytes) + pipeline settings, so a
rebuild with the same photos skips decoding, detection and embedding.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from constants import Settings
from features.embeddings import embed_chips, resnet_model_path
from preprocessor.errors import InputError
from preprocessor.faces import Face, detect_faces, face_at, file_sha256, landmarks_model_path
from preprocessor.images import decode_image
from preprocessor.quality import measure

# 2: every face of a photo is embedded (up to max_faces_per_photo); 3: each face's quality figures
PIPELINE_VERSION = 3

# Why a photo gave no embedding.
NO_FACE, CORRUPT = "no_face", "corrupt_image"


@dataclass
class PhotoFeatures:
    """What one photo gave: `embedding` (128 floats) or a `skipped` reason.

    `box`/`embedding`/`quality` are the largest face; with several faces, `others` holds
    the next ones ({"box", "embedding", "quality"}, by size) so that the build can take the
    face that looks like the person (features/select.py), which is not always the largest.
    `quality`: the face's size, sharpness and pose (preprocessor/quality.py).
    """
    faces: int = 0
    box: list[int] | None = None
    embedding: list[float] | None = None
    skipped: str | None = None
    detail: str | None = None
    others: list[dict] | None = None
    quality: dict | None = None

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


def find_faces(image: np.ndarray, settings: Settings, limit: int | None = None) -> tuple[list[Face], int]:
    """Every face of a decoded photo, largest first, cut to `limit`: (faces, how many were found)."""
    boxes = detect_faces(image, settings.detect_max_side, settings.upsample_max_side)
    boxes = sorted(boxes, key=lambda b: -b.area)
    return [face_at(image, b, settings.chip_size, settings.chip_padding) for b in boxes[:limit]], len(boxes)


def describe_photo(data: bytes, settings: Settings) -> tuple[PhotoFeatures, list[Face]]:
    """`photo_features`, and the faces (chips) it embedded."""
    try:
        image = decode_image(data, settings.max_image_pixels)
    except InputError as exc:
        return PhotoFeatures(skipped=CORRUPT, detail=exc.message), []
    faces, found = find_faces(image, settings, max(1, settings.max_faces_per_photo))
    if not faces:
        return PhotoFeatures(skipped=NO_FACE, detail="no face found"), []
    vectors = [[float(x) for x in v] for v in embed_chips([f.chip for f in faces])]
    qualities = [measure(f.box, f.points, f.chip) for f in faces]
    others = [{"box": f.box.as_list(), "embedding": v, "quality": q}
              for f, v, q in zip(faces[1:], vectors[1:], qualities[1:])] or None
    return PhotoFeatures(faces=found, box=faces[0].box.as_list(), embedding=vectors[0], others=others,
                         quality=qualities[0]), faces


def photo_features(data: bytes, settings: Settings) -> PhotoFeatures:
    """Decode, detect, align and embed one training photo: every face, largest first (up to a cap),
    with its quality figures."""
    return describe_photo(data, settings)[0]


def cached_photo_features(data: bytes, settings: Settings, cache: FeatureCache | None) -> tuple[PhotoFeatures, bool]:
    """`photo_features` through the cache. Returns (features, was_cached)."""
    if cache is None:
        return photo_features(data, settings), False
    key = cache.key(data)
    hit = cache.get(key)
    if hit is not None:
        return hit, True
    result = photo_features(data, settings)
    cache.put(key, result)
    return result, False
