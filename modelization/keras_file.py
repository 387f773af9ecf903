"""A bundle's classifier (`model.keras`) read without Keras: its layers as numpy steps.

A `.keras` file is a zip of `config.json` (the layers, in order, with their settings) and
`model.weights.h5` (each layer's variables under `layers/<snake_case class>[_<k>]/vars/<i>`, the
k-th layer of a class in the model's order). The classifiers this service builds
(modelization/network.py) hold only Rescaling, Dense, Dropout, UnitNormalization and Activation
layers, which a numpy forward pass mirrors exactly; reading them takes h5py (~10 MB), where
loading the file with Keras takes TensorFlow (~450 MB in every process that predicts).
A file holding anything else is still served: `KerasFile` then loads it with Keras on first use.
"""
from __future__ import annotations

import io
import json
import re
import tempfile
import threading
import zipfile
from pathlib import Path

import numpy as np

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
# Keras's activations the numpy steps compute as Keras does (strings only: a dict is a custom one). Not gelu:
# Keras's is erf's, the numpy one tanh's approximation (1e-4 apart); the search never builds it anyway.
ACTIVATIONS = ("linear", "relu", "tanh", "sigmoid", "elu", "selu", "swish", "silu", "softmax")


def snake_case(name: str) -> str:
    """Keras's naming of a layer's weights group: its class in snake case (Dense -> dense, UnitNormalization ->
    unit_normalization)."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def read_steps(data: bytes) -> list[tuple] | None:
    """The classifier in `data` (the bytes of a `.keras` file) as steps Recognizer runs in numpy:
    ("scale", scale, offset), ("unit",), ("dense", kernel | None, bias | None, activation).
    None when it holds a layer, setting or shape these steps do not mirror (Keras must run it)."""
    import h5py
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        config = json.loads(zf.read(CONFIG_FILE))
        weights = zf.read(WEIGHTS_FILE)
    layers = (config.get("config") or {}).get("layers")
    if config.get("class_name") != "Functional" or not isinstance(layers, list):
        return None
    steps: list[tuple] = []
    seen: dict[str, int] = {}
    with h5py.File(io.BytesIO(weights), "r") as h5:
        for layer in layers:
            kind, cfg = layer.get("class_name"), layer.get("config") or {}
            group = snake_case(str(kind))
            k = seen.get(group, 0)
            seen[group] = k + 1
            path = f"layers/{group}" + (f"_{k}" if k else "") + "/vars"
            if kind in ("InputLayer", "Dropout"):  # dropout: training only
                continue
            if kind == "Rescaling":
                scale, offset = cfg.get("scale"), cfg.get("offset", 0.0)
                if not isinstance(scale, (int, float)) or not isinstance(offset, (int, float)):
                    return None
                steps.append(("scale", float(scale), float(offset)))
            elif kind == "UnitNormalization":
                if cfg.get("axis", -1) not in (-1, [-1], 1, [1]):
                    return None
                steps.append(("unit",))
            elif kind in ("Dense", "Activation"):
                activation = cfg.get("activation", "linear")
                if activation not in ACTIVATIONS:
                    return None
                if kind == "Activation":
                    steps.append(("dense", None, None, activation))
                    continue
                if path not in h5 or "0" not in h5[path]:
                    return None
                kernel = np.asarray(h5[path]["0"], np.float32)
                bias = np.asarray(h5[path]["1"], np.float32) if cfg.get("use_bias", True) else \
                    np.zeros(kernel.shape[1], np.float32)
                if kernel.ndim != 2 or bias.shape != (kernel.shape[1],) or kernel.shape[1] != cfg.get("units"):
                    return None
                steps.append(("dense", kernel, bias, activation))
            else:
                return None
    return steps


class KerasFile:
    """A `.keras` file's bytes, its numpy `steps` (None if it holds what they do not mirror), and the Keras
    model itself, loaded only if something calls it (then with TensorFlow: seconds and ~450 MB)."""

    def __init__(self, data: bytes):
        self.data = data
        self.steps = read_steps(data)
        self._model = None
        self._lock = threading.Lock()

    def keras_model(self):
        """The Keras model of the file (loaded once)."""
        with self._lock:
            if self._model is None:
                from features.tf_import import keras_module
                keras = keras_module()
                with tempfile.TemporaryDirectory() as tmp:
                    path = Path(tmp) / "model.keras"
                    path.write_bytes(self.data)
                    self._model = keras.models.load_model(path, compile=False)
            return self._model

    def __call__(self, x: np.ndarray, training: bool = False):
        """Keras's forward pass (what a Keras model called directly gives)."""
        return self.keras_model()(x, training=training)
