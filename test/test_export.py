"""`model.keras` written without Keras (modelization/export.py): real Keras loads it and predicts what the
trained network does, the file holds what Keras's own save writes for the same model, and writing it loads
no TensorFlow and starts no process."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

from modelization import lean
from modelization.export import keras_config, write_keras
from modelization.keras_file import KerasFile
from modelization.network import NetworkSpec
from modelization.recognizer import Recognizer
from test.test_lean import clusters

ROOT = Path(__file__).resolve().parent.parent

# the search's activations (optimization/genome.py), both heads, with and without dropout and L2, no hidden layer
SPECS = [NetworkSpec(), NetworkSpec(hidden=(), dropout=0.0),
         NetworkSpec(hidden=(64, 32), activation="tanh", l2=1e-4, learning_rate=1e-3, batch_size=32),
         NetworkSpec(hidden=(96,), activation="elu", cosine=True, l2=3e-5),
         NetworkSpec(hidden=(32,), activation="silu", cosine=True, dropout=0.0),
         NetworkSpec(hidden=(48, 48, 48), dropout=0.1, input_scale=3.0), NetworkSpec(hidden=(), cosine=True)]
IDS = [f"{len(s.hidden)}x{s.activation}{'-cos' if s.cosine else ''}{'-l2' if s.l2 else ''}" for s in SPECS]


def trained(spec: NetworkSpec, seed: int = 3) -> tuple[lean.LeanFit, np.ndarray, int]:
    """A network lean trained on clusters like dlib's embeddings, and other embeddings to predict."""
    x, y = clusters(seed, n_classes=5, per_class=30, noise=0.3)
    fit = lean.fit(spec, x[:120], y[:120], 5, seed=seed, max_epochs=8)
    return fit, x[120:], 5


def strip_shared_ids(config):
    """Keras's config without its `shared_object_id`s (memory addresses; export.py does not write them)."""
    if isinstance(config, dict):
        return {k: strip_shared_ids(v) for k, v in config.items() if k != "shared_object_id"}
    if isinstance(config, list):
        return [strip_shared_ids(v) for v in config]
    return config


def h5_contents(data: bytes) -> dict:
    """Every group and dataset of an h5 file: its attributes, and a dataset's shape, dtype and values."""
    out: dict = {}
    with h5py.File(io.BytesIO(data), "r") as h5:
        def visit(name, obj):
            values = (obj.shape, str(obj.dtype), obj[()].tobytes()) if isinstance(obj, h5py.Dataset) else None
            out[name] = (dict(obj.attrs), values)
        h5.visititems(visit)
    return out


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_keras_loads_the_file_and_predicts_what_the_trained_network_does(spec, tmp_path):
    import keras
    fit, x, n = trained(spec)
    exported = write_keras(spec, fit.weights, 128, n)
    exported.save(tmp_path / "model.keras")
    model = keras.saving.load_model(tmp_path / "model.keras")  # compiled, as a user would load it
    expected = lean.predict_proba(spec, fit.weights, x)
    assert expected.max(1).min() < 0.99  # not all saturated: the comparison sees every layer's numbers
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    assert model.count_params() == exported.count_params()
    assert model.optimizer.learning_rate.numpy() == np.float32(spec.learning_rate)
    # and the service's own reader (numpy steps, no Keras) gives the same
    file = KerasFile(exported.data)
    assert file.steps is not None
    rec = Recognizer(file, list("abcde"), {}, x, np.arange(len(x)) % n)
    np.testing.assert_allclose(rec.probabilities(x), expected, atol=1e-5)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_the_file_holds_what_keras_writes_for_the_same_model(spec, tmp_path):
    """Against `network.to_keras(...).save()`: the same members, the same config.json (but for the
    `shared_object_id`s and the optimizer's per-process name: adam, adam_1, ...), the same h5 groups,
    attributes, shapes, dtypes and values; metadata.json the same keys and Keras version."""
    from modelization.network import to_keras
    fit, _, n = trained(spec)
    to_keras(spec, fit.weights, 128, n).save(tmp_path / "keras.keras")
    with zipfile.ZipFile(tmp_path / "keras.keras") as theirs, \
            zipfile.ZipFile(io.BytesIO(write_keras(spec, fit.weights, 128, n).data)) as ours:
        assert ours.namelist() == theirs.namelist()
        assert {i.compress_type for i in ours.infolist()} == {i.compress_type for i in theirs.infolist()}
        config = strip_shared_ids(json.loads(theirs.read("config.json")))
        config["compile_config"]["optimizer"]["config"]["name"] = "adam"
        assert json.loads(ours.read("config.json")) == config
        assert json.loads(ours.read("config.json")) == keras_config(spec, 128, n)
        h5_theirs = h5_contents(theirs.read("model.weights.h5"))
        h5_theirs["optimizer/vars"][0]["name"] = "adam"
        h5_ours = h5_contents(ours.read("model.weights.h5"))
        assert sorted(h5_ours) == sorted(h5_theirs)
        assert h5_ours == h5_theirs
        meta, their_meta = json.loads(ours.read("metadata.json")), json.loads(theirs.read("metadata.json"))
        assert meta.keys() == their_meta.keys() and meta["keras_version"] == their_meta["keras_version"]


def test_weights_that_do_not_fit_the_network_are_refused():
    spec = NetworkSpec(hidden=(16,))
    fit, _, n = trained(spec)
    with pytest.raises(ValueError, match="more weights"):
        write_keras(NetworkSpec(hidden=()), fit.weights, 128, n)
    with pytest.raises(ValueError, match="fewer weights"):
        write_keras(NetworkSpec(hidden=(16, 16)), fit.weights, 128, n)


SCRIPT = """
import json, multiprocessing, resource, sys
import numpy as np
from modelization import lean
from modelization.export import write_keras
from modelization.keras_file import KerasFile
from modelization.recognizer import Recognizer
from test.test_export import SPECS, trained
# after the imports: h5py's runs `uname -p` once (platform.processor()), a child that does not write the file
before = resource.getrusage(resource.RUSAGE_CHILDREN)
sizes = []
for spec in SPECS:
    fit, x, n = trained(spec)
    data = write_keras(spec, fit.weights, 128, n).data
    rec = Recognizer(KerasFile(data), list("abcde"), {}, x, np.arange(len(x)) % n)
    sizes.append(float(abs(rec.probabilities(x) - lean.predict_proba(spec, fit.weights, x)).max()))
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules, "gaps": sizes,
                  "children_cpu": children.ru_utime + children.ru_stime - before.ru_utime - before.ru_stime,
                  "children": multiprocessing.active_children() == [] and children.ru_nvcsw == before.ru_nvcsw}))
"""


def test_writing_the_file_loads_no_tensorflow_and_starts_no_process():
    """In a fresh interpreter (what a worker is): every network written and read back, and then neither Keras
    nor TensorFlow is in sys.modules, and no child process ran meanwhile (none alive, none ended: no CPU time
    or context switch of a child)."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(got["gaps"]) == len(SPECS) and max(got["gaps"]) < 1e-5
    assert not got["tensorflow"] and not got["keras"]
    assert got["children_cpu"] == 0 and got["children"]
