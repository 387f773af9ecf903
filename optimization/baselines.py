"""Simple baselines on the same embeddings and split, measured beside the searched network.

Closed set (test photos of everybody; fitted on train + validation):
1-nearest-neighbour, nearest centroid, and logistic regression (a network with
no hidden layer, trained by the same lean loop and the same protocol as the
chosen network: epochs found by early stopping on validation, then retrained
on train + validation).

Open set (the search's held-out people as strangers): each method fitted on the
known people's training photos, its threshold set so that `target_far` of the
held-out people's train + validation photos are accepted, then the rate of
known test photos accepted with the right name and the false-accept rate on
the held-out people's test photos. Scores: 1-NN its nearest distance, nearest
centroid its centroid distance, the networks the bundle's score (the distance to the named
person's template, `openset.Gallery`); the chosen network is measured naming the person alone and,
as the bundle does, together with its gallery (`openset.name_faces`).
"""
from __future__ import annotations

import numpy as np

from features.embeddings import pairwise_distances
from modelization import lean
from modelization.metrics import accuracy, balanced_accuracy
from modelization.network import NetworkSpec
from modelization.openset import Gallery, name_faces, rate_at_far
from optimization.evaluate import SearchData

LOGISTIC = NetworkSpec(hidden=(), dropout=0.0, learning_rate=1e-2, batch_size=64, l2=1e-4)


def nearest_neighbour(gx: np.ndarray, gy: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (class, distance) of each row of `x` by its nearest gallery photo."""
    d = pairwise_distances(x, gx)
    nearest = d.argmin(1)
    return gy[nearest], d[np.arange(len(x)), nearest]


def nearest_centroid(gx: np.ndarray, gy: np.ndarray, n: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """-> (class, distance) of each row of `x` by the nearest per-person mean embedding."""
    centroids = np.stack([gx[gy == c].mean(0) for c in range(n)])
    d = pairwise_distances(x, centroids)
    best = d.argmin(1)
    return best, d[np.arange(len(x)), best]


def network(spec: NetworkSpec, x: np.ndarray, y: np.ndarray, n: int, seed: int, epochs: int):
    """Predict-function of `spec` trained for `epochs` on (x, y)."""
    fit = lean.fit(spec, x, y, n, seed=seed, max_epochs=max(1, epochs))
    return lambda q: lean.predict_proba(spec, fit.weights, q).argmax(1)


def closed_set(x_fit, y_fit, x_test, y_test, n: int, *, logistic_epochs: int, seed: int) -> dict:
    """Test accuracy and balanced accuracy of each baseline fitted on (x_fit, y_fit)."""
    predictions = {
        "1-nearest-neighbour": nearest_neighbour(x_fit, y_fit, x_test)[0],
        "nearest centroid": nearest_centroid(x_fit, y_fit, n, x_test)[0],
        "logistic regression": network(LOGISTIC, x_fit, y_fit, n, seed, logistic_epochs)(x_test),
    }
    return {name: {"test_accuracy": round(accuracy(y_test, p), 6),
                   "balanced_accuracy": round(balanced_accuracy(y_test, p), 6)}
            for name, p in predictions.items()}


def logistic_epochs(data: SearchData, seed: int, max_epochs: int, patience: int) -> int:
    """Epochs for logistic regression, by early stopping on the search's validation photos."""
    fit = lean.fit(LOGISTIC, data.x_train, data.y_train, data.n_known, seed=seed, max_epochs=max_epochs,
                   x_val=data.x_val, y_val=data.y_val, patience=patience)
    return fit.best_epoch


def open_set(data: SearchData, chosen: NetworkSpec, chosen_epochs: int, *, logistic_epochs: int, seed: int,
             target_far: float, temperature: float = 0.0) -> dict | None:
    """Open-set rates of each method with the held-out people as strangers (None if nobody was held out)."""
    if not len(data.x_strangers) or not len(data.x_strangers_test):
        return None
    gx, gy, n = data.x_train, data.y_train, data.n_known
    gallery = Gallery(gx, gy, n)

    def rules(spec: NetworkSpec, epochs: int, *temperatures: float) -> list:
        """One training of `spec`, then a (classes, scores) rule per temperature (`openset.name_faces`:
        0 = the classifier names the face; > 0 = with its gallery, as the bundle does)."""
        fit = lean.fit(spec, gx, gy, n, seed=seed, max_epochs=max(1, epochs))
        return [lambda q, t=t: name_faces(lean.predict_proba(spec, fit.weights, q), gallery.scores(q), t)
                for t in temperatures]

    chosen_alone, chosen_bundle = rules(chosen, chosen_epochs, 0.0, temperature)
    (logistic,) = rules(LOGISTIC, logistic_epochs, 0.0)
    methods = {
        "chosen network": chosen_alone,
        "chosen network + gallery (the bundle)": chosen_bundle,
        "1-nearest-neighbour": lambda q: nearest_neighbour(gx, gy, q),
        "nearest centroid": lambda q: nearest_centroid(gx, gy, n, q),
        "logistic regression": logistic,
    }
    out = {}
    for name, method in methods.items():
        classes, scores = method(data.x_test)
        _, stranger_scores = method(data.x_strangers)
        rate, threshold = rate_at_far(scores, classes == data.y_test, stranger_scores, target_far)
        _, test_stranger_scores = method(data.x_strangers_test)
        test_far = float(np.mean(test_stranger_scores <= threshold))
        out[name] = {"test_rate": round(rate, 6), "test_far": round(test_far, 6), "threshold": round(threshold, 6)}
    return out
