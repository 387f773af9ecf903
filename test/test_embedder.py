"""dlib's face ResNet run by TensorFlow: the weights file reader, the same numbers as dlib on real
chips, the converted weights' cache, the FR_EMBEDDER setting, bundles used across embedders, batching."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from app.worker.tasks import extract_chunk, train_bundle
from constants import Settings, SettingsError
from features import resnet_tf
from features.chips import MAX_BATCH
from features.dlib_dat import DatFormatError, read_network
from features.embeddings import EMBEDDING_SIZE, embed_chips, resnet_model_path
from features.extract import FeatureCache, PhotoFeatures, pipeline_settings
from modelization.recognizer import load_bundle
from preprocessor.uploads import Photo
from test.conftest import pick_people, real_chips

TOLERANCE = 1e-4  # the issue's: every component of every embedding


@pytest.fixture(scope="module")
def dat() -> bytes:
    with open(resnet_model_path(), "rb") as fh:
        return fh.read()


@pytest.fixture(scope="module")
def settings(tmp_path_factory) -> tuple[Settings, Settings]:
    """(tensorflow, dlib) settings sharing one data dir."""
    tf = Settings.from_env(data_dir=tmp_path_factory.mktemp("embedder"), embedder="tensorflow")
    return tf, dataclasses.replace(tf, embedder="dlib")


@pytest.fixture(scope="module")
def chips(faces_dir) -> np.ndarray:
    """Real chips: LFW photos (aligned 250 px and small unaligned 150 px ones), a two-face photo, a small photo."""
    return real_chips(faces_dir, 3, 2)


# --------------------------------------------------------------------------- the .dat reader

def test_reader_reads_the_shipped_network(dat):
    net = read_network(dat)
    assert net.stem_conv.filters.shape == (32, 3, 7, 7) and net.stem_conv.stride == 2
    assert [u.down for u in net.units].count(True) == 4 and len(net.units) == 14
    assert [u.conv1.filters.shape[0] for u in net.units] == [32] * 3 + [64] * 4 + [128] * 3 + [256] * 4
    assert net.fc.shape == (256, EMBEDDING_SIZE)
    np.testing.assert_allclose(net.input_mean, (122.782, 117.001, 104.298), atol=1e-4)
    convs = 1 + 2 * len(net.units)
    assert convs == 29
    weights = sum(c.filters.size + c.bias.size for u in net.units for c in (u.conv1, u.conv2))
    assert weights + net.stem_conv.filters.size + net.fc.size > 5_000_000  # ~5.6 M parameters, all read
    for u in net.units:
        assert np.all(np.isfinite(u.conv1.filters)) and np.all(np.isfinite(u.affine2.gamma))


@pytest.mark.parametrize("damage", ["truncated", "trailing", "renamed layer", "other shape", "empty"])
def test_reader_refuses_a_file_that_is_not_this_network(dat, damage):
    data = {
        "truncated": dat[: len(dat) // 2],
        "trailing": dat + b"\x01\x01",
        "renamed layer": dat.replace(b"con_4", b"con_9", 1),
        # the first max_pool's window 3 -> 5 (its details: version string, then nr and nc)
        "other shape": dat.replace(b"max_pool_2\x01\x03\x01\x03", b"max_pool_2\x01\x05\x01\x05", 1),
        "empty": b"",
    }[damage]
    assert data != dat
    with pytest.raises(DatFormatError):
        read_network(data)


# --------------------------------------------------------------------------- same numbers as dlib

def test_tensorflow_embeddings_equal_dlibs_on_real_chips(chips, settings):
    tf, dl = settings
    reference = embed_chips(list(chips), settings=dl)
    batched = embed_chips(list(chips), settings=tf)
    one_by_one = np.concatenate([embed_chips([c], settings=tf) for c in chips])
    assert batched.shape == (len(chips), EMBEDDING_SIZE) and batched.dtype == np.float32
    assert np.abs(batched - reference).max() <= TOLERANCE
    assert np.abs(one_by_one - reference).max() <= TOLERANCE
    # with the mirror images (a prediction's second pass) too
    assert np.abs(embed_chips(list(chips[:3]), True, tf) - embed_chips(list(chips[:3]), True, dl)).max() <= TOLERANCE
    # not a constant or a degenerate output: the faces differ from each other far more than the embedders do
    gaps = np.linalg.norm(reference[:, None] - reference[None], axis=2)[np.triu_indices(len(chips), 1)]
    assert gaps.min() > 1000 * TOLERANCE


def test_tensorflow_embedder_refuses_chips_of_another_shape(settings):
    with pytest.raises(ValueError, match="150"):
        embed_chips([np.zeros((100, 100, 3), np.uint8)], settings=settings[0])


# --------------------------------------------------------------------------- converted weights' cache

def test_converted_weights_are_made_once_and_cached_by_the_dat_sha256(tmp_path, monkeypatch):
    sha = hashlib.sha256(open(resnet_model_path(), "rb").read()).hexdigest()
    first = resnet_tf.cached_weights(resnet_model_path(), tmp_path)
    [cached] = tmp_path.iterdir()
    assert sha[:16] in cached.name
    monkeypatch.setattr(resnet_tf, "convert", lambda path: pytest.fail("converted again"))
    again = resnet_tf.cached_weights(resnet_model_path(), tmp_path)
    assert again.keys() == first.keys() and all(np.array_equal(again[k], first[k]) for k in first)
    # a damaged cache file is converted again and replaced, never used
    cached.write_bytes(cached.read_bytes()[:1000])
    monkeypatch.undo()
    repaired = resnet_tf.cached_weights(resnet_model_path(), tmp_path)
    assert np.array_equal(repaired["fc/kernel"], first["fc/kernel"])
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]  # no temporary files left



def test_weights_that_cannot_be_cached_are_still_used(tmp_path):
    """A full or unwritable data disk costs the cache file, not the embedder (a worker on a full disk
    could not embed at all: test_failures' full-disk build waited forever)."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_bytes(b"a file where the cache folder should be")
    weights = resnet_tf.cached_weights(resnet_model_path(), blocked / "models")
    assert np.array_equal(weights["fc/kernel"], resnet_tf.convert(resnet_model_path())["fc/kernel"])
    assert blocked.read_bytes().startswith(b"a file")

# --------------------------------------------------------------------------- the setting

def test_embedder_setting_is_read_checked_and_recorded(monkeypatch, tmp_path):
    assert Settings().embedder == "onnx"  # the fastest, and the leanest, is the default (docs/memory.md)
    monkeypatch.setenv("FR_EMBEDDER", "dlib")
    dl = Settings.from_env(data_dir=tmp_path)
    assert dl.embedder == "dlib"
    for bad in ("torch", "TensorFlow", " dlib2"):
        monkeypatch.setenv("FR_EMBEDDER", bad)
        with pytest.raises(SettingsError, match="FR_EMBEDDER must be one of onnx, tensorflow, dlib"):
            Settings.from_env()
    with pytest.raises(SettingsError, match="FR_EMBEDDER"):  # built in code, too
        dataclasses.replace(dl, embedder="torch")
    tf = dataclasses.replace(dl, embedder="tensorflow")
    assert pipeline_settings(dl)["embedder"] == "dlib" and pipeline_settings(tf)["embedder"] == "tensorflow"
    # the feature cache keeps each embedder's features apart (they agree within 1e-4, not to the bit)
    assert FeatureCache(tmp_path, dl).key(b"photo") != FeatureCache(tmp_path, tf).key(b"photo")


def test_a_deleted_jobs_photos_are_purged_from_what_either_embedder_made_of_them(tmp_path, settings):
    """A host that switched FR_EMBEDDER keeps the other embedder's entries: a purge by photo digest
    (a job was deleted) must remove those too, whatever this process's embedder."""
    tf, dl = (dataclasses.replace(s, data_dir=tmp_path) for s in settings)
    photo, other = b"biometric bytes", b"another photo"
    for s in (tf, dl):
        cache = FeatureCache(tmp_path / "cache", s)
        for data in (photo, other):
            cache.put(cache.key(data), PhotoFeatures(skipped="no_face", detail="no face found"))
    assert len(list((tmp_path / "cache").glob("??/*.json"))) == 4
    removed = FeatureCache(tmp_path / "cache", tf).purge([hashlib.sha256(photo).hexdigest()])
    assert removed == 2
    left = {FeatureCache(tmp_path / "cache", s).get(FeatureCache(tmp_path / "cache", s).key(d)) is not None
            for s in (tf, dl) for d in (photo,)}
    assert left == {False}
    assert all(FeatureCache(tmp_path / "cache", s).get(FeatureCache(tmp_path / "cache", s).key(other))
               for s in (tf, dl))  # the other photo stays


# --------------------------------------------------------------------------- bundles across embedders

@pytest.fixture(scope="module")
def real_bundles(faces_dir, settings):
    """A bundle built from each embedder's features (3 people, 6 photos each), and 2 held-out photos each."""
    people = pick_people(faces_dir, 3, 8)
    files = [{"label": person, "filename": f"{person}/{p.name}"} for person, ps in people.items() for p in ps[:6]]
    photos = [Photo(f["label"], f["filename"], (faces_dir / "lfw62" / f["filename"]).read_bytes()) for f in files]
    held_out = [(person, p.read_bytes()) for person, ps in people.items() for p in ps[6:]]
    bundles = {}
    for s in settings:
        feats = extract_chunk(photos, s)
        bundles[s.embedder] = train_bundle({"id": s.embedder, "options": {"seed": 3}}, files, feats, s,
                                           lambda *a: None)
    return bundles, held_out


def test_a_bundle_built_with_either_embedder_is_used_by_either(real_bundles, settings):
    bundles, held_out = real_bundles
    answers = {}
    for built_with, bundle in bundles.items():
        for s in settings:
            rec = load_bundle(bundle, s)
            assert rec.manifest["pipeline"]["embedder"] == built_with
            answers[built_with, s.embedder] = [rec.predict(data)[0] for _, data in held_out]
    for (built_with, used_with), faces in answers.items():
        assert [f.label for f in faces] == [person for person, _ in held_out], (built_with, used_with)
        same_bundle = answers[built_with, "dlib"]
        assert max(abs(f.distance - g.distance) for f, g in zip(faces, same_bundle)) <= 1e-4
        assert max(abs(f.confidence - g.confidence) for f, g in zip(faces, same_bundle)) <= 1e-3


# --------------------------------------------------------------------------- batches

class Spy:
    """Counts the batches given to embed_chips (and passes them on)."""

    def __init__(self):
        self.batches: list[int] = []

    def __call__(self, chips, mirror=False, settings=None):
        self.batches.append(len(chips))
        return embed_chips(chips, mirror, settings)


def test_a_worker_embeds_every_face_of_its_task_in_one_batch(faces_dir, settings, monkeypatch, tmp_path):
    import features.extract
    s = dataclasses.replace(settings[0], data_dir=tmp_path)
    names = ["lfw62/Ariel_Sharon/Ariel_Sharon_0001.jpg", "wild/two_people.jpg", "lfw62-150px/Colin_Powell/"
             "Colin_Powell_0001.jpg"]
    photos = [Photo("x", n, (faces_dir / n).read_bytes()) for n in names] + [Photo("x", "no.jpg", b"not a photo")]
    spy = Spy()
    monkeypatch.setattr(features.extract, "embed_chips", spy)
    out = extract_chunk(photos, s)
    assert spy.batches == [4]  # 1 + 2 + 1 faces, one call
    assert [o["faces"] for o in out] == [1, 2, 1, 0] and out[3]["skipped"] == "corrupt_image"
    assert all(o["seconds"] > 0 for o in out[:3])
    again = extract_chunk(photos, s)
    assert spy.batches == [4] and all(o["cached"] for o in again)  # the cache answers, nothing embedded


def test_a_prediction_embeds_its_faces_in_one_batch(real_bundles, faces_dir, settings, monkeypatch):
    import modelization.recognizer
    rec = load_bundle(real_bundles[0]["tensorflow"], settings[0])
    photo = (faces_dir / "wild" / "two_people.jpg").read_bytes()
    spy = Spy()
    monkeypatch.setattr(modelization.recognizer, "embed_chips", spy)
    rec.embed(photo, mirror_margin=0.0)
    assert spy.batches == [2]  # no face near the threshold: one pass, both faces in one batch
    spy.batches.clear()
    rec.embed(photo, mirror_margin=float("inf"))
    assert spy.batches == [2, 2]  # then both mirror images in a second batch


def test_a_batch_larger_than_the_network_takes_is_cut_and_gives_the_same_numbers(chips, settings):
    many = np.concatenate([chips] * (MAX_BATCH // len(chips) + 2))
    assert len(many) > MAX_BATCH
    out = embed_chips(list(many), settings=settings[0])
    np.testing.assert_allclose(out, np.concatenate([embed_chips(list(chips), settings=settings[0])] *
                                                   (len(many) // len(chips))), atol=1e-6)


# --------------------------------------------------------------------------- fork

FORK_SCRIPT = r"""
import os, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from constants import Settings
from features.embeddings import embed_chips
s = Settings.from_env(data_dir=sys.argv[2], embedder="tensorflow")
chip = np.full((1, 150, 150, 3), 128, np.uint8)
if sys.argv[3] == "after":
    embed_chips(chip, settings=s)  # TensorFlow has run in this process
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        embed_chips(chip, settings=s)
        os.write(write, b"embedded")
    except Exception as exc:
        os.write(write, type(exc).__name__.encode() + b": " + str(exc).encode())
    os._exit(0)
os.close(write)
print(os.read(read, 4096).decode())
os.waitpid(pid, 0)
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_child_forked_after_tensorflow_ran_is_refused_instead_of_hanging(tmp_path, when):
    """TensorFlow's thread pools do not survive a fork: a child forked after the network ran hangs in its
    first run (bench/openset.py's pool did). The embedder refuses in such a child, naming the cause; a
    child forked before TensorFlow ran embeds normally (uWSGI's lazy-apps forks then)."""
    import subprocess
    import sys

    from test.stack import ROOT
    r = subprocess.run([sys.executable, "-c", FORK_SCRIPT, str(ROOT), str(tmp_path), when],
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.strip().splitlines()[-1]
    if when == "before":
        assert out == "embedded"
    else:
        assert out.startswith("ForkedAfterTensorFlow: ") and "spawn" in out
