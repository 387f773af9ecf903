"""Grouping faces a model could not name: which of them are the same person (issue #28).

Online assignment, the rule the service uses: faces arrive one at a time; a face joins the group whose
template (the unit-length mean of its members' unit-length embeddings, as `openset.templates` makes a
person's) it is closest to, *relative to that group's threshold*, when it is within it; otherwise it
starts a group of its own. A group's threshold is the open set's stranger model at a per-comparison
rate `far` for a template of n faces (`openset.stranger_quantile(far, n)`): the score under which a
fraction `far` of strangers falls against a group of that size, so a group of many faces, whose
template is better placed, is stricter, exactly as a person of the model with many photos is. Nothing
here is a distance picked by eye: the one knob is the rate, chosen on the tuning strangers
(`bench/grouping.py`).

Why online and not a batch clustering of every face each time: a group's id must not change when it
grows, and a person's merges and moves must stand. Assignment never moves a face that was placed, so
both hold by construction. dlib's chinese whispers (batch, over a graph of pairs within the pair
threshold) is measured against it in `bench/grouping.py`; `chinese_whispers` here is the same
algorithm in numpy for that comparison.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from modelization.openset import STRANGER_MODEL, stranger_quantile, unit

# The per-comparison rate at which a stranger may join a group: chosen on strangers-more and lfw62's
# tuning half (bench/grouping.py --tune), reported on strangers/ and the other half.
GROUPING_FAR = 3e-4


def group_thresholds(sizes: np.ndarray, far: float = GROUPING_FAR, model: Sequence[float] = STRANGER_MODEL
                     ) -> np.ndarray:
    """(k,): the score under which a face joins each group, from its size (the stranger model's quantile)."""
    return np.asarray(stranger_quantile(far, np.maximum(np.asarray(sizes, np.float64), 1), tuple(model)))


def best_group(x: np.ndarray, sums: np.ndarray, sizes: np.ndarray, far: float = GROUPING_FAR,
               model: Sequence[float] = STRANGER_MODEL) -> tuple[int | None, float]:
    """Which group one face (its embedding, (d,)) joins. `sums` (k, d): each group's sum of unit-length
    embeddings; `sizes` (k,). -> (the group's index or None for a group of its own, its score)."""
    if len(sizes) == 0:
        return None, float("nan")
    u = unit(np.asarray(x, np.float32)[None, :])[0]
    d = np.linalg.norm(unit(sums) - u, axis=1)
    margin = d - group_thresholds(sizes, far, model)
    i = int(margin.argmin())
    return (i, float(d[i])) if margin[i] <= 0 else (None, float(d[i]))


def group_online(x: np.ndarray, far: float = GROUPING_FAR, model: Sequence[float] = STRANGER_MODEL) -> np.ndarray:
    """(n,) group numbers of faces (n, d) taken in order, as the service groups them as they arrive."""
    u = unit(x)
    sums = np.zeros((0, u.shape[1]), np.float64)
    sizes = np.zeros(0, np.int64)
    out = np.empty(len(u), np.int64)
    for i, v in enumerate(u):
        g, _ = best_group(v, sums, sizes, far, model)
        if g is None:
            sums = np.vstack([sums, v[None, :]])
            sizes = np.append(sizes, 1)
            g = len(sizes) - 1
        else:
            sums[g] += v
            sizes[g] += 1
        out[i] = g
    return out


def chinese_whispers(x: np.ndarray, threshold: float, iterations: int = 100, seed: int = 0) -> np.ndarray:
    """(n,) cluster numbers: dlib's chinese whispers (Biemann 2006) over the graph of pairs whose unit-length
    embeddings are within `threshold`, edges weighted 1 as dlib's `chinese_whispers_clustering` does."""
    u = unit(x)
    n = len(u)
    d = np.linalg.norm(u[:, None, :] - u[None, :, :], axis=2)
    adj = [np.flatnonzero((d[i] <= threshold) & (np.arange(n) != i)) for i in range(n)]
    labels = np.arange(n)
    rng = np.random.default_rng(seed)
    for _ in range(iterations):
        changed = False
        for i in rng.permutation(n):
            if not len(adj[i]):
                continue
            votes = np.bincount(labels[adj[i]])
            new = int(votes.argmax())
            if new != labels[i]:
                labels[i], changed = new, True
        if not changed:
            break
    _, out = np.unique(labels, return_inverse=True)
    return out


def bcubed(truth: Sequence, predicted: Sequence) -> tuple[float, float]:
    """BCubed (precision, recall) of a clustering (Amigo et al. 2009): per item, the share of its cluster that
    is its person, and the share of its person that is in its cluster; both averaged over the items."""
    t = np.asarray(truth)
    p = np.asarray(predicted)
    same_t = t[:, None] == t[None, :]
    same_p = p[:, None] == p[None, :]
    both = (same_t & same_p).sum(1)
    return float(np.mean(both / same_p.sum(1))), float(np.mean(both / same_t.sum(1)))
