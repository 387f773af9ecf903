"""A bundle's classifier written as `model.keras` without Keras: zipfile, json and h5py.

Training is numpy (modelization/lean.py); the bundle still ships a Keras file, so that anyone can load
it with `keras.saving.load_model`. Writing it with Keras meant importing TensorFlow (~500 MB, for a
few seconds per build, in a child process so that the worker would not keep them). The format is
small and documented by Keras's own saving code (keras/src/saving/saving_lib.py): a zip of

- `metadata.json`: the Keras version and the date saved;
- `config.json`: `serialize_keras_object(model)`, the functional model's layers in order, each with
  its settings, build shape and the tensor it is called on, and the compile settings;
- `model.weights.h5`: each layer's variables under `layers/<snake_case class>[_<k>]/vars/<i>` (the
  k-th layer of a class in the model's order; a group named after the layer even when it holds
  none), the model's own under `vars`, the optimizer's under `optimizer/vars`.

This module writes the file Keras writes for the classifier family of `network.build_network`
(test/test_export.py compares it with Keras's own, key by key, and loads it with Keras). Not
written: Keras's `shared_object_id`s, which mark objects that several layers share (the dtype
policy) by their memory address; they only let a loader share them again, and Keras loads the file
the same without them. modelization/keras_file.py reads the file back without Keras.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path

import numpy as np

from modelization.keras_file import CONFIG_FILE, WEIGHTS_FILE, snake_case
from modelization.lean import count_params
from modelization.network import COSINE_SCALE, NetworkSpec

METADATA_FILE = "metadata.json"
# The Keras whose format this writes (requirements.txt pins it); the metadata names the installed one.
KERAS_FORMAT = "3.15.1"
F32 = np.float32


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


def _stock(module: str, class_name: str, config: dict) -> dict:
    """Keras's serialization of one of its own objects (an initializer, regularizer, constraint, policy)."""
    return {"module": module, "class_name": class_name, "config": config, "registered_name": None}


def _float32() -> dict:
    return _stock("keras", "DTypePolicy", {"name": "float32"})


class _Graph:
    """The layers of a functional model in order, each called on the one before (a chain)."""

    def __init__(self, n_inputs: int):
        self.layers: list[dict] = [{
            "module": "keras.layers", "class_name": "InputLayer",
            "config": {"batch_shape": [None, n_inputs], "dtype": "float32", "sparse": False, "ragged": False,
                       "name": "embedding", "optional": False},
            "registered_name": None, "name": "embedding", "inbound_nodes": []}]
        self.width = n_inputs

    def add(self, class_name: str, name: str, config: dict, units: int | None = None, built: bool = True,
            training_arg: bool = False) -> None:
        """Layer `name` on the last one's output; `units`: its output width when it changes it; `built`: Keras
        records the input shape of layers that build something (Dense, Rescaling); `training_arg`: the
        layer's call takes `training` (Dropout), which the functional model records as False."""
        previous = self.layers[-1]["name"]
        layer: dict = {"module": "keras.layers", "class_name": class_name,
                       "config": {"name": name, "trainable": True, "dtype": _float32(), **config},
                       "registered_name": None}
        if built:
            layer["build_config"] = {"input_shape": [None, self.width]}
        tensor: dict = {"class_name": "__keras_tensor__", "config": {"shape": [None, self.width], "dtype": "float32",
                                                                     "keras_history": [previous, 0, 0]}}
        layer |= {"name": name, "inbound_nodes": [{"args": [tensor], "kwargs": {"training": False} if training_arg
                                                   else {}}]}
        self.layers.append(layer)
        if units is not None:
            self.width = units


def _dense(units: int, activation: str, l2: float, use_bias: bool = True, unit_columns: bool = False) -> dict:
    return {"units": units, "activation": activation, "use_bias": use_bias,
            "kernel_initializer": _stock("keras.initializers", "GlorotUniform",
                                         {"seed": None, "input_axes": None, "output_axes": None}),
            "bias_initializer": _stock("keras.initializers", "Zeros", {}),
            "kernel_regularizer": _stock("keras.regularizers", "L2", {"l2": float(l2)}) if l2 else None,
            "bias_regularizer": None,
            "kernel_constraint": _stock("keras.constraints", "UnitNorm", {"axis": 0}) if unit_columns else None,
            "bias_constraint": None, "quantization_config": None}


