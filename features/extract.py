"""Photo bytes -> what the photo gives a classifier: an embedding, or why not.

Results are cached on disk by sha256(photo bytes) + pipeline settings, so a
rebuild with the same photos skips decoding, detection and embedding.
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import math
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import ClassVar

import numpy as np

from constants import EMBEDDERS, Settings
from features.embeddings import EMBEDDING_SIZE, embed_chips, resnet_model_path
from preprocessor.errors import InputError
from preprocessor.faces import Face, detect_faces, face_at, file_sha256, landmarks_model_path
from preprocessor.images import decode_image
from preprocessor.quality import measure, reason, recognisable_limits

# 2: every face of a photo is embedded (up to max_faces_per_photo); 3: each face's quality figures;
# 4: the detector is a setting (FR_DETECTOR: HOG, then BlazeFace by default) and each face has a `reason`;
# 5: 16-bit greyscale photos decoded to their tones, not white (their cached "no face" must not be reused)
PIPELINE_VERSION = 5

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

    @classmethod
    def from_wire(cls, item: dict) -> PhotoFeatures:
        """Features as a worker sends them (plus its `cached`, `key`, `seconds`), checked field by field.
        Raises ValueError/TypeError on anything else: the broker keeps only what it can use."""
        if not isinstance(item, dict):
            raise TypeError("a photo's features must be an object")
        extra = {"cached", "key", "seconds"}
        names = {f.name for f in dataclass_fields(cls)}
        if set(item) - names - extra:
            raise ValueError(f"unknown fields {sorted(set(item) - names - extra)[:5]}")
        _check(isinstance(item.get("cached", False), bool), "cached")
        _check(item.get("key") is None or (isinstance(item["key"], str) and len(item["key"]) == 64), "key")
        _check(_real(item.get("seconds", 0.0)) and item.get("seconds", 0.0) >= 0, "seconds")
        value = cls(**{k: v for k, v in item.items() if k in names})
        _check(isinstance(value.faces, int) and not isinstance(value.faces, bool) and 0 <= value.faces <= 10**5,
               "faces")
        _check(value.skipped is None or (isinstance(value.skipped, str) and len(value.skipped) <= 40), "skipped")
        _check(value.detail is None or (isinstance(value.detail, str) and len(value.detail) <= 2000), "detail")
        _check(value.usable == (value.skipped is None), "embedding or skipped")
        if value.usable:
            _check(_box(value.box) and _vector(value.embedding), "box/embedding")
        _check(value.quality is None or _quality(value.quality), "quality")
        _check(value.others is None or (isinstance(value.others, list) and len(value.others) <= 1000 and all(
            isinstance(o, dict) and {"box", "embedding"} <= set(o) <= {"box", "embedding", "quality"}
            and _box(o["box"]) and _vector(o["embedding"]) and (o.get("quality") is None or _quality(o["quality"]))
            for o in value.others)), "others")
        return value


def _check(ok: bool, name: str) -> None:
    if not ok:
        raise ValueError(f"bad {name}")


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _box(box) -> bool:
    return isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) and not isinstance(v, bool)
                                                           for v in box)


def _quality(q) -> bool:
    """preprocessor.quality.measure's figures: a few finite numbers (pose may be None)."""
    return isinstance(q, dict) and len(q) <= 16 and all(
        isinstance(k, str) and (v is None or _real(v)) for k, v in q.items())


def _vector(v) -> bool:
    return isinstance(v, list) and len(v) == EMBEDDING_SIZE and all(_real(x) for x in v)


