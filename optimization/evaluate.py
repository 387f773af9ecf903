"""How one genome is scored: the data it sees and the three objectives.

Selection sees validation data only. Some people are held out entirely
(`holdout_fraction`, at least one when there are 3 or more people) to play
strangers: a candidate network is trained on the other people's training
photos and scored on

- balanced accuracy on those people's validation photos (max), each named by the
  classifier alone: the bundle also lets its gallery vote (`openset.name_faces`), but
  the gallery would mask the differences between candidates (measured: with the vote,
  every network tied and the smallest always won);
- open-set rate: validation photos accepted with the right name when the
  threshold lets only `target_far` of the held-out people's (non-test) photos
  through; the score is the bundle's own rejection rule
  (distance to the named person's nearest photos) (max);
- parameter count (min).

The test photos of everybody are never used here; `baselines` measures the
chosen network on them.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import numpy as np

from modelization import lean
from modelization.dataset import Split
from modelization.metrics import balanced_accuracy
from modelization.openset import name_faces, rate_at_far
from optimization.genome import Genome, decode, key


@dataclass
class SearchData:
    """The search's view of a build's embeddings. Classes are renumbered over the known people."""
    n_people: int                  # everybody in the build (the final network's classes)
    n_known: int
    held_out: list[int]            # person indices (in the build's class order) playing strangers
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_strangers: np.ndarray        # held-out people's train + validation photos (threshold)
    x_test: np.ndarray             # known people's test photos (final measurement only)
    y_test: np.ndarray
    x_strangers_test: np.ndarray   # held-out people's test photos (final measurement only)


def held_out_people(n_people: int, fraction: float, seed: int) -> list[int]:
    """Which people play strangers: round(fraction * n), at least 1 if n >= 3, at most n - 2."""
    if n_people < 3 or fraction <= 0:
        return []
    n = min(max(1, int(round(fraction * n_people))), n_people - 2)
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n_people, n, replace=False))


def search_data(x: np.ndarray, y: np.ndarray, split: Split, holdout_fraction: float, seed: int) -> SearchData:
    """Cut a build's split (`y`: class per usable photo, -1 = left out) into the search's parts."""
    n_people = len(split.people)
    held = held_out_people(n_people, holdout_fraction, seed)
    known = np.setdiff1d(np.arange(n_people), held)
    renumber = np.full(n_people, -1, np.int64)
    renumber[known] = np.arange(len(known))
    is_held = np.isin(y, held)

    def part(index: np.ndarray, strangers: bool):
        index = index[is_held[index] == strangers]
        return x[index], renumber[y[index]]

    x_train, y_train = part(split.train, False)
    x_val, y_val = part(split.val, False)
    x_test, y_test = part(split.test, False)
    x_str = np.concatenate([part(split.train, True)[0], part(split.val, True)[0]])
    x_str_test = part(split.test, True)[0]
    return SearchData(n_people, len(known), held, x_train, y_train, x_val, y_val, x_str, x_test, y_test, x_str_test)


def eval_seed(seed: int, genome_key: str) -> int:
    """The training seed of one genome: fixed by the build seed and the genome, not by who runs it."""
    return zlib.crc32(f"{seed}:{genome_key}".encode())


def open_set_rate(data: SearchData, classes_val: np.ndarray, scores_val: np.ndarray,
                  scores_strangers: np.ndarray | None, target_far: float) -> float | None:
    """The open-set objective from the validation photos' named classes and scores and the strangers' scores."""
    if scores_strangers is None or not len(scores_strangers):
        return None
    return rate_at_far(scores_val, classes_val == data.y_val, scores_strangers, target_far)[0]


def evaluate(genome: Genome, data: SearchData, *, seed: int, max_epochs: int, patience: int,
             target_far: float, k: int) -> dict:
    """Train the genome's network and score it.

    -> {balanced_accuracy, open_set, params, epochs (kept by early stopping), val_loss, seconds}.
    """
    started = time.perf_counter()
    spec = decode(genome)
    fit = lean.fit(spec, data.x_train, data.y_train, data.n_known, seed=eval_seed(seed, key(genome)),
                   max_epochs=max_epochs, x_val=data.x_val, y_val=data.y_val, patience=patience)
    gallery = (data.x_train, data.y_train, k, 0.0)  # temperature 0: the classifier names the face
    pred_val, scores_val = name_faces(lean.predict_proba(spec, fit.weights, data.x_val), data.x_val, *gallery)
    scores_str = (name_faces(lean.predict_proba(spec, fit.weights, data.x_strangers), data.x_strangers, *gallery)[1]
                  if len(data.x_strangers) else None)
    open_set = open_set_rate(data, pred_val, scores_val, scores_str, target_far)
    return {"balanced_accuracy": round(balanced_accuracy(data.y_val, pred_val), 6),
            "open_set": None if open_set is None else round(open_set, 6),
            "params": lean.count_params(spec, data.x_train.shape[1], data.n_people),  # as shipped
            "epochs": fit.best_epoch,
            "val_loss": round(fit.val_loss, 6),  # breaks ties in the final pick
            "seconds": round(time.perf_counter() - started, 3)}
