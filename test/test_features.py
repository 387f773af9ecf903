"""Embeddings, per-photo features and the on-disk feature cache."""
from __future__ import annotations

import dataclasses
import io
import json

import dlib
import numpy as np
import pytest
from PIL import Image

from constants import Settings
from features.embeddings import EMBEDDING_SIZE, embed_chips, resnet_model_path
from features.extract import CORRUPT, NO_FACE, FeatureCache, PhotoFeatures, cached_photo_features, photo_features
from preprocessor.faces import _shape_predictor, align_face, detect_faces, largest
from preprocessor.images import decode_image
from test.conftest import pick_people

SETTINGS = Settings()


def pipeline_boxes(image: np.ndarray) -> list:
    """The boxes of the settings' detector, as the pipeline finds them."""
    return detect_faces(image, SETTINGS.detect_max_side, SETTINGS.upsample_max_side, SETTINGS.detector,
                        SETTINGS.detect_min_face_px)


def chip_of(path) -> np.ndarray:
    image = decode_image(path.read_bytes(), SETTINGS.max_image_pixels)
    return align_face(image, largest(pipeline_boxes(image)))


@pytest.fixture(scope="module")
def people(faces_dir):
    return pick_people(faces_dir, 3, 3)


@pytest.fixture(scope="module")
def embedded(people):
    """9 real embeddings (3 people x 3 photos) and their labels."""
    labels, chips = [], []
    for person, photos in people.items():
        for p in photos:
            labels.append(person)
            chips.append(chip_of(p))
    return np.array(labels), embed_chips(chips)


@pytest.fixture(scope="module")
def one_photo(people) -> bytes:
    return next(iter(people.values()))[0].read_bytes()


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def no_face_png() -> bytes:
    return _png(np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8))


# --------------------------------------------------------------------------- embeddings

def test_embeddings_shape_dtype_and_norm(embedded):
    _, vectors = embedded
    assert vectors.dtype == np.float32 and vectors.shape == (9, EMBEDDING_SIZE)
    assert np.all(np.isfinite(vectors))
    norms = np.linalg.norm(vectors, axis=1)
    # dlib's ResNet descriptors are not unit vectors: their norms sit around 1.4 here.
    # What matters is that they are all alike (no degenerate or exploding vectors).
    assert np.all((norms > 0.8) & (norms < 2.5)), norms
    assert norms.max() / norms.min() < 1.5
    assert len({v.tobytes() for v in vectors}) == 9


def test_embedding_matches_dlib_on_the_full_photo(faces_dir):
    """Chip-then-embed equals dlib's own descriptor computed from the photo and its landmarks."""
    image = decode_image((faces_dir / "wild" / "obama.jpg").read_bytes(), SETTINGS.max_image_pixels)
    box = largest(detect_faces(image))
    shape = _shape_predictor()(image, dlib.rectangle(*box.as_list()))
    reference = np.array(dlib.face_recognition_model_v1(resnet_model_path()).compute_face_descriptor(image, shape))
    ours = embed_chips([align_face(image, box)])[0]
    assert np.allclose(ours, reference, atol=1e-4)


def test_embed_no_chips():
    for mirror in (False, True):
        out = embed_chips([], mirror)
        assert out.shape == (0, EMBEDDING_SIZE) and out.dtype == np.float32


def test_mirror_embedding_is_the_mean_of_both_passes_and_symmetric(people):
    chips = [chip_of(p) for p in next(iter(people.values()))[:2]]
    flipped = [np.ascontiguousarray(c[:, ::-1]) for c in chips]
    plain, of_mirrors = embed_chips(chips), embed_chips(flipped)
    both = embed_chips(chips, mirror=True)
    np.testing.assert_allclose(both, (plain + of_mirrors) / 2, atol=1e-6)
    # a face and its mirror image get the same embedding (it is their mean either way)
    np.testing.assert_allclose(embed_chips(flipped, mirror=True), both, atol=1e-6)
    # the mirror pass is not a no-op: the network does not see a face and its mirror alike
    assert np.abs(plain - of_mirrors).max() > 1e-3