def pipeline_settings(settings: Settings) -> dict:
    """Everything that changes an embedding; part of the cache key and of the manifest."""
    return {
        "pipeline_version": PIPELINE_VERSION,
        **_detector_settings(settings),
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


def _detector_settings(settings: Settings) -> dict:
    if settings.detector == "blazeface":
        from preprocessor import blazeface
        return {"detector": "blazeface full-range (MediaPipe) over tiles, boxes mapped to HOG's",
                "detect_min_face_px": settings.detect_min_face_px,
                "detector_model": {blazeface.MODEL_FILE: file_sha256(blazeface.model_path())},
                "detector_params": {"model_min_face": blazeface.MODEL_MIN_FACE, "level_step": blazeface.LEVEL_STEP,
                                    "model_max_face": blazeface.MODEL_MAX_FACE, "large_pixels": blazeface.LARGE_PIXELS,
                                    "model_min_face_large": blazeface.MODEL_MIN_FACE_LARGE,
                                    "min_score": blazeface.MIN_SCORE, "sure_score": blazeface.SURE_SCORE,
                                    "confirm_score": blazeface.CONFIRM_SCORE,
                                    "likely_score": blazeface.LIKELY_SCORE,
                                    "recheck_faces": blazeface.RECHECK_FACES,
                                    "hog_from_blaze": blazeface.HOG_FROM_BLAZE}}
    return {"detector": "dlib HOG frontal_face_detector",
            "detect_max_side": settings.detect_max_side,
            "upsample_max_side": settings.upsample_max_side,
            "upsample_policy": "0, then 1 if no face and the photo fits upsample_max_side"}


def _salt(settings: Settings) -> str:
    return hashlib.sha256(json.dumps(pipeline_settings(settings), sort_keys=True).encode()).hexdigest()


def scoped_digest(digest: str, scope: str | None) -> str:
    """A photo's sha256 (hex) as the feature cache of `scope` (a tenant) knows it: the same photo has another
    entry in each tenant's cache, so that no tenant learns from a hit (`features_cached`, a build's speed)
    that another tenant uploaded that photo. No scope: the digest itself (jobs from before tenants)."""
    if not scope:
        return digest
    return hashlib.sha256(b"tenant\0" + scope.encode() + b"\0" + bytes.fromhex(digest)).hexdigest()


class FeatureCache:
    """One small JSON file per (photo, settings, tenant) key under `root/<2 hex>/<key>.json`.

    Bounded: past `max_bytes` the least recently used entries go first (a hit refreshes an entry's
    mtime, which is what "recently" means). The usage is counted once per process and root, then kept
    up to date by this process's writes; every prune measures it again, so several processes sharing
    one folder stay within the bound.
    """

    _usage: ClassVar[dict[Path, int]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, root: Path, settings: Settings, scope: str | None = None):
        self.root = Path(root)
        self.scope = scope  # the tenant whose entries `key` names (scoped_digest)
        self.max_bytes = settings.cache_max_bytes
        self.salt = _salt(settings)
        # A deleted job's photos are purged from what every embedder made of them: a host that
        # switched FR_EMBEDDER still holds the other one's entries.
        self._all_salts = [_salt(replace(settings, embedder=e)) for e in EMBEDDERS]

    def key(self, data: bytes) -> str:
        return self.key_for_digest(scoped_digest(hashlib.sha256(data).hexdigest(), self.scope))

    def key_for_digest(self, digest: str, salt: str | None = None) -> str:
        """The entry of the photo whose bytes hash (sha256, hex) to `digest`."""
        return hashlib.sha256((salt or self.salt).encode() + bytes.fromhex(digest)).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> PhotoFeatures | None:
        path = self._path(key)
        try:
            value = PhotoFeatures(**json.loads(path.read_text()))
            os.utime(path)  # least recently *used* goes first
            return value
        except (OSError, ValueError, TypeError):
            return None

    def put(self, key: str, value: PhotoFeatures) -> None:
        if self.max_bytes <= 0:
            return
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(asdict(value), fh)
            os.replace(tmp, path)  # atomic: readers never see half a file
        except OSError:  # a full disk costs the cache entry, not the task
            Path(tmp).unlink(missing_ok=True)
            return
        with self._lock:
            usage = self._usage.get(self.root)
            self._usage[self.root] = (self._measure() if usage is None else usage) + path.stat().st_size
            if self._usage[self.root] > self.max_bytes:
                self._usage[self.root] = self.prune(int(self.max_bytes * 0.9))

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for f in self.root.glob("??/*.json"):
            try:
                st = f.stat()
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, f))
        return out

    def _measure(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def prune(self, target: int) -> int:
        """Remove the least recently used entries until at most `target` bytes remain. -> bytes left."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        for _, size, f in entries:
            if total <= target:
                break
            f.unlink(missing_ok=True)
            total -= size
        return total

    def purge(self, digests: list[str]) -> int:
        """Forget the photos whose digests are `digests` (their job was deleted), as `scoped_digest` gives
        them for the job's tenant. -> entries removed."""
        keys: list[str] = []
        for digest in digests:
            try:
                keys.extend(self.key_for_digest(digest, salt) for salt in self._all_salts)
            except ValueError:
                pass
        return self.purge_keys(keys)

    def purge_keys(self, keys: list[str]) -> int:
        """Forget these entries. -> how many there were."""
        n = 0
        for key in keys:
            try:
                self._path(key).unlink()
                n += 1
            except FileNotFoundError:
                pass
        with self._lock:
            self._usage.pop(self.root, None)  # measured again on the next write
        return n


class _Clock:
    """Seconds spent on each step of a photo's path, lap by lap."""

    def __init__(self):
        self.steps: dict[str, float] = {}
        self._t = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.steps[step], self._t = self.steps.get(step, 0.0) + now - self._t, now


def find_faces(image: np.ndarray, settings: Settings, limit: int | None = None,
               clock: _Clock | None = None) -> tuple[list[Face], int]:
    """Every face of a decoded photo, largest first, cut to `limit`: (faces, how many were found).
    Each face comes with its box, quality figures and `reason` (None, "too_small" or "too_blurred":
    a face that must not be named). `clock` (optional) gets the laps `detect` and `align`."""
    boxes = detect_faces(image, settings.detect_max_side, settings.upsample_max_side, settings.detector,
                         settings.detect_min_face_px)
    boxes = sorted(boxes, key=lambda b: -b.area)
    if clock:
        clock.lap("detect")
    faces = [face_at(image, b, settings.chip_size, settings.chip_padding) for b in boxes[:limit]]
    if clock:
        clock.lap("align")
    limits = recognisable_limits(settings)
    for f in faces:
        f.quality = measure(f.box, f.points, f.chip)
        f.reason = reason(f.quality, **limits)
    return faces, len(boxes)


@dataclass
class FoundFaces:
    """One training photo decoded, its faces found, cut out and measured: all but the embedding.

    `result` is final for a photo without a usable face (`skipped`); `with_embeddings` fills in
    the rest once the chips are embedded (several photos' chips go in one batch). `steps`:
    seconds spent on each step (decode, detect, align, quality).
    """
    result: PhotoFeatures
    faces: list[Face] = field(default_factory=list)
    qualities: list[dict] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)


