#!/usr/bin/env python
"""How the open-set threshold behaves with few people: FAR and DIR over random galleries.

    python bench/openset_sizes.py [--cap 0.45 0.5 0.55] [--draws 8]

Draws galleries of 5 to 62 people from lfw62 (up to N photos each, the rest as known
probes), calibrates as a build does (`modelization.openset.calibrate`), and measures the
false-accept rate on `strangers/` and the DIR on the known probes, people named by their
nearest gallery photos. Needs the embeddings cached by `bench/openset.py` (it computes
missing ones, single process).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

from constants import Settings
from features.embeddings import pairwise_distances
from features.extract import FeatureCache, cached_photo_features
from modelization.openset import calibrate, class_scores

FACES = Path(os.environ.get("FR_FACES_DIR", ROOT.parent / "shared" / "faces"))


def embeddings(paths, settings, cache):
    out = []
    for p in paths:
        f, _ = cached_photo_features(p.read_bytes(), settings, cache)
        out.append(f.embedding if f.usable else None)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cap", type=float, nargs="+", default=[0.45, 0.5, 0.55, 9.0])
    ap.add_argument("--draws", type=int, default=8)
    args = ap.parse_args()
    settings = Settings.from_env(data_dir=ROOT)
    cache = FeatureCache(ROOT / "var" / "bench-cache", settings)
    paths = sorted((FACES / "lfw62").glob("*/*.jpg"))
    emb = embeddings(paths, settings, cache)
    keep = [i for i, e in enumerate(emb) if e is not None]
    x = np.asarray([emb[i] for i in keep], np.float32)
    y = np.asarray([paths[i].parent.name for i in keep])
    s_x = np.asarray([e for e in embeddings(sorted((FACES / "strangers").glob("*.jpg")), settings, cache)
                      if e is not None], np.float32)
    people = sorted(set(y))
    print("cap    people photos  mean FAR  max FAR  mean DIR   (cap 9 = no cap)")
    for cap in args.cap:
        rng = np.random.default_rng(0)
        for n_people, n_photos in ((5, 6), (12, 6), (5, 20), (20, 10), (62, 10_000)):
            fars, dirs = [], []
            for _ in range(args.draws if n_people < len(people) else 1):
                chosen = rng.choice(people, n_people, replace=False) if n_people < len(people) else people
                gx, gy, tx, ty = [], [], [], []
                for c, person in enumerate(chosen):
                    idx = np.where(y == person)[0]
                    rng.shuffle(idx)
                    g = idx[:min(n_photos, int(len(idx) * 0.7))]
                    gx.append(x[g])
                    gy += [c] * len(g)
                    tx.append(x[idx[len(g):]])
                    ty += [c] * (len(idx) - len(g))
                gx, gy, tx, ty = np.concatenate(gx), np.asarray(gy), np.concatenate(tx), np.asarray(ty)
                tau = calibrate(gx, gy, n_people, settings.target_far, settings.open_set_k, cap)["threshold"]
                s_sc = class_scores(pairwise_distances(s_x, gx), gy, n_people, settings.open_set_k).min(1)
                t_sc = class_scores(pairwise_distances(tx, gx), gy, n_people, settings.open_set_k)
                fars.append(np.mean(s_sc <= tau))
                dirs.append(np.mean((t_sc.min(1) <= tau) & (t_sc.argmin(1) == ty)))
            print(f"{cap:<6} {n_people:>6} {min(n_photos, 999):>6}  {np.mean(fars):8.4f} {np.max(fars):8.4f}  "
                  f"{np.mean(dirs):8.4f}")


if __name__ == "__main__":
    main()
