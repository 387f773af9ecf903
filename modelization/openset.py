"""Saying "unknown": a distance rule calibrated at build time from the training photos only.

Score of a face for the person the classifier names: the mean distance from its
embedding to that person's `k` nearest gallery embeddings (the gallery is the
photos the model was built from). A face is accepted when the score is at most
the threshold.

Calibration without any stranger: every gallery photo plays a stranger once,
scored against the *other* people's photos only (leave-one-identity-out). The
threshold is the `target_far` quantile of those scores, so about that fraction
of real strangers would be accepted.

With few people that estimate sees few look-alikes and comes out lenient, so the
threshold is capped (`FR_MAX_THRESHOLD`, 0.5: below dlib's own 0.6 same-person
distance, chosen from measurements with 5 to 62 people, README "Open set").
"""
from __future__ import annotations

import numpy as np

from features.embeddings import pairwise_distances

DEFAULT_K = 3


def class_scores(dist: np.ndarray, gallery_y: np.ndarray, n_classes: int, k: int = DEFAULT_K) -> np.ndarray:
    """(n, n_classes): mean of the k smallest distances to each person's gallery photos."""
    out = np.full((dist.shape[0], n_classes), np.inf, dtype=np.float32)
    for c in range(n_classes):
        d = dist[:, gallery_y == c]
        if d.shape[1]:
            kk = min(k, d.shape[1])
            out[:, c] = np.partition(d, kk - 1, axis=1)[:, :kk].mean(1)
    return out


def scores_for(x: np.ndarray, classes: np.ndarray, gallery_x: np.ndarray, gallery_y: np.ndarray,
               n_classes: int, k: int = DEFAULT_K) -> np.ndarray:
    """(n,): the score of each embedding `x[i]` for the person `classes[i]` (accept when <= threshold)."""
    scores = class_scores(pairwise_distances(x, gallery_x), gallery_y, n_classes, k)
    return scores[np.arange(len(classes)), classes]


def name_faces(probs: np.ndarray, x: np.ndarray, gallery_x: np.ndarray, gallery_y: np.ndarray,
               k: int = DEFAULT_K, temperature: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Who each embedding is, and its open-set score. -> (classes, scores), both (n,).

    The classifier and the gallery vote together: the person named maximises
    log p_c(x) - d_c(x) / temperature, where p is the classifier's output and d_c the
    mean distance to c's `k` nearest gallery photos (the open-set score). A small
    temperature lets the gallery's distance lead and the classifier break near-ties;
    temperature <= 0 leaves the classifier alone (bundles before format 3).
    """
    d = class_scores(pairwise_distances(x, gallery_x), gallery_y, probs.shape[1], k)
    if temperature > 0:
        classes = (np.log(np.maximum(probs, 1e-30)) - d / temperature).argmax(1)
    else:
        classes = probs.argmax(1)
    return classes, d[np.arange(len(classes)), classes]


def needs_mirror_pass(scores: np.ndarray, threshold: float, margin: float) -> np.ndarray:
    """Which faces (by their one-pass open-set score) get a second embedding from their mirror image:
    those within `margin` of the threshold, whose answer the averaged embedding could change.

    The mirror pass moves a known face nearer its person (README "Open set") but costs a second
    ResNet pass; a face far below the threshold is accepted and one far above it refused either
    way, so only the borderline ones pay for it. margin = inf: every face.
    """
    return np.abs(np.asarray(scores, dtype=np.float64) - threshold) <= margin


def stranger_scores(gallery_x: np.ndarray, gallery_y: np.ndarray, n_classes: int, k: int = DEFAULT_K) -> np.ndarray:
    """Each gallery photo scored as a stranger: its best score among the other people."""
    scores = class_scores(pairwise_distances(gallery_x, gallery_x), gallery_y, n_classes, k)
    scores[np.arange(len(gallery_y)), gallery_y] = np.inf  # hide its own identity
    return scores.min(1)


def calibrate(gallery_x: np.ndarray, gallery_y: np.ndarray, n_classes: int, target_far: float,
              k: int = DEFAULT_K, cap: float = 0.5) -> dict:
    """The threshold for `target_far`, and how it was found (goes to the manifest).

    `cap` bounds the threshold: with few people the gallery holds few look-alikes,
    the calibrated value comes out too lenient, and real strangers get through.
    """
    pseudo = stranger_scores(gallery_x, gallery_y, n_classes, k)
    calibrated = float(np.quantile(pseudo, target_far))
    threshold = min(calibrated, cap)
    return {
        "method": f"mean distance to the {k} nearest gallery photos of the predicted person <= threshold",
        "calibration": "leave-one-identity-out on the gallery (train + validation photos): each photo "
                       "scored against the other people stands for a stranger; threshold = target_far quantile",
        "k": k,
        "target_far": target_far,
        "threshold": round(threshold, 6),
        "calibrated_threshold": round(calibrated, 6),
        "cap": cap,
        "capped": calibrated > cap,
        "pseudo_strangers": int(len(pseudo)),
        "pseudo_stranger_identities": int(n_classes),
    }


def rate_at_far(known_scores: np.ndarray, known_correct: np.ndarray, stranger_scores: np.ndarray,
                target_far: float) -> tuple[float, float]:
    """Detection-and-identification rate when the threshold lets `target_far` of the strangers through.

    -> (rate of known faces accepted with the right name, threshold). Lower scores are accepted.
    """
    threshold = float(np.quantile(stranger_scores, target_far))
    return float(np.mean((known_scores <= threshold) & known_correct)), threshold
