"""The open-set rule of format-5 bundles: templates, per-person thresholds from the stranger model,
checked on real photos (a few lfw62 people enrolled from 1 or 2 photos, real strangers)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from constants import Settings
from features.extract import photo_features
from modelization.openset import (
    STRANGER_MODEL,
    TEMPLATE,
    Gallery,
    calibrate,
    person_far,
    person_thresholds,
    stranger_quantile,
)
from test.conftest import pick_people

SETTINGS = Settings.from_env()


@given(st.floats(1e-4, 0.2), st.integers(1, 5000))
def test_person_far_adds_up_to_the_target(target, people):
    a = person_far(target, people)
    assert 0 < a <= target * (1 + 1e-12)
    assert 1 - (1 - a) ** people == pytest.approx(target, rel=1e-9)


@given(st.integers(1, 500), st.integers(1, 100))
def test_thresholds_tighten_with_more_people_and_more_photos(people, photos):
    """A larger gallery holds more look-alikes: each person must be stricter. A template of more photos
    sits nearer the middle of faces, strangers score lower against it: stricter too."""
    t = person_thresholds(np.full(people, photos), 0.01)
    assert np.all(t == t[0])
    assert person_thresholds(np.full(people + 1, photos), 0.01)[0] < t[0]
    assert person_thresholds(np.full(people, photos + 1), 0.01)[0] < t[0]
    assert person_thresholds(np.full(people, photos), 0.02)[0] > t[0]  # a looser target
    assert 0.15 < t[0] < 0.6  # within the range of template scores


def test_mixed_photo_counts_get_their_own_thresholds_and_the_formula():
    counts = np.array([1, 2, 5, 40])
    t = person_thresholds(counts, 0.01)
    assert list(t) == sorted(t, reverse=True)
    a = person_far(0.01, 4)
    c0, c1, c2, c3, c4 = STRANGER_MODEL
    level = np.log10(a)
    np.testing.assert_allclose(t, c0 + c1 * level + c2 * level ** 2 + (c3 + c4 * level) / counts)
    np.testing.assert_allclose(t, stranger_quantile(a, counts))
    rule = calibrate(np.repeat(np.arange(4), counts), 4, 0.01)
    assert rule["score"] == TEMPLATE and rule["thresholds"] == [round(float(v), 6) for v in t]
    assert rule["person_far"] == pytest.approx(a) and rule["threshold_range"] == [min(rule["thresholds"]),
                                                                                max(rule["thresholds"])]


@pytest.fixture(scope="module")
def real(faces_dir):
    """4 lfw62 people x 5 photos and 60 real strangers, embedded by the service's own code."""
    people = pick_people(faces_dir, 4, 5)
    emb = {p: np.asarray([photo_features(x.read_bytes(), SETTINGS).embedding for x in paths], np.float32)
           for p, paths in people.items()}
    strangers = [photo_features(p.read_bytes(), SETTINGS) for p in sorted((faces_dir / "strangers").glob("*.jpg"))[:60]]
    return emb, np.asarray([f.embedding for f in strangers if f.usable], np.float32)


@pytest.mark.parametrize("enrolled", [1, 2])
def test_people_enrolled_from_one_or_two_photos_are_named_and_strangers_refused(real, enrolled):
    emb, strangers = real
    names = list(emb)
    gx = np.concatenate([emb[p][:enrolled] for p in names])
    gy = np.repeat(np.arange(len(names)), enrolled)
    gallery = Gallery(gx, gy, len(names))
    thresholds = person_thresholds(np.bincount(gy), SETTINGS.target_far)
    probes = np.concatenate([emb[p][enrolled:] for p in names])
    truth = np.repeat(np.arange(len(names)), 5 - enrolled)
    scores = gallery.scores(probes)
    right = (scores.min(1) <= thresholds[scores.argmin(1)]) & (scores.argmin(1) == truth)
    assert right.sum() >= len(truth) - 2, scores.min(1)
    s = gallery.scores(strangers)
    assert np.sum(s.min(1) <= thresholds[s.argmin(1)]) <= 3  # ~1% of 60 expected
    # the plain distance between photos would have to accept strangers to name as many known faces
    d = np.linalg.norm(probes[:, None] - gx[None], axis=2)
    d_strangers = np.linalg.norm(strangers[:, None] - gx[None], axis=2).min(1)
    assert np.mean(d.min(1) <= np.sort(d_strangers)[1]) <= right.mean()