def prepare_photo(data: bytes, settings: Settings) -> FoundFaces:
    """Decode one training photo, find its faces (largest first, up to a cap), align and measure them."""
    clock = _Clock()
    try:
        image = decode_image(data, settings.max_image_pixels)
    except InputError as exc:
        clock.lap("decode")
        return FoundFaces(PhotoFeatures(skipped=CORRUPT, detail=exc.message), steps=clock.steps)
    clock.lap("decode")
    faces, found = find_faces(image, settings, max(1, settings.max_faces_per_photo), clock)
    if not faces:
        return FoundFaces(PhotoFeatures(skipped=NO_FACE, detail="no face found"), steps=clock.steps)
    qualities = [f.quality or measure(f.box, f.points, f.chip) for f in faces]
    clock.lap("quality")
    return FoundFaces(PhotoFeatures(faces=found), faces, qualities, clock.steps)


def with_embeddings(found: FoundFaces, vectors: np.ndarray) -> PhotoFeatures:
    """The photo's features once its chips are embedded (`vectors`: one row per chip, in order)."""
    if not found.faces:
        return found.result
    rows = np.asarray(vectors, np.float32).tolist()
    q = found.qualities
    others = [{"box": f.box.as_list(), "embedding": v, "quality": qf}
              for f, v, qf in zip(found.faces[1:], rows[1:], q[1:])] or None
    return PhotoFeatures(faces=found.result.faces, box=found.faces[0].box.as_list(), embedding=rows[0],
                         others=others, quality=q[0])


def photos_features(photos: list[bytes], settings: Settings) -> list[tuple[PhotoFeatures, float]]:
    """Decode, detect, align and measure each training photo, then embed every face of them all in one
    batch (settings.embedder). Returns (features, seconds spent on the photo) per photo: its own steps
    plus its faces' share of the batch's embedding time."""
    found = [prepare_photo(data, settings) for data in photos]
    t0 = time.perf_counter()
    vectors = embed_chips([f.chip for ff in found for f in ff.faces], settings=settings)
    per_chip = (time.perf_counter() - t0) / max(1, len(vectors))
    out, i = [], 0
    for ff in found:
        n = len(ff.faces)
        out.append((with_embeddings(ff, vectors[i:i + n]), sum(ff.steps.values()) + per_chip * n))
        i += n
    return out


def describe_photo(data: bytes, settings: Settings) -> tuple[PhotoFeatures, list[Face]]:
    """`photo_features`, and the faces (chips) it embedded."""
    found = prepare_photo(data, settings)
    vectors = embed_chips([f.chip for f in found.faces], settings=settings)
    return with_embeddings(found, vectors), found.faces


def photo_features(data: bytes, settings: Settings) -> PhotoFeatures:
    """Decode, detect, align and embed one training photo: every face, largest first (up to a cap),
    with its quality figures."""
    return describe_photo(data, settings)[0]


def release_freed_memory() -> None:
    """Give the heap's free pages back to the system (glibc's malloc_trim; elsewhere nothing). An extract
    task's photos, chips and batches are freed when it ends, but glibc keeps the pages for reuse, so a
    worker stayed ~50-90 MB above its idle size after a build, at the moment its train task adds a child."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


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
