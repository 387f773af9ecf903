"""Embeddings -> a trained Keras classifier, its held-out metrics and its bundle."""
