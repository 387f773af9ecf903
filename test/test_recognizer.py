"""Recognizer and its cache on a bundle built by the real training code from synthetic embeddings."""
from __future__ import annotations

import os
import zipfile
from dataclasses import asdict

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.web.recognizers import RecognizerCache
from app.worker.tasks import train_bundle
from constants import Settings
from features.embeddings import embed_chips, pairwise_distances
from features.extract import PhotoFeatures
from modelization.bundle import GALLERY_FILE, read_manifest, save_bundle
from modelization.openset import Gallery, class_scores, name_faces, needs_mirror_pass, person_thresholds, templates
from modelization.recognizer import Recognizer, load_bundle
from preprocessor.faces import align_face, detect_faces, largest
from preprocessor.images import decode_image

PEOPLE = ["ann", "bob", "cy"]


def clusters(seed: int, per_person: int = 12) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Three tight, well separated groups of unit-ish 128-d vectors (like dlib embeddings)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(PEOPLE), 128))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x, labels = [], []
    for c, person in enumerate(PEOPLE):
        x.append(centers[c] + rng.normal(scale=0.01, size=(per_person, 128)))
        labels += [person] * per_person
    return np.concatenate(x).astype(np.float32), labels, centers


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> bytes:
    x, labels, _ = clusters(0)
    files = [{"label": lab, "filename": f"{lab}/{i}.jpg"} for i, lab in enumerate(labels)]
    feats = [asdict(PhotoFeatures(faces=1, box=[0, 0, 1, 1], embedding=[float(v) for v in row])) for row in x]
    settings = Settings.from_env(data_dir=tmp_path_factory.mktemp("rec"))
    return train_bundle({"id": "synthetic", "options": {"seed": 1}}, files, feats, settings, lambda *a: None)


def test_bundle_holds_gallery_and_calibration(bundle, tmp_path):
    path = tmp_path / "m.zip"
    path.write_bytes(bundle)
    with zipfile.ZipFile(path) as zf:
        assert GALLERY_FILE in zf.namelist()
    manifest = read_manifest(bundle)
    assert manifest["format_version"] == 5 and manifest["labels"] == PEOPLE
    o = manifest["open_set"]
    assert o["score"] == "template" and len(o["thresholds"]) == 3 and o["target_far"] == 0.01
    # same photo count, same threshold; the stranger model's value for 3 people with 12 photos each
    assert o["thresholds"] == [pytest.approx(float(person_thresholds(np.array([12, 12, 12]), 0.01)[0]), abs=1e-6)] * 3
    # the shipped gallery holds every photo (refit), the figures come from the model trained without the test ones
    with np.load(zipfile.ZipFile(path).open(GALLERY_FILE)) as g:
        assert len(g["labels"]) == 36
    assert manifest["refit"]["gallery_photos"] == 36 and manifest["metrics"]["test_photos"] == 3 * 2


def test_identify_names_members_and_refuses_far_vectors(bundle):
    rec = load_bundle(bundle)
    x, labels, centers = clusters(0)
    got = rec.identify(x)
    assert [g[0] for g in got] == labels
    assert all(0.5 < g[1] <= 1.0 for g in got)
    far = -centers  # opposite directions: nobody's face
    assert [g[0] for g in rec.identify(far)] == [None, None, None]
    assert all(g[3] in PEOPLE for g in rec.identify(far))  # the candidate is still reported
    assert rec.identify(np.zeros((0, 128), np.float32)) == []


def test_numpy_forward_matches_keras(bundle):
    rec = load_bundle(bundle)
    x = np.random.default_rng(3).normal(scale=0.2, size=(20, 128)).astype(np.float32)
    assert rec._steps is not None, "the default network should run as numpy"
    np.testing.assert_allclose(rec.probabilities(x), np.asarray(rec._model(x, training=False)), atol=1e-5)


def test_threshold_override(bundle):
    rec = load_bundle(bundle)
    _, _, centers = clusters(0)
    assert all(g[0] is not None for g in rec.identify(-centers, threshold=4.0))


def test_cache_reuses_reloads_on_change_and_is_bounded(bundle, tmp_path):
    a, b = tmp_path / "a.zip", tmp_path / "b.zip"
    a.write_bytes(bundle)
    b.write_bytes(bundle)
    cache = RecognizerCache(size=1)
    settings = Settings.from_env()
    first = cache.get("a", a, settings)
    assert cache.get("a", a, settings) is first and cache.loads == 1
    os.utime(a, (a.stat().st_atime, a.stat().st_mtime + 10))  # the fronts' bundle cache bumps files it uses
    assert cache.get("a", a, settings) is first and cache.loads == 1
    fresh = tmp_path / "a.new"
    fresh.write_bytes(bundle)
    os.replace(fresh, a)  # another bundle in its place
    assert cache.get("a", a, settings) is not first and cache.loads == 2
    cache.get("b", b, settings)
    assert "b" in cache and "a" not in cache  # size 1: a was evicted
    cache.evict("b")
    assert "b" not in cache
    a.unlink()
    with pytest.raises(FileNotFoundError):
        cache.get("a", a, settings)


