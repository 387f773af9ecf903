"""Saying "unknown": each person's template, a score, and per-person thresholds that keep their promise.

Score (bundles of format 5, `TEMPLATE`). Each person's gallery photos are averaged into a
template: the mean of their unit-length embeddings, scaled back to unit length. A face's
score for a person is the euclidean distance between its unit-length embedding and that
template (0 to 2; lower is closer). Averaging cancels much of the noise of single photos
(pose, light, the network's own), and dropping the length of dlib's embeddings (which
varies from photo to photo and says little about who it is) removes more: known faces
rank far better above strangers than with the distance to the nearest photo, most with
few photos (bench/README.md, "Few photos per person").

Threshold. No gallery holds enough strangers to calibrate from, and its own people are a
poor stand-in (they are closer to each other than strangers are to them), so thresholds
come from a model of how a stranger scores against a person with `n` photos, fitted once
on real strangers (`python bench/stranger_model.py`: strangers-more, 2,521 faces, against
templates drawn from lfw62's people, 1 to 20 photos each) and written here as 5 constants:

    t(a, n) = c0 + c1 L + c2 L^2 + (c3 + c4 L) / n,   L = log10(a)

is the score under which a fraction `a` of strangers falls for one person with `n`
photos. The spread of stranger scores does not depend on n, their centre moves closer as
1/n (a template of many photos is a better-placed average). For a gallery of N people
and a target false-accept rate F, each person gets a = 1 - (1 - F)^(1/N) (a stranger
is accepted when any person accepts them; people are close to independent) and their own
threshold t(a, n_c): a person with many photos gets a lower threshold than one with a
single photo, and every threshold tightens as the gallery grows.

Older bundles (formats 2-4, `KMEAN`): the mean distance to the person's k nearest gallery
photos against one threshold calibrated leave-one-identity-out on the gallery; `Gallery`
still scores them that way so that they answer as they did.
"""
from __future__ import annotations

import numpy as np

from features.embeddings import pairwise_distances

DEFAULT_K = 3
TEMPLATE, KMEAN = "template", "kmean"

# t(a, n) = c0 + c1 L + c2 L^2 + (c3 + c4 L) / n, L = log10(a): fitted by bench/stranger_model.py
STRANGER_MODEL = (0.49182, 0.05503, 0.00198, 0.04409, 0.00232)
STRANGER_MODEL_RANGE = (-5.5, -1.5)  # L range the fit saw (a from 3e-6 to 3%); used beyond it with care


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def templates(gallery_x: np.ndarray, gallery_y: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, d): each person's template, the unit-length mean of their unit-length photos
    (a person without photos gets a zero row, which no face comes within 1 of)."""
    u = unit(gallery_x)
    out = np.zeros((n_classes, u.shape[1]), np.float32)
    np.add.at(out, np.asarray(gallery_y, np.int64), u)
    return unit(out)


def class_scores(dist: np.ndarray, gallery_y: np.ndarray, n_classes: int, k: int = DEFAULT_K) -> np.ndarray:
    """Formats 2-4: (n, n_classes) mean of the k smallest distances to each person's gallery photos."""
    out = np.full((dist.shape[0], n_classes), np.inf, dtype=np.float32)
    for c in range(n_classes):
        d = dist[:, gallery_y == c]
        if d.shape[1]:
            kk = min(k, d.shape[1])
            out[:, c] = np.partition(d, kk - 1, axis=1)[:, :kk].mean(1)
    return out