def keras_config(spec: NetworkSpec, n_inputs: int, n_classes: int) -> dict:
    """The `config.json` Keras writes for `network.build_network(n_inputs, n_classes, spec)`."""
    graph = _Graph(n_inputs)
    graph.add("Rescaling", "scale", {"scale": float(spec.input_scale), "offset": 0.0})
    for i, units in enumerate(spec.hidden):
        graph.add("Dense", f"hidden{i}", _dense(units, spec.activation, spec.l2), units)
        if spec.dropout:
            graph.add("Dropout", f"dropout{i}", {"rate": float(spec.dropout), "seed": None, "noise_shape": None},
                      built=False, training_arg=True)
    if spec.cosine:
        graph.add("UnitNormalization", "unit_features", {"axis": -1}, built=False)
        graph.add("Dense", "person_cosine", _dense(n_classes, "linear", spec.l2, use_bias=False, unit_columns=True),
                  n_classes)
        graph.add("Rescaling", "cosine_scale", {"scale": COSINE_SCALE, "offset": 0.0})
        graph.add("Activation", "person", {"activation": "softmax"}, built=False)
    else:
        graph.add("Dense", "person", _dense(n_classes, "softmax", spec.l2), n_classes)
    adam = {"name": "adam", "learning_rate": float(F32(spec.learning_rate)), "weight_decay": None, "clipnorm": None,
            "global_clipnorm": None, "clipvalue": None, "use_ema": False, "ema_momentum": 0.99,
            "ema_overwrite_frequency": None, "loss_scale_factor": None, "gradient_accumulation_steps": None,
            "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-07, "amsgrad": False}
    return {"module": "keras.src.models.functional", "class_name": "Functional",
            "config": {"name": "recognizer", "trainable": True, "layers": graph.layers,
                       "input_layers": ["embedding", 0, 0], "output_layers": ["person", 0, 0]},
            "registered_name": "Functional", "build_config": {"input_shape": None},
            "compile_config": {"optimizer": _stock("keras.optimizers", "Adam", adam),
                               "loss": "sparse_categorical_crossentropy", "loss_weights": None,
                               "metrics": ["accuracy"], "weighted_metrics": None, "run_eagerly": False,
                               "steps_per_execution": 1, "jit_compile": False}}


def keras_weights(spec: NetworkSpec, config: dict, weights: list) -> bytes:
    """`model.weights.h5` for the layers of `config` holding lean's [(kernel, bias), ...] (one per Dense, in
    order). The cosine head keeps no bias and unit columns (what its UnitNorm constraint keeps)."""
    import h5py
    dense = iter(weights)
    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        h5.create_group("vars").attrs["name"] = config["config"]["name"]
        seen: dict[str, int] = {}
        for layer in config["config"]["layers"]:
            kind = snake_case(layer["class_name"])
            k = seen.get(kind, 0)
            seen[kind] = k + 1
            group = h5.create_group(f"layers/{kind}" + (f"_{k}" if k else "")).create_group("vars")
            group.attrs["name"] = layer["name"]
            if layer["class_name"] != "Dense":
                continue
            pair = next(dense, None)
            if pair is None:
                raise ValueError(f"fewer weights than the {spec} network's Dense layers")
            kernel, bias = (np.asarray(a, F32) for a in pair)
            if layer["config"]["use_bias"]:
                group["0"], group["1"] = kernel, bias
            else:
                group["0"] = kernel / np.maximum(np.linalg.norm(kernel, axis=0, keepdims=True), F32(1e-12))
        if next(dense, None) is not None:
            raise ValueError(f"more weights than the {spec} network's Dense layers")
        optimizer = h5.create_group("optimizer").create_group("vars")
        optimizer.attrs["name"] = "adam"
        optimizer["0"] = np.int64(0)  # iterations: Keras saves the optimizer of a compiled model as it is
        optimizer["1"] = F32(spec.learning_rate)
    return buf.getvalue()


def write_keras(spec: NetworkSpec, weights: list, n_inputs: int, n_classes: int) -> KerasExport:
    """The `model.keras` of `spec` holding lean's weights [(kernel, bias), ...], as Keras would save
    `network.to_keras(spec, weights, n_inputs, n_classes)`; no Keras, no TensorFlow, no child process."""
    config = keras_config(spec, n_inputs, n_classes)
    versions = library_versions()
    meta = {"keras_version": versions["keras"] or KERAS_FORMAT,
            "date_saved": datetime.now().strftime("%Y-%m-%d@%H:%M:%S")}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # stored, in Keras's order
        with zf.open(METADATA_FILE, "w") as f:
            f.write(json.dumps(meta).encode())
        with zf.open(CONFIG_FILE, "w") as f:
            f.write(json.dumps(config).encode())
        zf.writestr(WEIGHTS_FILE, keras_weights(spec, config, weights))
    return KerasExport(buf.getvalue(), count_params(spec, n_inputs, n_classes), versions)
