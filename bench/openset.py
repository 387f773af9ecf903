#!/usr/bin/env python
"""Open-set benchmark: known people named, strangers refused, against a 1-NN baseline.

    python bench/openset.py [--subset lfw62 lfw62-150px] [--procs 2]

For each subset: a per-person 70/30 split (fixed seed; 10 points of the 70 serve as
validation for early stopping), a model built by the service's own code
(`app.build.train_bundle`), then on the 30% test photos and on `strangers/`
(never seen at build time): top-1 and balanced accuracy, the false-accept rate
(FAR) on strangers at the bundle's automatic threshold, and the detection-and-
identification rate (DIR: test photos accepted with the right name). Beside it,
1-nearest-neighbour on the same gallery with its threshold set by peeking at the
strangers to reach the same FAR. The gallery's embeddings come from the build's
extraction (cached in var/bench-cache); test photos and strangers are embedded as
`predict` embeds them (`Recognizer.embed`): once, and with the mirror pass for every
face; `predict` itself gives the mirror pass only to faces whose one-pass score is
within the bundle's `mirror_margin` of the threshold (`openset.needs_mirror_pass`),
and that rule is applied to the two sets of embeddings to give its figures, the share
of faces it sends to a second pass and how many answers differ from the mirror pass
for every face.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

from constants import Settings

FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))
SETTINGS = Settings.from_env(data_dir=ROOT, test_fraction=0.3, val_fraction=0.1)
CACHE = ROOT / "var" / "bench-cache"


def _features(path: str):
    from features.extract import FeatureCache, cached_photo_features
    feats, _ = cached_photo_features(Path(path).read_bytes(), SETTINGS, FeatureCache(CACHE, SETTINGS))
    return feats


def extract(paths: list[Path], procs: int) -> list:
    # spawned: after the first set this process runs TensorFlow (the bundle), and a forked child
    # that runs TensorFlow (the default embedder) hangs
    with get_context("spawn").Pool(procs) as pool:
        return pool.map(_features, [str(p) for p in paths], chunksize=16)


_REC = None


def _load(bundle: bytes) -> None:
    global _REC
    from modelization.recognizer import load_bundle
    _REC = load_bundle(bundle, SETTINGS)


def _probe(path: str) -> tuple[list[list[int]], np.ndarray]:
    boxes, x = _REC.embed(Path(path).read_bytes(), mirror_margin=math.inf)
    return [b.as_list() for b in boxes], x


def probe(bundle: bytes, paths: list[Path], procs: int) -> list:
    """Each photo's faces embedded with the mirror pass for every face (when the bundle asks for the
    mirror pass): [(boxes, embeddings)]; the bundle's margin rule is applied afterwards (`adaptive`)."""
    # spawned, not forked: this process has TensorFlow running, and a forked child that loads a model hangs
    with get_context("spawn").Pool(procs, initializer=_load, initargs=(bundle,)) as pool:
        return pool.map(_probe, [str(p) for p in paths], chunksize=8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subset", nargs="+", default=["lfw62", "lfw62-150px"])
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()

    from dataclasses import asdict

    from app.build import train_bundle
    from features.embeddings import pairwise_distances
    from features.select import choose_faces
    from modelization.dataset import stratified_split
    from modelization.metrics import accuracy, balanced_accuracy
    from modelization.openset import needs_mirror_pass
    from modelization.recognizer import load_bundle

    strangers = sorted((FACES / "strangers").glob("*.jpg"))
    s_feats = extract(strangers, args.procs)
    print(f"strangers: {len(strangers)} photos, {sum(f.usable for f in s_feats)} with a face")

    for subset in args.subset:
        paths = sorted((FACES / subset).glob("*/*.jpg"))
        t0 = time.perf_counter()
        feats = extract(paths, args.procs)
        t_extract = time.perf_counter() - t0
        files = [{"label": p.parent.name, "filename": f"{p.parent.name}/{p.name}"} for p in paths]
        no_face = [f for f, ft in zip(files, feats) if not ft.usable]  # before a group photo can be skipped
        t0 = time.perf_counter()
        bundle = train_bundle({"id": f"bench-{subset}", "options": {"seed": args.seed}}, files,
                              [asdict(f) for f in feats], SETTINGS, lambda *a: None)
        t_train = time.perf_counter() - t0
        rec = load_bundle(bundle, SETTINGS)

        # the same faces and split the build used (same functions, labels, seed)
        feats, _ = choose_faces([f["label"] for f in files], feats, SETTINGS.same_person_distance)
        usable = [i for i, f in enumerate(feats) if f.usable]
        labels = [files[i]["label"] for i in usable]
        x = np.asarray([feats[i].embedding for i in usable], np.float32)
        split = stratified_split(labels, min_photos=SETTINGS.min_photos_per_person, seed=args.seed,
                                 test_fraction=SETTINGS.test_fraction, val_fraction=SETTINGS.val_fraction)
        index = {p: k for k, p in enumerate(split.people)}
        y = np.asarray([index.get(lab, -1) for lab in labels])
        gallery = np.concatenate([split.train, split.val])
        ty = y[split.test]

        # Probes go through the bundle's own `embed` (what `predict` does: with the mirror pass when the
        # bundle asks for it); a test photo's face is the one the build chose, found by its box.
        t0 = time.perf_counter()
        test_paths = [paths[usable[i]] for i in split.test]
        probed = probe(bundle, test_paths + strangers, args.procs)
        t_probe = time.perf_counter() - t0
        tx, unmatched = [], 0
        for i, (boxes, emb) in zip(split.test, probed[:len(test_paths)]):
            j = boxes.index(feats[usable[i]].box) if feats[usable[i]].box in boxes else 0
            unmatched += feats[usable[i]].box not in boxes
            tx.append(emb[j])
        tx = np.asarray(tx, np.float32)
        # strangers with a face both ways (the cached one-pass features and the probe), largest face
        pairs = [(f.embedding, emb[0]) for f, (_, emb) in zip(s_feats, probed[len(test_paths):])
                 if f.usable and len(emb)]
        s_single = np.asarray([a for a, _ in pairs], np.float32)
        s_x = np.asarray([b for _, b in pairs], np.float32)

        def scores(emb: np.ndarray) -> np.ndarray:
            """The bundle's open-set score of each embedding."""
            return np.array([r[2] for r in rec.identify(emb)])

        def adaptive(single: np.ndarray, mirrored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            """What `predict` embeds: the mirror pass only near the threshold. -> (embeddings, second pass?)"""
            if not rec.mirror:
                return single, np.zeros(len(single), bool)
            again = needs_mirror_pass(scores(single), rec.threshold, rec.mirror_margin)
            return np.where(again[:, None], mirrored, single), again

        def measure(tx: np.ndarray, s_x: np.ndarray) -> tuple:
            known = rec.identify(tx)
            pred = np.asarray([index[c] for _, _, _, c in known])
            accepted = np.asarray([lab is not None for lab, _, _, _ in known])
            far = float(np.mean([lab is not None for lab, _, _, _ in rec.identify(s_x)]))
            return pred, far, float(np.mean(accepted & (pred == ty)))

        pred, far, dir_ = measure(tx, s_x)
        single_pred, single_far, single_dir = measure(x[split.test], s_single)
        (a_tx, t_again), (a_sx, s_again) = adaptive(x[split.test], tx), adaptive(s_single, s_x)
        a_pred, a_far, a_dir = measure(a_tx, a_sx)
        answers = lambda emb: [(lab, c) for lab, _, _, c in rec.identify(emb)]  # noqa: E731
        pairs_ = list(zip(answers(a_tx) + answers(a_sx), answers(tx) + answers(s_x)))
        differ = sum(a[0] != b[0] for a, b in pairs_)  # the answer: a name or "unknown"
        differ_candidate = sum(a[0] == b[0] and a[1] != b[1] for a, b in pairs_)  # only the refused candidate
        shift = np.abs(scores(np.concatenate([tx, s_x])) - scores(np.concatenate([x[split.test], s_single])))

        # baseline: 1-NN distance on the same gallery and probes, threshold peeked from the strangers at the same FAR
        d_test = pairwise_distances(tx, x[gallery])
        nn_pred, nn_dist = y[gallery][d_test.argmin(1)], d_test.min(1)
        s_dist = pairwise_distances(s_x, x[gallery]).min(1)
        nn_tau = float(np.quantile(s_dist, max(far, 1e-9)))
        nn_dir = float(np.mean((nn_dist <= nn_tau) & (nn_pred == ty)))
        nn_far = float(np.mean(s_dist <= nn_tau))
        tau_1pct = float(np.quantile(s_dist, 0.01))
        nn_dir_1pct = float(np.mean((nn_dist <= tau_1pct) & (nn_pred == ty)))

        print(f"\n{subset}: {len(paths)} photos, {len(no_face)} without a detected face "
              f"(extract {t_extract:.0f} s, build {t_train:.0f} s, probes {t_probe:.0f} s); test {len(ty)} photos, "
              f"gallery {len(gallery)}; probes embedded with the mirror pass: {rec.mirror}"
              + (f"; {unmatched} test photos' chosen face not found again" if unmatched else ""))
        print(f"  model   top-1 {accuracy(ty, pred):.4f}  balanced {balanced_accuracy(ty, pred):.4f}  "
              f"threshold {rec.threshold:.3f} (calibrated {rec.open_set['calibrated_threshold']:.3f})  "
              f"FAR {far:.4f}  DIR {dir_:.4f}")
        print(f"  1-NN    top-1 {accuracy(ty, nn_pred):.4f}  balanced {balanced_accuracy(ty, nn_pred):.4f}  "
              f"threshold {nn_tau:.3f} (peeked)  FAR {nn_far:.4f}  DIR {nn_dir:.4f}   "
              f"[at 1% FAR: DIR {nn_dir_1pct:.4f}]")
        print(f"  DIR ratio model / 1-NN at the same FAR: {dir_ / nn_dir:.3f}")
        print(f"  model, probes embedded once (as the gallery): top-1 {accuracy(ty, single_pred):.4f}  "
              f"FAR {single_far:.4f}  DIR {single_dir:.4f}")
        if rec.mirror:
            print(f"  model as predict embeds (mirror pass within {rec.mirror_margin} of the threshold): top-1 "
                  f"{accuracy(ty, a_pred):.4f}  FAR {a_far:.4f}  DIR {a_dir:.4f}; second pass for "
                  f"{t_again.mean():.1%} of known test faces and {s_again.mean():.1%} of strangers; "
                  f"{differ} of {len(a_tx) + len(a_sx)} answers differ from the mirror pass for every face "
                  f"({differ_candidate} more name another candidate for a face refused either way); "
                  f"score shift of the mirror pass: median {np.median(shift):.3f}, 99th percentile "
                  f"{np.quantile(shift, 0.99):.3f}, max {shift.max():.3f}")
        net = rec.probabilities(tx).argmax(1)
        print(f"  classifier alone: top-1 {accuracy(ty, net):.4f}  balanced {balanced_accuracy(ty, net):.4f}   "
              f"group photos: {sum(1 for f in feats if f.faces > 1)} used, "
              f"{sum(1 for f in feats if f.skipped == 'no_matching_face')} skipped (no face like the person)")
        if no_face:
            print("  no face found in: " + ", ".join(f["filename"] for f in no_face[:20])
                  + (" ..." if len(no_face) > 20 else ""))


if __name__ == "__main__":
    main()
