"""The lean path (issue #24): dlib's ResNet as an ONNX graph run by ONNX Runtime (FR_EMBEDDER=onnx) gives
dlib's numbers; bundles are read and written without Keras (test_export.py: the file written is Keras's). So a
web process or a worker never loads TensorFlow (unless FR_EMBEDDER=tensorflow)."""
from __future__ import annotations

import dataclasses
import itertools
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from constants import Settings
from features import resnet_onnx
from features.chips import MAX_BATCH
from features.embeddings import EMBEDDING_SIZE, embed_chips, resnet_model_path
from features.extract import FeatureCache, PhotoFeatures, pipeline_settings
from modelization.keras_file import KerasFile, read_steps
from modelization.network import NetworkSpec, to_keras
from modelization.recognizer import Recognizer
from preprocessor.faces import file_sha256
from test.conftest import pick_people, real_chips

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 1e-5  # every component of every embedding against dlib's (measured: under 1e-6)


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> tuple[Settings, Settings]:
    """(onnx, dlib) settings sharing one data dir."""
    onnx = Settings.from_env(data_dir=tmp_path_factory.mktemp("onnx"), embedder="onnx")
    return onnx, dataclasses.replace(onnx, embedder="dlib")


@pytest.fixture(scope="module")
def chips(faces_dir) -> np.ndarray:
    """Every face of 4 people x 3 photos of lfw62 (250 px, aligned) and of lfw62-150px (small, unaligned),
    of a two-face photo and of a 240p photo."""
    return real_chips(faces_dir, 4, 3)


# --------------------------------------------------------------------------- dlib's numbers

