"""Aligned face chips -> 128-d dlib ResNet embeddings, by ONNX Runtime, TensorFlow or dlib itself.

Every embedder runs dlib's face ResNet with the weights of the `face_recognition_models`
package (nothing is downloaded at run time) and gives dlib's numbers: `dlib` calls dlib's
`compute_face_descriptor`; `onnx` (the default: the fastest, and without TensorFlow's memory)
runs the same network, written as an ONNX graph from the same weights file, in ONNX Runtime
(features/resnet_onnx.py; within 1e-6 of dlib); `tensorflow` rebuilds it in TensorFlow
(features/resnet_tf.py; within 1e-4). `FR_EMBEDDER` chooses.
"""
from __future__ import annotations

import os
import sys
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import dlib
import face_recognition_models
import numpy as np

from constants import Settings

if TYPE_CHECKING:
    from features.resnet_onnx import OnnxEmbedder
    from features.resnet_tf import TensorFlowEmbedder

EMBEDDING_SIZE = 128
RESNET_LOCK = threading.Lock()


def resnet_model_path() -> str:
    """Path of dlib's face-recognition ResNet weights."""
    return face_recognition_models.face_recognition_model_location()


@lru_cache(maxsize=1)
def _resnet():
    return dlib.face_recognition_model_v1(resnet_model_path())


_tf_lock = threading.Lock()
_tf_embedders: dict[Path, TensorFlowEmbedder] = {}
_tf_inherited = False  # this process was forked from one that had loaded TensorFlow


class ForkedAfterTensorFlow(RuntimeError):
    """TensorFlow's runtime does not survive a fork: its first call in the child never returns."""


def tensorflow_started() -> bool:
    """Has TensorFlow run anything in this process (the embedder, a bundle's load, a training)?
    Importing it is harmless to a fork; running ops starts the thread pools a forked child inherits dead."""
    if _tf_embedders:
        return True
    if "tensorflow" not in sys.modules:
        return False
    try:
        from tensorflow.python.eager import context
        ctx = context.context_safe()
        return ctx is not None and ctx._context_handle is not None
    except Exception:  # TensorFlow's internals moved: assume it ran
        return True


_started_at_fork = False


def _before_fork() -> None:
    global _started_at_fork
    _started_at_fork = tensorflow_started()


def _after_fork_in_child() -> None:
    global _tf_inherited
    _tf_inherited = _tf_inherited or _started_at_fork
    _tf_embedders.clear()
    _onnx_embedders.clear()  # ONNX Runtime's threads stay in the parent: the child makes its own session


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


def _tensorflow(models_dir: Path) -> TensorFlowEmbedder:
    """The TensorFlow embedder (one per process: built on first use, then shared by every thread).

    Raises ForkedAfterTensorFlow in a child forked from a process in which TensorFlow had run (such a
    child hangs in the network's first run): start children with `spawn`, or fork before TensorFlow runs.
    """
    if _tf_inherited:
        raise ForkedAfterTensorFlow("this process was forked from one in which TensorFlow had run, and "
                                    "TensorFlow hangs in such a child: start it with multiprocessing's 'spawn' "
                                    "(or fork before TensorFlow runs, as uWSGI's lazy-apps does)")
    with _tf_lock:
        embedder = _tf_embedders.get(models_dir)
        if embedder is None:
            from features.resnet_tf import TensorFlowEmbedder
            embedder = _tf_embedders[models_dir] = TensorFlowEmbedder(resnet_model_path(), models_dir)
        return embedder


_onnx_lock = threading.Lock()
_onnx_embedders: dict[tuple[Path, int], OnnxEmbedder] = {}


def _onnx(settings: Settings) -> OnnxEmbedder:
    """The ONNX Runtime embedder (one per process and thread count: built on first use, then shared by every
    thread), running on `settings.embedder_threads` cores (0: all)."""
    key = (settings.models_dir, settings.embedder_threads)
    with _onnx_lock:
        embedder = _onnx_embedders.get(key)
        if embedder is None:
            from features.resnet_onnx import OnnxEmbedder
            embedder = _onnx_embedders[key] = OnnxEmbedder(resnet_model_path(), settings.models_dir,
                                                           settings.embedder_threads)
        return embedder


def load_model(settings: Settings | None = None) -> None:
    """Load the embedder now rather than on the first face. The ONNX and TensorFlow ones also run a
    chip through their network, so that the first real batch does not pay for setting it up."""
    s = settings or Settings.from_env()
    if s.embedder == "onnx":
        _onnx(s).warm_up()
    elif s.embedder == "tensorflow":
        _tensorflow(s.models_dir).warm_up()
    else:
        _resnet()


def embed_chips(chips: list[np.ndarray] | np.ndarray, mirror: bool = False,
                settings: Settings | None = None) -> np.ndarray:
    """Embed aligned (150, 150, 3) uint8 chips in one batch: returns float32 (n, 128).

    `mirror`: each embedding is the mean of the chip's and of its mirror image's,
    which cancels part of the network's noise (test-time augmentation; the mirror
    images go in the same batch). Used for the faces a model identifies, not for its
    gallery (README "Open set").
    `settings.embedder` chooses who computes them ("onnx", "tensorflow" or "dlib": dlib's numbers);
    the ONNX graph and TensorFlow's converted weights are cached in `settings.models_dir` (default
    settings: FR_*).
    """
    s = settings or Settings.from_env()
    if len(chips) == 0:
        return np.zeros((0, EMBEDDING_SIZE), np.float32)
    batch = list(chips) + ([np.ascontiguousarray(c[:, ::-1]) for c in chips] if mirror else [])
    if s.embedder == "onnx":
        vectors = _onnx(s)(np.stack(batch))  # thread-safe (features/resnet_onnx.py)
    elif s.embedder == "tensorflow":
        vectors = _tensorflow(s.models_dir)(np.stack(batch))  # thread-safe (features/resnet_tf.py)
    else:
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
