"""dlib's face ResNet run by TensorFlow: the same network and weights, the same numbers.

The weights are read from the `.dat` that `face_recognition_models` ships
(features/dlib_dat.py), converted once to TensorFlow's layouts and cached as an `.npz`
under the data dir, keyed by the `.dat`'s sha256: nothing is downloaded or committed.

What has to match dlib exactly (dlib/dnn/input.h, layers.h, cuda/cpu_dlib.cpp):
- input: (pixel - channel mean) / 256 in float32, RGB;
- convolutions are correlations; dlib pads size // 2 when the stride is 1 and nothing when
  it is 2, and its output size is 1 + (n + 2 pad - size) // stride, i.e. TensorFlow's
  'same' (stride 1, odd size) and 'valid' (stride 2);
- affine: gamma * x + beta per channel (dlib's inference form of batch norm);
- max pool 3x3/2 and the shortcut's avg pool 2x2/2 without padding: 'valid';
- add_prev: when the two tensors differ in size (channels doubled by the block; the
  block's strided 3x3 gives one row and column fewer than the 2x2 pool, 8 -> 3 vs 4),
  dlib adds them as if the smaller were zero-padded at the end of each dimension;
- avg_pool_everything then fc_no_bias 128: the embedding, not normalised.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from features.chips import CHIP, in_batches
from features.dlib_dat import Network, read_network
from features.tf_import import keras_module, tensorflow_module
from logger import logger
from preprocessor.faces import file_sha256


def convert(dat_path: str) -> dict[str, np.ndarray]:
    """The .dat's weights in TensorFlow layouts, by name (what the cache holds)."""
    return _flatten(read_network(Path(dat_path).read_bytes()))


def _flatten(net: Network) -> dict[str, np.ndarray]:
    out = {"input_mean": np.asarray(net.input_mean, np.float32)}

    def conv(name, c):
        out[name + "/kernel"] = np.ascontiguousarray(c.filters.transpose(2, 3, 1, 0))
        out[name + "/bias"] = c.bias

    def affine(name, a):
        out[name + "/gamma"], out[name + "/beta"] = a.gamma, a.beta

    conv("stem_conv", net.stem_conv)
    affine("stem_affine", net.stem_affine)
    for i, u in enumerate(net.units):
        conv(f"unit{i}_conv1", u.conv1)
        affine(f"unit{i}_affine1", u.affine1)
        conv(f"unit{i}_conv2", u.conv2)
        affine(f"unit{i}_affine2", u.affine2)
        out[f"unit{i}_down"] = np.asarray(u.down)
    if net.fc is None:
        raise ValueError("the network has no fc layer")
    out["fc/kernel"] = net.fc
    return out


# The cache is a convenience (a conversion takes seconds): it never takes the data disk's last room, which
# builds need (a web process caching the weights on a nearly full disk kept a stalled build from resuming).
CACHE_KEEPS_FREE = 64 * 1024 * 1024