def test_onnx_embeddings_equal_dlibs_on_real_chips(chips, settings):
    onnx, dl = settings
    reference = embed_chips(list(chips), settings=dl)
    batched = embed_chips(list(chips), settings=onnx)
    one_by_one = np.concatenate([embed_chips([c], settings=onnx) for c in chips])
    assert batched.shape == (len(chips), EMBEDDING_SIZE) and batched.dtype == np.float32
    assert np.abs(batched - reference).max() <= TOLERANCE
    assert np.abs(one_by_one - reference).max() <= TOLERANCE
    # a batch larger than one run of the network (MAX_BATCH) is cut into runs: the same numbers
    many = np.concatenate([chips] * (MAX_BATCH // len(chips) + 2))
    assert len(many) > MAX_BATCH
    assert np.abs(embed_chips(list(many), settings=onnx) - np.concatenate(
        [reference] * (MAX_BATCH // len(chips) + 2))).max() <= TOLERANCE
    # with the mirror images (a prediction's second pass) too
    assert np.abs(embed_chips(list(chips[:3]), True, onnx) - embed_chips(list(chips[:3]), True, dl)).max() <= TOLERANCE
    # not a constant or degenerate output: faces differ from each other far more than the embedders do
    gaps = np.linalg.norm(reference[:, None] - reference[None], axis=2)[np.triu_indices(len(chips), 1)]
    assert gaps.min() > 1000 * TOLERANCE


def test_onnx_embedder_refuses_chips_of_another_shape(settings):
    with pytest.raises(ValueError, match="150"):
        embed_chips([np.zeros((100, 100, 3), np.uint8)], settings=settings[0])
    assert embed_chips([], settings=settings[0]).shape == (0, EMBEDDING_SIZE)


def test_the_graph_is_written_once_per_weights_file_and_a_bad_copy_is_replaced(tmp_path, monkeypatch, chips):
    sha = file_sha256(resnet_model_path())
    first = resnet_onnx.OnnxEmbedder(resnet_model_path(), tmp_path)
    [cached] = tmp_path.iterdir()
    assert cached.suffix == ".onnx" and sha[:16] in cached.name
    expected = first(chips[:2])
    monkeypatch.setattr(resnet_onnx, "graph", lambda *a: pytest.fail("written again"))
    assert np.array_equal(resnet_onnx.OnnxEmbedder(resnet_model_path(), tmp_path)(chips[:2]), expected)
    monkeypatch.undo()
    # a damaged file, and a graph written from another weights file (its recorded sha256 differs), are replaced
    for bad in (cached.read_bytes()[:5000], resnet_onnx.graph(resnet_onnx.read_network(
            Path(resnet_model_path()).read_bytes()), "0" * 64)):
        cached.write_bytes(bad)
        assert np.array_equal(resnet_onnx.OnnxEmbedder(resnet_model_path(), tmp_path)(chips[:2]), expected)
        assert cached.read_bytes() != bad
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]  # no temporary file left


def test_a_graph_that_cannot_be_cached_is_still_used(tmp_path, chips):
    blocked = tmp_path / "not-a-folder"
    blocked.write_bytes(b"a file where the cache folder should be")
    embedder = resnet_onnx.OnnxEmbedder(resnet_model_path(), blocked / "models")
    assert embedder(chips[:1]).shape == (1, EMBEDDING_SIZE)
    assert blocked.read_bytes().startswith(b"a file")


def test_onnx_is_a_setting_of_its_own_in_the_cache_key_and_the_manifest(tmp_path):
    onnx = Settings.from_env(data_dir=tmp_path, embedder="onnx")
    others = [dataclasses.replace(onnx, embedder=e) for e in ("tensorflow", "dlib")]
    assert pipeline_settings(onnx)["embedder"] == "onnx"
    keys = {FeatureCache(tmp_path, s).key(b"photo") for s in [onnx, *others]}
    assert len(keys) == 3
    # a purge (a deleted job) removes what every embedder made of the photo
    for s in [onnx, *others]:
        cache = FeatureCache(tmp_path / "cache", s)
        cache.put(cache.key(b"photo"), PhotoFeatures(skipped="no_face", detail="no face found"))
    import hashlib
    assert FeatureCache(tmp_path / "cache", others[1]).purge([hashlib.sha256(b"photo").hexdigest()]) == 3


# --------------------------------------------------------------------------- bundles without Keras

SPECS = [NetworkSpec(), NetworkSpec(hidden=(), dropout=0.0), NetworkSpec(hidden=(64, 32), activation="tanh", l2=1e-4),
         NetworkSpec(hidden=(96,), activation="elu", cosine=True), NetworkSpec(hidden=(48, 48, 48), activation="selu"),
         NetworkSpec(hidden=(32,), activation="silu", cosine=True, dropout=0.0),
         NetworkSpec(hidden=(40,), activation="swish", input_scale=3.0)]


def _weights(spec: NetworkSpec, n_classes: int, rng) -> list:
    sizes = [128, *spec.hidden, n_classes]
    return [(rng.normal(scale=0.3, size=(a, b)).astype(np.float32), rng.normal(scale=0.1, size=b).astype(np.float32))
            for a, b in itertools.pairwise(sizes)]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{len(s.hidden)}x{s.activation}{'-cos' if s.cosine else ''}")
def test_the_model_file_read_without_keras_gives_keras_probabilities(spec, tmp_path):
    rng = np.random.default_rng(len(spec.hidden))
    model = to_keras(spec, _weights(spec, 5, rng), 128, 5)
    model.save(tmp_path / "m.keras")
    file = KerasFile((tmp_path / "m.keras").read_bytes())
    assert file.steps is not None
    x = rng.normal(scale=0.1, size=(17, 128)).astype(np.float32)
    rec = Recognizer(file, list("abcde"), {}, x[:10], np.arange(10) % 5)
    np.testing.assert_allclose(rec.probabilities(x), np.asarray(model(x, training=False)), atol=1e-5)
    np.testing.assert_allclose(np.asarray(file(x)), np.asarray(model(x, training=False)), atol=1e-6)


def test_a_model_file_with_a_layer_the_numpy_path_does_not_mirror_is_run_by_keras(tmp_path):
    import keras
    inputs = keras.Input((128,), name="embedding")
    x = keras.layers.BatchNormalization(name="norm")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="person")(x)
    model = keras.Model(inputs, outputs)
    model.save(tmp_path / "m.keras")
    data = (tmp_path / "m.keras").read_bytes()
    assert read_steps(data) is None
    emb = np.random.default_rng(1).normal(size=(4, 128)).astype(np.float32)
    rec = Recognizer(KerasFile(data), ["a", "b", "c"], {}, emb, np.arange(4) % 3)
    np.testing.assert_allclose(rec.probabilities(emb), np.asarray(model(emb, training=False)), atol=1e-6)
    # gelu: Keras's is erf's, not the tanh approximation numpy would compute
    spec = NetworkSpec(hidden=(32,), activation="gelu")
    gelu = to_keras(spec, _weights(spec, 3, np.random.default_rng(2)), 128, 3)
    gelu.save(tmp_path / "g.keras")
    file = KerasFile((tmp_path / "g.keras").read_bytes())
    assert file.steps is None
    rec = Recognizer(file, ["a", "b", "c"], {}, emb, np.arange(4) % 3)
    np.testing.assert_allclose(rec.probabilities(emb), np.asarray(gelu(emb, training=False)), atol=1e-6)
    # a file whose config was tampered with (another activation than its name says) is not trusted either
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        parts = {n: zf.read(n) for n in zf.namelist()}
    config = json.loads(parts["config.json"])
    config["config"]["layers"][-1]["config"]["activation"] = {"class_name": "Custom"}
    assert config["config"]["layers"][-1]["class_name"] == "Dense"
    with zipfile.ZipFile(tmp_path / "t.keras", "w") as zf:
        for n, d in {**parts, "config.json": json.dumps(config).encode()}.items():
            zf.writestr(n, d)
    assert read_steps((tmp_path / "t.keras").read_bytes()) is None


SCRIPT = """
import json, resource, sys
from dataclasses import asdict
import numpy as np
from app.worker.tasks import train_bundle
from constants import Settings
from features.extract import PhotoFeatures
from modelization.recognizer import load_bundle
rng = np.random.default_rng(0)
centers = rng.normal(size=(3, 128)); centers /= np.linalg.norm(centers, axis=1, keepdims=True)
x = np.concatenate([c + rng.normal(scale=0.01, size=(8, 128)) for c in centers]).astype(np.float32)
labels = [p for p in "abc" for _ in range(8)]
files = [{"label": l, "filename": f"{l}/{i}.jpg"} for i, l in enumerate(labels)]
feats = [asdict(PhotoFeatures(faces=1, box=[0, 0, 1, 1], embedding=[float(v) for v in row])) for row in x]
s = Settings.from_env(data_dir=sys.argv[1])
import h5py  # its import runs `uname -p` once (platform.processor()): a child, but not one that writes the file
before = resource.getrusage(resource.RUSAGE_CHILDREN)
bundle = train_bundle({"id": "child", "options": {"seed": 1}}, files, feats, s, lambda *a: None)
rec = load_bundle(bundle, s)
names = [r[0] for r in rec.identify(x)]
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"tensorflow": "tensorflow" in sys.modules, "keras": "keras" in sys.modules, "names": names,
                  "children_cpu": children.ru_utime + children.ru_stime - before.ru_utime - before.ru_stime,
                  "labels": labels, "software": rec.manifest["software"], "numpy": rec._steps is not None}))
"""


def test_a_build_and_its_bundle_in_a_process_that_never_loads_tensorflow(tmp_path):
    """train_bundle writes model.keras with h5py, load_bundle reads it with h5py: neither imports Keras or
    TensorFlow in the calling process (a worker, a web process), nor starts a process that would."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["names"] == got["labels"] and got["numpy"]
    assert not got["tensorflow"] and not got["keras"]
    assert got["children_cpu"] == 0  # no child ran during the build (the Keras child of before would show)
    assert got["software"]["keras"] and got["software"]["tensorflow"] and got["software"]["onnxruntime"]


def test_a_bundle_built_from_onnx_features_predicts_real_faces(faces_dir, settings):
    from app.worker.tasks import extract_chunk, train_bundle
    from modelization.recognizer import load_bundle
    from preprocessor.uploads import Photo
    onnx, _ = settings
    people = pick_people(faces_dir, 3, 8)
    files = [{"label": person, "filename": f"{person}/{p.name}"} for person, ps in people.items() for p in ps[:6]]
    photos = [Photo(f["label"], f["filename"], (faces_dir / "lfw62" / f["filename"]).read_bytes()) for f in files]
    feats = extract_chunk(photos, onnx)
    bundle = train_bundle({"id": "onnx", "options": {"seed": 3}}, files, feats, onnx, lambda *a: None)
    rec = load_bundle(bundle, onnx)
    assert rec.manifest["pipeline"]["embedder"] == "onnx"
    held_out = [(person, p.read_bytes()) for person, ps in people.items() for p in ps[6:]]
    assert [rec.predict(data)[0].label for _, data in held_out] == [person for person, _ in held_out]
