"""dlib's face ResNet as an ONNX graph, run by ONNX Runtime: dlib's numbers without TensorFlow.

The graph is written from the weights of the `.dat` that `face_recognition_models` ships
(features/dlib_dat.py) and cached under the data dir as an `.onnx` file keyed by the `.dat`'s
sha256 (also stored in the graph's metadata and checked on load): nothing is downloaded.

The network is dlib's, layer for layer (features/resnet_tf.py lists what must match), with one
change of form: each affine layer (gamma * x + beta per channel, dlib's inference batch norm) is
folded into the convolution before it (filters * gamma, bias * gamma + beta). The graph takes the
chips as they come, (n, 150, 150, 3) uint8 RGB, and does dlib's input step itself:
(pixel - channel mean) / 256 in float32. dlib's add_prev of two tensors of different shapes (a
down-sampling unit: channels doubled by the block, and the block's strided 3x3 one row and column
smaller than the shortcut's 2x2 pool at 8 -> 3 vs 4) is an Add of the two, each zero-padded at the
end of each dimension to the larger shape; the shapes are known in advance (150 px chips).

Why ONNX Runtime (docs/memory.md): it needs ~95 MB in a process where TensorFlow needs ~540 MB,
and it runs this network in less CPU per chip than TensorFlow or OpenCV's dnn module.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from features.chips import in_batches
from features.dlib_dat import INPUT_SIZE, Conv, Network, Residual, read_network
from logger import logger
from preprocessor.faces import file_sha256

CHIP = INPUT_SIZE
OPSET = 13
SHA_KEY = "dat_sha256"  # the graph's metadata: the sha256 of the .dat it was written from
CACHE_KEEPS_FREE = 64 * 1024 * 1024  # a cache file never takes the data disk's last room (builds need it)


class _Graph:
    """ONNX nodes and initializers, added in order (needs the `onnx` package)."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.inits: list = []

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: Any) -> str:
        from onnx import helper
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv_affine(self, x: str, name: str, conv: Conv, gamma: np.ndarray, beta: np.ndarray) -> str:
        """dlib's con_ then affine_, as one Conv: the affine folded into the filters and bias."""
        filters = conv.filters.astype(np.float32) * gamma.astype(np.float32)[:, None, None, None]
        bias = conv.bias.astype(np.float32) * gamma.astype(np.float32) + beta.astype(np.float32)
        return self.node("Conv", [x, self.const(name + "/w", filters), self.const(name + "/b", bias)], name,
                         kernel_shape=list(conv.filters.shape[2:]), strides=[conv.stride] * 2,
                         pads=[conv.padding] * 4)

    def padded(self, t: str, t_size: int, t_channels: int, what: str, size: int, channels: int, name: str) -> str:
        """`t` zero-padded at the end of its channels and rows and columns to (channels, size, size)."""
        if (t_size, t_channels) == (size, channels):
            return t
        pads = np.asarray([0, 0, 0, 0, 0, channels - t_channels, size - t_size, size - t_size],
                          np.int64)  # ONNX: every axis' start, then every axis' end
        return self.node("Pad", [t, self.const(f"{name}/{what}/pads", pads)], f"{name}/{what}/padded",
                         mode="constant")

    def residual(self, x: str, name: str, u: Residual, size: int, channels: int) -> tuple[str, int, int]:
        """One residual unit on `x` (size x size, `channels`). -> (its output, size, channels)."""
        y = self.node("Relu", [self.conv_affine(x, name + "/conv1", u.conv1, u.affine1.gamma, u.affine1.beta)],
                      name + "/relu1")
        y = self.conv_affine(y, name + "/conv2", u.conv2, u.affine2.gamma, u.affine2.beta)
        filters = u.conv2.filters.shape[0]
        if u.down:  # the block's 3x3/2 without padding; the shortcut's 2x2/2 average pool
            block_size, short_size = (size - 3) // 2 + 1, (size - 2) // 2 + 1
            shortcut = self.node("AveragePool", [x], name + "/pool", kernel_shape=[2, 2], strides=[2, 2])
        else:
            block_size = short_size = size
            shortcut = x
        out_size, out_channels = max(block_size, short_size), max(filters, channels)
        added = self.node("Add", [self.padded(y, block_size, filters, "block", out_size, out_channels, name),
                                  self.padded(shortcut, short_size, channels, "shortcut", out_size, out_channels,
                                              name)], name + "/add")
        return self.node("Relu", [added], name + "/relu"), out_size, out_channels