def test_save_bundle_is_atomic_and_keeps_the_first_result(bundle, tmp_path):
    folder = save_bundle(tmp_path, "m1", bundle)
    assert sorted(p.name for p in folder.iterdir()) == ["MODEL_CARD.md", "manifest.json", "model.zip"]
    again = save_bundle(tmp_path, "m1", b"PK-not-used")  # a re-delivered result is ignored
    assert again == folder and (folder / "model.zip").read_bytes() == bundle
    assert [p.name for p in tmp_path.iterdir()] == ["m1"]  # no temporary folders left


def test_readme_documents_the_dlib_weights_bundles_expect():
    """The README's sha256 table must match the weights this install ships (and manifests record)."""
    import re
    from pathlib import Path

    from features.extract import pipeline_settings
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    documented = dict(re.findall(r"\| `([\w.]+\.dat)` \| `([0-9a-f]{64})` \|", readme))
    assert documented == pipeline_settings(Settings.from_env())["models"]


# --------------------------------------------------------------------------- naming a face: classifier + gallery

def gallery_two_people():
    """Person 0 around e0, person 1 around e1 (3 photos each), unit-ish 128-d vectors."""
    e = np.eye(128, dtype=np.float32)
    gx = np.stack([e[0], e[0] + 0.01 * e[2], e[0] - 0.01 * e[2], e[1], e[1] + 0.01 * e[3], e[1] - 0.01 * e[3]])
    return gx, np.array([0, 0, 0, 1, 1, 1])


def test_name_faces_classifier_alone_when_temperature_is_zero():
    gx, gy = gallery_two_people()
    x = gx[[0, 3]]
    probs = np.array([[0.2, 0.8], [0.9, 0.1]])  # the classifier contradicts the gallery
    scores = Gallery(gx, gy, 2).scores(x)
    classes, named = name_faces(probs, scores, temperature=0.0)
    assert classes.tolist() == [1, 0]
    np.testing.assert_allclose(named, scores[[0, 1], [1, 0]])


def test_name_faces_gallery_leads_and_classifier_breaks_near_ties():
    gx, gy = gallery_two_people()
    e = np.eye(128, dtype=np.float32)
    gallery = Gallery(gx, gy, 2)
    on_0 = gallery.scores(gx[0:1])                    # on person 0's template: ~1.41 from person 1's
    halfway = gallery.scores(((e[0] + e[1]) / 2)[None, :])  # equally far from both
    # a mildly wrong classifier does not outvote a clear distance
    assert name_faces(np.array([[0.3, 0.7]]), on_0, 0.02)[0].tolist() == [0]
    # on a tie in distance, the classifier decides
    assert name_faces(np.array([[0.3, 0.7]]), halfway, 0.02)[0].tolist() == [1]
    assert name_faces(np.array([[0.7, 0.3]]), halfway, 0.02)[0].tolist() == [0]
    # the score is always the named person's
    assert name_faces(np.array([[0.3, 0.7]]), on_0, 0.02)[1][0] == pytest.approx(float(on_0[0, 0]))


def test_templates_are_unit_means_of_unit_photos_and_scores_their_distances():
    rng = np.random.default_rng(0)
    gx = rng.normal(size=(7, 128)).astype(np.float32) * rng.uniform(0.5, 3, (7, 1)).astype(np.float32)
    gy = np.array([0, 0, 0, 1, 1, 2, 2])
    t = templates(gx, gy, 4)
    u = gx / np.linalg.norm(gx, axis=1, keepdims=True)
    for c in range(3):
        mean = u[gy == c].mean(0)
        np.testing.assert_allclose(t[c], mean / np.linalg.norm(mean), atol=1e-6)
    assert not t[3].any()  # nobody's photos: a zero row, 1 from every face
    x = rng.normal(size=(5, 128)).astype(np.float32)
    scores = Gallery(gx, gy, 4).scores(x)
    ux = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(scores, np.linalg.norm(ux[:, None] - t[None], axis=2), atol=1e-5)
    np.testing.assert_allclose(scores[:, 3], 1.0, atol=1e-6)
    # the length of an embedding does not change its score
    np.testing.assert_allclose(Gallery(gx, gy, 4).scores(3 * x), scores, atol=1e-5)


