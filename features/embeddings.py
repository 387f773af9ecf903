"""Aligned face chips -> 128-d dlib ResNet embeddings.

The weights come from the `face_recognition_models` package: nothing is
downloaded at run time.
"""
from __future__ import annotations

import threading
from functools import lru_cache

import dlib
import face_recognition_models
import numpy as np

EMBEDDING_SIZE = 128
RESNET_LOCK = threading.Lock()


def resnet_model_path() -> str:
    """Path of dlib's face-recognition ResNet weights."""
    return face_recognition_models.face_recognition_model_location()


@lru_cache(maxsize=1)
def _resnet():
    return dlib.face_recognition_model_v1(resnet_model_path())


def load_model() -> None:
    """Load the ResNet now rather than on the first face."""
    _resnet()


def embed_chips(chips: list[np.ndarray], mirror: bool = False) -> np.ndarray:
    """Embed aligned (150, 150, 3) uint8 chips: returns float32 (n, 128).

    `mirror`: each embedding is the mean of the chip's and of its mirror image's,
    which cancels part of the network's noise (test-time augmentation; costs a
    second pass). Used for the faces a model identifies, not for its gallery
    (README "Open set").
    """
    if not chips:
        return np.zeros((0, EMBEDDING_SIZE), np.float32)
    batch = list(chips) + ([np.ascontiguousarray(c[:, ::-1]) for c in chips] if mirror else [])
    with RESNET_LOCK:  # the network holds its layers' outputs: one forward pass at a time per process
        vectors = np.asarray([np.asarray(v) for v in _resnet().compute_face_descriptor(batch)], dtype=np.float32)
    if mirror:
        return (vectors[:len(chips)] + vectors[len(chips):]) / 2
    return vectors


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) without a (n, m, 128) temporary."""
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))
