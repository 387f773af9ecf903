"""Keras and TensorFlow imported under one lock per process: moved to preprocessor/tf_import.py (the
detector there needs TensorFlow Lite too, and preprocessor/ does not import features/); the same
functions and the same lock, re-exported for features/ and the layers above."""
from preprocessor.tf_import import _lock, keras_module, tensorflow_module

__all__ = ["_lock", "keras_module", "tensorflow_module"]