def test_an_older_bundle_scores_and_thresholds_as_it_did(bundle):
    """A format-4 manifest (no `score`, one `threshold`, `k`) keeps the k-nearest rule and its threshold."""
    rec = load_bundle(bundle)
    old_rule = {k: v for k, v in rec.open_set.items() if k not in ("score", "thresholds")}
    old_rule.update(threshold=0.05, k=2)
    old = Recognizer(rec._model, rec.labels, {**rec.manifest, "format_version": 4, "open_set": old_rule},
                     rec.gallery_x, rec.gallery_y)
    x, labels, _ = clusters(0)
    probe = x + np.random.default_rng(1).normal(scale=0.003, size=x.shape).astype(np.float32)
    expected = class_scores(pairwise_distances(probe, rec.gallery_x), rec.gallery_y, 3, 2)
    got = old.identify(probe)
    named = [rec.labels.index(g[3]) for g in got]
    np.testing.assert_allclose([g[2] for g in got], expected[np.arange(len(x)), named], atol=1e-5)
    assert [g[4] for g in got] == [0.05] * len(x)
    assert [g[0] for g in got] == [lab if d <= 0.05 else None for lab, d in zip(labels, (g[2] for g in got))]


def test_bundle_records_its_decision_rule_and_older_bundles_keep_the_classifier_alone(bundle):
    manifest = read_manifest(bundle)
    assert manifest["open_set"]["temperature"] == Settings().fusion_temperature > 0
    assert "log p" in manifest["open_set"]["decision"]
    rec = load_bundle(bundle)
    assert rec.temperature == Settings().fusion_temperature
    rec.open_set = {k: v for k, v in rec.open_set.items() if k != "temperature"}  # as a format-2 manifest
    old = Recognizer(rec._model, rec.labels, {**rec.manifest, "open_set": rec.open_set}, rec.gallery_x, rec.gallery_y)
    assert old.temperature == 0.0
    x = clusters(0)[0]
    assert [g[3] for g in old.identify(x)] == [rec.labels[c] for c in old.probabilities(x).argmax(1)]


def test_new_bundles_embed_a_face_with_its_mirror_image_older_ones_once(bundle, faces_dir):
    open_set = read_manifest(bundle)["open_set"]
    assert open_set["mirror_probes"] is Settings().mirror_probes is True
    assert open_set["mirror_margin"] == Settings().mirror_margin
    rec = load_bundle(bundle)
    image = decode_image((faces_dir / "wild" / "obama.jpg").read_bytes(), Settings().max_image_pixels)
    s = Settings()  # the chip as the pipeline cuts it: the settings' detector
    chip = align_face(image, largest(detect_faces(image, detector=s.detector, min_face_px=s.detect_min_face_px)))
    once = rec.identify(embed_chips([chip]))[0][2]
    both = rec.identify(embed_chips([chip], mirror=True))[0][2]
    assert abs(once - both) > 1e-4  # the mirror pass is not a no-op
    # the second pass only for a face whose one-pass score is within the margin of the threshold
    near, far = once + rec.mirror_margin / 2, once + 2 * rec.mirror_margin
    assert rec.predict(image, threshold=near)[0].distance == pytest.approx(both, abs=1e-5)
    assert rec.predict(image, threshold=far)[0].distance == pytest.approx(once, abs=1e-5)
    # a format-4 bundle from before the margin: the second pass for every face
    before_margin = {k: v for k, v in rec.open_set.items() if k != "mirror_margin"}
    every = Recognizer(rec._model, rec.labels, {**rec.manifest, "open_set": before_margin}, rec.gallery_x,
                       rec.gallery_y)
    assert every.predict(image, threshold=far)[0].distance == pytest.approx(both, abs=1e-5)
    older = {k: v for k, v in rec.open_set.items() if k != "mirror_probes"}  # as a format-3 manifest
    old = Recognizer(rec._model, rec.labels, {**rec.manifest, "open_set": older}, rec.gallery_x, rec.gallery_y)
    assert old.predict(image, threshold=near)[0].distance == pytest.approx(once, abs=1e-5)


@given(st.lists(st.floats(0, 2), max_size=20), st.floats(0, 2), st.floats(0, 1))
def test_needs_mirror_pass_is_the_band_around_the_threshold(scores, threshold, margin):
    again = needs_mirror_pass(np.array(scores), threshold, margin)
    assert again.tolist() == [threshold - margin <= s <= threshold + margin for s in scores]
    assert needs_mirror_pass(np.array(scores), threshold, float("inf")).all()
