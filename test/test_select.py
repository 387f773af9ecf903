"""Choosing the labelled person's face in a training photo with several faces (features/select.py)."""
from __future__ import annotations

import numpy as np

from constants import Settings
from features.extract import PhotoFeatures, photo_features
from features.select import NO_MATCH, choose_faces, faces_of
from test.conftest import pick_people, side_by_side

SETTINGS = Settings()
TOL = SETTINGS.same_person_distance


def unit(v: np.ndarray) -> list[float]:
    return [float(x) for x in v]


def photo(*faces: np.ndarray) -> PhotoFeatures:
    """Features of a photo whose faces (largest first) have these embeddings."""
    others = [{"box": [0, 0, 10 - k, 10 - k], "embedding": unit(e)} for k, e in enumerate(faces[1:], 1)] or None
    return PhotoFeatures(faces=len(faces), box=[0, 0, 20, 20], embedding=unit(faces[0]), others=others)


def point(rng: np.random.Generator, centre: np.ndarray, spread: float = 0.05) -> np.ndarray:
    return centre + rng.normal(0, spread / np.sqrt(128), 128)


def centres(n: int, seed: int = 0) -> list[np.ndarray]:
    """n identities about 0.9 apart (dlib embeddings of different people sit 0.6-1.0 apart)."""
    rng = np.random.default_rng(seed)
    return [rng.normal(0, 0.9 / np.sqrt(2 * 128), 128) for _ in range(n)]


def test_single_face_photos_are_untouched():
    rng = np.random.default_rng(1)
    alice, bob = centres(2)
    feats = [photo(point(rng, alice)) for _ in range(3)] + [photo(point(rng, bob)) for _ in range(3)]
    out, choices = choose_faces(["alice"] * 3 + ["bob"] * 3, feats, TOL)
    assert out == feats and choices == {}


def test_the_person_is_chosen_even_when_a_bystander_is_larger():
    rng = np.random.default_rng(2)
    alice, stranger = centres(2)
    group = photo(point(rng, stranger), point(rng, alice))  # the stranger is nearer the camera
    feats = [photo(point(rng, alice)) for _ in range(4)] + [group]
    out, choices = choose_faces(["alice"] * 5, feats, TOL)
    assert choices[4]["face"] == 1 and choices[4]["distance"] < TOL
    assert out[4].embedding == group.others[0]["embedding"] and out[4].box == group.others[0]["box"]
    assert out[4].faces == 2 and out[:4] == feats[:4]
    # every face is still on record, the one used first
    assert sorted(map(tuple, faces_of(out[4]).tolist())) == sorted(map(tuple, faces_of(group).tolist()))


def test_largest_face_kept_when_it_is_the_person():
    rng = np.random.default_rng(3)
    alice, stranger = centres(2)
    group = photo(point(rng, alice), point(rng, stranger))
    out, choices = choose_faces(["alice"] * 4, [photo(point(rng, alice)) for _ in range(3)] + [group], TOL)
    assert choices[3]["face"] == 0 and out[3] == group


def test_group_photo_without_the_person_is_skipped():
    rng = np.random.default_rng(4)
    alice, s1, s2 = centres(3)
    feats = [photo(point(rng, alice)) for _ in range(3)] + [photo(point(rng, s1), point(rng, s2))]
    out, choices = choose_faces(["alice"] * 4, feats, TOL)
    assert not out[3].usable and out[3].skipped == NO_MATCH and "2 faces" in out[3].detail
    assert choices[3]["distance"] > TOL
    assert out[:3] == feats[:3]


def test_only_group_photos_compare_with_each_other():
    """No single-face photo of bob: his group photos vote among themselves (each with a different stranger)."""
    rng = np.random.default_rng(5)
    bob, *strangers = centres(5)
    feats = [photo(point(rng, s), point(rng, bob)) for s in strangers]
    out, choices = choose_faces(["bob"] * 4, feats, TOL)
    assert all(choices[i]["face"] == 1 for i in range(4))
    assert all(np.linalg.norm(np.asarray(f.embedding) - bob) < 0.2 for f in out)


def test_a_person_with_one_photo_is_left_as_is():
    rng = np.random.default_rng(6)
    alice, bob, stranger = centres(3)
    feats = [photo(point(rng, stranger), point(rng, alice))] + [photo(point(rng, bob)) for _ in range(3)]
    out, choices = choose_faces(["alice"] + ["bob"] * 3, feats, TOL)
    assert out == feats and choices == {}


def test_skipped_photos_are_ignored():
    rng = np.random.default_rng(7)
    alice, stranger = centres(2)
    feats = [PhotoFeatures(skipped="no_face"), photo(point(rng, alice)), photo(point(rng, alice)),
             photo(point(rng, stranger), point(rng, alice))]
    out, choices = choose_faces(["alice"] * 4, feats, TOL)
    assert out[0] == feats[0] and choices[3]["face"] == 1


def test_real_group_photo_picks_the_labelled_person(faces_dir):
    """Two real LFW photos side by side, the labelled person's smaller: her face is used, not the largest."""
    (person, photos), (_, other) = pick_people(faces_dir, 2, 4).items()
    group = photo_features(side_by_side(photos[3], other[0]), SETTINGS)
    assert group.faces >= 2 and len(faces_of(group)) == group.faces

    feats = [photo_features(p.read_bytes(), SETTINGS) for p in photos[:3]] + [group]
    out, choices = choose_faces([person] * 4, feats, TOL)
    assert choices[3]["face"] != 0 and out[3].box[0] >= 340  # the face on the right
    alone = photo_features(photos[3].read_bytes(), SETTINGS)
    assert np.linalg.norm(np.asarray(out[3].embedding) - np.asarray(alone.embedding)) < 0.3
