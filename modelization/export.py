"""A bundle's classifier written as `model.keras` by Keras, in a short-lived child process.

Training is numpy (modelization/lean.py); Keras is needed only to write the model file the bundle
ships. Importing it loads TensorFlow, ~450 MB that glibc never gives back: a worker that did it
once would hold them for the rest of its life. So the train task starts a child (multiprocessing's
`spawn`: a fresh interpreter, never a fork of a process that may have run TensorFlow, see
features/embeddings.ForkedAfterTensorFlow) as soon as it begins; the child imports Keras while the
parent prepares and trains (seconds, hidden), writes the file from the trained weights, and ends
with the task, taking TensorFlow's memory with it. A process that has Keras loaded already (the
TensorFlow embedder, a test run) writes the file itself.
"""
from __future__ import annotations

import multiprocessing
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from logger import logger
from modelization.network import NetworkSpec


@dataclass
class KerasExport:
    """What pack_bundle and the manifest need of a Keras model: its file, its parameter count."""
    data: bytes
    params: int
    versions: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        Path(path).write_bytes(self.data)

    def count_params(self) -> int:
        return self.params


def library_versions() -> dict[str, str | None]:
    """Versions of Keras, TensorFlow and ONNX Runtime as installed, without importing them."""
    def installed(*names: str) -> str | None:
        for name in names:
            try:
                return metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
        return None
    return {"keras": installed("keras"), "tensorflow": installed("tensorflow", "tensorflow-cpu"),
            "onnxruntime": installed("onnxruntime")}


def _import_keras() -> None:
    from features.tf_import import keras_module
    keras_module()


def _write(spec: NetworkSpec, weights: list, n_inputs: int, n_classes: int) -> KerasExport:
    """In the child: the Keras model of `spec` holding `weights`, saved -> its bytes."""
    import tempfile

    from modelization.network import to_keras
    model = to_keras(spec, weights, n_inputs, n_classes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.keras"
        model.save(path)
        return KerasExport(path.read_bytes(), int(model.count_params()), library_versions())


class KerasWriter:
    """A child process that imports Keras from construction on; `write` gives the model file and ends it.

    `child`: None (default) starts one unless Keras is already loaded in this process (FR_EMBEDDER=tensorflow,
    a test run: there is no memory to spare, and the file is written here in a fraction of a second).
    Dropped without `write` (a build that failed before training), the child ends with it.
    """

    def __init__(self, child: bool | None = None) -> None:
        self._pool: ProcessPoolExecutor | None = None
        if child or (child is None and "keras" not in sys.modules):
            self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            self._pool.submit(_import_keras)

    def write(self, spec: NetworkSpec, weights: list, n_inputs: int, n_classes: int) -> KerasExport:
        """The model file of `spec` holding `weights` (lean's [(kernel, bias), ...]), written by the child.
        If the child cannot run (it died, or no process could be started), written in this process."""
        if self._pool is None:
            return _write(spec, weights, n_inputs, n_classes)
        try:
            return self._pool.submit(_write, spec, weights, n_inputs, n_classes).result()
        except (OSError, RuntimeError) as exc:  # BrokenProcessPool is a RuntimeError
            logger.warning("the Keras child failed ({}): the model file is written in this process", exc)
            return _write(spec, weights, n_inputs, n_classes)
        finally:
            self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