def cached_weights(dat_path: str, cache_dir: Path) -> dict[str, np.ndarray]:
    """The converted weights, from `cache_dir` if they were converted before, else converted and stored.

    Keyed by the .dat's sha256, so another weights file never meets a stale conversion.
    The file is written to a temporary name and renamed: concurrent processes never read half a file.
    """
    sha = file_sha256(dat_path)
    path = Path(cache_dir) / f"{Path(dat_path).stem}-{sha[:16]}.tf.npz"
    try:
        with np.load(path) as z:
            weights = {k: z[k] for k in z.files}
        if weights.get("sha256") is not None and str(weights.pop("sha256")) == sha:
            return weights
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # absent or damaged: convert again
        pass
    weights = convert(dat_path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        need = sum(a.nbytes for a in weights.values()) + CACHE_KEEPS_FREE
        if shutil.disk_usage(path.parent).free < need:
            logger.warning("converted ResNet weights not cached in {}: the disk has less than {} MB free",
                           path.parent, need >> 20)
            return weights
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            arrays: dict[str, Any] = {"sha256": np.asarray(sha), **weights}  # Any: savez's stub types its kwargs
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError as exc:  # a full or read-only disk costs the cache file (converted again), not the embedder
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        logger.warning("converted ResNet weights not cached in {}: {}", path.parent, exc)
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise
    return weights


def _dlib_layers(layers, ops) -> tuple[type, type]:
    """Keras layers for dlib's affine_ (per channel) and add_prev_ (zero-padded sum): (ChannelAffine, ZeroPadAdd)."""

    class ChannelAffine(layers.Layer):
        """dlib's affine_ layer in CONV_MODE: gamma * x + beta per channel."""

        def __init__(self, gamma, beta, **kw):
            super().__init__(**kw)
            self.gamma = self.add_weight(shape=gamma.shape, initializer="zeros", trainable=False, name="gamma")
            self.beta = self.add_weight(shape=beta.shape, initializer="zeros", trainable=False, name="beta")
            self.gamma.assign(gamma)
            self.beta.assign(beta)

        def call(self, x):
            return x * self.gamma + self.beta

    class ZeroPadAdd(layers.Layer):
        """dlib's add_prev_: the sum over the larger shape, the smaller tensor zero-padded at the end."""

        def call(self, a, b):
            ha, wa, ca = a.shape[1:]
            hb, wb, cb = b.shape[1:]
            h, w, c = max(ha, hb), max(wa, wb), max(ca, cb)

            def pad(t, th, tw, tc):
                if (th, tw, tc) == (h, w, c):
                    return t
                return ops.pad(t, [[0, 0], [0, h - th], [0, w - tw], [0, c - tc]])
            return pad(a, ha, wa, ca) + pad(b, hb, wb, cb)

    return ChannelAffine, ZeroPadAdd


def build_model(weights: dict[str, np.ndarray]):
    """The Keras model: (n, 150, 150, 3) uint8 RGB chips -> (n, 128) float32 embeddings."""
    keras = keras_module()
    from keras import layers, ops  # imported whole by keras_module()
    ChannelAffine, ZeroPadAdd = _dlib_layers(layers, ops)

    def conv(x, name, stride):
        kernel, bias = weights[name + "/kernel"], weights[name + "/bias"]
        size, filters = kernel.shape[0], kernel.shape[3]
        layer = layers.Conv2D(filters, size, strides=stride, padding="same" if stride == 1 else "valid",
                              name=name)
        y = layer(x)
        layer.set_weights([kernel, bias])
        return y

    def affine(x, name):
        return ChannelAffine(weights[name + "/gamma"], weights[name + "/beta"], name=name)(x)

    mean = weights["input_mean"]
    inp = keras.Input((CHIP, CHIP, 3), dtype="uint8", name="chips")
    x = layers.Rescaling(1 / 256, offset=-mean / 256, name="input_scaling")(ops.cast(inp, "float32"))
    x = layers.ReLU()(affine(conv(x, "stem_conv", 2), "stem_affine"))
    x = layers.MaxPooling2D(3, 2, padding="valid")(x)
    i = 0
    while f"unit{i}_down" in weights:
        down = bool(weights[f"unit{i}_down"])
        y = layers.ReLU()(affine(conv(x, f"unit{i}_conv1", 2 if down else 1), f"unit{i}_affine1"))
        y = affine(conv(y, f"unit{i}_conv2", 1), f"unit{i}_affine2")
        shortcut = layers.AveragePooling2D(2, 2, padding="valid")(x) if down else x
        x = layers.ReLU()(ZeroPadAdd(name=f"unit{i}_add")(y, shortcut))
        i += 1
    x = layers.GlobalAveragePooling2D()(x)
    fc = layers.Dense(weights["fc/kernel"].shape[1], use_bias=False, name="fc")
    out = fc(x)
    fc.set_weights([weights["fc/kernel"]])
    return keras.Model(inp, out, name="dlib_face_recognition_resnet_model_v1")


class TensorFlowEmbedder:
    """Embeds batches of chips with the Keras model, traced once (at construction) for any batch size.

    Shared by the threads of a process (a web process serves predictions from 16 threads): the
    graph is traced here, never on a call, and one forward pass runs at a time. TensorFlow's graph
    execution is itself thread-safe (test/test_threads.py runs it from many threads), but a run
    already spreads over the cores through TensorFlow's own thread pools, so concurrent runs would
    not be faster, and each would hold its batch's activations (tens of MB for MAX_BATCH chips): one
    at a time keeps a process's memory bounded whatever its request threads do. TensorFlow's pools
    are the process's (a worker sizes them from FR_WORKER_THREADS before TensorFlow loads).
    """

    def __init__(self, dat_path: str, cache_dir: Path):
        tf = tensorflow_module()
        self.model = build_model(cached_weights(dat_path, cache_dir))
        self._fn = tf.function(lambda x: self.model(x, training=False),
                               input_signature=[tf.TensorSpec([None, CHIP, CHIP, 3], tf.uint8)],
                               ).get_concrete_function()
        self._lock = threading.Lock()

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        """(n, 150, 150, 3) uint8 RGB chips -> (n, 128) float32.

        At most MAX_BATCH chips go through the network at once: per chip, larger batches are
        no faster on a CPU, and the activations' memory stays bounded whatever a photo holds.
        """
        return in_batches(np.asarray(chips, dtype=np.uint8), self._run)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._fn(batch).numpy()

    def warm_up(self) -> None:
        """Run one chip through the network: TensorFlow's kernels are set up now, not on the first face."""
        self(np.zeros((1, CHIP, CHIP, 3), np.uint8))