def test_same_person_is_closer_than_different_people(embedded):
    labels, vectors = embedded
    dist = np.linalg.norm(vectors[:, None] - vectors[None], axis=2)
    same = (labels[:, None] == labels[None]) & ~np.eye(len(labels), dtype=bool)
    diff = labels[:, None] != labels[None]
    assert dist[same].mean() < dist[diff].mean()
    assert dist[same].mean() < 0.6 < dist[diff].mean()  # dlib's classic threshold
    # per person too: each person's own photos are on average closer than anyone else's
    for person in set(labels):
        mine = labels == person
        own = dist[np.ix_(mine, mine)][~np.eye(mine.sum(), dtype=bool)].mean()
        other = dist[np.ix_(mine, ~mine)].mean()
        assert own < other, person


# --------------------------------------------------------------------------- photo_features

def test_photo_features_on_a_real_photo(people, embedded, one_photo):
    _labels, vectors = embedded
    result = photo_features(one_photo, SETTINGS)
    assert result.usable and result.skipped is None
    assert result.faces >= 1 and len(result.box) == 4
    assert len(result.embedding) == EMBEDDING_SIZE
    # photo 0 of person 0 is row 0 of the fixture, embedded the same way
    assert np.allclose(result.embedding, vectors[0], atol=1e-5)


def test_photo_features_embeds_every_face_largest_first(faces_dir):
    image = decode_image((faces_dir / "wild" / "two_people.jpg").read_bytes(), SETTINGS.max_image_pixels)
    boxes = sorted(pipeline_boxes(image), key=lambda b: -b.area)
    result = photo_features((faces_dir / "wild" / "two_people.jpg").read_bytes(), SETTINGS)
    assert result.faces == 2 and len(result.others) == 1
    assert result.box == boxes[0].as_list() and result.others[0]["box"] == boxes[1].as_list()
    expected = embed_chips([align_face(image, b) for b in boxes])
    got = np.asarray([result.embedding, result.others[0]["embedding"]])
    assert np.allclose(got, expected, atol=1e-5)
    assert np.linalg.norm(got[0] - got[1]) > 0.6  # two different people
    # the cap bounds the work on a crowd photo, but the count stays true
    capped = photo_features((faces_dir / "wild" / "two_people.jpg").read_bytes(),
                            dataclasses.replace(SETTINGS, max_faces_per_photo=1))
    assert capped.faces == 2 and capped.others is None and capped.box == boxes[0].as_list()


def test_photo_features_no_face(no_face_png):
    result = photo_features(no_face_png, SETTINGS)
    assert result.skipped == NO_FACE == "no_face"
    assert not result.usable and result.embedding is None and result.faces == 0