class Gallery:
    """The photos a bundle knows, ready to score faces against: `scores(x)` -> (n, n_classes)."""

    def __init__(self, gallery_x: np.ndarray, gallery_y: np.ndarray, n_classes: int, rule: str = TEMPLATE,
                 k: int = DEFAULT_K):
        if rule not in (TEMPLATE, KMEAN):
            raise ValueError(f"unknown score rule {rule!r}")
        self.x = np.asarray(gallery_x, np.float32)
        self.y = np.asarray(gallery_y, np.int64)
        self.n_classes, self.rule, self.k = n_classes, rule, k
        self.templates = templates(self.x, self.y, n_classes) if rule == TEMPLATE else None

    def scores(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        if self.templates is not None:
            return pairwise_distances(unit(x), self.templates)
        return class_scores(pairwise_distances(x, self.x), self.y, self.n_classes, self.k)


def name_faces(probs: np.ndarray, scores: np.ndarray, temperature: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Who each face is, and its score for that person. -> (classes, scores), both (n,).

    `scores` (n, n_classes): `Gallery.scores`. The classifier and the gallery vote together:
    the person named maximises log p_c(x) - score_c(x) / temperature. A small temperature lets
    the gallery lead and the classifier break near-ties; temperature <= 0 leaves the
    classifier alone (bundles before format 3).
    """
    if temperature > 0:
        classes = (np.log(np.maximum(probs, 1e-30)) - scores / temperature).argmax(1)
    else:
        classes = probs.argmax(1)
    return classes, scores[np.arange(len(classes)), classes]


def needs_mirror_pass(scores: np.ndarray, threshold: float | np.ndarray, margin: float) -> np.ndarray:
    """Which faces (by their one-pass score and the named person's threshold) get a second embedding
    from their mirror image: those within `margin` of the threshold, whose answer the averaged
    embedding could change.

    The mirror pass moves a known face nearer its person (README "Open set") but costs a second
    ResNet pass; a face far below the threshold is accepted and one far above it refused either
    way, so only the borderline ones pay for it. margin = inf: every face.
    """
    return np.abs(np.asarray(scores, dtype=np.float64) - threshold) <= margin


def person_far(target_far: float, n_people: int) -> float:
    """The false-accept rate each of `n_people` may have for the gallery to have `target_far`."""
    return float(1.0 - (1.0 - target_far) ** (1.0 / max(1, n_people)))


def stranger_quantile(a: float | np.ndarray, n: float | np.ndarray, model=STRANGER_MODEL) -> np.ndarray:
    """The score under which a fraction `a` of strangers falls against one person with `n` photos."""
    c0, c1, c2, c3, c4 = model
    level = np.log10(a)
    return c0 + c1 * level + c2 * level * level + (c3 + c4 * level) / np.asarray(n, np.float64)


def person_thresholds(photos: np.ndarray, target_far: float, model=STRANGER_MODEL) -> np.ndarray:
    """(n_classes,): each person's threshold, from their photo count, for the gallery to accept about
    `target_far` of strangers."""
    photos = np.maximum(np.asarray(photos, np.float64), 1)
    return stranger_quantile(person_far(target_far, len(photos)), photos, model)


def calibrate(gallery_y: np.ndarray, n_classes: int, target_far: float) -> dict:
    """The open-set rule of a gallery (its people's photo counts): per-person thresholds and how they
    were found (goes to the manifest)."""
    photos = np.bincount(np.asarray(gallery_y, np.int64), minlength=n_classes)
    thresholds = person_thresholds(photos, target_far)
    a = person_far(target_far, n_classes)
    return {
        "score": TEMPLATE,
        "method": "distance between the face's unit-length embedding and the person's template (the unit-length "
                  "mean of their unit-length gallery embeddings) <= that person's threshold",
        "calibration": "a model of stranger scores fitted on real strangers (modelization/openset.py): each "
                       f"person may accept {a:.3g} of strangers (1 - (1 - target_far)^(1/people)), their "
                       "threshold is that quantile for their photo count",
        "stranger_model": list(STRANGER_MODEL),
        "target_far": target_far,
        "person_far": a,
        "thresholds": [round(float(t), 6) for t in thresholds],
        "threshold_range": [round(float(thresholds.min()), 6), round(float(thresholds.max()), 6)],
    }


def verification_thresholds(photos: np.ndarray, far: float, model=STRANGER_MODEL) -> tuple[float, np.ndarray]:
    """1:1 verification at a false-accept rate `far` per comparison: (the threshold for two single faces,
    each person's threshold for a face against their template). -> (pair threshold, (n_classes,)).

    One comparison is one stranger against one template, which is what the stranger model describes:
    a face against another face is the case n = 1 (the template of one photo is its unit-length
    embedding), a face against a person the case n = their photo count. Unlike identification, no share
    of the rate is split among the gallery's people: the client names the one person to compare with.
    """
    pair = float(stranger_quantile(far, 1, model))
    return pair, stranger_quantile(far, np.maximum(np.asarray(photos, np.float64), 1), model)


def calibrate_verification(gallery_y: np.ndarray, n_classes: int, far: float) -> dict:
    """The 1:1 verification rule of a gallery (goes to the manifest's `verification`)."""
    photos = np.bincount(np.asarray(gallery_y, np.int64), minlength=n_classes)
    pair, per_person = verification_thresholds(photos, far)
    return {
        "score": TEMPLATE,
        "far": far,
        "method": "two faces: the distance between their unit-length embeddings <= pair_threshold; a face and a "
                  "person: the distance between the face's unit-length embedding and the person's template <= "
                  "that person's threshold",
        "calibration": f"the model of stranger scores (modelization/openset.py) at a false-accept rate of {far:.3g} "
                       "per comparison: a template of one photo for two faces, of the person's photo count for a "
                       "face and a person",
        "stranger_model": list(STRANGER_MODEL),
        "pair_threshold": round(pair, 6),
        "thresholds": [round(float(t), 6) for t in per_person],
    }


def pair_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise distance between the unit-length embeddings of `a` and `b` (both (n, d)): verification's
    score for two faces (0 to 2; lower is closer)."""
    return np.linalg.norm(unit(a) - unit(b), axis=1)


def rate_at_far(known_scores: np.ndarray, known_correct: np.ndarray, stranger_scores: np.ndarray,
                target_far: float) -> tuple[float, float]:
    """Detection-and-identification rate when the threshold lets `target_far` of the strangers through.

    -> (rate of known faces accepted with the right name, threshold). Lower scores are accepted.
    """
    threshold = float(np.quantile(stranger_scores, target_far))
    return float(np.mean((known_scores <= threshold) & known_correct)), threshold
