#!/usr/bin/env python
"""Fit the stranger model of modelization/openset.py (its 5 constants) on the TUNING strangers.

    python bench/stranger_model.py [--cache DIR] [--draws 20]

Data: `strangers-more` (2,530 people, one photo each; embedded with the mirror pass, as
`predict` embeds a face near the threshold) against templates of lfw62's people built from
n = 1, 2, 3, 5, 10, 20 of their photos drawn at random (`--draws` draws per n). For each n,
the quantiles of the stranger scores at levels a = 10^L, L from -5.5 to -1.5; then a
least-squares fit of

    t(a, n) = c0 + c1 L + c2 L^2 + (c3 + c4 L) / n

Prints the constants (to paste into `STRANGER_MODEL`), the fit's largest error, and two
checks on the tuning strangers only: the constants fitted on half of lfw62's people
predicting the other half's quantiles, and the false-accept rate the thresholds of
`openset.person_thresholds` deliver for galleries of 2 to 62 people with 1 to 20 photos
each, on lfw62 and lfw62-150px. `strangers/` (the report strangers) is never read here.
Embeddings come from bench/fewshot.py's cache (computed there on first use).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np

from bench.fewshot import TUNE, FaceSet
from features.embeddings import pairwise_distances
from modelization.openset import STRANGER_MODEL, person_thresholds, templates, unit

LEVELS = np.linspace(-5.5, -1.5, 17)
PHOTOS = (1, 2, 3, 5, 10, 20)


def by_person(labels: np.ndarray) -> dict[str, np.ndarray]:
    return {p: np.flatnonzero(labels == p) for p in sorted(set(labels))}


def draw_templates(x: np.ndarray, people: dict[str, np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """One template per person from `n` of their photos drawn at random (all of them if fewer)."""
    picks = [rng.choice(idx, min(n, len(idx)), replace=False) for idx in people.values()]
    return templates(x[np.concatenate(picks)], np.repeat(np.arange(len(picks)), [len(p) for p in picks]),
                     len(picks))


def quantile_points(x: np.ndarray, people: dict[str, np.ndarray], strangers: np.ndarray, draws: int,
                    seed: int) -> np.ndarray:
    """Rows (n, L, quantile of the stranger scores at 10^L) over `draws` random templates per n."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in PHOTOS:
        scores = np.concatenate([pairwise_distances(strangers, draw_templates(x, people, n, rng)).ravel()
                                 for _ in range(draws)])
        rows += [(n, level, np.quantile(scores, 10 ** level)) for level in LEVELS]
    return np.asarray(rows)


def design(n: np.ndarray, level: np.ndarray) -> np.ndarray:
    return np.stack([np.ones_like(level), level, level * level, 1 / n, level / n], 1)


def fit(rows: np.ndarray) -> np.ndarray:
    coef, *_ = np.linalg.lstsq(design(rows[:, 0], rows[:, 1]), rows[:, 2], rcond=None)
    return coef


def delivered_far(x: np.ndarray, people: dict[str, np.ndarray], strangers: np.ndarray, model, seed: int,
                  draws: int = 20) -> dict[tuple[int, int], float]:
    """Mean share of strangers accepted by `person_thresholds` for random galleries: (people, photos) -> FAR."""
    rng = np.random.default_rng(seed)
    names = list(people)
    out = {}
    for n_people in (2, 5, 10, 20, len(names)):
        for n in PHOTOS:
            fars = []
            for _ in range(draws if n_people < len(names) else max(1, draws // 4)):
                chosen = {p: people[p] for p in rng.choice(names, n_people, replace=False)}
                t = draw_templates(x, chosen, n, rng)
                thresholds = person_thresholds(np.full(n_people, n), 0.01, model)
                fars.append(np.mean((pairwise_distances(strangers, t) <= thresholds).any(1)))
            out[n_people, n] = float(np.mean(fars))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache", type=Path,
                    default=Path(os.environ.get("FR_BENCH_CACHE", ROOT / "var" / "bench-fewshot")))
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--draws", type=int, default=20)
    args = ap.parse_args()
    tune = FaceSet(TUNE, args.cache, args.procs)
    strangers = unit(tune.mirrored)
    gallery = FaceSet("lfw62", args.cache, args.procs)
    people = by_person(gallery.labels)
    print(f"{len(strangers)} tuning strangers against templates of {len(people)} people "
          f"({args.draws} draws per photo count)")

    rows = quantile_points(gallery.x, people, strangers, args.draws, seed=0)
    coef = fit(rows)
    err = design(rows[:, 0], rows[:, 1]) @ coef - rows[:, 2]
    print(f"STRANGER_MODEL = ({', '.join(f'{c:.5f}' for c in coef)})")
    print(f"  fit: largest error {np.abs(err).max():.4f}, rms {np.sqrt(np.mean(err ** 2)):.4f} "
          f"(in score; {len(rows)} points)")
    print(f"  in modelization/openset.py: {STRANGER_MODEL}")

    # Check 1: fitted on half of the people, the other half's quantiles.
    names = list(people)
    halves = [{p: people[p] for p in names[0::2]}, {p: people[p] for p in names[1::2]}]
    for a, b in ((0, 1), (1, 0)):
        coef_a = fit(quantile_points(gallery.x, halves[a], strangers, args.draws, seed=1))
        rows_b = quantile_points(gallery.x, halves[b], strangers, args.draws, seed=2)
        err = design(rows_b[:, 0], rows_b[:, 1]) @ coef_a - rows_b[:, 2]
        print(f"  fitted on half {a + 1} of the people, on half {b + 1}: largest error {np.abs(err).max():.4f}, "
              f"rms {np.sqrt(np.mean(err ** 2)):.4f}")

    # Check 2: the FAR the thresholds deliver on the tuning strangers (target 1%).
    for subset in ("lfw62", "lfw62-150px"):
        faces = gallery if subset == "lfw62" else FaceSet(subset, args.cache, args.procs)
        far = delivered_far(faces.x, by_person(faces.labels), strangers, STRANGER_MODEL, seed=3, draws=args.draws)
        print(f"  {subset}: FAR on the tuning strangers, target 1% (rows: people; columns: photos each "
              f"{', '.join(map(str, PHOTOS))})")
        for n_people in sorted({k[0] for k in far}):
            print(f"    {n_people:3d}: " + "  ".join(f"{100 * far[n_people, n]:.2f}%" for n in PHOTOS))


if __name__ == "__main__":
    main()
