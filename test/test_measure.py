"""The figures a build measures for the console's model page (#20): who is taken for whom among the test
photos, and the FAR/DIR trade-off of the calibrated rule. Synthetic embeddings: the arithmetic is the
point here; real photos go through the same code in test/test_console.py."""
from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest

from app.worker.tasks import OPERATING_FARS, confusions, measure, operating_points
from constants import Settings
from modelization import lean
from modelization.dataset import stratified_split
from modelization.network import NetworkSpec


def test_confusions_count_each_pair_and_what_the_rule_accepted():
    people = ["ann", "bob", "cid"]
    y_test = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 2, 0, 2])
    accepted = np.array([True, True, False, True, False, True, True, True])
    assert confusions(y_test, pred, accepted, people) == [
        {"person": "ann", "named": "bob", "photos": 2, "accepted": 1},
        {"person": "bob", "named": "cid", "photos": 1, "accepted": 0},
        {"person": "cid", "named": "ann", "photos": 1, "accepted": 1}]
    assert confusions(y_test, y_test, accepted, people) == []


def test_operating_points_trade_false_accepts_for_recognitions():
    rng = np.random.default_rng(0)
    gallery_y = np.repeat(np.arange(5), 4)
    y_test = np.repeat(np.arange(5), 6)
    pred = np.where(rng.random(len(y_test)) < 0.9, y_test, (y_test + 1) % 5)
    scores = rng.uniform(0.2, 0.7, len(y_test))
    points = operating_points(gallery_y, 5, pred, scores, y_test, 0.03)
    fars = [p["target_far"] for p in points]
    assert fars == sorted({*OPERATING_FARS, 0.03})
    for a, b in pairwise(points):  # a looser rule accepts at least what a stricter one did
        assert a["threshold_range"][1] <= b["threshold_range"][1]
        assert a["test_accepted"] <= b["test_accepted"] and a["test_dir"] <= b["test_dir"]
        assert b["test_dir"] <= b["test_accepted"]
    assert operating_points(gallery_y, 5, pred[:0], scores[:0], y_test[:0], 0.01)[0]["test_dir"] is None


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A real measurement on clustered synthetic embeddings: 6 people x 8 photos, some close pairs."""
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 128))
    centres[1] = centres[0] + 0.05 * rng.normal(size=128)  # a look-alike pair: confusions to find
    x = np.concatenate([c + 0.3 * rng.normal(size=(8, 128)) for c in centres]) / 11.0
    labels = [f"p{i}" for i in range(6) for _ in range(8)]
    split = stratified_split(labels, min_photos=1, test_fraction=0.25, val_fraction=0.125, seed=3)
    y = np.array([split.people.index(label) for label in labels])
    spec = NetworkSpec()
    fit = lean.fit(spec, x[split.train], y[split.train], 6, seed=0, max_epochs=40,
                   x_val=x[split.val], y_val=y[split.val])
    settings = Settings.from_env(data_dir=tmp_path_factory.mktemp("measure"))
    return measure(spec, fit.weights, x.astype(np.float32), y, split, settings), split, settings


def test_the_measure_carries_confusions_and_its_own_operating_point(measured):
    figures, _, settings = measured
    metrics, open_set = figures["metrics"], figures["open_set"]
    errors = round((1 - metrics["test_accuracy"]) * metrics["test_photos"])
    assert errors > 0 and {(c["person"], c["named"]) for c in metrics["confusions"]} <= {("p0", "p1"), ("p1", "p0")}
    assert sum(c["photos"] for c in metrics["confusions"]) == errors
    assert all(c["person"] != c["named"] and 0 <= c["accepted"] <= c["photos"] for c in metrics["confusions"])
    own = [p for p in open_set["operating_points"] if p["target_far"] == settings.target_far]
    assert len(own) == 1
    assert own[0]["test_dir"] == open_set["test_dir"] and own[0]["test_accepted"] == open_set["test_accepted"]
    points = open_set["operating_points"]
    assert points[0]["test_dir"] < points[-1]["test_dir"]  # the trade-off is there to see
    assert own[0]["threshold_range"] == [min(open_set["measured_thresholds"]), max(open_set["measured_thresholds"])]
