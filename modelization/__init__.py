"""Embeddings -> a trained Keras classifier, its held-out metrics, its bundle, and its use."""
import os

# Quiet TensorFlow's C++ start-up chatter wherever Keras is imported from here.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