def graph(net: Network, dat_sha256: str = "") -> bytes:
    """The ONNX model (serialized) of dlib's network `net`: input "chips" (n, 150, 150, 3) uint8 RGB,
    output "embedding" (n, 128) float32. Needs the `onnx` package (only here: running it does not)."""
    import onnx
    from onnx import TensorProto, helper

    g = _Graph()
    mean = np.asarray(net.input_mean, np.float32).reshape(1, 1, 1, 3)
    x = g.node("Cast", ["chips"], "input/float", to=TensorProto.FLOAT)
    x = g.node("Sub", [x, g.const("input/mean", mean)], "input/centred")
    x = g.node("Mul", [x, g.const("input/scale", np.asarray(1 / 256, np.float32))], "input/scaled")  # exact: 2**-8
    x = g.node("Transpose", [x], "input/nchw", perm=[0, 3, 1, 2])
    x = g.node("Relu", [g.conv_affine(x, "stem", net.stem_conv, net.stem_affine.gamma, net.stem_affine.beta)],
               "stem/relu")
    x = g.node("MaxPool", [x], "stem/pool", kernel_shape=[3, 3], strides=[2, 2])
    size = (((CHIP - 7) // 2 + 1) - 3) // 2 + 1  # 150 -> 72 (7x7/2) -> 35 (3x3/2)
    channels = net.stem_conv.filters.shape[0]
    for i, u in enumerate(net.units):
        x, size, channels = g.residual(x, f"unit{i}", u, size, channels)
    x = g.node("GlobalAveragePool", [x], "pool")
    x = g.node("Flatten", [x], "features", axis=1)
    if net.fc is None:
        raise ValueError("the network has no fc layer")
    g.node("MatMul", [x, g.const("fc", net.fc.astype(np.float32))], "embedding")
    model = helper.make_model(
        helper.make_graph(g.nodes, "dlib_face_recognition_resnet_model_v1",
                          [helper.make_tensor_value_info("chips", TensorProto.UINT8, [None, CHIP, CHIP, 3])],
                          [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [None, net.fc.shape[1]])],
                          g.inits),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="api-facial-recognition features/resnet_onnx.py")
    model.ir_version = 8  # what ONNX Runtime releases of the last years all read
    helper.set_model_props(model, {SHA_KEY: dat_sha256})
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _store(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary name (concurrent processes never read half a file), unless
    the disk would be left with less than CACHE_KEEPS_FREE; a disk error costs the cache file, not the caller."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if shutil.disk_usage(path.parent).free < len(data) + CACHE_KEEPS_FREE:
            logger.warning("ONNX graph of the ResNet not cached in {}: the disk has less than {} MB free",
                           path.parent, (len(data) + CACHE_KEEPS_FREE) >> 20)
            return
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        logger.warning("ONNX graph of the ResNet not cached in {}: {}", path.parent, exc)
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)


def _session(data: bytes | str, threads: int):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one per core
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle threads sleep: cores are few
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.log_severity_level = 3  # errors only: its notes would go to stderr, outside the service's log
    # ONNX Runtime's own arena (its default) holds the activations of the largest batch run so far (~40 MB at
    # MAX_BATCH): without it, each run's buffers came from the malloc arena of whichever request or task
    # thread ran it, and a web process with 16 threads kept ~250 MB more after 500 predictions (docs/memory.md)
    options.enable_cpu_mem_arena = True
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def graph_path(dat_path: str, cache_dir: Path) -> Path:
    """Where `cache_dir` keeps the ONNX graph of the .dat at `dat_path` (named by the .dat's sha256)."""
    return Path(cache_dir) / f"{Path(dat_path).stem}-{file_sha256(dat_path)[:16]}.onnx"


def write_graph(dat_path: str, cache_dir: Path) -> Path:
    """Convert the .dat at `dat_path` and cache its ONNX graph in `cache_dir` now; returns the file's path
    (not written when the disk is nearly full: see _store)."""
    path = graph_path(dat_path, cache_dir)
    _store(path, graph(read_network(Path(dat_path).read_bytes()), file_sha256(dat_path)))
    return path


def cached_session(dat_path: str, cache_dir: Path, threads: int = 0):
    """An ONNX Runtime session of the network, its graph read from `cache_dir` if it was written before
    for this .dat (same sha256), else written now (and cached)."""
    sha = file_sha256(dat_path)
    path = graph_path(dat_path, cache_dir)
    if path.is_file():
        try:
            session = _session(str(path), threads)
            if session.get_modelmeta().custom_metadata_map.get(SHA_KEY) == sha:
                return session
        except Exception as exc:
            logger.warning("cached ONNX graph {} unusable ({}): written again", path, str(exc)[:200])
    data = graph(read_network(Path(dat_path).read_bytes()), sha)
    _store(path, data)
    return _session(data, threads)


class OnnxEmbedder:
    """Embeds batches of chips with ONNX Runtime; shared by the threads of a process, one run at a time.

    A run already spreads over `threads` cores (0: all of them), so concurrent runs would not be faster
    and each would hold its batch's activations: one at a time keeps a process's memory bounded.
    """

    def __init__(self, dat_path: str, cache_dir: Path, threads: int = 0):
        self._session = cached_session(dat_path, cache_dir, threads)
        self._lock = threading.Lock()

    def __call__(self, chips: np.ndarray) -> np.ndarray:
        """(n, 150, 150, 3) uint8 RGB chips -> (n, 128) float32, MAX_BATCH chips per run."""
        return in_batches(np.ascontiguousarray(chips, dtype=np.uint8), self._run)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        with self._lock:
            return self._session.run(["embedding"], {"chips": batch})[0]

    def warm_up(self) -> None:
        """One chip through the network: ONNX Runtime's kernels and buffers are set up now, not on a face."""
        self(np.zeros((1, CHIP, CHIP, 3), np.uint8))
