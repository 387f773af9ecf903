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
  (distance to the named person's template, `openset.Gallery`) (max);
- parameter count (min).

Small galleries. Validation photos come from people with 3 or more photos
(modelization/dataset.py); when fewer than 2 known people have one, networks
cannot be told apart and `evaluate` answers `{"fallback": reason}`: the search
stops and the build trains the fixed network, its manifest saying why.

The test photos of everybody are never used here; `baselines` measures the
chosen network on them.

Folds. The genetic search scores every candidate on fold 0: the build's own
train/validation split. Its finalists are scored again on `folds` more
(cross-validation, `evolution.py`): fold f re-splits the train + validation
photos per person at random (`fold_val_fraction` to validation) and holds out
other people as strangers, so a finalist is judged on several validation sets
instead of one small one. An evaluation is named by its key: the genome's key
for fold 0, `<genome key>/<fold>` for the others.
"""
from __future__ import annotations

import time
import zlib
from dataclasses import dataclass

import numpy as np

from modelization import lean
from modelization.dataset import Split
from modelization.metrics import balanced_accuracy
from modelization.openset import Gallery, name_faces, rate_at_far
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


def eval_key(genome_key: str, fold: int = 0) -> str:
    """The key of one evaluation: a genome on a fold."""
    return genome_key if fold == 0 else f"{genome_key}/{fold}"


def parse_eval_key(text: str) -> tuple[str, int]:
    """-> (genome key, fold)."""
    genome_key, _, fold = text.partition("/")
    return genome_key, int(fold) if fold else 0


def fold_split(y: np.ndarray, split: Split, fold: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of fold `fold`: the build's own for fold 0; for the others, its
    train + validation photos re-split per person at random (at least one photo on each side)."""
    if fold == 0:
        return split.train, split.val
    rng = np.random.default_rng([seed, fold])
    pool = np.concatenate([split.train, split.val])
    train: list[int] = []
    val: list[int] = []
    for c in np.unique(y[pool]):
        idx = rng.permutation(pool[y[pool] == c])
        n_val = min(max(1, int(round(val_fraction * len(idx)))), len(idx) - 1)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(val, np.int64))


def search_data(x: np.ndarray, y: np.ndarray, split: Split, holdout_fraction: float, seed: int,
                fold: int = 0, fold_val_fraction: float = 0.25) -> SearchData:
    """Cut a build's split (`y`: class per usable photo, -1 = left out) into the search's parts, on `fold`."""
    n_people = len(split.people)
    held = held_out_people(n_people, holdout_fraction,
                           seed if fold == 0 else int(np.random.SeedSequence([seed, fold]).generate_state(1)[0]))
    train, val = fold_split(y, split, fold, fold_val_fraction, seed)
    known = np.setdiff1d(np.arange(n_people), held)
    renumber = np.full(n_people, -1, np.int64)
    renumber[known] = np.arange(len(known))
    is_held = np.isin(y, held)

    def part(index: np.ndarray, strangers: bool):
        index = index[is_held[index] == strangers]
        return x[index], renumber[y[index]]

    x_train, y_train = part(train, False)
    x_val, y_val = part(val, False)
    x_test, y_test = part(split.test, False)
    x_str = np.concatenate([part(train, True)[0], part(val, True)[0]])
    x_str_test = part(split.test, True)[0]
    return SearchData(n_people, len(known), held, x_train, y_train, x_val, y_val, x_str, x_test, y_test, x_str_test)


def eval_seed(seed: int, key: str) -> int:
    """The training seed of one evaluation (`key`: genome key or evaluation key): fixed by the build
    seed, the genome and the fold, not by who runs it."""
    return zlib.crc32(f"{seed}:{key}".encode())


def open_set_rate(data: SearchData, classes_val: np.ndarray, scores_val: np.ndarray,
                  scores_strangers: np.ndarray | None, target_far: float) -> float | None:
    """The open-set objective from the validation photos' named classes and scores and the strangers' scores."""
    if scores_strangers is None or not len(scores_strangers):
        return None
    return rate_at_far(scores_val, classes_val == data.y_val, scores_strangers, target_far)[0]


def unusable(data: SearchData) -> str | None:
    """Why the search cannot compare networks on `data`, or None."""
    people = len(np.unique(data.y_val))
    if people < 2:
        return (f"the validation photos show {people} known person(s); networks need at least 2 to be compared "
                f"(a person gives a validation photo from 3 usable photos)")
    return None


def evaluate(genome: Genome, data: SearchData, *, seed: int, max_epochs: int, patience: int,
             target_far: float, fold: int = 0) -> dict:
    """Train the genome's network on `data` (the search's parts on `fold`) and score it.

    -> {balanced_accuracy, open_set, params, epochs (kept by early stopping), val_loss, seconds},
    or {fallback: reason} when the data cannot rank networks (`unusable`).
    """
    reason = unusable(data)
    if reason:
        return {"fallback": reason}
    started = time.perf_counter()
    spec = decode(genome)
    fit = lean.fit(spec, data.x_train, data.y_train, data.n_known, seed=eval_seed(seed, eval_key(key(genome), fold)),
                   max_epochs=max_epochs, x_val=data.x_val, y_val=data.y_val, patience=patience)
    gallery = Gallery(data.x_train, data.y_train, data.n_known)
    # temperature 0: the classifier names the face (the gallery would mask differences between networks)
    pred_val, scores_val = name_faces(lean.predict_proba(spec, fit.weights, data.x_val), gallery.scores(data.x_val))
    scores_str = (name_faces(lean.predict_proba(spec, fit.weights, data.x_strangers),
                             gallery.scores(data.x_strangers))[1] if len(data.x_strangers) else None)
    open_set = open_set_rate(data, pred_val, scores_val, scores_str, target_far)
    return {"balanced_accuracy": round(balanced_accuracy(data.y_val, pred_val), 6),
            "open_set": None if open_set is None else round(open_set, 6),
            "params": lean.count_params(spec, data.x_train.shape[1], data.n_people),  # as shipped
            "epochs": fit.best_epoch,
            "val_loss": (round(fit.val_loss, 6) if fit.val_loss is not None and np.isfinite(fit.val_loss)
                         else None),  # breaks ties in the pick
            "seconds": round(time.perf_counter() - started, 3)}
