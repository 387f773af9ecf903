"""Aligned face chips -> 128-d dlib ResNet embeddings.

The weights come from the `face_recognition_models` package: nothing is
downloaded at run time.
"""
from __future__ import annotations

from functools import lru_cache

import dlib
import face_recognition_models
import numpy as np

EMBEDDING_SIZE = 128


def resnet_model_path() -> str:
    """Path of dlib's face-recognition ResNet weights."""
    return face_recognition_models.face_recognition_model_location()


@lru_cache(maxsize=1)
def _resnet():
    return dlib.face_recognition_model_v1(resnet_model_path())


def load_model() -> None:
    """Load the ResNet now rather than on the first face."""
    _resnet()


def embed_chips(chips: list[np.ndarray]) -> np.ndarray:
    """Embed aligned (150, 150, 3) uint8 chips: returns float32 (n, 128)."""
    if not chips:
        return np.zeros((0, EMBEDDING_SIZE), np.float32)
    vectors = _resnet().compute_face_descriptor(chips)
    return np.asarray([np.asarray(v) for v in vectors], dtype=np.float32)


def pairwise_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(a), len(b)) without a (n, m, 128) temporary."""
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.sqrt(np.maximum(sq, 0.0))
