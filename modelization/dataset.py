"""Per-person stratified train/validation/test split with a fixed seed, for any number of photos.

How a person's usable photos are cut depends on how many there are (`n`):
- n >= 3: at least one photo each for train, validation and test (the fractions decide the rest);
- n == 2: one for train, one for test (no validation photo: it would leave nothing to measure);
- n == 1: the photo trains; nothing is left to test with, so the person is measured the only
  way one photo allows, as a stranger to everybody else (leave-one-identity-out, app/worker/tasks.py).

The split only serves the measurement: the bundle that ships is refit on every usable photo.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# How a person's figures in the manifest were measured (by photo count).
HELD_OUT, ONE_PHOTO = "held-out photos", "leave-one-identity-out"


@dataclass
class Split:
    """Index arrays into the usable photos, plus the people kept (class order)."""
    people: list[str]
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    too_few: dict[str, int]  # people left out: label -> usable photo count

    def summary(self) -> dict:
        return {"train": int(len(self.train)), "validation": int(len(self.val)), "test": int(len(self.test))}


def part_sizes(n: int, test_fraction: float, val_fraction: float) -> tuple[int, int]:
    """(test, validation) photos of a person with `n` usable photos; the rest trains."""
    if n <= 1:
        return 0, 0
    if n == 2:
        return 1, 0
    n_test = max(1, int(round(n * test_fraction)))
    n_val = max(1, int(round(n * val_fraction)))
    while n_test + n_val > n - 1:  # large fractions: keep at least one training photo
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    return n_test, n_val


def protocol(n: int) -> str:
    """How a person with `n` usable photos is measured."""
    return HELD_OUT if n >= 2 else ONE_PHOTO


def stratified_split(labels: list[str], *, min_photos: int, test_fraction: float, val_fraction: float,
                     seed: int) -> Split:
    """Split each person's photos into train/val/test (`part_sizes`); drop people under `min_photos`."""
    rng = np.random.default_rng(seed)
    by_person: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_person.setdefault(label, []).append(i)
    min_photos = max(1, min_photos)
    people = sorted(p for p, idx in by_person.items() if len(idx) >= min_photos)
    too_few = {p: len(idx) for p, idx in sorted(by_person.items()) if len(idx) < min_photos}
    train: list[int] = []
    val: list[int] = []
    test: list[int] = []
    for person in people:
        idx = np.array(by_person[person])
        rng.shuffle(idx)
        n_test, n_val = part_sizes(len(idx), test_fraction, val_fraction)
        test.extend(idx[:n_test])
        val.extend(idx[n_test:n_test + n_val])
        train.extend(idx[n_test + n_val:])
    as_array = lambda xs: np.array(sorted(xs), dtype=np.int64)  # noqa: E731
    return Split(people, as_array(train), as_array(val), as_array(test), too_few)
