"""Which face of a group photo is the labelled person: the one that looks like their other photos.

A training photo labelled "alice" may hold several faces, and the largest is not
always hers (someone else may stand nearer the camera; LFW has such photos). Each
face is scored by its median distance to the person's other photos (to the
nearest face of each) and the closest face is used. The other photos are the
person's single-face photos when there are at least two (a bystander who appears
in many of her group photos cannot then win); otherwise all her other photos.
When no face comes within `max_distance` (dlib's same-person tolerance) the photo
is skipped: she may not be in it at all, and training on a stranger's face would
teach the model the wrong person.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace

import numpy as np

from features.embeddings import pairwise_distances
from features.extract import PhotoFeatures

NO_MATCH = "no_matching_face"


def faces_of(f: PhotoFeatures) -> np.ndarray:
    """(n, 128): the embeddings of every face kept for a photo, largest first."""
    return np.asarray([f.embedding] + [o["embedding"] for o in f.others or []], dtype=np.float32)


def choose_faces(labels: list[str], feats: list[PhotoFeatures],
                 max_distance: float) -> tuple[list[PhotoFeatures], dict[int, dict]]:
    """Photos' features with the labelled person's face as `box`/`embedding`.

    `labels[i]` names the person of photo `i`. Returns (features, choices): photos of
    one face are unchanged; for a photo of several faces, `choices[i]` is
    {"face": rank by size (0 = largest), "distance": its median distance}, and the
    photo comes back skipped (`NO_MATCH`) when that distance exceeds `max_distance`.
    """
    out = list(feats)
    choices: dict[int, dict] = {}
    photos = defaultdict(list)
    for i, (label, f) in enumerate(zip(labels, feats)):
        if f.usable:
            photos[label].append(i)
    for idx in photos.values():
        faces = {i: faces_of(feats[i]) for i in idx}  # built once per person, not once per group photo
        singles = [i for i in idx if not feats[i].others]
        for i in (i for i in idx if feats[i].others):
            refs = singles if len(singles) >= 2 else [j for j in idx if j != i]
            if not refs:  # the person's only photo: nothing to compare with (too few photos anyway)
                continue
            # distance of each candidate face to the nearest face of each reference photo
            starts = np.cumsum([0] + [len(faces[j]) for j in refs[:-1]])
            dist = pairwise_distances(faces[i], np.concatenate([faces[j] for j in refs]))
            score = np.median(np.minimum.reduceat(dist, starts, axis=1), axis=1)
            best = int(score.argmin())
            choices[i] = {"face": best, "distance": round(float(score[best]), 4)}
            f = feats[i]
            if score[best] > max_distance:
                out[i] = PhotoFeatures(faces=f.faces, skipped=NO_MATCH,
                                       detail=f"{f.faces} faces, none within {max_distance} of the person's "
                                              f"other photos (closest {score[best]:.2f})")
            elif best and f.others:
                face = f.others[best - 1]
                rest = ([{"box": f.box, "embedding": f.embedding, "quality": f.quality}]
                        + [o for o in f.others if o is not face])
                out[i] = replace(f, box=face["box"], embedding=face["embedding"], quality=face.get("quality"),
                                 others=rest)
    return out, choices
