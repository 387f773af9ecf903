"""Stratified per-person split and the held-out metrics."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelization.dataset import HELD_OUT, ONE_PHOTO, part_sizes, protocol, stratified_split
from modelization.metrics import accuracy, balanced_accuracy

DEFAULTS = dict(min_photos=1, test_fraction=0.2, val_fraction=0.1)


def check_split(labels, split, min_photos):
    """The invariants every split must satisfy."""
    counts = Counter(labels)
    kept = {p for p, n in counts.items() if n >= max(1, min_photos)}
    assert split.people == sorted(kept)
    assert split.too_few == {p: n for p, n in counts.items() if p not in kept}
    parts = [split.train, split.val, split.test]
    for part in parts:
        assert part.dtype == np.int64
        assert list(part) == sorted(part) and len(set(part)) == len(part)
    train, val, test = (set(map(int, p)) for p in parts)
    assert not (train & val) and not (train & test) and not (val & test)
    assert train | val | test == {i for i, lab in enumerate(labels) if lab in kept}
    for person in kept:
        has = [any(labels[i] == person for i in part) for part in (train, val, test)]
        # 3+ photos: one at least in each part; 2: train and test; 1: train
        assert has == {1: [True, False, False], 2: [True, False, True]}.get(counts[person], [True] * 3), person
    assert split.summary() == {"train": len(train), "validation": len(val), "test": len(test)}


def labels_for(sizes: dict[str, int]) -> list[str]:
    # interleaved, so that indices of one person are not contiguous
    out, left = [], dict(sizes)
    while any(left.values()):
        for p in sizes:
            if left[p]:
                out.append(p)
                left[p] -= 1
    return out


def test_split_on_an_unbalanced_set():
    labels = labels_for({"bush": 53, "blair": 14, "annan": 5, "aznar": 3, "solo": 1, "pair": 2})
    split = stratified_split(labels, seed=42, **DEFAULTS)
    check_split(labels, split, 1)
    assert split.people == ["annan", "aznar", "blair", "bush", "pair", "solo"] and split.too_few == {}
    test_bush = sum(labels[i] == "bush" for i in split.test)
    val_bush = sum(labels[i] == "bush" for i in split.val)
    assert test_bush == round(53 * 0.2) and val_bush == round(53 * 0.1)


def test_everyone_with_a_photo_is_in_and_how_they_are_measured():
    labels = labels_for({"a": 1, "b": 2, "c": 3, "d": 10})
    split = stratified_split(labels, seed=0, **DEFAULTS)
    assert split.people == ["a", "b", "c", "d"]
    assert [protocol(n) for n in (1, 2, 3, 10)] == [ONE_PHOTO, HELD_OUT, HELD_OUT, HELD_OUT]
    assert [part_sizes(n, 0.2, 0.1) for n in (0, 1, 2, 3, 10)] == [(0, 0), (0, 0), (1, 0), (1, 1), (2, 1)]


def test_a_minimum_still_leaves_people_out():
    labels = labels_for({"a": 2, "b": 3, "c": 5})
    for min_photos in (0, 1, 2):
        split = stratified_split(labels, min_photos=min_photos, test_fraction=0.2, val_fraction=0.1, seed=0)
        assert split.people == ["a", "b", "c"] and split.too_few == {}
    split = stratified_split(labels, min_photos=3, test_fraction=0.2, val_fraction=0.1, seed=0)
    assert split.people == ["b", "c"] and split.too_few == {"a": 2}
    split = stratified_split(labels, min_photos=5, test_fraction=0.2, val_fraction=0.1, seed=0)
    assert split.people == ["c"] and split.too_few == {"a": 2, "b": 3}
    check_split(labels, split, 5)


def test_empty_input():
    split = stratified_split([], seed=0, **DEFAULTS)
    assert split.people == [] and split.too_few == {}
    assert len(split.train) == len(split.val) == len(split.test) == 0


def test_same_seed_same_split_different_seed_different():
    labels = labels_for({f"p{i}": 20 for i in range(5)})
    a = stratified_split(labels, seed=7, **DEFAULTS)
    b = stratified_split(labels, seed=7, **DEFAULTS)
    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert np.array_equal(x, y)
    c = stratified_split(labels, seed=8, **DEFAULTS)
    check_split(labels, c, 1)
    assert not np.array_equal(a.test, c.test)
    # the split is a property of the data and seed, not of a global random state
    np.random.seed(0)
    d = stratified_split(labels, seed=7, **DEFAULTS)
    assert np.array_equal(a.test, d.test)


def test_every_photo_of_a_person_can_land_in_test():
    """Shuffling really happens: over seeds, each photo of a person is sometimes in test."""
    labels = ["x"] * 10
    seen = set()
    for seed in range(60):
        seen |= set(map(int, stratified_split(labels, seed=seed, **DEFAULTS).test))
    assert seen == set(range(10))


@settings(max_examples=150, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=0, max_size=8),
    min_photos=st.integers(0, 6),
    test_fraction=st.floats(0.01, 0.3),
    val_fraction=st.floats(0.01, 0.3),
    seed=st.integers(0, 2**32 - 1),
    order_seed=st.integers(0, 1000),
)
def test_split_property(sizes, min_photos, test_fraction, val_fraction, seed, order_seed):
    labels = [f"person{i}" for i, n in enumerate(sizes) for _ in range(n)]
    np.random.default_rng(order_seed).shuffle(labels)
    split = stratified_split(labels, min_photos=min_photos, test_fraction=test_fraction,
                             val_fraction=val_fraction, seed=seed)
    check_split(labels, split, min_photos)
    again = stratified_split(labels, min_photos=min_photos, test_fraction=test_fraction,
                             val_fraction=val_fraction, seed=seed)
    assert all(np.array_equal(x, y) for x, y in
               ((split.train, again.train), (split.val, again.val), (split.test, again.test)))


@pytest.mark.parametrize("n, test_fraction, val_fraction", [(3, 0.5, 0.1), (4, 0.4, 0.4)])
def test_large_fractions_still_leave_a_training_photo(n, test_fraction, val_fraction):
    labels = ["a"] * n + ["b"] * 10
    split = stratified_split(labels, min_photos=1, test_fraction=test_fraction, val_fraction=val_fraction, seed=0)
    check_split(labels, split, 1)


# --------------------------------------------------------------------------- metrics

def test_metrics_by_hand():
    y_true = np.array([0, 0, 1])
    y_pred = np.array([0, 1, 1])
    assert accuracy(y_true, y_pred) == pytest.approx(2 / 3)
    assert balanced_accuracy(y_true, y_pred) == pytest.approx((1 / 2 + 1) / 2)


def test_majority_guesser_is_caught_by_balanced_accuracy():
    y_true = np.array(["bush"] * 8 + ["blair", "annan"])
    y_pred = np.array(["bush"] * 10)
    assert accuracy(y_true, y_pred) == pytest.approx(0.8)
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(1 / 3)


def test_metrics_with_unseen_predictions():
    y_true = np.array(["a", "a", "b", "b"])
    y_pred = np.array(["a", "zz", "zz", "b"])
    assert accuracy(y_true, y_pred) == 0.5
    assert balanced_accuracy(y_true, y_pred) == 0.5


def test_metrics_on_empty_input_are_nan():
    empty = np.array([], dtype=int)
    assert math.isnan(accuracy(empty, empty))
    assert math.isnan(balanced_accuracy(empty, empty))


@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=60))
def test_metric_properties(pairs):
    y_true = np.array([t for t, _ in pairs])
    y_pred = np.array([p for _, p in pairs])
    acc, bal = accuracy(y_true, y_pred), balanced_accuracy(y_true, y_pred)
    assert 0.0 <= acc <= 1.0 and 0.0 <= bal <= 1.0
    assert accuracy(y_true, y_true) == 1.0 and balanced_accuracy(y_true, y_true) == 1.0
    recalls = [np.mean(y_pred[y_true == c] == c) for c in set(y_true.tolist())]
    assert min(recalls) - 1e-12 <= bal <= max(recalls) + 1e-12


@given(k=st.integers(1, 5), per_class=st.integers(1, 6), data=st.data())
def test_balanced_equals_plain_accuracy_on_balanced_classes(k, per_class, data):
    y_true = np.repeat(np.arange(k), per_class)
    y_pred = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=len(y_true), max_size=len(y_true))))
    assert balanced_accuracy(y_true, y_pred) == pytest.approx(accuracy(y_true, y_pred))
