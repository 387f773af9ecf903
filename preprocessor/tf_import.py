"""Keras and TensorFlow, imported under one lock per process.

Threads of one process import them at once: a web process's warm-up thread loads the embedder and
the detector's TensorFlow Lite while a request thread loads a bundle, a worker's warm-up while its
first task runs. Python's per-module import locks do not make that safe for packages with circular imports: the second
thread may get a partially initialized module (seen: "cannot import name 'Optimizer' from
partially initialized module 'keras.src.optimizers'", a 500 on a prediction). Every import of
them in the service goes through here, so one thread imports them whole and the others wait.
"""
from __future__ import annotations

import threading
from types import ModuleType

_lock = threading.Lock()


def keras_module() -> ModuleType:
    """`keras` (Keras 3 on TensorFlow), imported whole before it is returned."""
    with _lock:
        import keras
    return keras


def tensorflow_module() -> ModuleType:
    """`tensorflow`, imported (with Keras, which imports it) before it is returned."""
    with _lock:
        import keras  # noqa: F401  (first: the same order in every thread)
        import tensorflow
    return tensorflow