@pytest.mark.parametrize("kind", ["truncated", "text"])
def test_photo_features_corrupt(one_photo, kind):
    data = one_photo[: len(one_photo) // 2] if kind == "truncated" else b"not a photo at all\n"
    result = photo_features(data, SETTINGS)
    assert result.skipped == CORRUPT == "corrupt_image"
    assert not result.usable and result.embedding is None and result.detail


def test_photo_features_too_many_pixels_is_skipped():
    data = _png(np.zeros((300, 400), np.uint8))
    assert photo_features(data, SETTINGS).skipped == NO_FACE  # decodable under the default limit
    result = photo_features(data, dataclasses.replace(SETTINGS, max_image_pixels=119_999))
    assert result.skipped == CORRUPT and "limit" in result.detail


# --------------------------------------------------------------------------- FeatureCache

def test_cache_hit_returns_identical_features(tmp_path, one_photo):
    cache = FeatureCache(tmp_path, SETTINGS)
    first, was_cached = cached_photo_features(one_photo, SETTINGS, cache)
    assert not was_cached and first.usable
    key = cache.key(one_photo)
    stored = tmp_path / key[:2] / f"{key}.json"
    assert stored.is_file()
    assert json.loads(stored.read_text())["embedding"] == first.embedding
    second, was_cached = cached_photo_features(one_photo, SETTINGS, cache)
    assert was_cached
    assert second == first
    assert np.array_equal(np.float32(second.embedding), np.float32(first.embedding))
    # a fresh cache object on the same directory sees it too
    third, was_cached = cached_photo_features(one_photo, SETTINGS, FeatureCache(tmp_path, SETTINGS))
    assert was_cached and third == first


def test_cache_key_depends_on_data_and_settings(tmp_path, one_photo):
    base = FeatureCache(tmp_path, SETTINGS)
    key = base.key(one_photo)
    assert key == FeatureCache(tmp_path, Settings()).key(one_photo)
    assert key != base.key(one_photo + b"\x00")
    other = "hog" if SETTINGS.detector == "blazeface" else "blazeface"
    for change in (dict(chip_padding=0.3), dict(chip_size=160), dict(detector=other),
                   dict(max_image_pixels=1_000_000), dict(max_faces_per_photo=2)):
        assert FeatureCache(tmp_path, dataclasses.replace(SETTINGS, **change)).key(one_photo) != key, change
    hog = FeatureCache(tmp_path, dataclasses.replace(SETTINGS, detector="hog")).key(one_photo)
    for change in (dict(detect_max_side=800), dict(upsample_max_side=500)):  # HOG's own settings
        assert FeatureCache(tmp_path, dataclasses.replace(SETTINGS, detector="hog", **change)).key(one_photo) != hog
    blaze = FeatureCache(tmp_path, dataclasses.replace(SETTINGS, detector="blazeface")).key(one_photo)
    assert FeatureCache(tmp_path, dataclasses.replace(  # BlazeFace's own setting
        SETTINGS, detector="blazeface", detect_min_face_px=60)).key(one_photo) != blaze
    # settings outside the pipeline do not invalidate the cache
    assert FeatureCache(tmp_path, dataclasses.replace(SETTINGS, port=1234, batch_size=8)).key(one_photo) == key


@pytest.mark.parametrize("garbage", ["{not json", "", "[1, 2]", json.dumps({"embedding": [1.0], "bogus_field": 1})])
def test_corrupt_cache_file_is_a_miss(tmp_path, no_face_png, garbage):
    cache = FeatureCache(tmp_path, SETTINGS)
    key = cache.key(no_face_png)
    path = tmp_path / key[:2] / f"{key}.json"
    path.parent.mkdir(parents=True)
    path.write_text(garbage)
    assert cache.get(key) is None
    result, was_cached = cached_photo_features(no_face_png, SETTINGS, cache)
    assert not was_cached and result.skipped == NO_FACE
    assert PhotoFeatures(**json.loads(path.read_text())) == result  # rewritten properly
    assert cached_photo_features(no_face_png, SETTINGS, cache) == (result, True)


def test_corrupt_cache_file_for_a_real_photo_is_recomputed(tmp_path, one_photo, embedded):
    cache = FeatureCache(tmp_path, SETTINGS)
    key = cache.key(one_photo)
    path = tmp_path / key[:2] / f"{key}.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"embedding": [0.1, 0.2')  # half-written
    result, was_cached = cached_photo_features(one_photo, SETTINGS, cache)
    assert not was_cached
    assert np.allclose(result.embedding, embedded[1][0], atol=1e-5)


def test_no_cache(no_face_png):
    result, was_cached = cached_photo_features(no_face_png, SETTINGS, None)
    assert not was_cached and result.skipped == NO_FACE


def test_skipped_results_are_cached_too(tmp_path, no_face_png):
    cache = FeatureCache(tmp_path, SETTINGS)
    assert cached_photo_features(no_face_png, SETTINGS, cache)[1] is False
    result, was_cached = cached_photo_features(no_face_png, SETTINGS, cache)
    assert was_cached and result.skipped == NO_FACE
