"""Per-person stratified train/validation/test split with a fixed seed."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def stratified_split(labels: list[str], *, min_photos: int, test_fraction: float, val_fraction: float,
                     seed: int) -> Split:
    """Split each person's photos into train/val/test (at least one each); drop people under `min_photos`."""
    min_photos = max(3, min_photos)  # one photo each for train, validation and test
    rng = np.random.default_rng(seed)
    by_person: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_person.setdefault(label, []).append(i)
    people = sorted(p for p, idx in by_person.items() if len(idx) >= min_photos)
    too_few = {p: len(idx) for p, idx in sorted(by_person.items()) if len(idx) < min_photos}
    train, val, test = [], [], []
    for person in people:
        idx = np.array(by_person[person])
        rng.shuffle(idx)
        n = len(idx)
        n_test = max(1, int(round(n * test_fraction)))
        n_val = max(1, int(round(n * val_fraction)))
        while n_test + n_val > n - 1:  # large fractions: keep at least one training photo
            if n_test >= n_val:
                n_test -= 1
            else:
                n_val -= 1
        test.extend(idx[:n_test])
        val.extend(idx[n_test:n_test + n_val])
        train.extend(idx[n_test + n_val:])
    as_array = lambda xs: np.array(sorted(xs), dtype=np.int64)  # noqa: E731
    return Split(people, as_array(train), as_array(val), as_array(test), too_few)
